//! Configurations, their versions and lint rule settings: the same statements on both
//! backends, generic over the sqlx database. Writes take the dialect's transaction (SQLite's
//! holds the write lock from its first statement) and commit it.

use std::collections::BTreeMap;

use sqlx::{Database, Decode, Encode, Executor, FromRow, IntoArguments, Pool, Transaction, Type};
use time::OffsetDateTime;

use super::audit::append;
use super::encoding::{from_micros, micros};
use super::shared::Placeholders;
use super::{
    Configuration, ConfigurationVersion, Guarded, LintRuleSetting, NewConfiguration, Published,
    Result, StoreError,
};
use crate::audit::{AuditContext, Change};
use crate::remote_config::sha256_hex;

const CONFIGURATION_COLUMNS: &str =
    "id, workspace, name, description, labels, draft, row_version, created_at, updated_at";

#[derive(FromRow)]
pub struct ConfigurationRow {
    id: i64,
    workspace: String,
    name: String,
    description: String,
    labels: String,
    draft: String,
    row_version: i64,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<ConfigurationRow> for Configuration {
    type Error = StoreError;

    fn try_from(row: ConfigurationRow) -> Result<Configuration> {
        let labels: BTreeMap<String, String> = serde_json::from_str(&row.labels)
            .map_err(|e| StoreError::Corrupt(format!("configuration labels: {e}")))?;
        Ok(Configuration {
            id: row.id,
            workspace: row.workspace,
            name: row.name,
            description: row.description,
            labels,
            draft: row.draft,
            row_version: row.row_version,
            created_at: from_micros(row.created_at)?,
            updated_at: from_micros(row.updated_at)?,
        })
    }
}

#[derive(FromRow)]
pub struct VersionRow {
    configuration_id: i64,
    version: i64,
    yaml: String,
    hash: String,
    created_at: i64,
}

impl TryFrom<VersionRow> for ConfigurationVersion {
    type Error = StoreError;

    fn try_from(row: VersionRow) -> Result<ConfigurationVersion> {
        Ok(ConfigurationVersion {
            configuration_id: row.configuration_id,
            version: row.version,
            yaml: row.yaml,
            hash: row.hash,
            created_at: from_micros(row.created_at)?,
        })
    }
}

#[derive(FromRow)]
pub struct LintRuleRow {
    rule: String,
    enabled: bool,
    severity: String,
    message: String,
    hint: String,
}

impl From<LintRuleRow> for LintRuleSetting {
    fn from(row: LintRuleRow) -> LintRuleSetting {
        LintRuleSetting {
            rule: row.rule,
            enabled: row.enabled,
            severity: row.severity,
            message: row.message,
            hint: row.hint,
        }
    }
}

pub async fn create<DB>(
    mut transaction: Transaction<'static, DB>,
    new: &NewConfiguration,
    now: OffsetDateTime,
    audit: &AuditContext,
) -> Result<Configuration>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'r> (i64, String): FromRow<'r, DB::Row>,
    for<'r> ConfigurationRow: FromRow<'r, DB::Row>,
{
    let labels = serde_json::to_string(&new.labels).expect("labels serialize");
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO configurations \
         (workspace, name, description, labels, draft, row_version, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 1, $6, $6) RETURNING id",
    )
    .bind(new.workspace.clone())
    .bind(new.name.clone())
    .bind(new.description.clone())
    .bind(labels)
    .bind(new.draft.clone())
    .bind(micros(now))
    .fetch_one(&mut *transaction)
    .await?;
    let row: ConfigurationRow = sqlx::query_as(&format!(
        "SELECT {CONFIGURATION_COLUMNS} FROM configurations WHERE id = $1"
    ))
    .bind(id)
    .fetch_one(&mut *transaction)
    .await?;
    let change = Change::configuration_created(
        id,
        &new.workspace,
        &new.name,
        &new.description,
        &new.labels,
        &sha256_hex(new.draft.as_bytes()),
    );
    append(&mut transaction, audit, change, now).await?;
    transaction.commit().await?;
    row.try_into()
}

pub async fn get<DB>(pool: &Pool<DB>, id: i64) -> Result<Option<Configuration>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> ConfigurationRow: FromRow<'r, DB::Row>,
{
    let row: Option<ConfigurationRow> = sqlx::query_as(&format!(
        "SELECT {CONFIGURATION_COLUMNS} FROM configurations WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.map(Configuration::try_from).transpose()
}

pub async fn list<DB>(
    pool: &Pool<DB>,
    workspace: &str,
    after: i64,
    limit: u32,
) -> Result<Vec<Configuration>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> ConfigurationRow: FromRow<'r, DB::Row>,
{
    let rows: Vec<ConfigurationRow> = sqlx::query_as(&format!(
        "SELECT {CONFIGURATION_COLUMNS} FROM configurations \
         WHERE workspace = $1 AND id > $2 ORDER BY id LIMIT $3"
    ))
    .bind(workspace.to_owned())
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(Configuration::try_from).collect()
}

/// The row version of configuration `id`, when the guard of a write did not hold.
async fn why_not<DB, T>(connection: &mut DB::Connection, id: i64) -> Result<Guarded<T>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
{
    let current: Option<i64> =
        sqlx::query_scalar("SELECT row_version FROM configurations WHERE id = $1")
            .bind(id)
            .fetch_optional(connection)
            .await?;
    Ok(match current {
        Some(current) => Guarded::Stale { current },
        None => Guarded::NotFound,
    })
}

pub async fn update_draft<DB>(
    mut transaction: Transaction<'static, DB>,
    id: i64,
    draft: &str,
    row_version: i64,
    now: OffsetDateTime,
    audit: &AuditContext,
) -> Result<Guarded<i64>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'r> (String,): FromRow<'r, DB::Row>,
    for<'r> (i64, String): FromRow<'r, DB::Row>,
{
    // The draft it replaces, for the audit log (by hash: drafts may hold credentials).
    let old: Option<String> =
        sqlx::query_scalar("SELECT draft FROM configurations WHERE id = $1 AND row_version = $2")
            .bind(id)
            .bind(row_version)
            .fetch_optional(&mut *transaction)
            .await?;
    let updated: Option<i64> = sqlx::query_scalar(
        "UPDATE configurations SET draft = $1, row_version = row_version + 1, updated_at = $2 \
         WHERE id = $3 AND row_version = $4 RETURNING row_version",
    )
    .bind(draft.to_owned())
    .bind(micros(now))
    .bind(id)
    .bind(row_version)
    .fetch_optional(&mut *transaction)
    .await?;
    let outcome = match (updated, old) {
        (Some(new_version), Some(old)) => {
            let change = Change::draft_updated(
                id,
                (row_version, &sha256_hex(old.as_bytes())),
                (new_version, &sha256_hex(draft.as_bytes())),
            );
            append(&mut transaction, audit, change, now).await?;
            Guarded::Done(new_version)
        }
        _ => why_not(&mut transaction, id).await?,
    };
    transaction.commit().await?;
    Ok(outcome)
}

pub async fn publish<DB>(
    mut transaction: Transaction<'static, DB>,
    id: i64,
    row_version: i64,
    draft: &str,
    hash: &str,
    now: OffsetDateTime,
    audit: &AuditContext,
) -> Result<Guarded<Published>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'r> (i64, String): FromRow<'r, DB::Row>,
{
    // Touching the row takes its lock: two publishes of one configuration go one after the
    // other, so version numbers never collide, and a draft edited meanwhile is not published.
    let held: Option<i64> = sqlx::query_scalar(
        "UPDATE configurations SET updated_at = updated_at \
         WHERE id = $1 AND row_version = $2 RETURNING id",
    )
    .bind(id)
    .bind(row_version)
    .fetch_optional(&mut *transaction)
    .await?;
    if held.is_none() {
        let outcome = why_not(&mut transaction, id).await?;
        transaction.commit().await?;
        return Ok(outcome);
    }
    let newest: Option<(i64, String)> = sqlx::query_as(
        "SELECT version, hash FROM configuration_versions \
         WHERE configuration_id = $1 ORDER BY version DESC LIMIT 1",
    )
    .bind(id)
    .fetch_optional(&mut *transaction)
    .await?;
    let published = match newest {
        Some((version, newest_hash)) if newest_hash == hash => Published {
            version,
            created: false,
        },
        newest => {
            let version = newest.map_or(1, |(version, _)| version + 1);
            sqlx::query(
                "INSERT INTO configuration_versions \
                 (configuration_id, version, yaml, hash, created_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id)
            .bind(version)
            .bind(draft.to_owned())
            .bind(hash.to_owned())
            .bind(micros(now))
            .execute(&mut *transaction)
            .await?;
            append(
                &mut transaction,
                audit,
                Change::published(id, version, hash),
                now,
            )
            .await?;
            Published {
                version,
                created: true,
            }
        }
    };
    transaction.commit().await?;
    Ok(Guarded::Done(published))
}

pub async fn list_versions<DB>(pool: &Pool<DB>, ids: &[i64]) -> Result<Vec<ConfigurationVersion>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> VersionRow: FromRow<'r, DB::Row>,
{
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut numbering = Placeholders::default();
    let placeholders: Vec<String> = ids.iter().map(|_| numbering.next()).collect();
    // The YAML stays in the database: a listing shows numbers, hashes and times.
    let sql = format!(
        "SELECT configuration_id, version, '' AS yaml, hash, created_at \
         FROM configuration_versions WHERE configuration_id IN ({}) \
         ORDER BY configuration_id, version",
        placeholders.join(", ")
    );
    let mut select = sqlx::query_as(&sql);
    for id in ids {
        select = select.bind(*id);
    }
    let rows: Vec<VersionRow> = select.fetch_all(pool).await?;
    rows.into_iter()
        .map(ConfigurationVersion::try_from)
        .collect()
}

pub async fn get_version<DB>(
    pool: &Pool<DB>,
    id: i64,
    version: i64,
) -> Result<Option<ConfigurationVersion>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> VersionRow: FromRow<'r, DB::Row>,
{
    let row: Option<VersionRow> = sqlx::query_as(
        "SELECT configuration_id, version, yaml, hash, created_at \
         FROM configuration_versions WHERE configuration_id = $1 AND version = $2",
    )
    .bind(id)
    .bind(version)
    .fetch_optional(pool)
    .await?;
    row.map(ConfigurationVersion::try_from).transpose()
}

pub async fn lint_rule_settings<DB>(
    pool: &Pool<DB>,
    workspace: &str,
) -> Result<Vec<LintRuleSetting>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'r> LintRuleRow: FromRow<'r, DB::Row>,
{
    let rows: Vec<LintRuleRow> = sqlx::query_as(
        "SELECT rule, enabled, severity, message, hint FROM lint_rules \
         WHERE workspace = $1 ORDER BY rule",
    )
    .bind(workspace.to_owned())
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(LintRuleSetting::from).collect())
}

/// A lint rule setting as the audit log shows it.
fn setting_value(setting: &LintRuleSetting) -> serde_json::Value {
    serde_json::json!({
        "enabled": setting.enabled,
        "severity": setting.severity,
        "message": setting.message,
        "hint": setting.hint,
    })
}

pub async fn put_lint_rule_setting<DB>(
    mut transaction: Transaction<'static, DB>,
    workspace: &str,
    setting: &LintRuleSetting,
    now: OffsetDateTime,
    audit: &AuditContext,
) -> Result<()>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'r> (i64, String): FromRow<'r, DB::Row>,
    for<'r> LintRuleRow: FromRow<'r, DB::Row>,
{
    let old: Option<LintRuleRow> = sqlx::query_as(
        "SELECT rule, enabled, severity, message, hint FROM lint_rules \
         WHERE workspace = $1 AND rule = $2",
    )
    .bind(workspace.to_owned())
    .bind(setting.rule.clone())
    .fetch_optional(&mut *transaction)
    .await?;
    sqlx::query(
        "INSERT INTO lint_rules (workspace, rule, enabled, severity, message, hint, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (workspace, rule) DO UPDATE SET enabled = excluded.enabled, \
         severity = excluded.severity, message = excluded.message, hint = excluded.hint, \
         updated_at = excluded.updated_at",
    )
    .bind(workspace.to_owned())
    .bind(setting.rule.clone())
    .bind(setting.enabled)
    .bind(setting.severity.clone())
    .bind(setting.message.clone())
    .bind(setting.hint.clone())
    .bind(micros(now))
    .execute(&mut *transaction)
    .await?;
    let old = old.map(|row| setting_value(&LintRuleSetting::from(row)));
    let change = Change::lint_rule_set(workspace, &setting.rule, old, setting_value(setting));
    append(&mut transaction, audit, change, now).await?;
    Ok(transaction.commit().await?)
}
