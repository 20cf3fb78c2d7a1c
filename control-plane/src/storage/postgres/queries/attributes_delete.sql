DELETE FROM agent_attributes WHERE instance_uid = ANY($1::uuid[])
