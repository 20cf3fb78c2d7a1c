-- Agents: the current snapshot of every agent, one row each.
CREATE TABLE agents (
    instance_uid     TEXT PRIMARY KEY,
    status           TEXT NOT NULL,
    transport        TEXT NOT NULL,
    gateway_id       TEXT NOT NULL,
    connection_id    BIGINT NOT NULL,
    remote_addr      TEXT NOT NULL,
    sequence_num     BIGINT NOT NULL,
    capabilities     BIGINT NOT NULL,
    first_seen       BIGINT NOT NULL, -- Unix microseconds
    last_seen        BIGINT NOT NULL,
    summary          TEXT NOT NULL,   -- JSON: attributes, health, remote config status
    details          BYTEA NOT NULL,  -- JSON, gzip'd when details_encoding = 'gzip+json'
    details_encoding TEXT NOT NULL
);
CREATE INDEX agents_status ON agents (status, instance_uid);
CREATE INDEX agents_liveness ON agents (transport, status, last_seen);

-- One row per attribute value, for the attr=key=value filter.
CREATE TABLE agent_attributes (
    instance_uid TEXT NOT NULL REFERENCES agents (instance_uid) ON DELETE CASCADE,
    key          TEXT NOT NULL,
    value        TEXT NOT NULL,
    PRIMARY KEY (instance_uid, key, value)
);
CREATE INDEX agent_attributes_lookup ON agent_attributes (key, value);

-- Append-only history: one row per change.
CREATE TABLE agent_events (
    id               BIGSERIAL PRIMARY KEY,
    instance_uid     TEXT NOT NULL,
    at               BIGINT NOT NULL,
    kind             TEXT NOT NULL,
    payload          BYTEA NOT NULL,
    payload_encoding TEXT NOT NULL
);
CREATE INDEX agent_events_by_agent ON agent_events (instance_uid, id);
