//! Agent traffic in: bus → partition workers → database → replies.
//!
//! Agents are split into partitions by a hash of their uid. Each control-plane replica holds
//! leases on a fair share of the partitions ([`ownership`]) and subscribes to just those; inside
//! the replica each partition maps to one worker, so every agent has exactly one writer, which
//! applies its messages in order. Writes are fenced by the lease epoch, so a replica that lost a
//! lease (paused, partitioned) cannot overwrite the new owner's work.
//!
//! Beside ingest run the sweeps ([`presence`]): silent HTTP agents and the WebSocket agents of
//! dead gateways go offline, and every replica is told to forget its cached copies. The
//! assignment set is kept current too: when it changes, each worker resolves its agents again
//! and offers the WebSocket ones their new config at once.

mod ownership;
mod presence;
mod worker;

use std::sync::Arc;

use ampora_shared::bus::Bus;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::assignments::AssignmentWatch;
use crate::config::ControlPlaneConfig;
use crate::storage::Store;
use crate::trust::Trust;
use ownership::Ownership;
use worker::{WorkItem, Worker};

/// Says whether ingest is consuming; read by `/readyz`, awaited by whoever starts ingest.
#[derive(Clone)]
pub struct Readiness(Arc<watch::Sender<bool>>);

impl Default for Readiness {
    fn default() -> Self {
        Readiness(Arc::new(watch::Sender::new(false)))
    }
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once ingest is consuming.
    pub async fn ready(&self) {
        // The sender lives in `self`, so the wait cannot end with the channel closed.
        let _ = self.0.subscribe().wait_for(|ready| *ready).await;
    }

    fn set(&self, ready: bool) {
        self.0
            .send_if_modified(|current| std::mem::replace(current, ready) != ready);
    }
}

/// Hands work to the worker that owns an agent's partition.
#[derive(Clone)]
struct Router {
    config: Arc<ControlPlaneConfig>,
    workers: Arc<Vec<mpsc::Sender<WorkItem>>>,
}

impl Router {
    fn worker_of_partition(&self, partition: u16) -> &mpsc::Sender<WorkItem> {
        &self.workers[usize::from(partition) % self.workers.len()]
    }

    async fn send(&self, uid: &Uuid, item: WorkItem) {
        let partition = self.config.subjects.partition_of(uid);
        if self
            .worker_of_partition(partition)
            .send(item)
            .await
            .is_err()
        {
            tracing::error!("ingest worker stopped");
        }
    }
}

/// Consumes agent traffic until `shutdown`, then gives its partitions up and drains the workers.
pub async fn run(
    bus: Arc<dyn Bus>,
    store: Arc<dyn Store>,
    config: ControlPlaneConfig,
    assignments: AssignmentWatch,
    trust: Arc<Trust>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    // Agents are resolved against the assignments from their first message on.
    if let Err(error) = assignments.refresh(store.as_ref()).await {
        tracing::warn!(%error, "cannot load assignments; retrying in the background");
    }
    let ownership = Arc::new(Ownership::new(config.clone()));
    let mut workers = JoinSet::new();
    let senders: Vec<mpsc::Sender<WorkItem>> = (0..config.workers.max(1))
        .map(|index| {
            let (sender, receiver) = mpsc::channel(config.worker_queue.max(1));
            let worker = Worker::new(
                index,
                store.clone(),
                bus.clone(),
                config.clone(),
                ownership.clone(),
                assignments.clone(),
                trust.clone(),
            );
            workers.spawn(worker.run(receiver));
            sender
        })
        .collect();
    let router = Router {
        config: config.clone(),
        workers: Arc::new(senders),
    };

    let mut background = JoinSet::new();
    background.spawn(presence::listen_evictions(
        bus.clone(),
        config.clone(),
        router.clone(),
        shutdown.clone(),
    ));
    let gateways = presence::Gateways::default();
    background.spawn(presence::listen_gateways(
        bus.clone(),
        config.clone(),
        gateways.clone(),
        shutdown.clone(),
    ));
    background.spawn(presence::sweep(
        store.clone(),
        bus.clone(),
        config.clone(),
        gateways,
        shutdown.clone(),
    ));

    background.spawn(assignments.clone().keep_current(
        store.clone(),
        bus.clone(),
        config.subjects.assignments(),
        config.assignment_check_interval,
        shutdown.clone(),
    ));
    background.spawn(presence::announce_alive(
        bus.clone(),
        config.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));

    tracing::info!(replica_id = %config.replica_id, workers = router.workers.len(), "control-plane ingest starting");
    let mut renew = tokio::time::interval(config.lease_renew_interval);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while shutdown.run_until_cancelled(renew.tick()).await.is_some() {
        match ownership
            .rebalance(store.as_ref(), bus.as_ref(), &router)
            .await
        {
            Ok(()) => readiness.set(true),
            Err(error) => tracing::warn!(%error, "cannot renew partition leases"),
        }
    }

    readiness.set(false);
    background.abort_all();
    ownership.stop_consuming().await;
    // Workers finish their rounds and flush liveness while the leases still fence them in;
    // only then are the leases handed over.
    drop(router);
    while let Some(result) = workers.join_next().await {
        if let Err(error) = result {
            tracing::error!(%error, "ingest worker failed");
        }
    }
    if let Err(error) = store.release_replica(&config.replica_id).await {
        tracing::warn!(%error, "cannot release partition leases; they expire on their own");
    }
    Ok(())
}
