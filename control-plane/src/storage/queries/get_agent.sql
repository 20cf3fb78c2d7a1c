SELECT instance_uid, status, transport, gateway_id, connection_id, remote_addr, sequence_num,
       capabilities, first_seen, last_seen, summary, details, details_encoding
FROM agents
WHERE instance_uid = $1
