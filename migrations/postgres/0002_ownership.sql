-- Which control-plane replica owns which agent partition (one writer per agent). The epoch
-- grows with every change of owner and fences writes of a replica that lost its lease.
CREATE TABLE partition_leases (
    partition  INTEGER PRIMARY KEY,
    owner      TEXT NOT NULL,
    epoch      BIGINT NOT NULL,
    expires_at BIGINT NOT NULL -- Unix microseconds
);

-- Live control-plane replicas, to split partitions fairly between them.
CREATE TABLE control_plane_replicas (
    replica_id TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);

CREATE INDEX agents_by_gateway ON agents (gateway_id, status);
