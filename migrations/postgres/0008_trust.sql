-- Agent trust: Ampora's CA, bootstrap tokens and the client certificates it issued.
-- Instance uids are hyphenated text here, as on SQLite: these tables are read by fingerprint
-- or token hash, never joined with `agents`.

-- The CA that signs agents' certificates: the current one (retired_at NULL) and those rotated
-- out, trusted while a certificate they issued has not expired.
CREATE TABLE trust_cas (
    id              BIGSERIAL PRIMARY KEY,
    certificate_der BYTEA NOT NULL,
    -- The private key (PKCS#8), encrypted with the key-encryption key; NULL when the key lives
    -- in a PKCS#11 token.
    key_sealed      BYTEA,
    -- The key's label in the PKCS#11 token, '' for a sealed key.
    key_label       TEXT NOT NULL,
    not_after       BIGINT NOT NULL, -- Unix microseconds
    created_at      BIGINT NOT NULL,
    retired_at      BIGINT
);
-- At most one current CA, whichever replica creates or rotates it.
CREATE UNIQUE INDEX trust_cas_one_current ON trust_cas ((retired_at IS NULL)) WHERE retired_at IS NULL;

-- Single-use enrolment credentials; the token itself is never stored, only its SHA-256.
CREATE TABLE bootstrap_tokens (
    id         BIGSERIAL PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE, -- lowercase hex
    labels     TEXT NOT NULL,        -- JSON object of strings, given to the enrolled agent
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT,
    used_by    TEXT,                 -- the instance uid it enrolled
    revoked_at BIGINT
);

-- Every certificate issued to an agent: its identity is the fingerprint, bound to one uid.
CREATE TABLE agent_certificates (
    fingerprint     TEXT PRIMARY KEY, -- lowercase hex SHA-256 of the DER
    instance_uid    TEXT NOT NULL,
    certificate_der BYTEA NOT NULL,
    ca_id           BIGINT NOT NULL REFERENCES trust_cas (id),
    token_id        BIGINT,           -- NULL for a renewal
    labels          TEXT NOT NULL,
    issued_at       BIGINT NOT NULL,
    not_after       BIGINT NOT NULL,
    revoked_at      BIGINT,
    revoked_reason  TEXT
);
CREATE INDEX agent_certificates_by_agent ON agent_certificates (instance_uid, issued_at);
CREATE INDEX agent_certificates_by_ca ON agent_certificates (ca_id, not_after);
