//! PostgreSQL: the production store. Instance uids are `uuid`s. The writes of a round bind every
//! column as one array, so each statement's text never changes with the batch size: it is
//! prepared once per connection and planned cheaply, however many rows a batch holds. An
//! ingest round is one statement.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres};
use time::OffsetDateTime;
use uuid::Uuid;

use super::columns::{self, AttributeColumns, BatchColumns, EventColumns, SeenColumns};
use super::model::{self, AgentRow, EventRow, HeadRow, UidRow};
use super::trust::{
    self, AgentCertificate, BootstrapToken, EnrolRefusal, NewBootstrapToken, NewCa, NewCertificate,
    StoredCa, TokenRefusal, TrustSnapshot, TrustStore,
};
use super::{
    assignments, audit, configurations, encoding, fleet, operators, shared, Account, AccountUpdate,
    AgentEvent, AgentQuery, AgentStore, ApiToken, AssignmentStore, AuditStore, Changed,
    ChangedAgent, Configuration, ConfigurationStore, ConfigurationVersion, DriftStore, EventQuery,
    FleetCounts, FleetQuery, FleetRow, FleetStore, Guarded, Lease, LeaseStore, LintRuleSetting,
    NewAccount, NewApiToken, NewConfiguration, NewSession, OperatorStore, PresenceStore, Published,
    Result, SessionAccount, Store, StoreError, StoreOptions, WriteBatch,
};
use crate::agents::history::EventKind;
use crate::agents::snapshot::{AgentHead, AgentRecord, Transport};
use crate::assignments::{Assignment, NewAssignment, Target};
use crate::audit::{AuditContext, AuditEntry, AuditQuery, Retained, Verification};
use crate::remote_config::drift::{AgentConfig, DriftCounts, DriftState};

/// The advisory lock that lets one replica at a time run audit retention.
const AUDIT_RETENTION_LOCK: i64 = 0x616d_706f_7261_0001;

/// How long a pooled connection may sit idle and still be used without a check.
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(1);

pub struct PostgresStore {
    pool: PgPool,
    gzip_threshold: usize,
}

pub async fn connect(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>> {
    let connect = PgConnectOptions::from_str(url)
        .map_err(|e| StoreError::UnsupportedUrl(format!("{url}: {e}")))?
        // Statements are prepared once per connection, often while the tables are still empty;
        // a generic plan made then (a sequential scan of a table that later holds millions of
        // rows) would stay. Planning each execution for its parameters costs little here: the
        // batch statements bind arrays, so their plans do not grow with the batch.
        .options([("plan_cache_mode", "force_custom_plan")]);
    let pool = PgPoolOptions::new()
        // A connection that has sat idle is checked before use, one in constant use is not: at
        // full rate an ingest round is one statement, and the check would double its round
        // trips. Should a busy connection break, its round fails and its agents re-sync.
        .test_before_acquire(false)
        .before_acquire(|connection, metadata| {
            Box::pin(async move {
                if metadata.idle_for >= CHECK_AFTER_IDLE {
                    connection.ping().await?;
                }
                Ok(true)
            })
        })
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .connect_with(connect)
        .await?;
    sqlx::migrate!("../migrations/postgres").run(&pool).await?;
    Ok(Arc::new(PostgresStore {
        pool,
        gzip_threshold: options.gzip_threshold,
    }))
}

impl PostgresStore {
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
        let mut transaction = self.pool.begin().await?;
        let rows: Vec<UidRow<Uuid>> = sqlx::query_as(update)
            .bind(selector)
            .bind(at)
            .fetch_all(&mut *transaction)
            .await?;
        let uids = model::sorted_uids(rows);
        if !uids.is_empty() {
            let events = EventColumns::offline(&uids, now, reason, self.gzip_threshold);
            insert_events(&mut transaction, &events).await?;
        }
        transaction.commit().await?;
        Ok(uids)
    }
}

#[async_trait]
impl AgentStore for PostgresStore {
    async fn get_agent(&self, uid: Uuid) -> Result<Option<AgentRecord>> {
        let row: Option<AgentRow<Uuid>> = sqlx::query_as(concat!(
            include_str!("queries/agent_select.sql"),
            "WHERE a.instance_uid = $1"
        ))
        .bind(uid)
        .fetch_optional(&self.pool)
        .await?;
        row.map(AgentRecord::try_from).transpose()
    }

    async fn get_agents(&self, uids: &[Uuid]) -> Result<Vec<AgentRecord>> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<AgentRow<Uuid>> = sqlx::query_as(concat!(
            include_str!("queries/agent_select.sql"),
            "WHERE a.instance_uid = ANY($1::uuid[])"
        ))
        .bind(uids)
        .fetch_all(&self.pool)
        .await?;
        model::convert(rows)
    }

    async fn write(&self, batch: &WriteBatch<'_>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let columns = BatchColumns::new(batch, self.gzip_threshold);
        // An ingest round is the round statement alone, committing on its own.
        if columns.attributes.agents.is_empty() && columns.seen.len() == 0 {
            return write_fenced(&self.pool, &columns).await;
        }
        let mut transaction = self.pool.begin().await?;
        write_fenced(&mut *transaction, &columns).await?;
        if !columns.attributes.agents.is_empty() {
            replace_attributes(&mut transaction, &columns.attributes).await?;
        }
        if columns.seen.len() > 0 {
            update_seen(&mut transaction, &columns.seen).await?;
        }
        Ok(transaction.commit().await?)
    }

    async fn list_agents(&self, query: &AgentQuery) -> Result<Vec<AgentHead>> {
        let rows: Vec<HeadRow<Uuid>> =
            shared::list_agents::<Postgres, _>(&self.pool, query, query.after).await?;
        model::convert(rows)
    }

    async fn list_events(&self, uid: Uuid, query: &EventQuery) -> Result<Vec<AgentEvent>> {
        let rows: Vec<EventRow<Uuid>> =
            shared::list_events::<Postgres, _>(&self.pool, uid, query).await?;
        model::convert(rows)
    }
}

#[async_trait]
impl PresenceStore for PostgresStore {
    async fn mark_stale_offline(
        &self,
        transport: Transport,
        cutoff: OffsetDateTime,
        now: OffsetDateTime,
        reason: &str,
    ) -> Result<Vec<Uuid>> {
        let update = include_str!("postgres/queries/mark_stale_offline.sql");
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
        shared::gateways_with_online_agents::<Postgres>(&self.pool).await
    }

    async fn mark_gateway_offline(
        &self,
        gateway_id: &str,
        now: OffsetDateTime,
        reason: &str,
    ) -> Result<Vec<Uuid>> {
        let update = include_str!("postgres/queries/mark_gateway_offline.sql");
        self.mark_offline(update, gateway_id, encoding::micros(now), now, reason)
            .await
    }
}

#[async_trait]
impl LeaseStore for PostgresStore {
    async fn heartbeat_replica(
        &self,
        replica: &str,
        now: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<u32> {
        shared::heartbeat_replica(self.pool.begin().await?, replica, now, expires_at).await
    }

    async fn claim_partitions(
        &self,
        replica: &str,
        total: u16,
        want: u16,
        now: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<Vec<Lease>> {
        let take = include_str!("postgres/queries/leases_take.sql");
        let transaction = self.pool.begin().await?;
        shared::claim_partitions(transaction, take, replica, total, want, now, expires_at).await
    }

    async fn release_replica(&self, replica: &str) -> Result<()> {
        shared::release_replica(self.pool.begin().await?, replica).await
    }
}

#[async_trait]
impl ConfigurationStore for PostgresStore {
    async fn create_configuration(
        &self,
        new: &NewConfiguration,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Configuration> {
        configurations::create(self.pool.begin().await?, new, now, audit).await
    }

    async fn get_configuration(&self, id: i64) -> Result<Option<Configuration>> {
        configurations::get(&self.pool, id).await
    }

    async fn list_configurations(
        &self,
        workspace: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Configuration>> {
        configurations::list(&self.pool, workspace, after, limit).await
    }

    async fn update_draft(
        &self,
        id: i64,
        draft: &str,
        row_version: i64,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Guarded<i64>> {
        let transaction = self.pool.begin().await?;
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
        let transaction = self.pool.begin().await?;
        configurations::publish(transaction, id, row_version, draft, hash, now, audit).await
    }

    async fn list_versions(&self, ids: &[i64]) -> Result<Vec<ConfigurationVersion>> {
        configurations::list_versions(&self.pool, ids).await
    }

    async fn get_version(&self, id: i64, version: i64) -> Result<Option<ConfigurationVersion>> {
        configurations::get_version(&self.pool, id, version).await
    }

    async fn lint_rule_settings(&self, workspace: &str) -> Result<Vec<LintRuleSetting>> {
        configurations::lint_rule_settings(&self.pool, workspace).await
    }

    async fn put_lint_rule_setting(
        &self,
        workspace: &str,
        setting: &LintRuleSetting,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<()> {
        let transaction = self.pool.begin().await?;
        configurations::put_lint_rule_setting(transaction, workspace, setting, now, audit).await
    }
}

#[async_trait]
impl AssignmentStore for PostgresStore {
    async fn create_assignment(
        &self,
        new: &NewAssignment,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Option<Assignment>> {
        let uid = match new.target {
            Target::Agent(uid) => Some(uid),
            Target::Selector(_) => None,
        };
        assignments::create(self.pool.begin().await?, new, uid, now, audit).await
    }

    async fn current_assignments(&self) -> Result<Vec<Assignment>> {
        assignments::current::<Postgres, Uuid>(&self.pool).await
    }

    async fn newest_assignment_id(&self) -> Result<i64> {
        assignments::newest_id(&self.pool).await
    }
}

#[async_trait]
impl DriftStore for PostgresStore {
    async fn agent_config(&self, uid: Uuid) -> Result<Option<(AgentConfig, Option<DriftState>)>> {
        assignments::agent_config(&self.pool, uid).await
    }

    async fn drift_counts(&self) -> Result<DriftCounts> {
        assignments::drift_counts(&self.pool).await
    }

    async fn list_drifting(
        &self,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<(AgentConfig, DriftState)>> {
        assignments::list_drifting(&self.pool, after, limit).await
    }
}

#[async_trait]
impl OperatorStore for PostgresStore {
    async fn count_accounts(&self) -> Result<u64> {
        operators::count_accounts(&self.pool).await
    }

    async fn create_account(
        &self,
        account: &NewAccount,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Account> {
        operators::create_account(self.pool.begin().await?, account, now, audit).await
    }

    async fn create_first_account(
        &self,
        account: &NewAccount,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<bool> {
        operators::create_first_account(self.pool.begin().await?, account, now, audit).await
    }

    async fn get_account(&self, username: &str) -> Result<Option<Account>> {
        operators::get_account(&self.pool, username).await
    }

    async fn list_accounts(&self) -> Result<Vec<Account>> {
        operators::list_accounts(&self.pool).await
    }

    async fn update_account(
        &self,
        username: &str,
        update: &AccountUpdate,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Changed<Account>> {
        operators::update_account(self.pool.begin().await?, username, update, now, audit).await
    }

    async fn delete_account(
        &self,
        username: &str,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Changed<()>> {
        operators::delete_account(self.pool.begin().await?, username, now, audit).await
    }

    async fn create_session(&self, session: &NewSession, audit: &AuditContext) -> Result<()> {
        operators::create_session(self.pool.begin().await?, session, audit).await
    }

    async fn session(&self, id_hash: &str, now: OffsetDateTime) -> Result<Option<SessionAccount>> {
        operators::session(&self.pool, id_hash, now).await
    }

    async fn delete_session(
        &self,
        id_hash: &str,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<bool> {
        operators::delete_session(self.pool.begin().await?, id_hash, now, audit).await
    }

    async fn create_api_token(
        &self,
        token: &NewApiToken,
        audit: &AuditContext,
    ) -> Result<ApiToken> {
        operators::create_api_token(self.pool.begin().await?, token, audit).await
    }

    async fn api_token(&self, token_hash: &str, now: OffsetDateTime) -> Result<Option<ApiToken>> {
        operators::api_token(&self.pool, token_hash, now).await
    }

    async fn list_api_tokens(&self) -> Result<Vec<ApiToken>> {
        operators::list_api_tokens(&self.pool).await
    }

    async fn delete_api_token(
        &self,
        id: &str,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<bool> {
        operators::delete_api_token(self.pool.begin().await?, id, now, audit).await
    }
}

#[async_trait]
impl AuditStore for PostgresStore {
    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        audit::list(&self.pool, query).await
    }

    async fn verify_audit(&self) -> Result<Verification> {
        // One snapshot for the whole walk: retention moving entries meanwhile is not seen.
        let mut transaction = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *transaction)
            .await?;
        let verification = audit::verify::<Postgres>(&mut transaction).await?;
        transaction.commit().await?;
        Ok(verification)
    }

    async fn retain_audit(
        &self,
        hot_before: OffsetDateTime,
        purge_before: OffsetDateTime,
    ) -> Result<Option<Retained>> {
        let mut transaction = self.pool.begin().await?;
        // One replica at a time; the lock goes with the transaction.
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(AUDIT_RETENTION_LOCK)
            .fetch_one(&mut *transaction)
            .await?;
        if !locked {
            return Ok(None);
        }
        Ok(Some(
            audit::retain(transaction, hot_before, purge_before).await?,
        ))
    }
}

#[async_trait]
impl FleetStore for PostgresStore {
    async fn list_fleet(&self, query: &FleetQuery) -> Result<Vec<FleetRow>> {
        let rows = fleet::list::<Postgres, Uuid>(&self.pool, query, None, query.after).await?;
        model::convert(rows)
    }

    async fn fleet_row(&self, uid: Uuid, query: &FleetQuery) -> Result<Option<FleetRow>> {
        let one = FleetQuery {
            limit: 1,
            after: None,
            ..query.clone()
        };
        let rows = fleet::list::<Postgres, Uuid>(&self.pool, &one, Some(uid), None).await?;
        Ok(model::convert(rows)?.pop())
    }

    async fn fleet_counts(&self) -> Result<FleetCounts> {
        fleet::counts::<Postgres>(&self.pool).await
    }

    async fn changes_since(&self, after: i64, limit: u32) -> Result<Vec<ChangedAgent>> {
        fleet::changes::<Postgres, Uuid>(&self.pool, after, limit).await
    }

    async fn newest_change(&self) -> Result<i64> {
        fleet::newest_change::<Postgres>(&self.pool).await
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn ping(&self) -> Result<()> {
        shared::ping::<Postgres>(&self.pool).await
    }
}

/// Runs the round statement; [`StoreError::Fenced`] when it wrote nothing for want of a lease.
async fn write_fenced<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    columns: &BatchColumns<'_>,
) -> Result<()> {
    let (owner, leases) = match columns.fence {
        Some(fence) => (fence.owner.as_str(), fence.leases.as_slice()),
        None => ("", [].as_slice()),
    };
    let partitions: Vec<i32> = leases
        .iter()
        .map(|lease| i32::from(lease.partition))
        .collect();
    let epochs: Vec<i64> = leases.iter().map(|lease| lease.epoch).collect();
    let (agents, events, configs) = (&columns.agents, &columns.events, &columns.configs);
    let held: bool = sqlx::query_scalar(concat!(
        include_str!("postgres/queries/round.sql"),
        include_str!("queries/agent_configs_conflict.sql"),
        ")\nSELECT held FROM fence_check\n"
    ))
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
    .bind(&events.instance_uid)
    .bind(&events.at)
    .bind(&events.kind)
    .bind(&events.payload)
    .bind(&events.payload_encoding)
    .bind(&configs.instance_uid)
    .bind(&configs.assignment_id)
    .bind(&configs.configuration_id)
    .bind(&configs.config_version)
    .bind(&configs.assigned_hash)
    .bind(&configs.assigned_at)
    .bind(&configs.remote_hash)
    .bind(&configs.remote_state)
    .bind(&configs.applied_hash)
    .bind(&configs.applied_at)
    .bind(&configs.failed_hash)
    .bind(&configs.failed_assignment_id)
    .bind(&configs.failed_error)
    .bind(&configs.failed_at)
    .bind(&configs.out_of_band_at)
    .bind(&configs.expects_effective)
    .bind(&configs.effective_since_status)
    .fetch_one(executor)
    .await?;
    if held {
        Ok(())
    } else {
        Err(StoreError::Fenced)
    }
}

async fn replace_attributes(
    connection: &mut PgConnection,
    attributes: &AttributeColumns,
) -> Result<()> {
    sqlx::query(include_str!("postgres/queries/attributes_delete.sql"))
        .bind(&attributes.agents)
        .execute(&mut *connection)
        .await?;
    if attributes.instance_uid.is_empty() {
        return Ok(());
    }
    sqlx::query(include_str!("postgres/queries/attributes_insert.sql"))
        .bind(&attributes.instance_uid)
        .bind(&attributes.key)
        .bind(&attributes.value)
        .execute(connection)
        .await?;
    Ok(())
}

/// Events written on their own (agents marked offline by a sweep).
async fn insert_events(connection: &mut PgConnection, events: &EventColumns) -> Result<()> {
    sqlx::query(include_str!("postgres/queries/events_insert.sql"))
        .bind(&events.instance_uid)
        .bind(&events.at)
        .bind(&events.kind)
        .bind(&events.payload)
        .bind(&events.payload_encoding)
        .execute(connection)
        .await?;
    Ok(())
}

async fn update_seen(connection: &mut PgConnection, seen: &SeenColumns) -> Result<()> {
    sqlx::query(include_str!("postgres/queries/seen.sql"))
        .bind(&seen.instance_uid)
        .bind(&seen.last_seen)
        .bind(&seen.sequence_num)
        .bind(EventKind::Connected.as_str())
        .bind(columns::revived_payload())
        .execute(connection)
        .await?;
    Ok(())
}

#[async_trait]
impl TrustStore for PostgresStore {
    async fn current_ca(&self) -> Result<Option<StoredCa>> {
        trust::current_ca(&self.pool).await
    }

    async fn create_ca(
        &self,
        ca: &NewCa,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<StoredCa> {
        if let Some(created) = trust::create_ca(self.pool.begin().await?, ca, now, audit).await? {
            return Ok(created);
        }
        // Another replica created it first: read from the writer, which saw that commit.
        trust::current_ca(&self.pool)
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
        trust::rotate_ca(self.pool.begin().await?, current_id, ca, now, audit).await
    }

    async fn get_ca(&self, id: i64) -> Result<Option<StoredCa>> {
        trust::get_ca(&self.pool, id).await
    }

    async fn trust_snapshot(&self, now: OffsetDateTime) -> Result<TrustSnapshot> {
        trust::trust_snapshot(&self.pool, now).await
    }

    async fn create_bootstrap_token(
        &self,
        new: &NewBootstrapToken,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<BootstrapToken> {
        trust::create_bootstrap_token(self.pool.begin().await?, new, now, audit).await
    }

    async fn list_bootstrap_tokens(&self, after: i64, limit: u32) -> Result<Vec<BootstrapToken>> {
        trust::list_bootstrap_tokens(&self.pool, after, limit).await
    }

    async fn revoke_bootstrap_token(
        &self,
        id: i64,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Option<BootstrapToken>> {
        trust::revoke_bootstrap_token(self.pool.begin().await?, id, now, audit).await
    }

    async fn check_bootstrap_token(
        &self,
        token_hash: &str,
        now: OffsetDateTime,
    ) -> Result<std::result::Result<BootstrapToken, TokenRefusal>> {
        trust::check_bootstrap_token(&self.pool, token_hash, now).await
    }

    async fn enrol(
        &self,
        token_hash: Option<&str>,
        certificate: &NewCertificate,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<std::result::Result<AgentCertificate, EnrolRefusal>> {
        trust::enrol(
            self.pool.begin().await?,
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
        trust::list_certificates(&self.pool, after, limit).await
    }

    async fn revoke_certificate(
        &self,
        fingerprint: &str,
        reason: &str,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Option<AgentCertificate>> {
        trust::revoke_certificate(self.pool.begin().await?, fingerprint, reason, now, audit).await
    }

    async fn certificate_bindings(
        &self,
        fingerprints: &[String],
        uids: &[Uuid],
        now: OffsetDateTime,
    ) -> Result<Vec<AgentCertificate>> {
        trust::certificate_bindings(&self.pool, fingerprints, uids, now).await
    }

    async fn retire_superseded(
        &self,
        uid: Uuid,
        fingerprint: &str,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Vec<String>> {
        trust::retire_superseded(self.pool.begin().await?, uid, fingerprint, now, audit).await
    }
}
