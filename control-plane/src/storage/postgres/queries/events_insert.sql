-- Events written on their own (agents marked offline by a sweep), ids drawn in array order.
INSERT INTO agent_events (instance_uid, at, kind, payload, payload_encoding)
SELECT instance_uid, at, kind, payload, payload_encoding
FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::bytea[], $5::text[])
    WITH ORDINALITY AS v (instance_uid, at, kind, payload, payload_encoding, position)
ORDER BY position
