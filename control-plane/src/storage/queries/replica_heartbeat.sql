INSERT INTO control_plane_replicas (replica_id, expires_at) VALUES ($1, $2)
ON CONFLICT (replica_id) DO UPDATE SET expires_at = excluded.expires_at
