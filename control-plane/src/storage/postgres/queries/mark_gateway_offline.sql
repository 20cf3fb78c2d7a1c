-- The online WebSocket agents of gateway $1 go offline, silent since $2 (anything seen later
-- came through another gateway). Rows are locked in instance_uid order, as batch upserts lock
-- them, so the two do not deadlock.
UPDATE agents SET status = 'offline', silent_since = $2
WHERE instance_uid IN (
    SELECT instance_uid FROM agents
    WHERE gateway_id = $1 AND status = 'online' AND transport = 'websocket'
    ORDER BY instance_uid
    FOR UPDATE
)
RETURNING instance_uid
