-- Agents of transport $1 online but unseen since $2 go offline, silent since $2. Rows are locked
-- in instance_uid order, as batch upserts lock them, so the two do not deadlock.
UPDATE agents SET status = 'offline', silent_since = $2
WHERE instance_uid IN (
    SELECT instance_uid FROM agents
    WHERE transport = $1 AND status = 'online' AND last_seen < $2
    ORDER BY instance_uid
    FOR UPDATE
)
RETURNING instance_uid
