-- Agents with what the server keeps of their config answers; each caller adds its WHERE.
SELECT a.instance_uid, a.status, a.transport, a.gateway_id, a.connection_id, a.remote_addr,
       a.sequence_num, a.capabilities, a.first_seen, a.last_seen, a.summary, a.details,
       a.details_encoding, c.applied_hash, c.applied_at, c.failed_hash, c.failed_assignment_id,
       c.failed_error, c.failed_at, c.out_of_band_at, c.expects_effective,
       c.effective_since_status
FROM agents a LEFT JOIN agent_configs c ON c.instance_uid = a.instance_uid
