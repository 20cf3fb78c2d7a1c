SELECT COUNT(*) FROM control_plane_replicas
