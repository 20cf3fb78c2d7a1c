-- Every message from an agent moves its last_seen; an index holding it was rewritten on each one.
-- The sweep for silent HTTP agents reads the online agents of a transport and filters on last_seen.
DROP INDEX agents_liveness;
CREATE INDEX agents_online_by_transport ON agents (transport, status);
