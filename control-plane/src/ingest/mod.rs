//! Agent traffic in: bus → partition workers → database → replies.
//!
//! One consumer queue-subscribes to every agent partition and hands each envelope to the worker
//! owning its partition, so one agent's messages are applied in order by one writer. A sweeper
//! marks silent HTTP agents offline and tells the owning worker to forget its cached copy.

mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ampora_shared::bus::Bus;
use ampora_shared::pb::bus::AgentEnvelope;
use ampora_shared::subjects::CONTROL_PLANE_QUEUE;
use ampora_shared::uid;
use futures::StreamExt;
use prost::Message;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::agents::snapshot::Transport;
use crate::config::ControlPlaneConfig;
use crate::storage::Store;
use worker::{WorkItem, Worker};

/// Says whether ingest is consuming; read by `/readyz`.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }
}

/// Consumes agent traffic until `shutdown`, then drains the workers (flushing liveness).
pub async fn run(
    bus: Arc<dyn Bus>,
    store: Arc<dyn Store>,
    config: ControlPlaneConfig,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut subscription = bus
        .queue_subscribe(&config.subjects.agent_inbound_all(), CONTROL_PLANE_QUEUE)
        .await?;
    let mut workers = JoinSet::new();
    let senders: Vec<mpsc::Sender<WorkItem>> = (0..config.workers.max(1))
        .map(|index| {
            let (sender, receiver) = mpsc::channel(config.worker_queue.max(1));
            let worker = Worker::new(index, store.clone(), bus.clone(), config.clone());
            workers.spawn(worker.run(receiver));
            sender
        })
        .collect();
    let route = {
        let subjects = config.subjects.clone();
        let senders = senders.clone();
        move |uid: &Uuid| senders[usize::from(subjects.partition_of(uid)) % senders.len()].clone()
    };
    let sweeper = tokio::spawn(sweep(
        store,
        config.clone(),
        route.clone(),
        shutdown.clone(),
    ));
    readiness.set(true);
    tracing::info!(workers = senders.len(), "control-plane ingest consuming");

    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            message = subscription.next() => match message {
                Some(message) => message,
                None => {
                    tracing::error!("agent subscription ended");
                    break;
                }
            },
        };
        metrics::counter!("ampora_control_plane_envelopes_total").increment(1);
        let envelope = match AgentEnvelope::decode(message.payload) {
            Ok(envelope) => envelope,
            Err(error) => {
                metrics::counter!("ampora_control_plane_envelopes_rejected_total", "reason" => "undecodable").increment(1);
                tracing::warn!(subject = %message.subject, %error, "dropping undecodable envelope");
                continue;
            }
        };
        let Some(uid) = uid::from_wire(&envelope.instance_uid) else {
            metrics::counter!("ampora_control_plane_envelopes_rejected_total", "reason" => "bad_uid").increment(1);
            tracing::warn!(gateway_id = %envelope.gateway_id, "dropping envelope without a 16-byte instance uid");
            continue;
        };
        if route(&uid)
            .send(WorkItem::Envelope(uid, envelope))
            .await
            .is_err()
        {
            tracing::error!("ingest worker stopped");
            break;
        }
    }

    readiness.set(false);
    drop(subscription);
    drop(route);
    drop(senders);
    sweeper.abort();
    while let Some(result) = workers.join_next().await {
        if let Err(error) = result {
            tracing::error!(%error, "ingest worker failed");
        }
    }
    Ok(())
}

/// Marks HTTP agents that stopped polling offline.
async fn sweep(
    store: Arc<dyn Store>,
    config: ControlPlaneConfig,
    route: impl Fn(&Uuid) -> mpsc::Sender<WorkItem>,
    shutdown: CancellationToken,
) {
    let mut interval = tokio::time::interval(config.sweep_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let now = OffsetDateTime::now_utc();
        let cutoff = now - config.heartbeat_timeout;
        match store
            .mark_stale_offline(Transport::Http, cutoff, now, "heartbeat timeout")
            .await
        {
            Ok(uids) => {
                metrics::counter!("ampora_control_plane_heartbeat_timeouts_total")
                    .increment(uids.len() as u64);
                for uid in uids {
                    tracing::info!(instance_uid = %uid, "agent offline: heartbeat timeout");
                    let _ = route(&uid)
                        .send(WorkItem::MarkedOffline { uid, cutoff })
                        .await;
                }
            }
            Err(error) => tracing::warn!(%error, "heartbeat sweep failed"),
        }
    }
}
