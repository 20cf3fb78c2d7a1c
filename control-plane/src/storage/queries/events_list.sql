SELECT id, instance_uid, at, kind, payload, payload_encoding
FROM agent_events
WHERE instance_uid = $1 AND id < $2
ORDER BY id DESC
LIMIT $3
