//! SQLite: the embedded store of `ampora serve`. Instance uids are stored as hyphenated text.
//!
//! SQLite lets one connection write at a time. Every write goes through a single writer
//! connection, so writers queue in its pool (fairly, up to the acquire timeout) instead of
//! retrying in SQLite's busy loop, where a transaction that read before it wrote fails with
//! "database is locked" when another commits first. Its transactions begin `IMMEDIATE`, taking
//! the write lock up front, which keeps that true should another process write too. Reads go
//! through a separate pool of read-only connections: in WAL mode they never wait for a writer,
//! so the API answers while ingest writes.

use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::query_builder::Separated;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool, Transaction};
use time::OffsetDateTime;
use uuid::fmt::Hyphenated;
use uuid::Uuid;

use super::columns::{
    AgentColumns, AttributeColumns, BatchColumns, ConfigColumns, EventColumns, SeenColumns,
};
use super::model::{self, AgentRow, EventRow, HeadRow, UidRow};
use super::trust::{
    self, AgentCertificate, BootstrapToken, EnrolRefusal, NewBootstrapToken, NewCa, NewCertificate,
    StoredCa, TokenRefusal, TrustSnapshot, TrustStore,
};
use super::{
    assignments, audit, configurations, encoding, fleet, operators, shared, Account, AccountUpdate,
    AgentEvent, AgentQuery, AgentStore, ApiToken, AssignmentStore, AuditStore, Changed,
    ChangedAgent, Configuration, ConfigurationStore, ConfigurationVersion, DriftStore, EventQuery,
    Fence, FleetCounts, FleetQuery, FleetRow, FleetStore, Guarded, Lease, LeaseStore,
    LintRuleSetting, NewAccount, NewApiToken, NewConfiguration, NewSession, OperatorStore,
    PresenceStore, Published, Result, SessionAccount, Store, StoreError, StoreOptions, WriteBatch,
};
use crate::agents::snapshot::{AgentDetails, AgentHead, AgentRecord, Transport};
use crate::assignments::{Assignment, NewAssignment, Target};
use crate::audit::{AuditContext, AuditEntry, AuditQuery, Retained, Verification};
use crate::remote_config::drift::{AgentConfig, DriftCounts, DriftState};

/// Rows per statement: at 13 binds a row, well under SQLite's 32,766 bind limit.
const ROWS_PER_STATEMENT: usize = 500;

/// Most read-only connections: WAL readers run side by side.
const MAX_READERS: u32 = 4;

pub struct SqliteStore {
    /// One connection: every write, in turn.
    writer: SqlitePool,
    /// Read-only connections (for an in-memory database, the writer itself).
    reader: SqlitePool,
    gzip_threshold: usize,
}

pub async fn connect(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>> {
    let connect = SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::UnsupportedUrl(format!("{url}: {e}")))?
        // WAL with NORMAL loses at most the last commits on power loss, never consistency.
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(options.acquire_timeout)
        .foreign_keys(true);
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    if !in_memory {
        // The file is created if missing; its directory too.
        if let Some(dir) = connect.get_filename().parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                std::fs::create_dir_all(dir).map_err(|source| StoreError::Directory {
                    path: dir.to_owned(),
                    source,
                })?;
            }
        }
    }
    // An in-memory database lives as long as a connection to it: keep exactly one, forever.
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(u32::from(in_memory))
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(options.acquire_timeout)
        .connect_with(
            connect
                .clone()
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal),
        )
        .await?;
    sqlx::migrate!("../migrations/sqlite").run(&writer).await?;
    let reader = if in_memory {
        writer.clone()
    } else {
        SqlitePoolOptions::new()
            .max_connections(options.max_connections.clamp(1, MAX_READERS))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect.read_only(true))
            .await?
    };
    Ok(Arc::new(SqliteStore {
        writer,
        reader,
        gzip_threshold: options.gzip_threshold,
    }))
}

impl SqliteStore {
    /// A transaction on the writer, holding SQLite's write lock from its first statement.
    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Runs `update` (an `UPDATE … RETURNING instance_uid` that takes agents offline) and
    /// records an `offline` event for each, in one transaction.
    async fn mark_offline(
        &self,
        update: &str,
        selector: &str,
        at: i64,
        now: OffsetDateTime,
        reason: &str,
    ) -> Result<Vec<Uuid>> {
        let mut transaction = self.begin_write().await?;
        let rows: Vec<UidRow<Hyphenated>> = sqlx::query_as(update)
            .bind(selector)
            .bind(at)
            .fetch_all(&mut *transaction)
            .await?;
        let uids = model::sorted_uids(rows);
        let events = EventColumns::offline(&uids, now, reason, self.gzip_threshold);
        insert_events(&mut transaction, &events).await?;
        transaction.commit().await?;
        Ok(uids)
    }
}

#[async_trait]
impl AgentStore for SqliteStore {
    async fn get_agent(&self, uid: Uuid) -> Result<Option<AgentRecord>> {
        let row: Option<AgentRow<Hyphenated>> = sqlx::query_as(concat!(
            include_str!("queries/agent_select.sql"),
            "WHERE a.instance_uid = $1"
        ))
        .bind(uid.hyphenated())
        .fetch_optional(&self.reader)
        .await?;
        row.map(AgentRecord::try_from).transpose()
    }

    async fn get_agents(&self, uids: &[Uuid]) -> Result<Vec<AgentRecord>> {
        let mut connection = self.reader.acquire().await?;
        let select = concat!(
            include_str!("queries/agent_select.sql"),
            "WHERE a.instance_uid "
        );
        let mut records = Vec::with_capacity(uids.len());
        for chunk in uids.chunks(ROWS_PER_STATEMENT) {
            let rows: Vec<AgentRow<Hyphenated>> = in_uids(select, chunk)
                .build_query_as()
                .fetch_all(&mut *connection)
                .await?;
            records.extend(model::convert(rows)?);
        }
        Ok(records)
    }

    async fn write(&self, batch: &WriteBatch<'_>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let columns = BatchColumns::new(batch, self.gzip_threshold);
        let mut transaction = self.begin_write().await?;
        if let Some(fence) = columns.fence {
            check_fence(&mut transaction, fence).await?;
        }
        upsert_agents(&mut transaction, &columns.agents).await?;
        replace_attributes(&mut transaction, &columns.attributes).await?;
        insert_events(&mut transaction, &columns.events).await?;
        update_seen(&mut transaction, &columns.seen, self.gzip_threshold).await?;
        upsert_configs(&mut transaction, &columns.configs).await?;
        Ok(transaction.commit().await?)
    }

    async fn list_agents(&self, query: &AgentQuery) -> Result<Vec<AgentHead>> {
        let rows: Vec<HeadRow<Hyphenated>> = shared::list_agents::<Sqlite, _>(
            &self.reader,
            query,
            query.after.map(|after| after.hyphenated()),
        )
        .await?;
        model::convert(rows)
    }

    async fn list_events(&self, uid: Uuid, query: &EventQuery) -> Result<Vec<AgentEvent>> {
        let rows: Vec<EventRow<Hyphenated>> =
            shared::list_events::<Sqlite, _>(&self.reader, uid.hyphenated(), query).await?;
        model::convert(rows)
    }
}

#[async_trait]
impl PresenceStore for SqliteStore {
    async fn mark_stale_offline(
        &self,
        transport: Transport,
        cutoff: OffsetDateTime,
        now: OffsetDateTime,
        reason: &str,
    ) -> Result<Vec<Uuid>> {
        let update = include_str!("sqlite/queries/mark_stale_offline.sql");
        self.mark_offline(
            update,
            transport.as_str(),
            encoding::micros(cutoff),
            now,
            reason,
        )
        .await
    }

    async fn gateways_with_online_agents(&self) -> Result<Vec<String>> {
        shared::gateways_with_online_agents::<Sqlite>(&self.reader).await
    }

    async fn mark_gateway_offline(
        &self,
        gateway_id: &str,
        now: OffsetDateTime,
        reason: &str,
    ) -> Result<Vec<Uuid>> {
        let update = include_str!("sqlite/queries/mark_gateway_offline.sql");
        self.mark_offline(update, gateway_id, encoding::micros(now), now, reason)
            .await
    }
}

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn heartbeat_replica(
        &self,
        replica: &str,
        now: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<u32> {
        shared::heartbeat_replica(self.begin_write().await?, replica, now, expires_at).await
    }

    async fn claim_partitions(
        &self,
        replica: &str,
        total: u16,
        want: u16,
        now: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<Vec<Lease>> {
        let take = include_str!("sqlite/queries/leases_take.sql");
        let transaction = self.begin_write().await?;
        shared::claim_partitions(transaction, take, replica, total, want, now, expires_at).await
    }

    async fn release_replica(&self, replica: &str) -> Result<()> {
        shared::release_replica(self.begin_write().await?, replica).await
    }
}

#[async_trait]
impl ConfigurationStore for SqliteStore {
    async fn create_configuration(
        &self,
        new: &NewConfiguration,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Configuration> {
        configurations::create(self.begin_write().await?, new, now, audit).await
    }

    async fn get_configuration(&self, id: i64) -> Result<Option<Configuration>> {
        configurations::get(&self.reader, id).await
    }

    async fn list_configurations(
        &self,
        workspace: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Configuration>> {
        configurations::list(&self.reader, workspace, after, limit).await
    }

    async fn update_draft(
        &self,
        id: i64,
        draft: &str,
        row_version: i64,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Guarded<i64>> {
        let transaction = self.begin_write().await?;
        configurations::update_draft(transaction, id, draft, row_version, now, audit).await
    }

    async fn publish(
        &self,
        id: i64,
        row_version: i64,
        draft: &str,
        hash: &str,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Guarded<Published>> {
        let transaction = self.begin_write().await?;
        configurations::publish(transaction, id, row_version, draft, hash, now, audit).await
    }

    async fn list_versions(&self, ids: &[i64]) -> Result<Vec<ConfigurationVersion>> {
        configurations::list_versions(&self.reader, ids).await
    }

    async fn get_version(&self, id: i64, version: i64) -> Result<Option<ConfigurationVersion>> {
        configurations::get_version(&self.reader, id, version).await
    }

    async fn lint_rule_settings(&self, workspace: &str) -> Result<Vec<LintRuleSetting>> {
        configurations::lint_rule_settings(&self.reader, workspace).await
    }

    async fn put_lint_rule_setting(
        &self,
        workspace: &str,
        setting: &LintRuleSetting,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<()> {
        let transaction = self.begin_write().await?;
        configurations::put_lint_rule_setting(transaction, workspace, setting, now, audit).await
    }
}

#[async_trait]
impl AssignmentStore for SqliteStore {
    async fn create_assignment(
        &self,
        new: &NewAssignment,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Option<Assignment>> {
        let uid = match new.target {
            Target::Agent(uid) => Some(uid.hyphenated()),
            Target::Selector(_) => None,
        };
        assignments::create(self.begin_write().await?, new, uid, now, audit).await
    }

    async fn current_assignments(&self) -> Result<Vec<Assignment>> {
        assignments::current::<Sqlite, Hyphenated>(&self.reader).await
    }

    async fn newest_assignment_id(&self) -> Result<i64> {
        assignments::newest_id(&self.reader).await
    }
}

#[async_trait]
impl DriftStore for SqliteStore {
    async fn agent_config(&self, uid: Uuid) -> Result<Option<(AgentConfig, Option<DriftState>)>> {
        assignments::agent_config(&self.reader, uid.hyphenated()).await
    }

    async fn drift_counts(&self) -> Result<DriftCounts> {
        assignments::drift_counts(&self.reader).await
    }

    async fn list_drifting(
        &self,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<(AgentConfig, DriftState)>> {
        assignments::list_drifting(&self.reader, after.map(|uid| uid.hyphenated()), limit).await
    }
}

#[async_trait]
impl OperatorStore for SqliteStore {
    async fn count_accounts(&self) -> Result<u64> {
        operators::count_accounts(&self.reader).await
    }

    async fn create_account(
        &self,
        account: &NewAccount,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Account> {
        operators::create_account(self.begin_write().await?, account, now, audit).await
    }

    async fn create_first_account(
        &self,
        account: &NewAccount,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<bool> {
        operators::create_first_account(self.begin_write().await?, account, now, audit).await
    }

    async fn get_account(&self, username: &str) -> Result<Option<Account>> {
        operators::get_account(&self.reader, username).await
    }

    async fn list_accounts(&self) -> Result<Vec<Account>> {
        operators::list_accounts(&self.reader).await
    }

    async fn update_account(
        &self,
        username: &str,
        update: &AccountUpdate,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Changed<Account>> {
        operators::update_account(self.begin_write().await?, username, update, now, audit).await
    }

    async fn delete_account(
        &self,
        username: &str,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Changed<()>> {
        operators::delete_account(self.begin_write().await?, username, now, audit).await
    }

    async fn create_session(&self, session: &NewSession, audit: &AuditContext) -> Result<()> {
        operators::create_session(self.begin_write().await?, session, audit).await
    }

    async fn session(&self, id_hash: &str, now: OffsetDateTime) -> Result<Option<SessionAccount>> {
        operators::session(&self.reader, id_hash, now).await
    }

    async fn delete_session(
        &self,
        id_hash: &str,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<bool> {
        operators::delete_session(self.begin_write().await?, id_hash, now, audit).await
    }

    async fn create_api_token(
        &self,
        token: &NewApiToken,
        audit: &AuditContext,
    ) -> Result<ApiToken> {
        operators::create_api_token(self.begin_write().await?, token, audit).await
    }

    async fn api_token(&self, token_hash: &str, now: OffsetDateTime) -> Result<Option<ApiToken>> {
        operators::api_token(&self.reader, token_hash, now).await
    }

    async fn list_api_tokens(&self) -> Result<Vec<ApiToken>> {
        operators::list_api_tokens(&self.reader).await
    }

    async fn delete_api_token(
        &self,
        id: &str,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<bool> {
        operators::delete_api_token(self.begin_write().await?, id, now, audit).await
    }
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        audit::list(&self.reader, query).await
    }

    async fn verify_audit(&self) -> Result<Verification> {
        // A read transaction sees one snapshot (WAL) for the whole walk.
        let mut transaction = self.reader.begin().await?;
        let verification = audit::verify::<Sqlite>(&mut transaction).await?;
        transaction.commit().await?;
        Ok(verification)
    }

    async fn retain_audit(
        &self,
        hot_before: OffsetDateTime,
        purge_before: OffsetDateTime,
    ) -> Result<Option<Retained>> {
        // One writer: nobody else can be running it.
        let transaction = self.begin_write().await?;
        Ok(Some(
            audit::retain(transaction, hot_before, purge_before).await?,
        ))
    }
}

#[async_trait]
impl FleetStore for SqliteStore {
    async fn list_fleet(&self, query: &FleetQuery) -> Result<Vec<FleetRow>> {
        let rows = fleet::list::<Sqlite, Hyphenated>(
            &self.reader,
            query,
            None,
            query.after.map(|after| after.hyphenated()),
        )
        .await?;
        model::convert(rows)
    }

    async fn fleet_row(&self, uid: Uuid, query: &FleetQuery) -> Result<Option<FleetRow>> {
        let one = FleetQuery {
            limit: 1,
            after: None,
            ..query.clone()
        };
        let rows =
            fleet::list::<Sqlite, Hyphenated>(&self.reader, &one, Some(uid.hyphenated()), None)
                .await?;
        Ok(model::convert(rows)?.pop())
    }

    async fn fleet_counts(&self) -> Result<FleetCounts> {
        fleet::counts::<Sqlite>(&self.reader).await
    }

    async fn changes_since(&self, after: i64, limit: u32) -> Result<Vec<ChangedAgent>> {
        fleet::changes::<Sqlite, Hyphenated>(&self.reader, after, limit).await
    }

    async fn newest_change(&self) -> Result<i64> {
        fleet::newest_change::<Sqlite>(&self.reader).await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<()> {
        shared::ping::<Sqlite>(&self.reader).await
    }
}

/// Checks that the fence's leases are still the writer's, unexpired and at its epochs. The
/// transaction holds the write lock, so no lease can change before it commits.
async fn check_fence(connection: &mut SqliteConnection, fence: &Fence) -> Result<()> {
    let now = encoding::micros(OffsetDateTime::now_utc());
    for lease in &fence.leases {
        let held: Option<i64> = sqlx::query_scalar(
            "SELECT epoch FROM partition_leases \
             WHERE partition = $1 AND owner = $2 AND epoch = $3 AND expires_at > $4",
        )
        .bind(i32::from(lease.partition))
        .bind(&fence.owner)
        .bind(lease.epoch)
        .bind(now)
        .fetch_optional(&mut *connection)
        .await?;
        if held.is_none() {
            return Err(StoreError::Fenced);
        }
    }
    Ok(())
}

const AGENT_UPSERT: &str = "INSERT INTO agents (instance_uid, status, transport, gateway_id, \
     connection_id, remote_addr, sequence_num, capabilities, first_seen, last_seen, summary, \
     details, details_encoding) ";

/// An existing row takes the new head, except `first_seen`.
const HEAD_CONFLICT: &str = " ON CONFLICT (instance_uid) DO UPDATE SET status = excluded.status, \
     transport = excluded.transport, gateway_id = excluded.gateway_id, \
     connection_id = excluded.connection_id, remote_addr = excluded.remote_addr, \
     sequence_num = excluded.sequence_num, capabilities = excluded.capabilities, \
     last_seen = excluded.last_seen, summary = excluded.summary";

/// Upserts the agents: those with details write them, the others keep the stored ones (and a
/// missing row is stored with empty details).
async fn upsert_agents(connection: &mut SqliteConnection, agents: &AgentColumns) -> Result<()> {
    let (with_details, keeping): (Vec<usize>, Vec<usize>) =
        (0..agents.len()).partition(|&i| agents.details[i].is_some());
    let (empty, empty_encoding) = encoding::encode(&AgentDetails::default(), usize::MAX);
    let full_conflict = format!(
        "{HEAD_CONFLICT}, details = excluded.details, details_encoding = excluded.details_encoding"
    );
    for (rows, conflict) in [
        (with_details, full_conflict.as_str()),
        (keeping, HEAD_CONFLICT),
    ] {
        execute_values(connection, AGENT_UPSERT, &rows, conflict, |row, &i| {
            row.push_bind(agents.instance_uid[i].hyphenated())
                .push_bind(agents.status[i])
                .push_bind(agents.transport[i])
                .push_bind(agents.gateway_id[i].as_str())
                .push_bind(agents.connection_id[i])
                .push_bind(agents.remote_addr[i].as_str())
                .push_bind(agents.sequence_num[i])
                .push_bind(agents.capabilities[i])
                .push_bind(agents.first_seen[i])
                .push_bind(agents.last_seen[i])
                .push_bind(agents.summary[i].as_str())
                .push_bind(agents.details[i].as_deref().unwrap_or(&empty))
                .push_bind(agents.details_encoding[i].unwrap_or(empty_encoding));
        })
        .await?;
    }
    Ok(())
}

async fn replace_attributes(
    connection: &mut SqliteConnection,
    attributes: &AttributeColumns,
) -> Result<()> {
    for chunk in attributes.agents.chunks(ROWS_PER_STATEMENT) {
        in_uids("DELETE FROM agent_attributes WHERE instance_uid ", chunk)
            .build()
            .execute(&mut *connection)
            .await?;
    }
    let rows: Vec<usize> = (0..attributes.len()).collect();
    execute_values(
        connection,
        "INSERT INTO agent_attributes (instance_uid, key, value) ",
        &rows,
        "",
        |row, &i| {
            row.push_bind(attributes.instance_uid[i].hyphenated())
                .push_bind(attributes.key[i].as_str())
                .push_bind(attributes.value[i].as_str());
        },
    )
    .await
}

async fn insert_events(connection: &mut SqliteConnection, events: &EventColumns) -> Result<()> {
    let rows: Vec<usize> = (0..events.len()).collect();
    execute_values(
        connection,
        "INSERT INTO agent_events (instance_uid, at, kind, payload, payload_encoding) ",
        &rows,
        "",
        |row, &i| {
            row.push_bind(events.instance_uid[i].hyphenated())
                .push_bind(events.at[i])
                .push_bind(events.kind[i])
                .push_bind(events.payload[i].as_slice())
                .push_bind(events.payload_encoding[i]);
        },
    )
    .await
}

/// Ingest's agent_configs rows: the reported side as it is, the assigned side only over an
/// older assignment.
async fn upsert_configs(connection: &mut SqliteConnection, configs: &ConfigColumns) -> Result<()> {
    let rows: Vec<usize> = (0..configs.len()).collect();
    execute_values(
        connection,
        "INSERT INTO agent_configs (instance_uid, assignment_id, configuration_id, \
         config_version, assigned_hash, assigned_at, remote_hash, remote_state, applied_hash, \
         applied_at, failed_hash, failed_assignment_id, failed_error, failed_at, \
         out_of_band_at, expects_effective, effective_since_status) ",
        &rows,
        include_str!("queries/agent_configs_conflict.sql"),
        |row, &i| {
            row.push_bind(configs.instance_uid[i].hyphenated())
                .push_bind(configs.assignment_id[i])
                .push_bind(configs.configuration_id[i])
                .push_bind(configs.config_version[i])
                .push_bind(configs.assigned_hash[i].as_deref())
                .push_bind(configs.assigned_at[i])
                .push_bind(configs.remote_hash[i].as_deref())
                .push_bind(configs.remote_state[i].as_deref())
                .push_bind(configs.applied_hash[i].as_deref())
                .push_bind(configs.applied_at[i])
                .push_bind(configs.failed_hash[i].as_deref())
                .push_bind(configs.failed_assignment_id[i])
                .push_bind(configs.failed_error[i].as_deref())
                .push_bind(configs.failed_at[i])
                .push_bind(configs.out_of_band_at[i])
                .push_bind(configs.expects_effective[i])
                .push_bind(configs.effective_since_status[i]);
        },
    )
    .await
}

/// Moves online agents' liveness on, and brings back online (with a `connected` event each)
/// agents a sweep took offline that were seen at or after its cutoff.
async fn update_seen(
    connection: &mut SqliteConnection,
    seen: &SeenColumns,
    gzip_threshold: usize,
) -> Result<()> {
    let rows: Vec<usize> = (0..seen.len()).collect();
    let bind_row = |row: &mut Separated<'_, '_, Sqlite, &'static str>, &i: &usize| {
        row.push_bind(seen.instance_uid[i].hyphenated())
            .push_bind(seen.last_seen[i])
            .push_bind(seen.sequence_num[i]);
    };
    execute_values(
        connection,
        "UPDATE agents SET last_seen = v.column2, sequence_num = v.column3 FROM (",
        &rows,
        ") AS v WHERE agents.instance_uid = v.column1 AND agents.status = 'online'",
        bind_row,
    )
    .await?;
    let mut revived = Vec::new();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut statement = QueryBuilder::<Sqlite>::new(
            "UPDATE agents SET status = 'online', last_seen = v.column2, \
             sequence_num = v.column3 FROM (",
        );
        statement.push_values(chunk, |mut row, i| bind_row(&mut row, i));
        statement.push(
            ") AS v WHERE agents.instance_uid = v.column1 AND agents.status = 'offline' \
             AND v.column2 >= agents.silent_since RETURNING instance_uid, last_seen",
        );
        let rows: Vec<(Hyphenated, i64)> = statement
            .build_query_as()
            .fetch_all(&mut *connection)
            .await?;
        revived.extend(rows.into_iter().map(|(uid, at)| (Uuid::from(uid), at)));
    }
    let events = EventColumns::revived(&revived, gzip_threshold);
    insert_events(connection, &events).await
}

/// `head IN (…)` with `uids` bound.
fn in_uids<'a>(head: &str, uids: &[Uuid]) -> QueryBuilder<'a, Sqlite> {
    let mut statement = QueryBuilder::new(head);
    statement.push("IN (");
    let mut listed = statement.separated(", ");
    for uid in uids {
        listed.push_bind(uid.hyphenated());
    }
    statement.push(")");
    statement
}

/// Runs `head VALUES (…), (…) tail` for `rows`, `ROWS_PER_STATEMENT` at a time; `bind_row`
/// binds the columns of one.
async fn execute_values<'a, Row>(
    connection: &mut SqliteConnection,
    head: &str,
    rows: &'a [Row],
    tail: &str,
    mut bind_row: impl FnMut(&mut Separated<'_, 'a, Sqlite, &'static str>, &'a Row),
) -> Result<()> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut statement = QueryBuilder::<'a, Sqlite>::new(head);
        statement.push_values(chunk, |mut row, i| bind_row(&mut row, i));
        statement.push(tail);
        statement.build().execute(&mut *connection).await?;
    }
    Ok(())
}

#[async_trait]
impl TrustStore for SqliteStore {
    async fn current_ca(&self) -> Result<Option<StoredCa>> {
        trust::current_ca(&self.reader).await
    }

    async fn create_ca(
        &self,
        ca: &NewCa,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<StoredCa> {
        if let Some(created) = trust::create_ca(self.begin_write().await?, ca, now, audit).await? {
            return Ok(created);
        }
        // Another replica created it first: read from the writer, which saw that commit.
        trust::current_ca(&self.writer)
            .await?
            .ok_or_else(|| StoreError::Corrupt("no current CA after a conflicting create".into()))
    }

    async fn rotate_ca(
        &self,
        current_id: i64,
        ca: &NewCa,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Option<StoredCa>> {
        trust::rotate_ca(self.begin_write().await?, current_id, ca, now, audit).await
    }

    async fn get_ca(&self, id: i64) -> Result<Option<StoredCa>> {
        trust::get_ca(&self.reader, id).await
    }

    async fn trust_snapshot(&self, now: OffsetDateTime) -> Result<TrustSnapshot> {
        trust::trust_snapshot(&self.reader, now).await
    }

    async fn create_bootstrap_token(
        &self,
        new: &NewBootstrapToken,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<BootstrapToken> {
        trust::create_bootstrap_token(self.begin_write().await?, new, now, audit).await
    }

    async fn list_bootstrap_tokens(&self, after: i64, limit: u32) -> Result<Vec<BootstrapToken>> {
        trust::list_bootstrap_tokens(&self.reader, after, limit).await
    }

    async fn revoke_bootstrap_token(
        &self,
        id: i64,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Option<BootstrapToken>> {
        trust::revoke_bootstrap_token(self.begin_write().await?, id, now, audit).await
    }

    async fn check_bootstrap_token(
        &self,
        token_hash: &str,
        now: OffsetDateTime,
    ) -> Result<std::result::Result<BootstrapToken, TokenRefusal>> {
        trust::check_bootstrap_token(&self.reader, token_hash, now).await
    }

    async fn enrol(
        &self,
        token_hash: Option<&str>,
        certificate: &NewCertificate,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<std::result::Result<AgentCertificate, EnrolRefusal>> {
        trust::enrol(
            self.begin_write().await?,
            token_hash,
            certificate,
            now,
            audit,
        )
        .await
    }

    async fn list_certificates(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AgentCertificate>> {
        trust::list_certificates(&self.reader, after, limit).await
    }

    async fn revoke_certificate(
        &self,
        fingerprint: &str,
        reason: &str,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Option<AgentCertificate>> {
        trust::revoke_certificate(self.begin_write().await?, fingerprint, reason, now, audit).await
    }

    async fn certificate_bindings(
        &self,
        fingerprints: &[String],
        uids: &[Uuid],
        now: OffsetDateTime,
    ) -> Result<Vec<AgentCertificate>> {
        trust::certificate_bindings(&self.reader, fingerprints, uids, now).await
    }

    async fn retire_superseded(
        &self,
        uid: Uuid,
        fingerprint: &str,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Vec<String>> {
        trust::retire_superseded(self.begin_write().await?, uid, fingerprint, now, audit).await
    }
}
