-- The online WebSocket agents of gateway $1 go offline, silent since $2 (anything seen later
-- came through another gateway).
UPDATE agents SET status = 'offline', silent_since = $2
WHERE instance_uid IN (
    SELECT instance_uid FROM agents
    WHERE gateway_id = $1 AND status = 'online' AND transport = 'websocket'
    ORDER BY instance_uid
)
RETURNING instance_uid
