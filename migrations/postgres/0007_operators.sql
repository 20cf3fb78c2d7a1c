-- Operators: local accounts, their sessions and API tokens, and the audit log.

-- A local account; the password as an argon2id PHC string, never in clear.
CREATE TABLE operator_accounts (
    username      TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL,   -- viewer, operator, admin
    created_at    BIGINT NOT NULL, -- Unix microseconds
    updated_at    BIGINT NOT NULL
);

-- A signed-in browser: only the SHA-256 of the cookie's secret is kept. The role is the
-- account's, read with the session, so a changed role applies at once.
CREATE TABLE operator_sessions (
    id_hash    TEXT PRIMARY KEY, -- lowercase hex
    username   TEXT NOT NULL REFERENCES operator_accounts (username) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX operator_sessions_by_expiry ON operator_sessions (expires_at);

-- Automation's bearer tokens: only the SHA-256 of the token is kept.
CREATE TABLE api_tokens (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE, -- lowercase hex
    created_by TEXT NOT NULL,        -- the actor that made it
    created_at BIGINT NOT NULL,
    expires_at BIGINT                -- none: until deleted
);

-- The audit log, hash-chained: each entry's hash covers its fields and the previous hash.
-- Ids are the chain's order, handed out by the one-row head below under its row lock, so
-- replicas writing at once still make one chain.
CREATE TABLE audit_log (
    id          BIGINT PRIMARY KEY,
    at          BIGINT NOT NULL, -- Unix microseconds
    actor       TEXT NOT NULL,   -- account:NAME, api-token:ID or system
    action      TEXT NOT NULL,
    object_type TEXT NOT NULL,
    object_id   TEXT NOT NULL,
    old_value   TEXT,            -- JSON, secrets left out
    new_value   TEXT,
    address     TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);
CREATE INDEX audit_log_by_time ON audit_log (at);

-- Entries past the hot period, moved unchanged (hashes and all) so the chain still verifies.
CREATE TABLE audit_archive (LIKE audit_log INCLUDING ALL);

-- The chain's head (the newest entry) and its anchor (the newest purged entry, where
-- verification starts).
CREATE TABLE audit_chain (
    singleton   BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    last_id     BIGINT NOT NULL,
    last_hash   TEXT NOT NULL,
    anchor_id   BIGINT NOT NULL,
    anchor_hash TEXT NOT NULL
);
INSERT INTO audit_chain (singleton, last_id, last_hash, anchor_id, anchor_hash) VALUES
    (TRUE, 0, '0000000000000000000000000000000000000000000000000000000000000000',
     0, '0000000000000000000000000000000000000000000000000000000000000000');
