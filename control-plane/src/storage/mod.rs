//! Persistence: small traits by concern ([`AgentStore`], [`PresenceStore`], [`LeaseStore`],
//! [`OperatorStore`], [`AuditStore`], …, gathered in [`Store`]), implemented for PostgreSQL and SQLite with sqlx.
//!
//! # Layout
//! - [`postgres`] and [`sqlite`]: one store each, an ordinary module; the statements of each
//!   dialect sit in its `queries/*.sql`, those both dialects share in `queries/`.
//! - `model`: rows as read (`sqlx::FromRow`) and how they become domain types.
//! - `columns`: a [`WriteBatch`] encoded column by column, as both dialects write it.
//! - `shared`: the statements both run alike, generic over the sqlx database;
//!   `configurations` and `assignments` likewise for configurations, lint rules, assignments
//!   and drift; `operators` for accounts, sessions and API tokens; `audit` for the audit
//!   log, whose `audit::append` every state-changing write calls in its own transaction.
//! - `encoding`: JSON (gzip'd above a threshold), times and counters as stored.
//! - `error`: [`StoreError`], with `From<sqlx::Error>`.
//!
//! Queries are checked at run time (`sqlx::query`, not the `query!` macros) so that building
//! needs no database and no committed offline query data; the shared suite in `tests/storage.rs`
//! runs every query on both backends instead.

mod assignments;
mod audit;
mod columns;
mod configurations;
mod encoding;
mod error;
mod fleet;
mod model;
mod operators;
mod postgres;
mod shared;
mod sqlite;
mod trust;

pub use error::StoreError;
pub use trust::{
    AgentCertificate, BootstrapToken, EnrolRefusal, NewBootstrapToken, NewCa, NewCertificate,
    StoredCa, TokenRefusal, TrustSnapshot, TrustStore,
};

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::agents::merge::EventPayload;
use crate::agents::snapshot::{AgentHead, AgentRecord, AgentStatus, Transport};
use crate::assignments::{Assignment, NewAssignment};
use crate::audit::{AuditContext, AuditEntry, AuditQuery, Retained, Verification};
use crate::operators::Role;
use crate::remote_config::drift::{AgentConfig, DriftCounts, DriftState};

/// A change in an agent's history: one row per change, newest read first.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentEvent {
    /// Increases with insertion order; used as the page token.
    pub id: i64,
    pub instance_uid: Uuid,
    pub at: OffsetDateTime,
    /// What changed, e.g. `connected`, `description`, `health`, `effective_config`.
    pub kind: String,
    pub payload: serde_json::Value,
}

#[derive(Debug, Clone)]
pub struct NewEvent {
    pub instance_uid: Uuid,
    pub at: OffsetDateTime,
    pub kind: &'static str,
    pub payload: EventPayload,
}

/// A heartbeat's worth of news: the agent is alive and at this sequence number.
#[derive(Debug, Clone, PartialEq)]
pub struct SeenUpdate {
    pub instance_uid: Uuid,
    pub last_seen: OffsetDateTime,
    pub sequence_num: u64,
}

/// Ownership of one agent partition: writes to its agents are fenced by the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    pub partition: u16,
    pub epoch: i64,
}

/// Proof that the writer still owns the partitions it writes for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fence {
    pub owner: String,
    pub leases: Vec<Lease>,
}

/// Everything one ingest round writes, in one transaction. Snapshots are borrowed: the writer
/// keeps its agents' latest ones anyway.
#[derive(Debug, Clone, Default)]
pub struct WriteBatch<'a> {
    /// Full snapshots to insert or replace.
    pub agents: Vec<&'a AgentRecord>,
    pub events: Vec<NewEvent>,
    /// Agents of `agents` whose stored attribute rows are already current: the writer knows
    /// their description did not change, so their (indexed) attribute rows are left alone.
    pub attributes_current: HashSet<Uuid>,
    /// Agents of `agents` whose stored details are already current: the writer knows their
    /// effective config, packages and components did not change, so only their head is written.
    pub details_current: HashSet<Uuid>,
    /// Liveness of agents whose snapshot did not change.
    pub seen: Vec<SeenUpdate>,
    /// Agents' config bookkeeping: the reported side is written as it is; the assigned side
    /// only over an older assignment (an assignment made meanwhile wins).
    pub configs: Vec<AgentConfig>,
    /// When set, the batch is written only if `owner` still holds every lease, unexpired.
    pub fence: Option<Fence>,
}

impl WriteBatch<'_> {
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
            && self.events.is_empty()
            && self.seen.is_empty()
            && self.configs.is_empty()
    }
}

#[derive(Debug, Clone, Default)]
pub struct AgentQuery {
    pub status: Option<AgentStatus>,
    /// Every pair must match an identifying or non-identifying attribute (string form of value).
    pub attributes: Vec<(String, String)>,
    pub limit: u32,
    /// Return agents whose uid sorts after this one (the page token).
    pub after: Option<Uuid>,
}

#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub limit: u32,
    /// Return events with an id below this one (the page token).
    pub before: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Details and event payloads above this many bytes are stored gzip'd.
    pub gzip_threshold: usize,
    /// Pooled connections; on SQLite, the read-only ones (at most 4) beside its one writer.
    pub max_connections: u32,
    /// How long to wait for a pooled connection (and, on SQLite, for the write lock).
    pub acquire_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            gzip_threshold: 4096,
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// Opens the database a URL names (`postgres://…`, `postgresql://…` or `sqlite:…`) and brings
/// its schema up to date.
pub async fn connect(url: &str, options: StoreOptions) -> Result<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        postgres::connect(url, &options).await
    } else if url.starts_with("sqlite:") {
        sqlite::connect(url, &options).await
    } else {
        let scheme = url.split(':').next().unwrap_or_default();
        Err(StoreError::UnsupportedUrl(format!("{scheme}:…")))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Agents' snapshots and history: what ingest writes and the API reads.
#[async_trait]
pub trait AgentStore: Send + Sync {
    async fn get_agent(&self, uid: Uuid) -> Result<Option<AgentRecord>>;

    /// The stored snapshots of those of `uids` that exist, in no particular order: one round
    /// trip for a round's worth of agents.
    async fn get_agents(&self, uids: &[Uuid]) -> Result<Vec<AgentRecord>>;

    /// Writes the whole batch in one transaction, or nothing. Liveness updates
    /// ([`WriteBatch::seen`]) of agents stored offline bring them back online, with a
    /// `connected` event each, when they were seen after the sweep that took them offline:
    /// the stored status follows the agents' own traffic, whatever a cache believed.
    async fn write(&self, batch: &WriteBatch<'_>) -> Result<()>;

    /// Agents ordered by uid.
    async fn list_agents(&self, query: &AgentQuery) -> Result<Vec<AgentHead>>;

    /// One agent's history, newest first.
    async fn list_events(&self, uid: Uuid, query: &EventQuery) -> Result<Vec<AgentEvent>>;
}

/// Who is still there: sweeps that take silent agents offline.
#[async_trait]
pub trait PresenceStore: Send + Sync {
    /// Marks agents of `transport` still online but unseen since `cutoff` offline, records an
    /// `offline` event for each (payload `{"reason": ...}`), and returns them. (WebSocket agents go
    /// offline when their connection closes; polling HTTP agents only by this timeout.) Agents
    /// seen at or after `cutoff` come back online with their next liveness update.
    async fn mark_stale_offline(
        &self,
        transport: Transport,
        cutoff: OffsetDateTime,
        now: OffsetDateTime,
        reason: &str,
    ) -> Result<Vec<Uuid>>;

    /// Gateways that hold online WebSocket agents, by the agents' records.
    async fn gateways_with_online_agents(&self) -> Result<Vec<String>>;

    /// Marks the online WebSocket agents of a dead gateway offline, with an `offline` event each.
    /// Agents seen at or after `now` come back online with their next liveness update.
    async fn mark_gateway_offline(
        &self,
        gateway_id: &str,
        now: OffsetDateTime,
        reason: &str,
    ) -> Result<Vec<Uuid>>;
}

/// Control-plane replicas and their partition leases.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Records that `replica` is alive until `expires_at`; returns how many replicas are alive.
    async fn heartbeat_replica(
        &self,
        replica: &str,
        now: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<u32>;

    /// Keeps `replica`'s unexpired leases until `expires_at`, gives up those beyond `want`, and
    /// takes free or expired partitions (of `0..total`) up to `want`, each with a new epoch.
    /// Returns every lease it holds afterwards.
    async fn claim_partitions(
        &self,
        replica: &str,
        total: u16,
        want: u16,
        now: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<Vec<Lease>>;

    /// Gives up all of `replica`'s leases and membership (clean shutdown).
    async fn release_replica(&self, replica: &str) -> Result<()>;
}

/// A configuration as stored: its draft changes, guarded by the row version.
#[derive(Debug, Clone, PartialEq)]
pub struct Configuration {
    pub id: i64,
    pub workspace: String,
    pub name: String,
    pub description: String,
    pub labels: BTreeMap<String, String>,
    pub draft: String,
    pub row_version: i64,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone)]
pub struct NewConfiguration {
    pub workspace: String,
    pub name: String,
    pub description: String,
    pub labels: BTreeMap<String, String>,
    pub draft: String,
}

/// A published version: never changes.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigurationVersion {
    pub configuration_id: i64,
    pub version: i64,
    pub yaml: String,
    /// SHA-256 of `yaml`, lowercase hex.
    pub hash: String,
    pub created_at: OffsetDateTime,
}

/// What a guarded write of a configuration found.
#[derive(Debug, Clone, PartialEq)]
pub enum Guarded<T> {
    Done(T),
    /// The row version was not the caller's: here is the current one.
    Stale {
        current: i64,
    },
    NotFound,
}

/// What publishing did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub version: i64,
    /// False when the newest version already had these bytes: it is returned instead.
    pub created: bool,
}

/// An operator's setting of a lint rule in a workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LintRuleSetting {
    pub rule: String,
    pub enabled: bool,
    /// `error` or `warning`.
    pub severity: String,
    pub message: String,
    pub hint: String,
}

/// Configurations, their drafts and immutable versions, and lint rule settings.
#[async_trait]
pub trait ConfigurationStore: Send + Sync {
    /// [`StoreError::Duplicate`] when the workspace has a configuration of that name.
    async fn create_configuration(
        &self,
        new: &NewConfiguration,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Configuration>;

    async fn get_configuration(&self, id: i64) -> Result<Option<Configuration>>;

    /// A workspace's configurations by id, after `after`, at most `limit`.
    async fn list_configurations(
        &self,
        workspace: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Configuration>>;

    /// Replaces the draft if its row version is still `row_version`; returns the new one.
    async fn update_draft(
        &self,
        id: i64,
        draft: &str,
        row_version: i64,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Guarded<i64>>;

    /// Publishes `draft` (the stored draft at `row_version`, whose hash is `hash`) as the next
    /// version, unless the newest version has the same hash.
    async fn publish(
        &self,
        id: i64,
        row_version: i64,
        draft: &str,
        hash: &str,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Guarded<Published>>;

    /// The versions of configurations `ids`, by configuration and oldest first, without their
    /// YAML: one query for a page of configurations.
    async fn list_versions(&self, ids: &[i64]) -> Result<Vec<ConfigurationVersion>>;

    async fn get_version(&self, id: i64, version: i64) -> Result<Option<ConfigurationVersion>>;

    async fn lint_rule_settings(&self, workspace: &str) -> Result<Vec<LintRuleSetting>>;

    async fn put_lint_rule_setting(
        &self,
        workspace: &str,
        setting: &LintRuleSetting,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<()>;
}

/// Assignments of published versions to agents.
#[async_trait]
pub trait AssignmentStore: Send + Sync {
    /// Records the assignment and, in the same transaction, makes it the assigned side of
    /// every agent it names or selects that has no newer one. `None` when the version does
    /// not exist.
    async fn create_assignment(
        &self,
        new: &NewAssignment,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Option<Assignment>>;

    /// The newest assignment of every target.
    async fn current_assignments(&self) -> Result<Vec<Assignment>>;

    /// The id of the newest assignment (0: none yet).
    async fn newest_assignment_id(&self) -> Result<i64>;
}

/// Drift, per agent and for the fleet, from the `agent_configs` rows.
#[async_trait]
pub trait DriftStore: Send + Sync {
    async fn agent_config(&self, uid: Uuid) -> Result<Option<(AgentConfig, Option<DriftState>)>>;

    async fn drift_counts(&self) -> Result<DriftCounts>;

    /// Agents not in sync, by uid after `after`, at most `limit`.
    async fn list_drifting(
        &self,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<(AgentConfig, DriftState)>>;
}

/// An operator's account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub username: String,
    /// argon2id, PHC string.
    pub password_hash: String,
    pub role: Role,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone)]
pub struct NewAccount {
    pub username: String,
    pub password_hash: String,
    pub role: Role,
}

/// A change to an account; what is absent stays.
#[derive(Debug, Clone, Default)]
pub struct AccountUpdate {
    pub role: Option<Role>,
    pub password_hash: Option<String>,
}

/// What a change to an account found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed<T> {
    Done(T),
    NotFound,
    /// Refused, nothing changed: no admin would remain.
    LastAdmin,
}

#[derive(Debug, Clone)]
pub struct NewSession {
    /// SHA-256 of the session id, lowercase hex: the id itself is never stored.
    pub id_hash: String,
    pub username: String,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// Whose an unexpired session is, with the account's current role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionAccount {
    pub username: String,
    pub role: Role,
    pub expires_at: OffsetDateTime,
}

/// An API token as stored (its hash stays in the database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// The actor that made it (`account:NAME`, …).
    pub created_by: String,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone)]
pub struct NewApiToken {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// SHA-256 of the token, lowercase hex.
    pub token_hash: String,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
}

/// Operators' accounts, sessions and API tokens. Each write records its audit entry (from
/// `audit`) in its own transaction.
#[async_trait]
pub trait OperatorStore: Send + Sync {
    async fn count_accounts(&self) -> Result<u64>;

    /// [`StoreError::Duplicate`] when the username is taken.
    async fn create_account(
        &self,
        account: &NewAccount,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Account>;

    /// Creates `account` only when no account exists at all (first run); false otherwise.
    async fn create_first_account(
        &self,
        account: &NewAccount,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<bool>;

    async fn get_account(&self, username: &str) -> Result<Option<Account>>;

    /// Every account, by username.
    async fn list_accounts(&self) -> Result<Vec<Account>>;

    /// A new password also ends the account's sessions. Refused when no admin would remain.
    async fn update_account(
        &self,
        username: &str,
        update: &AccountUpdate,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Changed<Account>>;

    /// Deletes the account and its sessions. Refused when no admin would remain.
    async fn delete_account(
        &self,
        username: &str,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Changed<()>>;

    /// Stores a session (a sign-in) and drops expired ones.
    async fn create_session(&self, session: &NewSession, audit: &AuditContext) -> Result<()>;

    /// The account of the session whose id hashes to `id_hash`, unless expired.
    async fn session(&self, id_hash: &str, now: OffsetDateTime) -> Result<Option<SessionAccount>>;

    /// Ends a session (a sign-out); false when there was none.
    async fn delete_session(
        &self,
        id_hash: &str,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<bool>;

    /// [`StoreError::Duplicate`] when the id or the token hash is taken.
    async fn create_api_token(&self, token: &NewApiToken, audit: &AuditContext)
        -> Result<ApiToken>;

    /// The unexpired token whose hash is `token_hash`.
    async fn api_token(&self, token_hash: &str, now: OffsetDateTime) -> Result<Option<ApiToken>>;

    /// Every token, oldest first.
    async fn list_api_tokens(&self) -> Result<Vec<ApiToken>>;

    /// Revokes a token; false when there was none.
    async fn delete_api_token(
        &self,
        id: &str,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<bool>;
}

/// The audit log: reading, verifying and retention. Entries are written by the other
/// stores' writes, in their transactions.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Entries of the hot table and the archive matching `query`, newest first.
    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>>;

    /// Walks the whole chain (archive, then hot table) in one snapshot.
    async fn verify_audit(&self) -> Result<Verification>;

    /// Moves entries written before `hot_before` to the archive and purges archived entries
    /// written before `purge_before`. `None` when another replica is doing it right now.
    async fn retain_audit(
        &self,
        hot_before: OffsetDateTime,
        purge_before: OffsetDateTime,
    ) -> Result<Option<Retained>>;
}

/// A page of the fleet as the web UI filters it: every filter is optional.
#[derive(Debug, Clone, Default)]
pub struct FleetQuery {
    pub status: Option<AgentStatus>,
    pub transport: Option<Transport>,
    pub drift: Option<DriftState>,
    /// Every pair must match an attribute, as [`AgentQuery::attributes`].
    pub attributes: Vec<(String, String)>,
    /// Some attribute value contains this text, ignoring ASCII case.
    pub search: Option<String>,
    pub limit: u32,
    /// Return agents whose uid sorts after this one (the page token).
    pub after: Option<Uuid>,
}

/// One row of the fleet page.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetRow {
    pub head: AgentHead,
    /// `None` when nothing is assigned to the agent.
    pub drift: Option<DriftState>,
}

/// The fleet's size by status and by transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FleetCounts {
    pub total: u64,
    pub online: u64,
    pub offline: u64,
    pub websocket: u64,
    pub http: u64,
}

/// A history row as the change feed reads it: which agent changed, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedAgent {
    pub event_id: i64,
    pub instance_uid: Uuid,
    pub kind: String,
}

/// The fleet as the web UI shows it and follows it.
#[async_trait]
pub trait FleetStore: Send + Sync {
    /// Agents matching `query`, ordered by uid, each with its drift state.
    async fn list_fleet(&self, query: &FleetQuery) -> Result<Vec<FleetRow>>;

    /// One agent's row if it matches `query` (whose `after` and `limit` are ignored).
    async fn fleet_row(&self, uid: Uuid, query: &FleetQuery) -> Result<Option<FleetRow>>;

    async fn fleet_counts(&self) -> Result<FleetCounts>;

    /// History rows after `after` (an event id), oldest first, at most `limit`.
    async fn changes_since(&self, after: i64, limit: u32) -> Result<Vec<ChangedAgent>>;

    /// The id of the newest history row (0: none yet).
    async fn newest_change(&self) -> Result<i64>;
}

/// Everything a control-plane needs from its database.
#[async_trait]
pub trait Store:
    AgentStore
    + FleetStore
    + PresenceStore
    + LeaseStore
    + ConfigurationStore
    + AssignmentStore
    + DriftStore
    + TrustStore
    + OperatorStore
    + AuditStore
    + 'static
{
    /// Cheap round trip for readiness checks.
    async fn ping(&self) -> Result<()>;
}
