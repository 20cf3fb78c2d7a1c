-- Agents of transport $1 online but unseen since $2 go offline, silent since $2.
UPDATE agents SET status = 'offline', silent_since = $2
WHERE instance_uid IN (
    SELECT instance_uid FROM agents
    WHERE transport = $1 AND status = 'online' AND last_seen < $2
    ORDER BY instance_uid
)
RETURNING instance_uid
