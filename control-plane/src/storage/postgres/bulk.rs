//! The writes of an ingest round, one statement each, every column bound as one array: the
//! statement text never changes with the batch size, so each is prepared once per connection
//! and planned cheaply, however many rows a batch holds. Instance uids are PostgreSQL `uuid`s.

use std::collections::HashSet;

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::storage::encoding::{self, unavailable};
use crate::storage::rows::{
    AgentColumns, AttributeColumns, EventColumns, SeenColumns, KEEP_DETAILS,
};
use crate::storage::sql::{agent_upsert_conflict, AGENT_COLUMNS};
use crate::storage::{Fence, Result, StoreError};

/// Checks that the fence's leases are still the writer's, unexpired and at its epochs, and
/// keeps them so until the transaction ends: a `FOR KEY SHARE` lock, which a takeover's
/// `FOR UPDATE` waits for and a renewal's update does not, so renewals never queue behind busy
/// writes. Rows are locked in partition order, as takeovers lock them, so the two never
/// deadlock.
pub async fn check_fence(connection: &mut PgConnection, fence: &Fence) -> Result<()> {
    let partitions: Vec<i32> = fence
        .leases
        .iter()
        .map(|lease| i32::from(lease.partition))
        .collect();
    let rows = sqlx::query(
        "SELECT partition, epoch FROM partition_leases \
         WHERE partition = ANY($1::int4[]) AND owner = $2 AND expires_at > $3 \
         ORDER BY partition FOR KEY SHARE",
    )
    .bind(&partitions)
    .bind(&fence.owner)
    .bind(encoding::micros(OffsetDateTime::now_utc()))
    .fetch_all(connection)
    .await
    .map_err(unavailable)?;
    let held = rows
        .iter()
        .map(|row| {
            let partition: i32 = row.try_get("partition").map_err(unavailable)?;
            let epoch: i64 = row.try_get("epoch").map_err(unavailable)?;
            Ok((partition, epoch))
        })
        .collect::<Result<HashSet<_>>>()?;
    let all_held = fence
        .leases
        .iter()
        .all(|lease| held.contains(&(i32::from(lease.partition), lease.epoch)));
    if all_held {
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

/// Rows go in array order, which the caller sorts by uid: the lock order of every writer.
pub async fn upsert_agents(connection: &mut PgConnection, agents: &AgentColumns) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO agents ({AGENT_COLUMNS}, details, details_encoding) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int8[], \
             $6::text[], $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::text[], \
             $12::bytea[], $13::text[]){}",
        agent_upsert_conflict("$14")
    ))
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
    .execute(connection)
    .await
    .map_err(unavailable)?;
    Ok(())
}

pub async fn replace_attributes(
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

/// Ids are drawn in array order, so a batch's events keep their order in the history.
pub async fn insert_events(connection: &mut PgConnection, events: &EventColumns) -> Result<()> {
    sqlx::query(
        "INSERT INTO agent_events (instance_uid, at, kind, payload, payload_encoding) \
         SELECT instance_uid, at, kind, payload, payload_encoding \
         FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::bytea[], $5::text[]) \
             WITH ORDINALITY AS v(instance_uid, at, kind, payload, payload_encoding, position) \
         ORDER BY position",
    )
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

pub async fn update_seen(connection: &mut PgConnection, seen: &SeenColumns) -> Result<()> {
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
