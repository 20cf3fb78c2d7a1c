DELETE FROM control_plane_replicas WHERE replica_id = $1
