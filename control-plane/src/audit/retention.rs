//! Audit retention: entries older than the hot period move to the archive table, unchanged,
//! and archived entries older than the retention period are purged. The newest purged entry
//! becomes the chain's anchor, so what remains still verifies.
//!
//! Every replica runs the job; the store lets one run at a time (a PostgreSQL advisory lock;
//! SQLite has one writer) and a run finding nothing to do changes nothing, so in effect one
//! replica does the work.

use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::Retained;
use crate::storage::{Result, Store};

/// How long entries stay in the hot table, and in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub hot: Duration,
    pub retain: Duration,
}

/// One run at `now` (injected, so tests need not wait): `None` when another replica was
/// running it.
pub async fn run_once(
    store: &dyn Store,
    policy: RetentionPolicy,
    now: OffsetDateTime,
) -> Result<Option<Retained>> {
    let hot_before = now - policy.hot;
    let purge_before = now - policy.retain.max(policy.hot);
    let retained = store.retain_audit(hot_before, purge_before).await?;
    if let Some(retained) = retained {
        if retained.archived > 0 || retained.purged > 0 {
            tracing::info!(
                archived = retained.archived,
                purged = retained.purged,
                "audit retention"
            );
        }
        metrics::counter!("ampora_audit_archived_total").increment(retained.archived);
        metrics::counter!("ampora_audit_purged_total").increment(retained.purged);
    }
    Ok(retained)
}

/// Runs retention every `interval` until `cancel`.
pub async fn run(
    store: std::sync::Arc<dyn Store>,
    policy: RetentionPolicy,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if let Err(error) = run_once(store.as_ref(), policy, OffsetDateTime::now_utc()).await {
            tracing::warn!(%error, "audit retention failed; retrying at the next interval");
        }
    }
}
