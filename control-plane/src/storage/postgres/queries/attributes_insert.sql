INSERT INTO agent_attributes (instance_uid, key, value)
SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[])
