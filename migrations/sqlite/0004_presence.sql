-- When a sweep took an agent offline, the cutoff it judged the agent silent since: a liveness
-- update seen at or after it proves the agent alive and brings it back online.
ALTER TABLE agents ADD COLUMN silent_since BIGINT NOT NULL DEFAULT 0; -- Unix microseconds
