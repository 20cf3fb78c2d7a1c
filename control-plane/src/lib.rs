//! Ampora's control-plane: owns what is known about every agent.
//!
//! # Layout
//! - [`agents`]: the domain — the snapshot types, capability names, and [`agents::merge`], which
//!   applies one OpAMP message to an agent (state compression, sequence gaps, history events).
//! - [`ingest`]: bus consumer → partition workers (one writer per agent) → batched commits →
//!   replies to the gateway holding the agent; plus the heartbeat-timeout sweeper.
//! - [`configurations`]: authoring — drafts, validation and lint, publishing, diffs.
//! - [`assignments`]: which published version each agent should run, and the in-memory set
//!   every replica resolves agents against.
//! - [`remote_config`]: per agent, when to offer its config, what it answered, and drift.
//! - [`operators`]: accounts, roles, sessions, API tokens and the sign-in guard.
//! - [`audit`]: the hash-chained audit log every state change writes, and its retention.
//! - [`storage`]: the [`storage::Store`] trait and its PostgreSQL and SQLite implementations.
//! - [`api`]: the operator REST API and health endpoints (axum).
//! - [`trust`]: Ampora's CA, bootstrap tokens, agents' certificates, and the identity check of
//!   every agent message.
//! - [`ui`]: the web UI on the same listener: server-rendered pages, live updates (SSE).
//! - [`config`]: settings and defaults.

pub mod agents;
pub mod api;
pub mod assignments;
pub mod audit;
pub mod config;
pub mod configurations;
pub mod ingest;
pub mod operators;
pub mod remote_config;
pub mod storage;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trust;
pub mod ui;

use std::future::Future;
use std::sync::Arc;

use ampora_shared::bus::Bus;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use assignments::AssignmentWatch;
use config::ControlPlaneConfig;
use ingest::Readiness;
use storage::Store;

/// Runs ingest, audit retention and the HTTP API on `listener` until `shutdown` resolves, then
/// drains them.
/// `readiness` turns true once agent traffic is being consumed.
pub async fn run(
    listener: TcpListener,
    config: ControlPlaneConfig,
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let request_timeout = config.api_request_timeout;
    let http_tls = config.http_tls.clone();
    let assignments = AssignmentWatch::default();
    let trust = trust::Trust::start(store.clone(), config.trust.clone()).await?;
    let publisher = tokio::spawn(trust::publisher::run(
        trust.clone(),
        bus.clone(),
        config.subjects.clone(),
        cancel.clone(),
    ));
    let live = ui::Live::new(store.clone());
    let state = api::ApiState {
        live: live.clone(),
        store: store.clone(),
        readiness: readiness.clone(),
        bus: bus.clone(),
        subjects: config.subjects.clone(),
        assignments: assignments.clone(),
        trust: trust.clone(),
        operators: operators::Operators::new(config.session_ttl),
    };
    let retention = tokio::spawn(audit::retention::run(
        store.clone(),
        config.audit_retention,
        config.audit_retention_interval,
        cancel.clone(),
    ));
    let ingest = tokio::spawn(ingest::run(
        bus,
        store,
        config,
        assignments,
        trust,
        readiness,
        cancel.clone(),
    ));
    let router = api::app(state, request_timeout);
    let serve_cancel = cancel.clone();
    api::serve(listener, router, request_timeout, http_tls, async move {
        tokio::select! {
            _ = shutdown => {}
            _ = serve_cancel.cancelled() => {}
        }
        // Open pages' streams end, so their connections drain.
        live.close();
    })
    .await;
    cancel.cancel();
    retention.await?;
    ingest.await??;
    publisher.await?;
    Ok(())
}
