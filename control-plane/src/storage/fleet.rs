//! The fleet as the web UI reads it: filtered pages with each agent's drift state, counts for
//! the top of the page, and the feed of changes that live pages follow. Generic over the sqlx
//! database; each store calls these with its own pool and its own way of binding uids.

use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};
use uuid::Uuid;

use super::model::{HeadRow, AGENT_COLUMNS};
use super::shared::{attributes_match, Placeholders};
use super::{ChangedAgent, FleetCounts, FleetQuery, FleetRow, Result, StoreError};
use crate::agents::snapshot::{AgentHead, AgentStatus, Transport};
use crate::remote_config::drift::DriftState;

/// An agent's head with its drift state (`NULL` when nothing is assigned).
#[derive(sqlx::FromRow)]
pub struct FleetRowDb<Uid> {
    #[sqlx(flatten)]
    pub head: HeadRow<Uid>,
    pub drift_state: Option<String>,
}

impl<Uid: Into<Uuid>> TryFrom<FleetRowDb<Uid>> for FleetRow {
    type Error = StoreError;

    fn try_from(row: FleetRowDb<Uid>) -> Result<FleetRow> {
        let drift = row
            .drift_state
            .map(|state| {
                DriftState::parse(&state)
                    .ok_or_else(|| StoreError::Corrupt(format!("drift state {state:?}")))
            })
            .transpose()?;
        Ok(FleetRow {
            head: AgentHead::try_from(row.head)?,
            drift,
        })
    }
}

/// `text` as a `LIKE` pattern matching it anywhere, lowercase, its wildcards escaped.
fn contains_pattern(text: &str) -> String {
    let escaped = text
        .to_lowercase()
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// Agents matching `query`, by uid; `only` and `after` are the query's uids as the dialect
/// binds them. Every filter is a condition on the agents table walked in uid order (or an
/// indexed probe of one agent's rows), so a page costs its rows, not the fleet's size, unless
/// few agents match.
pub async fn list<DB, Uid>(
    pool: &Pool<DB>,
    query: &FleetQuery,
    only: Option<Uid>,
    after: Option<Uid>,
) -> Result<Vec<FleetRowDb<Uid>>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Uid: Encode<'q, DB> + Type<DB>,
    Uid: Send + Unpin + 'static,
    for<'r> FleetRowDb<Uid>: FromRow<'r, DB::Row>,
{
    let columns: Vec<String> = AGENT_COLUMNS
        .split(", ")
        .map(|column| format!("agents.{}", column.trim()))
        .collect();
    let mut placeholders = Placeholders::default();
    let mut sql = format!(
        "SELECT {}, c.drift_state FROM agents \
         LEFT JOIN agent_configs c ON c.instance_uid = agents.instance_uid WHERE 1 = 1",
        columns.join(", ")
    );
    let mut binds: Vec<String> = Vec::new();
    if let Some(status) = query.status {
        sql += &format!(" AND agents.status = {}", placeholders.next());
        binds.push(status.as_str().to_owned());
    }
    if let Some(transport) = query.transport {
        sql += &format!(" AND agents.transport = {}", placeholders.next());
        binds.push(transport.as_str().to_owned());
    }
    if let Some(drift) = query.drift {
        sql += &format!(" AND c.drift_state = {}", placeholders.next());
        binds.push(drift.as_str().to_owned());
    }
    if let Some(search) = query.search.as_deref().filter(|text| !text.is_empty()) {
        sql += &format!(
            " AND EXISTS (SELECT 1 FROM agent_attributes s \
             WHERE s.instance_uid = agents.instance_uid AND LOWER(s.value) LIKE {} ESCAPE '\\')",
            placeholders.next()
        );
        binds.push(contains_pattern(search));
    }
    sql += &attributes_match(&mut placeholders, query.attributes.len());
    for (key, value) in &query.attributes {
        binds.push(key.clone());
        binds.push(value.clone());
    }
    if only.is_some() {
        sql += &format!(" AND agents.instance_uid = {}", placeholders.next());
    }
    if after.is_some() {
        sql += &format!(" AND agents.instance_uid > {}", placeholders.next());
    }
    sql += &format!(
        " ORDER BY agents.instance_uid LIMIT {}",
        placeholders.next()
    );

    // Bound in the order of their placeholders.
    let mut select = sqlx::query_as(&sql);
    for bind in binds {
        select = select.bind(bind);
    }
    if let Some(only) = only {
        select = select.bind(only);
    }
    if let Some(after) = after {
        select = select.bind(after);
    }
    Ok(select.bind(i64::from(query.limit)).fetch_all(pool).await?)
}

/// Agents per status and transport: one pass over an index of (transport, status).
pub async fn counts<DB>(pool: &Pool<DB>) -> Result<FleetCounts>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'r> (String, String, i64): FromRow<'r, DB::Row>,
{
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT transport, status, count(*) FROM agents GROUP BY transport, status")
            .fetch_all(pool)
            .await?;
    let mut counts = FleetCounts::default();
    for (transport, status, count) in rows {
        let count = count as u64;
        counts.total += count;
        match AgentStatus::parse(&status) {
            Some(AgentStatus::Online) => counts.online += count,
            Some(AgentStatus::Offline) => counts.offline += count,
            None => return Err(StoreError::Corrupt(format!("agent status {status:?}"))),
        }
        match Transport::parse(&transport) {
            Some(Transport::Websocket) => counts.websocket += count,
            Some(Transport::Http) => counts.http += count,
            None => {
                return Err(StoreError::Corrupt(format!(
                    "agent transport {transport:?}"
                )))
            }
        }
    }
    Ok(counts)
}

/// History rows after id `after`, oldest first, at most `limit`: which agents changed.
pub async fn changes<DB, Uid>(pool: &Pool<DB>, after: i64, limit: u32) -> Result<Vec<ChangedAgent>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    Uid: Into<Uuid> + Send + Unpin + 'static,
    for<'r> (i64, Uid, String): FromRow<'r, DB::Row>,
{
    let rows: Vec<(i64, Uid, String)> = sqlx::query_as(
        "SELECT id, instance_uid, kind FROM agent_events WHERE id > $1 ORDER BY id LIMIT $2",
    )
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, uid, kind)| ChangedAgent {
            event_id: id,
            instance_uid: uid.into(),
            kind,
        })
        .collect())
}

/// The newest history row's id (0: none yet).
pub async fn newest_change<DB>(pool: &Pool<DB>) -> Result<i64>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
{
    Ok(
        sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM agent_events")
            .fetch_one(pool)
            .await?,
    )
}

#[cfg(test)]
mod tests {
    use super::contains_pattern;

    #[test]
    fn search_text_is_matched_literally() {
        assert_eq!(contains_pattern("Edge_1"), "%edge\\_1%");
        assert_eq!(contains_pattern("50%"), "%50\\%%");
        assert_eq!(contains_pattern("a\\b"), "%a\\\\b%");
    }
}
