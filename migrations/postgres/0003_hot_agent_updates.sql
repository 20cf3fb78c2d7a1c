-- Every message from an agent moves its last_seen. While last_seen was indexed, no update of an
-- agent's row could be heap-only (HOT), so each one wrote every index of the table. The sweep for
-- silent HTTP agents now reads the online agents of a transport and filters on last_seen.
DROP INDEX agents_liveness;
CREATE INDEX agents_online_by_transport ON agents (transport, status);

-- Room on every page for the next version of its rows, so that updates stay on the page.
ALTER TABLE agents SET (fillfactor = 70);
