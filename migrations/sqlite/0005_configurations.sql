-- Configurations an operator authors: a draft that changes, guarded by its row version.
CREATE TABLE configurations (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace   TEXT NOT NULL,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    labels      TEXT NOT NULL,   -- JSON object of strings
    draft       TEXT NOT NULL,   -- the operator's YAML, byte for byte
    row_version BIGINT NOT NULL, -- grows with every change; a stale one is refused
    created_at  BIGINT NOT NULL, -- Unix microseconds
    updated_at  BIGINT NOT NULL,
    UNIQUE (workspace, name)
);

-- Published versions never change: the hash is SHA-256 over exactly the bytes agents get.
CREATE TABLE configuration_versions (
    configuration_id BIGINT NOT NULL REFERENCES configurations (id),
    version          BIGINT NOT NULL,
    yaml             TEXT NOT NULL,
    hash             TEXT NOT NULL, -- lowercase hex
    created_at       BIGINT NOT NULL,
    PRIMARY KEY (configuration_id, version)
);

-- Operators' changes to the built-in lint rules, per workspace; absent rules keep the defaults.
CREATE TABLE lint_rules (
    workspace  TEXT NOT NULL,
    rule       TEXT NOT NULL,
    enabled    BOOLEAN NOT NULL,
    severity   TEXT NOT NULL,
    message    TEXT NOT NULL,
    hint       TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (workspace, rule)
);

-- Intents, newest wins: a version for one agent, or for every agent matching a selector.
CREATE TABLE assignments (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    configuration_id BIGINT NOT NULL,
    version          BIGINT NOT NULL,
    instance_uid     TEXT,     -- exactly one of instance_uid and selector
    selector         TEXT,   -- "k=v,k2=v2" over identifying and non-identifying attributes
    created_at       BIGINT NOT NULL,
    FOREIGN KEY (configuration_id, version) REFERENCES configuration_versions
);

-- Per agent: what is assigned (written by whoever assigns; the newest assignment wins) and
-- what the agent reported of it (written by the agent's ingest worker, fenced by its lease).
-- The drift state follows from both, so one indexed read serves the dashboard.
CREATE TABLE agent_configs (
    instance_uid         TEXT PRIMARY KEY,
    assignment_id        BIGINT,
    configuration_id     BIGINT,
    config_version       BIGINT,
    assigned_hash        TEXT,   -- lowercase hex, as published
    assigned_at          BIGINT, -- Unix microseconds
    remote_hash          TEXT,   -- the agent's last_remote_config_hash, hex
    remote_state         TEXT,   -- unset, applying, applied, failed
    applied_hash         TEXT,   -- the last hash the agent reported APPLIED for
    applied_at           BIGINT,
    failed_hash          TEXT,   -- a hash the agent rejected: not offered again for
    failed_assignment_id BIGINT, -- this assignment (or an older one)
    failed_error         TEXT,   -- the agent's own words
    failed_at            BIGINT,
    out_of_band_at       BIGINT, -- the effective config changed without an assignment
    expects_effective    BOOLEAN NOT NULL DEFAULT FALSE, -- applying: its next report is no drift
    effective_since_status BOOLEAN NOT NULL DEFAULT FALSE, -- reported since its last status or offer
    drift_state          TEXT GENERATED ALWAYS AS (
        CASE
            WHEN assigned_hash IS NULL THEN NULL
            WHEN failed_hash = assigned_hash AND failed_assignment_id >= assignment_id
                THEN 'failed'
            WHEN remote_hash IS NOT assigned_hash
                OR remote_state IS NOT 'applied' THEN 'pending'
            WHEN out_of_band_at IS NOT NULL THEN 'out_of_band'
            ELSE 'in_sync'
        END
    ) STORED
);
CREATE INDEX agent_configs_by_drift ON agent_configs (drift_state, instance_uid);
