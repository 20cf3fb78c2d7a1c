//! The audit log on both backends, generic over the sqlx database: appending inside the
//! caller's transaction, listing, walking the chain, and retention.

use serde_json::Value;
use sqlx::{Database, Decode, Encode, Executor, FromRow, IntoArguments, Pool, Transaction, Type};
use time::OffsetDateTime;

use super::encoding::{from_micros, micros};
use super::shared::Placeholders;
use super::{Result, StoreError};
use crate::audit::chain::{Fields, StoredEntry, Verifier};
use crate::audit::{AuditContext, AuditEntry, AuditQuery, Change, Retained, Verification};

const COLUMNS: &str = "id, at, actor, action, object_type, object_id, old_value, new_value, \
     address, request_id, prev_hash, hash";

/// Entries read at a time while verifying: memory stays bounded however long the chain.
const VERIFY_PAGE: i64 = 1000;

#[derive(FromRow)]
pub struct AuditRow {
    id: i64,
    at: i64,
    actor: String,
    action: String,
    object_type: String,
    object_id: String,
    old_value: Option<String>,
    new_value: Option<String>,
    address: String,
    request_id: String,
    prev_hash: String,
    hash: String,
}

impl From<AuditRow> for StoredEntry {
    fn from(row: AuditRow) -> StoredEntry {
        StoredEntry {
            id: row.id,
            at_micros: row.at,
            actor: row.actor,
            action: row.action,
            object_type: row.object_type,
            object_id: row.object_id,
            old_value: row.old_value,
            new_value: row.new_value,
            address: row.address,
            request_id: row.request_id,
            prev_hash: row.prev_hash,
            hash: row.hash,
        }
    }
}

impl TryFrom<AuditRow> for AuditEntry {
    type Error = StoreError;

    fn try_from(row: AuditRow) -> Result<AuditEntry> {
        let id = row.id;
        let value = |text: Option<String>| -> Result<Option<Value>> {
            text.map(|text| {
                serde_json::from_str(&text)
                    .map_err(|error| StoreError::Corrupt(format!("audit entry {id}: {error}")))
            })
            .transpose()
        };
        Ok(AuditEntry {
            id,
            at: from_micros(row.at)?,
            actor: row.actor,
            action: row.action,
            object_type: row.object_type,
            object_id: row.object_id,
            old_value: value(row.old_value)?,
            new_value: value(row.new_value)?,
            address: row.address,
            request_id: row.request_id,
            prev_hash: row.prev_hash,
            hash: row.hash,
        })
    }
}

/// Appends `change` by `context` to the chain, in the caller's transaction: commit it with
/// the change itself. Taking the next id updates the one-row chain head first, which holds
/// its lock (PostgreSQL) until the commit, so concurrent writers queue and the chain has one
/// order. Call it last in the transaction, to hold that lock briefly.
pub async fn append<DB>(
    connection: &mut DB::Connection,
    context: &AuditContext,
    change: Change,
    now: OffsetDateTime,
) -> Result<i64>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'r> (i64, String): FromRow<'r, DB::Row>,
{
    let (id, prev_hash): (i64, String) =
        sqlx::query_as("UPDATE audit_chain SET last_id = last_id + 1 RETURNING last_id, last_hash")
            .fetch_one(&mut *connection)
            .await?;
    let actor = context.actor.to_string();
    let old_value = change.old_value.map(|value| value.to_string());
    let new_value = change.new_value.map(|value| value.to_string());
    let at = micros(now);
    let hash = Fields {
        id,
        at_micros: at,
        actor: &actor,
        action: change.action,
        object_type: change.object_type,
        object_id: &change.object_id,
        old_value: old_value.as_deref(),
        new_value: new_value.as_deref(),
        address: &context.address,
        request_id: &context.request_id,
        prev_hash: &prev_hash,
    }
    .hash();
    sqlx::query(&format!(
        "INSERT INTO audit_log ({COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    ))
    .bind(id)
    .bind(at)
    .bind(actor)
    .bind(change.action.to_owned())
    .bind(change.object_type.to_owned())
    .bind(change.object_id)
    .bind(old_value)
    .bind(new_value)
    .bind(context.address.clone())
    .bind(context.request_id.clone())
    .bind(prev_hash)
    .bind(hash.clone())
    .execute(&mut *connection)
    .await?;
    sqlx::query("UPDATE audit_chain SET last_hash = $1")
        .bind(hash)
        .execute(&mut *connection)
        .await?;
    metrics::counter!("ampora_audit_entries_total").increment(1);
    Ok(id)
}

/// Entries of both tables matching `query`, newest first.
pub async fn list<DB>(pool: &Pool<DB>, query: &AuditQuery) -> Result<Vec<AuditEntry>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> AuditRow: FromRow<'r, DB::Row>,
{
    let mut placeholders = Placeholders::default();
    let mut conditions = format!("id < {}", placeholders.next());
    let mut binds: Vec<String> = Vec::new();
    for (column, value) in [
        ("actor", &query.actor),
        ("action", &query.action),
        ("object_type", &query.object_type),
        ("object_id", &query.object_id),
    ] {
        if let Some(value) = value {
            conditions += &format!(" AND {column} = {}", placeholders.next());
            binds.push(value.clone());
        }
    }
    let since = format!(" AND at >= {}", placeholders.next());
    let until = format!(" AND at < {}", placeholders.next());
    conditions += &since;
    conditions += &until;
    let limit = placeholders.next();
    // Each table's page, then the newest of both: the archive holds only older ids.
    let sql = format!(
        "SELECT {COLUMNS} FROM (\
         SELECT {COLUMNS} FROM audit_log WHERE {conditions} \
         UNION ALL SELECT {COLUMNS} FROM audit_archive WHERE {conditions}) AS entries \
         ORDER BY id DESC LIMIT {limit}"
    );
    let mut select = sqlx::query_as(&sql).bind(query.before.unwrap_or(i64::MAX));
    for value in binds {
        select = select.bind(value);
    }
    let rows: Vec<AuditRow> = select
        .bind(query.since.map_or(i64::MIN, micros))
        .bind(query.until.map_or(i64::MAX, micros))
        .bind(i64::from(query.limit))
        .fetch_all(pool)
        .await?;
    rows.into_iter().map(AuditEntry::try_from).collect()
}

/// Walks the chain from its anchor through the archive, then the hot table, to its head.
/// `connection` must see one snapshot throughout (a repeatable-read transaction).
pub async fn verify<DB>(connection: &mut DB::Connection) -> Result<Verification>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> (i64, String, i64, String): FromRow<'r, DB::Row>,
    for<'r> AuditRow: FromRow<'r, DB::Row>,
{
    let (last_id, last_hash, anchor_id, anchor_hash): (i64, String, i64, String) =
        sqlx::query_as("SELECT last_id, last_hash, anchor_id, anchor_hash FROM audit_chain")
            .fetch_one(&mut *connection)
            .await?;
    let mut verifier = Verifier::new(anchor_id, &anchor_hash, last_id, &last_hash);
    'tables: for table in ["audit_archive", "audit_log"] {
        let mut after = i64::MIN;
        loop {
            let rows: Vec<AuditRow> = sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM {table} WHERE id > $1 ORDER BY id LIMIT $2"
            ))
            .bind(after)
            .bind(VERIFY_PAGE)
            .fetch_all(&mut *connection)
            .await?;
            let full = rows.len() as i64 == VERIFY_PAGE;
            for row in rows {
                after = row.id;
                if !verifier.check(&StoredEntry::from(row)) {
                    break 'tables;
                }
            }
            if !full {
                break;
            }
        }
    }
    Ok(verifier.finish())
}

/// Moves entries written before `hot_before` to the archive and purges archived entries
/// written before `purge_before`, in the caller's transaction (which it commits). Only a
/// prefix of the chain moves or goes (an entry waits for any older one whose clock said
/// later), so the archive always precedes the hot table; the newest purged entry becomes the
/// anchor verification starts from.
pub async fn retain<DB>(
    mut transaction: Transaction<'static, DB>,
    hot_before: OffsetDateTime,
    purge_before: OffsetDateTime,
) -> Result<Retained>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'r> (i64, String): FromRow<'r, DB::Row>,
{
    // The first entry that stays: everything before it moves.
    let keep_from: i64 = sqlx::query_scalar(
        "SELECT COALESCE(MIN(id), (SELECT last_id + 1 FROM audit_chain)) \
         FROM audit_log WHERE at >= $1",
    )
    .bind(micros(hot_before))
    .fetch_one(&mut *transaction)
    .await?;
    sqlx::query(&format!(
        "INSERT INTO audit_archive ({COLUMNS}) SELECT {COLUMNS} FROM audit_log WHERE id < $1"
    ))
    .bind(keep_from)
    .execute(&mut *transaction)
    .await?;
    let archived: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE id < $1")
        .bind(keep_from)
        .fetch_one(&mut *transaction)
        .await?;
    sqlx::query("DELETE FROM audit_log WHERE id < $1")
        .bind(keep_from)
        .execute(&mut *transaction)
        .await?;

    let purge_to: i64 = sqlx::query_scalar(
        "SELECT COALESCE(MIN(id), (SELECT last_id + 1 FROM audit_chain)) \
         FROM audit_archive WHERE at >= $1",
    )
    .bind(micros(purge_before))
    .fetch_one(&mut *transaction)
    .await?;
    let anchor: Option<(i64, String)> =
        sqlx::query_as("SELECT id, hash FROM audit_archive WHERE id < $1 ORDER BY id DESC LIMIT 1")
            .bind(purge_to)
            .fetch_optional(&mut *transaction)
            .await?;
    let mut purged = 0;
    if let Some((anchor_id, anchor_hash)) = anchor {
        purged = sqlx::query_scalar("SELECT COUNT(*) FROM audit_archive WHERE id < $1")
            .bind(purge_to)
            .fetch_one(&mut *transaction)
            .await?;
        sqlx::query("DELETE FROM audit_archive WHERE id < $1")
            .bind(purge_to)
            .execute(&mut *transaction)
            .await?;
        sqlx::query("UPDATE audit_chain SET anchor_id = $1, anchor_hash = $2")
            .bind(anchor_id)
            .bind(anchor_hash)
            .execute(&mut *transaction)
            .await?;
    }
    transaction.commit().await?;
    Ok(Retained {
        archived: archived.unsigned_abs(),
        purged: purged.unsigned_abs(),
    })
}
