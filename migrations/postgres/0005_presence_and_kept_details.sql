-- When a sweep took an agent offline, the cutoff it judged the agent silent since: a liveness
-- update seen at or after it proves the agent alive and brings it back online.
ALTER TABLE agents ADD COLUMN silent_since BIGINT NOT NULL DEFAULT 0; -- Unix microseconds

-- An agent first stored by a write that kept its details (they had not changed, but its row was
-- missing) has none yet: NULL, read as empty details.
ALTER TABLE agents ALTER COLUMN details DROP NOT NULL;
ALTER TABLE agents ALTER COLUMN details_encoding DROP NOT NULL;
