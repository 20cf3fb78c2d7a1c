DELETE FROM control_plane_replicas WHERE expires_at <= $1
