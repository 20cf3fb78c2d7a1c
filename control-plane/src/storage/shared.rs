//! The statements both backends run alike (reads of the API, replicas and partition leases),
//! generic over the sqlx database: each store calls these with its own pool or transaction.

use sqlx::{Database, Decode, Encode, Executor, FromRow, IntoArguments, Pool, Transaction, Type};
use time::OffsetDateTime;

use super::encoding;
use super::model::{EventRow, HeadRow, LeaseRow, AGENT_COLUMNS};
use super::{AgentQuery, EventQuery, Lease, Result};

/// Agents matching `query`, ordered by uid; `after` is the page token as the dialect binds uids.
pub async fn list_agents<DB, Uid>(
    pool: &Pool<DB>,
    query: &AgentQuery,
    after: Option<Uid>,
) -> Result<Vec<HeadRow<Uid>>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Uid: Encode<'q, DB> + Type<DB>,
    Uid: Send + Unpin + 'static,
    for<'r> HeadRow<Uid>: FromRow<'r, DB::Row>,
{
    let mut placeholders = Placeholders::default();
    let mut sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE 1 = 1");
    if query.status.is_some() {
        sql += &format!(" AND status = {}", placeholders.next());
    }
    sql += &attributes_match(&mut placeholders, query.attributes.len());
    if after.is_some() {
        sql += &format!(" AND instance_uid > {}", placeholders.next());
    }
    sql += &format!(" ORDER BY instance_uid LIMIT {}", placeholders.next());

    // Bound in the order of their placeholders.
    let mut select = sqlx::query_as(&sql);
    if let Some(status) = query.status {
        select = select.bind(status.as_str().to_owned());
    }
    for (key, value) in &query.attributes {
        select = select.bind(key.clone()).bind(value.clone());
    }
    if let Some(after) = after {
        select = select.bind(after);
    }
    Ok(select.bind(i64::from(query.limit)).fetch_all(pool).await?)
}

/// One agent's history (`uid` as the dialect binds uids), newest first.
pub async fn list_events<DB, Uid>(
    pool: &Pool<DB>,
    uid: Uid,
    query: &EventQuery,
) -> Result<Vec<EventRow<Uid>>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Uid: Encode<'q, DB> + Type<DB>,
    Uid: Send + Unpin + 'static,
    for<'r> EventRow<Uid>: FromRow<'r, DB::Row>,
{
    // An id below i64::MAX is every id: one statement with or without a page token.
    let before = query.before.unwrap_or(i64::MAX);
    Ok(sqlx::query_as(include_str!("queries/events_list.sql"))
        .bind(uid)
        .bind(before)
        .bind(i64::from(query.limit))
        .fetch_all(pool)
        .await?)
}

/// Conditions that `agents` has each of `pairs` attribute (key, value) pairs, identifying or
/// not; the key and value of each pair are bound in that order, at the next placeholders.
pub fn attributes_match(placeholders: &mut Placeholders, pairs: usize) -> String {
    (0..pairs)
        .map(|_| {
            format!(
                " AND EXISTS (SELECT 1 FROM agent_attributes a \
                 WHERE a.instance_uid = agents.instance_uid AND a.key = {} AND a.value = {})",
                placeholders.next(),
                placeholders.next()
            )
        })
        .collect()
}

/// Numbers statement parameters `$1`, `$2`, … in the order they are asked for.
#[derive(Default)]
pub struct Placeholders(usize);

impl Placeholders {
    /// Numbering that goes on after `$taken`.
    pub fn after(taken: usize) -> Placeholders {
        Placeholders(taken)
    }

    pub fn next(&mut self) -> String {
        self.0 += 1;
        format!("${}", self.0)
    }
}

/// Gateways that hold online WebSocket agents, by the agents' records.
pub async fn gateways_with_online_agents<DB>(pool: &Pool<DB>) -> Result<Vec<String>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'r> (String,): FromRow<'r, DB::Row>,
{
    let query = include_str!("queries/gateways_with_online_agents.sql");
    Ok(sqlx::query_scalar(query).fetch_all(pool).await?)
}

/// A cheap round trip.
pub async fn ping<DB>(pool: &Pool<DB>) -> Result<()>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
{
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}

/// Records that `replica` is alive until `expires_at`, forgets expired replicas, and returns
/// how many are alive; commits `transaction`.
pub async fn heartbeat_replica<DB>(
    mut transaction: Transaction<'static, DB>,
    replica: &str,
    now: OffsetDateTime,
    expires_at: OffsetDateTime,
) -> Result<u32>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
{
    sqlx::query(include_str!("queries/replica_heartbeat.sql"))
        .bind(replica.to_owned())
        .bind(encoding::micros(expires_at))
        .execute(&mut *transaction)
        .await?;
    sqlx::query(include_str!("queries/replicas_expire.sql"))
        .bind(encoding::micros(now))
        .execute(&mut *transaction)
        .await?;
    let live: i64 = sqlx::query_scalar(include_str!("queries/replicas_count.sql"))
        .fetch_one(&mut *transaction)
        .await?;
    transaction.commit().await?;
    Ok(live.max(1) as u32)
}

/// Keeps `replica`'s unexpired leases until `expires_at`, gives up those beyond `want`, and
/// takes free or expired partitions (of `0..total`) up to `want` with `take` (the dialect's
/// statement: it locks what it takes), each with a new epoch. Returns every lease it holds
/// afterwards, by partition; commits `transaction`.
pub async fn claim_partitions<DB>(
    mut transaction: Transaction<'static, DB>,
    take: &str,
    replica: &str,
    total: u16,
    want: u16,
    now: OffsetDateTime,
    expires_at: OffsetDateTime,
) -> Result<Vec<Lease>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i32: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'r> LeaseRow: FromRow<'r, DB::Row>,
{
    let (now, expires_at, total) = (
        encoding::micros(now),
        encoding::micros(expires_at),
        i32::from(total),
    );
    let known: i64 = sqlx::query_scalar(include_str!("queries/leases_count.sql"))
        .bind(total)
        .fetch_one(&mut *transaction)
        .await?;
    if known < i64::from(total) {
        sqlx::query(include_str!("queries/leases_create.sql"))
            .bind(total)
            .execute(&mut *transaction)
            .await?;
    }
    sqlx::query(include_str!("queries/leases_release_surplus.sql"))
        .bind(replica.to_owned())
        .bind(now)
        .bind(total)
        .bind(i64::from(want))
        .execute(&mut *transaction)
        .await?;
    let mut leases: Vec<LeaseRow> = sqlx::query_as(include_str!("queries/leases_renew.sql"))
        .bind(expires_at)
        .bind(replica.to_owned())
        .bind(now)
        .bind(total)
        .fetch_all(&mut *transaction)
        .await?;
    let room = usize::from(want).saturating_sub(leases.len());
    if room > 0 {
        let taken: Vec<LeaseRow> = sqlx::query_as(take)
            .bind(replica.to_owned())
            .bind(expires_at)
            .bind(now)
            .bind(total)
            .bind(room as i64)
            .fetch_all(&mut *transaction)
            .await?;
        leases.extend(taken);
    }
    transaction.commit().await?;
    let mut leases: Vec<Lease> = leases.into_iter().map(Lease::from).collect();
    leases.sort_by_key(|lease| lease.partition);
    Ok(leases)
}

/// Gives up all of `replica`'s leases and membership; commits `transaction`.
pub async fn release_replica<DB>(
    mut transaction: Transaction<'static, DB>,
    replica: &str,
) -> Result<()>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
{
    sqlx::query(include_str!("queries/leases_release_all.sql"))
        .bind(replica.to_owned())
        .execute(&mut *transaction)
        .await?;
    sqlx::query(include_str!("queries/replica_release.sql"))
        .bind(replica.to_owned())
        .execute(&mut *transaction)
        .await?;
    Ok(transaction.commit().await?)
}
