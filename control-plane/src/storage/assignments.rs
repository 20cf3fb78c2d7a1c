//! Assignments and the `agent_configs` rows they and the agents' reports fill in, read back as
//! drift: the same statements on both backends, generic over the sqlx database and over how it
//! binds instance uids.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::{Database, Decode, Encode, Executor, FromRow, IntoArguments, Pool, Transaction, Type};
use time::OffsetDateTime;
use uuid::Uuid;

use super::audit::append;
use super::encoding::{from_micros, micros};
use super::shared::{attributes_match, Placeholders};
use super::{Result, StoreError};
use crate::assignments::{Assignment, NewAssignment, Selector, Target};
use crate::audit::{AuditContext, Change};
use crate::remote_config::drift::{AgentConfig, Assigned, DriftCounts, DriftState};
use crate::remote_config::{Applied, ConfigTrack, Rejection};

/// The columns an `agent_configs` read takes, `c` being the table.
pub const AGENT_CONFIG_COLUMNS: &str = "c.instance_uid, c.assignment_id, c.configuration_id, \
     c.config_version, c.assigned_hash, c.assigned_at, c.remote_hash, c.remote_state, \
     c.drift_state, ";

/// The columns of what the server keeps of an agent's answers, `c` being `agent_configs`
/// (all `NULL` when an agent has no row).
pub const TRACK_COLUMNS: &str = "c.applied_hash, c.applied_at, c.failed_hash, \
     c.failed_assignment_id, c.failed_error, c.failed_at, c.out_of_band_at, c.expects_effective, \
     c.effective_since_status";

/// What the server keeps of an agent's answers, as stored.
#[derive(FromRow)]
pub struct TrackRow {
    applied_hash: Option<String>,
    applied_at: Option<i64>,
    failed_hash: Option<String>,
    failed_assignment_id: Option<i64>,
    failed_error: Option<String>,
    failed_at: Option<i64>,
    out_of_band_at: Option<i64>,
    expects_effective: Option<bool>,
    effective_since_status: Option<bool>,
}

impl TryFrom<TrackRow> for ConfigTrack {
    type Error = StoreError;

    fn try_from(row: TrackRow) -> Result<ConfigTrack> {
        let applied = match (row.applied_hash, row.applied_at) {
            (Some(hash), Some(at)) => Some(Applied {
                hash,
                at: from_micros(at)?,
            }),
            _ => None,
        };
        let rejected = match (row.failed_hash, row.failed_at) {
            (Some(hash), Some(at)) => Some(Rejection {
                hash,
                assignment_id: row.failed_assignment_id.unwrap_or(0),
                error: row.failed_error.unwrap_or_default(),
                at: from_micros(at)?,
            }),
            _ => None,
        };
        Ok(ConfigTrack {
            applied,
            rejected,
            out_of_band_at: row.out_of_band_at.map(from_micros).transpose()?,
            expects_effective: row.expects_effective.unwrap_or(false),
            effective_since_status: row.effective_since_status.unwrap_or(false),
        })
    }
}

#[derive(FromRow)]
pub struct AgentConfigRow<Uid> {
    instance_uid: Uid,
    assignment_id: Option<i64>,
    configuration_id: Option<i64>,
    config_version: Option<i64>,
    assigned_hash: Option<String>,
    assigned_at: Option<i64>,
    remote_hash: Option<String>,
    remote_state: Option<String>,
    drift_state: Option<String>,
    #[sqlx(flatten)]
    track: TrackRow,
}

impl<Uid: Into<Uuid>> AgentConfigRow<Uid> {
    fn into_config(self) -> Result<(AgentConfig, Option<DriftState>)> {
        let assigned = match (
            self.assignment_id,
            self.configuration_id,
            self.config_version,
            self.assigned_hash,
            self.assigned_at,
        ) {
            (Some(assignment_id), Some(configuration_id), Some(version), Some(hash), Some(at)) => {
                Some(Assigned {
                    assignment_id,
                    configuration_id,
                    version,
                    hash,
                    at: from_micros(at)?,
                })
            }
            _ => None,
        };
        let state = self
            .drift_state
            .map(|state| {
                DriftState::parse(&state)
                    .ok_or_else(|| StoreError::Corrupt(format!("drift state {state:?}")))
            })
            .transpose()?;
        let config = AgentConfig {
            instance_uid: self.instance_uid.into(),
            assigned,
            remote_hash: self.remote_hash,
            remote_state: self.remote_state,
            track: self.track.try_into()?,
        };
        Ok((config, state))
    }
}

#[derive(FromRow)]
pub struct AssignmentRow<Uid> {
    id: i64,
    configuration_id: i64,
    version: i64,
    instance_uid: Option<Uid>,
    selector: Option<String>,
    created_at: i64,
    hash: String,
    yaml: String,
}

/// Assignments from rows; versions assigned many times share one copy of their YAML.
fn assignments<Uid: Into<Uuid>>(rows: Vec<AssignmentRow<Uid>>) -> Result<Vec<Assignment>> {
    let mut texts: HashMap<(i64, i64), Arc<str>> = HashMap::new();
    rows.into_iter()
        .map(|row| {
            let target = match (row.instance_uid, row.selector) {
                (Some(uid), None) => Target::Agent(uid.into()),
                (None, Some(selector)) => Target::Selector(
                    Selector::parse(&selector)
                        .map_err(|e| StoreError::Corrupt(format!("assignment {}: {e}", row.id)))?,
                ),
                _ => {
                    return Err(StoreError::Corrupt(format!(
                        "assignment {} has no single target",
                        row.id
                    )))
                }
            };
            let yaml = texts
                .entry((row.configuration_id, row.version))
                .or_insert_with(|| Arc::from(row.yaml))
                .clone();
            Ok(Assignment {
                id: row.id,
                configuration_id: row.configuration_id,
                version: row.version,
                hash: row.hash,
                yaml,
                target,
                created_at: from_micros(row.created_at)?,
            })
        })
        .collect()
}

/// Records `new` (`uid`: its agent as the dialect binds uids, if it names one) and makes it the
/// assigned side of the agents it names or selects; commits `transaction`.
pub async fn create<DB, Uid>(
    mut transaction: Transaction<'static, DB>,
    new: &NewAssignment,
    uid: Option<Uid>,
    now: OffsetDateTime,
    audit: &AuditContext,
) -> Result<Option<Assignment>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<Uid>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    Uid: Clone + Send + 'static,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'r> (String, String): FromRow<'r, DB::Row>,
    for<'r> (i64, String): FromRow<'r, DB::Row>,
{
    let version: Option<(String, String)> = sqlx::query_as(
        "SELECT hash, yaml FROM configuration_versions \
         WHERE configuration_id = $1 AND version = $2",
    )
    .bind(new.configuration_id)
    .bind(new.version)
    .fetch_optional(&mut *transaction)
    .await?;
    let Some((hash, yaml)) = version else {
        return Ok(None);
    };
    let selector = match &new.target {
        Target::Selector(selector) => Some(selector.to_string()),
        Target::Agent(_) => None,
    };
    let at = micros(now);
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO assignments (configuration_id, version, instance_uid, selector, created_at) \
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(new.configuration_id)
    .bind(new.version)
    .bind(uid.clone())
    .bind(selector)
    .bind(at)
    .fetch_one(&mut *transaction)
    .await?;

    // The assigned side of each agent concerned, unless a newer assignment got there first.
    const ASSIGNED: &str = " ON CONFLICT (instance_uid) DO UPDATE SET \
         assignment_id = excluded.assignment_id, configuration_id = excluded.configuration_id, \
         config_version = excluded.config_version, assigned_hash = excluded.assigned_hash, \
         assigned_at = excluded.assigned_at \
         WHERE agent_configs.assignment_id IS NULL \
         OR agent_configs.assignment_id < excluded.assignment_id";
    const INSERT: &str = "INSERT INTO agent_configs (instance_uid, assignment_id, \
         configuration_id, config_version, assigned_hash, assigned_at) ";
    let statement = match &new.target {
        Target::Agent(_) => format!("{INSERT} VALUES ($6, $1, $2, $3, $4, $5){ASSIGNED}"),
        Target::Selector(selector) => {
            let matching = attributes_match(&mut Placeholders::after(5), selector.pairs().len());
            format!(
                "{INSERT} SELECT instance_uid, $1, $2, $3, $4, $5 FROM agents \
                 WHERE 1 = 1{matching}{ASSIGNED}"
            )
        }
    };
    let mut upsert = sqlx::query(&statement)
        .bind(id)
        .bind(new.configuration_id)
        .bind(new.version)
        .bind(hash.clone())
        .bind(at);
    match &new.target {
        Target::Agent(_) => upsert = upsert.bind(uid),
        Target::Selector(selector) => {
            for (key, value) in selector.pairs() {
                upsert = upsert.bind(key.clone()).bind(value.clone());
            }
        }
    }
    upsert.execute(&mut *transaction).await?;
    let target = match &new.target {
        Target::Agent(uid) => serde_json::json!({"instance_uid": uid}),
        Target::Selector(selector) => serde_json::json!({"selector": selector.to_string()}),
    };
    let change = Change::assignment_created(id, new.configuration_id, new.version, &hash, target);
    append(&mut transaction, audit, change, now).await?;
    transaction.commit().await?;
    Ok(Some(Assignment {
        id,
        configuration_id: new.configuration_id,
        version: new.version,
        hash,
        yaml: Arc::from(yaml),
        target: new.target.clone(),
        created_at: from_micros(at)?,
    }))
}

pub async fn current<DB, Uid>(pool: &Pool<DB>) -> Result<Vec<Assignment>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    Uid: Into<Uuid> + Send + Unpin + 'static,
    for<'r> AssignmentRow<Uid>: FromRow<'r, DB::Row>,
{
    let rows: Vec<AssignmentRow<Uid>> = sqlx::query_as(
        "SELECT a.id, a.configuration_id, a.version, a.instance_uid, a.selector, a.created_at, \
                v.hash, v.yaml \
         FROM assignments a JOIN configuration_versions v \
             ON v.configuration_id = a.configuration_id AND v.version = a.version \
         WHERE a.id IN (SELECT max(id) FROM assignments GROUP BY instance_uid, selector) \
         ORDER BY a.id",
    )
    .fetch_all(pool)
    .await?;
    assignments(rows)
}

pub async fn newest_id<DB>(pool: &Pool<DB>) -> Result<i64>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Decode<'q, DB> + Type<DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
{
    Ok(
        sqlx::query_scalar("SELECT COALESCE(max(id), 0) FROM assignments")
            .fetch_one(pool)
            .await?,
    )
}

pub async fn agent_config<DB, Uid>(
    pool: &Pool<DB>,
    uid: Uid,
) -> Result<Option<(AgentConfig, Option<DriftState>)>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> Uid: Encode<'q, DB> + Type<DB>,
    Uid: Into<Uuid> + Send + Unpin + 'static,
    for<'r> AgentConfigRow<Uid>: FromRow<'r, DB::Row>,
{
    let row: Option<AgentConfigRow<Uid>> = sqlx::query_as(&format!(
        "SELECT {AGENT_CONFIG_COLUMNS}{TRACK_COLUMNS} FROM agent_configs c \
         WHERE c.instance_uid = $1"
    ))
    .bind(uid)
    .fetch_optional(pool)
    .await?;
    row.map(AgentConfigRow::into_config).transpose()
}

pub async fn drift_counts<DB>(pool: &Pool<DB>) -> Result<DriftCounts>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'r> (String, i64): FromRow<'r, DB::Row>,
{
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT drift_state, count(*) FROM agent_configs \
         WHERE drift_state IS NOT NULL GROUP BY drift_state",
    )
    .fetch_all(pool)
    .await?;
    let mut counts = DriftCounts::default();
    for (state, count) in rows {
        let state = DriftState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("drift state {state:?}")))?;
        counts.add(state, count as u64);
    }
    Ok(counts)
}

pub async fn list_drifting<DB, Uid>(
    pool: &Pool<DB>,
    after: Option<Uid>,
    limit: u32,
) -> Result<Vec<(AgentConfig, DriftState)>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Uid: Encode<'q, DB> + Type<DB>,
    Uid: Into<Uuid> + Send + Unpin + 'static,
    for<'r> AgentConfigRow<Uid>: FromRow<'r, DB::Row>,
{
    let mut sql = format!(
        "SELECT {AGENT_CONFIG_COLUMNS}{TRACK_COLUMNS} FROM agent_configs c \
         WHERE c.drift_state IN ('pending', 'failed', 'out_of_band')"
    );
    if after.is_some() {
        sql += " AND c.instance_uid > $2";
    }
    sql += " ORDER BY c.instance_uid LIMIT $1";
    let mut select = sqlx::query_as(&sql).bind(i64::from(limit));
    if let Some(after) = after {
        select = select.bind(after);
    }
    let rows: Vec<AgentConfigRow<Uid>> = select.fetch_all(pool).await?;
    rows.into_iter()
        .filter_map(|row| match row.into_config() {
            Ok((config, Some(state))) => Some(Ok((config, state))),
            Ok((_, None)) => None,
            Err(error) => Some(Err(error)),
        })
        .collect()
}
