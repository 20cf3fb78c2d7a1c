-- Liveness of agents whose snapshot did not change ($1 uids, $2 last_seen, $3 sequence_num).
-- Online agents just move on. An agent a sweep took offline is back online if it was seen at or
-- after the sweep's cutoff (silent_since), with a `connected` event ($4 kind, $5 payload):
-- its own traffic decides, not whether the sweep's eviction reached its writer's cache.
-- Both updates read the statement's snapshot, so they touch disjoint rows; a row a sweep takes
-- offline meanwhile is left to the next flush.
WITH refreshed AS (
    UPDATE agents SET last_seen = seen.last_seen, sequence_num = seen.sequence_num
    FROM UNNEST($1::uuid[], $2::int8[], $3::int8[]) AS seen (instance_uid, last_seen, sequence_num)
    WHERE agents.instance_uid = seen.instance_uid AND agents.status = 'online'
),
revived AS (
    UPDATE agents
    SET status = 'online', last_seen = seen.last_seen, sequence_num = seen.sequence_num
    FROM UNNEST($1::uuid[], $2::int8[], $3::int8[]) AS seen (instance_uid, last_seen, sequence_num)
    WHERE agents.instance_uid = seen.instance_uid AND agents.status = 'offline'
        AND seen.last_seen >= agents.silent_since
    RETURNING agents.instance_uid, agents.last_seen
)
INSERT INTO agent_events (instance_uid, at, kind, payload, payload_encoding)
SELECT instance_uid, last_seen, $4, $5, 'json' FROM revived ORDER BY instance_uid
