-- Instance uids as PostgreSQL's 16-byte `uuid` instead of their 36-character text. Every ingest
-- round probes the primary key once per agent and inserts one agent_events_by_agent entry per
-- event; on text each B-tree step compared under the database's collation (often a glibc
-- locale), and the history's index held 37-byte keys. `uuid` compares as bytes, which orders
-- uids as their lowercase text sorts, so listings keep their order.
ALTER TABLE agent_attributes DROP CONSTRAINT agent_attributes_instance_uid_fkey;
ALTER TABLE agents ALTER COLUMN instance_uid TYPE uuid USING instance_uid::uuid;
ALTER TABLE agent_attributes ALTER COLUMN instance_uid TYPE uuid USING instance_uid::uuid;
ALTER TABLE agent_events ALTER COLUMN instance_uid TYPE uuid USING instance_uid::uuid;
ALTER TABLE agent_attributes ADD CONSTRAINT agent_attributes_instance_uid_fkey
    FOREIGN KEY (instance_uid) REFERENCES agents (instance_uid) ON DELETE CASCADE;
