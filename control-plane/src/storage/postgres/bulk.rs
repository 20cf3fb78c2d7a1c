//! The writes of an ingest round, every column bound as one array: the statement text never
//! changes with the batch size, so each is prepared once per connection and planned cheaply,
//! however many rows a batch holds. An ingest round is one statement. Instance uids are
//! PostgreSQL `uuid`s.

use std::sync::LazyLock;

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::storage::encoding::{self, unavailable};
use crate::storage::rows::{AttributeColumns, EventColumns, Round, SeenColumns, KEEP_DETAILS};
use crate::storage::sql::{agent_upsert_conflict, AGENT_COLUMNS};
use crate::storage::{Result, StoreError};

/// The agents upsert of a round, its parameters numbered from `$first` (13 columns, then
/// [`KEEP_DETAILS`]). Rows go in array order, which the caller sorts by uid: the lock order of
/// every writer.
fn agent_upsert(first: usize, condition: &str) -> String {
    let types = [
        "uuid", "text", "text", "text", "int8", "text", "int8", "int8", "int8", "int8", "text",
        "bytea", "text",
    ];
    let arrays: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, kind)| format!("${}::{kind}[]", first + i))
        .collect();
    format!(
        "INSERT INTO agents ({AGENT_COLUMNS}, details, details_encoding) \
         SELECT * FROM UNNEST({}){condition}{}",
        arrays.join(", "),
        agent_upsert_conflict(&format!("${}", first + types.len()))
    )
}

/// The history insert, its parameters numbered from `$first`. Ids are drawn in array order, so
/// a batch's events keep their order in the history.
fn event_insert(first: usize, condition: &str) -> String {
    format!(
        "INSERT INTO agent_events (instance_uid, at, kind, payload, payload_encoding) \
         SELECT instance_uid, at, kind, payload, payload_encoding \
         FROM UNNEST(${}::uuid[], ${}::int8[], ${}::text[], ${}::bytea[], ${}::text[]) \
             WITH ORDINALITY AS v(instance_uid, at, kind, payload, payload_encoding, position){condition} \
         ORDER BY position",
        first,
        first + 1,
        first + 2,
        first + 3,
        first + 4
    )
}

/// A round's fence, agents and events as one statement, which commits on its own when it runs
/// outside a transaction: one round trip instead of five (begin, fence, agents, events,
/// commit). It writes only if every lease of the fence (`$1` partitions, `$2`
/// epochs, `$3` owner, `$4` now) is still the writer's, unexpired and at its epoch, and says
/// whether they were. The leases are locked `FOR KEY SHARE` until the statement's transaction
/// ends: a takeover's `FOR UPDATE` waits for it, a renewal's update does not, so renewals
/// never queue behind busy writes. Lease rows are locked in partition order, as takeovers lock
/// them, so the two never deadlock.
static ROUND_STATEMENT: LazyLock<String> = LazyLock::new(|| {
    let held = " WHERE (SELECT held FROM fence_check)";
    format!(
        "WITH fence AS (\
             SELECT partition, epoch FROM partition_leases \
             WHERE partition = ANY($1::int4[]) AND owner = $3 AND expires_at > $4 \
             ORDER BY partition FOR KEY SHARE), \
         fence_check AS (\
             SELECT count(*) = cardinality($1::int4[]) AS held \
             FROM fence JOIN UNNEST($1::int4[], $2::int8[]) AS lease(partition, epoch) \
                 USING (partition, epoch)), \
         written_agents AS ({}), \
         written_events AS ({}) \
         SELECT held FROM fence_check",
        agent_upsert(5, held),
        event_insert(19, held)
    )
});

/// Writes a round: the round statement alone when that is all it holds (an ingest round), else
/// in a transaction with the attribute rows and liveness updates.
pub async fn write(pool: &PgPool, round: &Round<'_>) -> Result<()> {
    if round.attributes.agents.is_empty() && round.seen.len() == 0 {
        return write_fenced(pool, round).await;
    }
    let mut transaction = pool.begin().await.map_err(unavailable)?;
    write_fenced(&mut *transaction, round).await?;
    if !round.attributes.agents.is_empty() {
        replace_attributes(&mut transaction, &round.attributes).await?;
    }
    if round.seen.len() > 0 {
        update_seen(&mut transaction, &round.seen).await?;
    }
    transaction.commit().await.map_err(unavailable)
}

/// Runs the round statement; [`StoreError::Fenced`] when it wrote nothing for want of a lease.
async fn write_fenced<'c>(executor: impl sqlx::PgExecutor<'c>, round: &Round<'_>) -> Result<()> {
    let (owner, leases) = match round.fence {
        Some(fence) => (fence.owner.as_str(), fence.leases.as_slice()),
        None => ("", [].as_slice()),
    };
    let partitions: Vec<i32> = leases
        .iter()
        .map(|lease| i32::from(lease.partition))
        .collect();
    let epochs: Vec<i64> = leases.iter().map(|lease| lease.epoch).collect();
    let (agents, events) = (&round.agents, &round.events);
    let held: bool = sqlx::query_scalar(ROUND_STATEMENT.as_str())
        .bind(&partitions)
        .bind(&epochs)
        .bind(owner)
        .bind(encoding::micros(OffsetDateTime::now_utc()))
        .bind(&agents.instance_uid)
        .bind(&agents.status)
        .bind(&agents.transport)
        .bind(&agents.gateway_id)
        .bind(&agents.connection_id)
        .bind(&agents.remote_addr)
        .bind(&agents.sequence_num)
        .bind(&agents.capabilities)
        .bind(&agents.first_seen)
        .bind(&agents.last_seen)
        .bind(&agents.summary)
        .bind(&agents.details)
        .bind(&agents.details_encoding)
        .bind(KEEP_DETAILS)
        .bind(&events.instance_uid)
        .bind(&events.at)
        .bind(&events.kind)
        .bind(&events.payload)
        .bind(&events.payload_encoding)
        .fetch_one(executor)
        .await
        .map_err(unavailable)?;
    if held {
        Ok(())
    } else {
        Err(StoreError::Fenced)
    }
}

/// An instance uid as a statement parameter.
pub fn uid_param(uid: Uuid) -> Uuid {
    uid
}

/// The instance uid in `column` of `row`.
pub fn row_uid(row: &PgRow, column: &str) -> Result<Uuid> {
    row.try_get(column).map_err(unavailable)
}

pub async fn select_agents(connection: &mut PgConnection, uids: &[Uuid]) -> Result<Vec<PgRow>> {
    sqlx::query(&format!(
        "SELECT {AGENT_COLUMNS}, details, details_encoding FROM agents \
         WHERE instance_uid = ANY($1::uuid[])"
    ))
    .bind(uids)
    .fetch_all(connection)
    .await
    .map_err(unavailable)
}

async fn replace_attributes(
    connection: &mut PgConnection,
    attributes: &AttributeColumns,
) -> Result<()> {
    sqlx::query("DELETE FROM agent_attributes WHERE instance_uid = ANY($1::uuid[])")
        .bind(&attributes.agents)
        .execute(&mut *connection)
        .await
        .map_err(unavailable)?;
    if attributes.instance_uid.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO agent_attributes (instance_uid, key, value) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[])",
    )
    .bind(&attributes.instance_uid)
    .bind(&attributes.key)
    .bind(&attributes.value)
    .execute(connection)
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// Events written on their own (agents marked offline by a sweep).
pub async fn insert_events(connection: &mut PgConnection, events: &EventColumns) -> Result<()> {
    sqlx::query(&event_insert(1, ""))
        .bind(&events.instance_uid)
        .bind(&events.at)
        .bind(&events.kind)
        .bind(&events.payload)
        .bind(&events.payload_encoding)
        .execute(connection)
        .await
        .map_err(unavailable)?;
    Ok(())
}

async fn update_seen(connection: &mut PgConnection, seen: &SeenColumns) -> Result<()> {
    sqlx::query(
        "UPDATE agents SET last_seen = v.last_seen, sequence_num = v.sequence_num \
         FROM UNNEST($1::uuid[], $2::int8[], $3::int8[]) AS v(instance_uid, last_seen, sequence_num) \
         WHERE agents.instance_uid = v.instance_uid",
    )
    .bind(&seen.instance_uid)
    .bind(&seen.last_seen)
    .bind(&seen.sequence_num)
    .execute(connection)
    .await
    .map_err(unavailable)?;
    Ok(())
}
