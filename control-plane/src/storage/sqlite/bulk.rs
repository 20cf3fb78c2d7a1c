//! The writes of an ingest round: multi-row statements, chunked under SQLite's bind limit.
//! Instance uids are stored as text.

use sqlx::query_builder::Separated;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::storage::encoding::{self, unavailable};
use crate::storage::rows::{
    AgentColumns, AttributeColumns, EventColumns, Round, SeenColumns, KEEP_DETAILS,
};
use crate::storage::sql::{agent_upsert_conflict, AGENT_COLUMNS};
use crate::storage::{Fence, Result, StoreError};

/// Rows per statement: at 13 binds a row, well under SQLite's 32,766 bind limit.
const ROWS_PER_STATEMENT: usize = 500;

/// Writes a round in one transaction, its fence checked first.
pub async fn write(pool: &SqlitePool, round: &Round<'_>) -> Result<()> {
    let mut transaction = pool.begin().await.map_err(unavailable)?;
    if let Some(fence) = round.fence {
        check_fence(&mut transaction, fence).await?;
    }
    if round.agents.len() > 0 {
        upsert_agents(&mut transaction, &round.agents).await?;
    }
    if !round.attributes.agents.is_empty() {
        replace_attributes(&mut transaction, &round.attributes).await?;
    }
    if round.events.len() > 0 {
        insert_events(&mut transaction, &round.events).await?;
    }
    if round.seen.len() > 0 {
        update_seen(&mut transaction, &round.seen).await?;
    }
    transaction.commit().await.map_err(unavailable)
}

/// Checks that the fence's leases are still the writer's, unexpired and at its epochs, with a
/// no-op update of each: it makes the transaction SQLite's one writer from its first statement,
/// so no lease can change before it commits.
async fn check_fence(connection: &mut SqliteConnection, fence: &Fence) -> Result<()> {
    let now = encoding::micros(OffsetDateTime::now_utc());
    for lease in &fence.leases {
        let held = sqlx::query(
            "UPDATE partition_leases SET epoch = epoch \
             WHERE partition = $1 AND owner = $2 AND epoch = $3 AND expires_at > $4 \
             RETURNING partition",
        )
        .bind(i32::from(lease.partition))
        .bind(&fence.owner)
        .bind(lease.epoch)
        .bind(now)
        .fetch_optional(&mut *connection)
        .await
        .map_err(unavailable)?;
        if held.is_none() {
            return Err(StoreError::Fenced);
        }
    }
    Ok(())
}

/// An instance uid as a statement parameter.
pub fn uid_param(uid: Uuid) -> String {
    uid.to_string()
}

/// The instance uid in `column` of `row`.
pub fn row_uid(row: &SqliteRow, column: &str) -> Result<Uuid> {
    encoding::uid(&row.try_get::<String, _>(column).map_err(unavailable)?)
}

pub async fn select_agents(
    connection: &mut SqliteConnection,
    uids: &[Uuid],
) -> Result<Vec<SqliteRow>> {
    let mut rows = Vec::with_capacity(uids.len());
    let select = format!(
        "SELECT {AGENT_COLUMNS}, details, details_encoding FROM agents WHERE instance_uid "
    );
    for chunk in uids.chunks(ROWS_PER_STATEMENT) {
        rows.extend(
            in_uids(&select, chunk)
                .build()
                .fetch_all(&mut *connection)
                .await
                .map_err(unavailable)?,
        );
    }
    Ok(rows)
}

async fn upsert_agents(connection: &mut SqliteConnection, agents: &AgentColumns) -> Result<()> {
    let keep_details: String = KEEP_DETAILS.iter().map(|b| format!("{b:02X}")).collect();
    let upsert = format!("INSERT INTO agents ({AGENT_COLUMNS}, details, details_encoding) ");
    let on_conflict = agent_upsert_conflict(&format!("X'{keep_details}'"));
    execute_values(connection, &upsert, agents.len(), &on_conflict, |row, i| {
        row.push_bind(uid_param(agents.instance_uid[i]))
            .push_bind(agents.status[i])
            .push_bind(agents.transport[i])
            .push_bind(&agents.gateway_id[i])
            .push_bind(agents.connection_id[i])
            .push_bind(&agents.remote_addr[i])
            .push_bind(agents.sequence_num[i])
            .push_bind(agents.capabilities[i])
            .push_bind(agents.first_seen[i])
            .push_bind(agents.last_seen[i])
            .push_bind(&agents.summary[i])
            .push_bind(&agents.details[i])
            .push_bind(agents.details_encoding[i]);
    })
    .await
}

async fn replace_attributes(
    connection: &mut SqliteConnection,
    attributes: &AttributeColumns,
) -> Result<()> {
    for chunk in attributes.agents.chunks(ROWS_PER_STATEMENT) {
        in_uids("DELETE FROM agent_attributes WHERE instance_uid ", chunk)
            .build()
            .execute(&mut *connection)
            .await
            .map_err(unavailable)?;
    }
    execute_values(
        connection,
        "INSERT INTO agent_attributes (instance_uid, key, value) ",
        attributes.len(),
        "",
        |row, i| {
            row.push_bind(uid_param(attributes.instance_uid[i]))
                .push_bind(&attributes.key[i])
                .push_bind(&attributes.value[i]);
        },
    )
    .await
}

pub async fn insert_events(connection: &mut SqliteConnection, events: &EventColumns) -> Result<()> {
    execute_values(
        connection,
        "INSERT INTO agent_events (instance_uid, at, kind, payload, payload_encoding) ",
        events.len(),
        "",
        |row, i| {
            row.push_bind(uid_param(events.instance_uid[i]))
                .push_bind(events.at[i])
                .push_bind(events.kind[i])
                .push_bind(&events.payload[i])
                .push_bind(events.payload_encoding[i]);
        },
    )
    .await
}

async fn update_seen(connection: &mut SqliteConnection, seen: &SeenColumns) -> Result<()> {
    execute_values(
        connection,
        "UPDATE agents SET last_seen = v.column2, sequence_num = v.column3 FROM (",
        seen.len(),
        ") AS v WHERE agents.instance_uid = v.column1",
        |row, i| {
            row.push_bind(uid_param(seen.instance_uid[i]))
                .push_bind(seen.last_seen[i])
                .push_bind(seen.sequence_num[i]);
        },
    )
    .await
}

/// `head IN (…)` with `uids` bound.
fn in_uids<'a>(head: &str, uids: &[Uuid]) -> QueryBuilder<'a, Sqlite> {
    let mut statement = QueryBuilder::new(head);
    statement.push("IN (");
    let mut listed = statement.separated(", ");
    for uid in uids {
        listed.push_bind(uid_param(*uid));
    }
    statement.push(")");
    statement
}

/// Runs `head VALUES (…), (…) tail` for `rows` rows, `ROWS_PER_STATEMENT` at a time;
/// `bind_row` binds the columns of row `i`.
async fn execute_values<'a>(
    connection: &mut SqliteConnection,
    head: &str,
    rows: usize,
    tail: &str,
    mut bind_row: impl FnMut(&mut Separated<'_, 'a, Sqlite, &'static str>, usize),
) -> Result<()> {
    for start in (0..rows).step_by(ROWS_PER_STATEMENT) {
        let chunk = start..(start + ROWS_PER_STATEMENT).min(rows);
        let mut statement = QueryBuilder::<'a, Sqlite>::new(head);
        statement.push_values(chunk, |mut row, i| bind_row(&mut row, i));
        statement.push(tail);
        statement
            .build()
            .execute(&mut *connection)
            .await
            .map_err(unavailable)?;
    }
    Ok(())
}
