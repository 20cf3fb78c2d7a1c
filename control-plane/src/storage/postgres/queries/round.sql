-- A round's fence, agents and events as one statement, which commits on its own when it runs
-- outside a transaction: one round trip instead of five (begin, fence, agents, events, commit).
-- It writes only if every lease of the fence ($1 partitions, $2 epochs, $3 owner, $4 now) is
-- still the writer's, unexpired and at its epoch, and says whether they were. The leases are
-- locked FOR KEY SHARE until the statement's transaction ends: a takeover's FOR UPDATE waits
-- for it, a renewal's update does not, so renewals never queue behind busy writes. Lease rows
-- are locked in partition order, as takeovers lock them, so the two never deadlock.
--
-- Agents ($5..$17) go in array order, which the caller sorts by uid: the lock order of every
-- writer. An agent without details (NULL) keeps its stored ones. Event ids ($18..$22) are drawn
-- in array order, so a batch's events keep their order in the history. Agents' config rows
-- ($23..$39) take the reported side as it is, the assigned side only over an older assignment:
-- one made through the API meanwhile wins.
WITH fence AS (
    SELECT partition, epoch FROM partition_leases
    WHERE partition = ANY($1::int4[]) AND owner = $3 AND expires_at > $4
    ORDER BY partition
    FOR KEY SHARE
),
fence_check AS (
    SELECT count(*) = cardinality($1::int4[]) AS held
    FROM fence JOIN UNNEST($1::int4[], $2::int8[]) AS lease (partition, epoch)
        USING (partition, epoch)
),
written_agents AS (
    INSERT INTO agents (instance_uid, status, transport, gateway_id, connection_id, remote_addr,
                        sequence_num, capabilities, first_seen, last_seen, summary, details,
                        details_encoding)
    SELECT * FROM UNNEST($5::uuid[], $6::text[], $7::text[], $8::text[], $9::int8[],
                         $10::text[], $11::int8[], $12::int8[], $13::int8[], $14::int8[],
                         $15::text[], $16::bytea[], $17::text[])
    WHERE (SELECT held FROM fence_check)
    ON CONFLICT (instance_uid) DO UPDATE SET
        status = excluded.status,
        transport = excluded.transport,
        gateway_id = excluded.gateway_id,
        connection_id = excluded.connection_id,
        remote_addr = excluded.remote_addr,
        sequence_num = excluded.sequence_num,
        capabilities = excluded.capabilities,
        last_seen = excluded.last_seen,
        summary = excluded.summary,
        details = COALESCE(excluded.details, agents.details),
        details_encoding = COALESCE(excluded.details_encoding, agents.details_encoding)
),
written_events AS (
    INSERT INTO agent_events (instance_uid, at, kind, payload, payload_encoding)
    SELECT instance_uid, at, kind, payload, payload_encoding
    FROM UNNEST($18::uuid[], $19::int8[], $20::text[], $21::bytea[], $22::text[])
        WITH ORDINALITY AS v (instance_uid, at, kind, payload, payload_encoding, position)
    WHERE (SELECT held FROM fence_check)
    ORDER BY position
),
written_configs AS (
    INSERT INTO agent_configs (instance_uid, assignment_id, configuration_id, config_version,
                               assigned_hash, assigned_at, remote_hash, remote_state,
                               applied_hash, applied_at, failed_hash, failed_assignment_id,
                               failed_error, failed_at, out_of_band_at, expects_effective,
                               effective_since_status)
    SELECT * FROM UNNEST($23::uuid[], $24::int8[], $25::int8[], $26::int8[], $27::text[],
                         $28::int8[], $29::text[], $30::text[], $31::text[], $32::int8[],
                         $33::text[], $34::int8[], $35::text[], $36::int8[], $37::int8[],
                         $38::bool[], $39::bool[])
    WHERE (SELECT held FROM fence_check)
    -- The conflict clause, shared with SQLite, follows from queries/agent_configs_conflict.sql;
    -- then the statement ends with: ) SELECT held FROM fence_check
