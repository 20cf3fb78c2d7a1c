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
use super::{
    assignments, configurations, encoding, fleet, shared, AgentEvent, AgentQuery, AgentStore,
    AssignmentStore, ChangedAgent, Configuration, ConfigurationStore, ConfigurationVersion,
    DriftStore, EventQuery, FleetCounts, FleetQuery, FleetRow, FleetStore, Guarded, Lease,
    LeaseStore, LintRuleSetting, NewConfiguration, PresenceStore, Published, Result, Store,
    StoreError, StoreOptions, WriteBatch,
};
use crate::agents::history::EventKind;
use crate::agents::snapshot::{AgentHead, AgentRecord, Transport};
use crate::assignments::{Assignment, NewAssignment, Target};
use crate::remote_config::drift::{AgentConfig, DriftCounts, DriftState};

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
    ) -> Result<Configuration> {
        configurations::create(self.pool.begin().await?, new, now).await
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
    ) -> Result<Guarded<i64>> {
        configurations::update_draft(self.pool.begin().await?, id, draft, row_version, now).await
    }

    async fn publish(
        &self,
        id: i64,
        row_version: i64,
        draft: &str,
        hash: &str,
        now: OffsetDateTime,
    ) -> Result<Guarded<Published>> {
        let transaction = self.pool.begin().await?;
        configurations::publish(transaction, id, row_version, draft, hash, now).await
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
    ) -> Result<()> {
        let transaction = self.pool.begin().await?;
        configurations::put_lint_rule_setting(transaction, workspace, setting, now).await
    }
}

#[async_trait]
impl AssignmentStore for PostgresStore {
    async fn create_assignment(
        &self,
        new: &NewAssignment,
        now: OffsetDateTime,
    ) -> Result<Option<Assignment>> {
        let uid = match new.target {
            Target::Agent(uid) => Some(uid),
            Target::Selector(_) => None,
        };
        assignments::create(self.pool.begin().await?, new, uid, now).await
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
