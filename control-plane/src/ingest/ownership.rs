//! Partition leases: which agents this replica writes for.
//!
//! Every renew interval the replica reports itself alive, asks for its fair share of the
//! partitions (`ceil(partitions / live replicas)`), and subscribes to the agent subjects of the
//! partitions it holds. A partition it loses — or holds again under a new epoch, after its lease
//! lapsed — is released to its worker, which forgets the cached agents so the next message
//! reloads what the other owner wrote.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use ampora_shared::bus::{Bus, Subscription};
use ampora_shared::pb::bus::AgentEnvelope;
use ampora_shared::uid;
use futures::StreamExt;
use prost::Message;
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::worker::WorkItem;
use super::Router;
use crate::config::ControlPlaneConfig;
use crate::storage::{Fence, Lease, Store};

pub struct Ownership {
    config: Arc<ControlPlaneConfig>,
    /// Held partitions and their epochs; read by workers to fence their writes.
    epochs: RwLock<HashMap<u16, i64>>,
    forwarders: tokio::sync::Mutex<HashMap<u16, (i64, JoinHandle<()>)>>,
    /// Tells the forwarders to take no more messages (shutdown).
    stop: CancellationToken,
}

impl Ownership {
    pub fn new(config: Arc<ControlPlaneConfig>) -> Self {
        Self {
            config,
            epochs: RwLock::new(HashMap::new()),
            forwarders: tokio::sync::Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
        }
    }

    fn epochs(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u16, i64>> {
        self.epochs
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The fence for writing agents of these partitions; a partition not held gets an epoch no
    /// lease has, so the write is refused.
    pub fn fence(&self, partitions: impl IntoIterator<Item = u16>) -> Fence {
        let epochs = self.epochs();
        let mut leases: Vec<Lease> = partitions
            .into_iter()
            .map(|partition| Lease {
                partition,
                epoch: epochs.get(&partition).copied().unwrap_or(-1),
            })
            .collect();
        leases.sort_by_key(|lease| lease.partition);
        leases.dedup();
        Fence {
            owner: self.config.replica_id.clone(),
            leases,
        }
    }

    pub async fn rebalance(
        &self,
        store: &dyn Store,
        bus: &dyn Bus,
        router: &Router,
    ) -> crate::storage::Result<()> {
        let now = OffsetDateTime::now_utc();
        let expires_at = now + self.config.lease_ttl;
        let replica = &self.config.replica_id;
        let live = store.heartbeat_replica(replica, now, expires_at).await?;
        let total = self.config.subjects.partitions();
        let want = total.div_ceil(u16::try_from(live).unwrap_or(u16::MAX).max(1));
        let leases = store
            .claim_partitions(replica, total, want, now, expires_at)
            .await?;
        let held: HashMap<u16, i64> = leases
            .iter()
            .map(|lease| (lease.partition, lease.epoch))
            .collect();

        let mut forwarders = self.forwarders.lock().await;
        let gone: Vec<u16> = forwarders
            .iter()
            .filter(|(partition, (epoch, _))| held.get(partition) != Some(epoch))
            .map(|(partition, _)| *partition)
            .collect();
        // Stop fencing-in first, so nothing more is written for a partition we no longer own.
        *self
            .epochs
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = held.clone();
        for partition in gone {
            if let Some((_, forwarder)) = forwarders.remove(&partition) {
                forwarder.abort();
            }
            let _ = router
                .worker_of_partition(partition)
                .send(WorkItem::Release(partition))
                .await;
            tracing::info!(partition, "partition released");
        }
        for (partition, epoch) in held {
            if forwarders.contains_key(&partition) {
                continue;
            }
            match bus
                .subscribe(&self.config.subjects.agent_partition(partition))
                .await
            {
                Ok(subscription) => {
                    let forwarder = tokio::spawn(forward(
                        subscription,
                        partition,
                        router.clone(),
                        self.stop.clone(),
                    ));
                    forwarders.insert(partition, (epoch, forwarder));
                    tracing::debug!(partition, epoch, "partition acquired");
                }
                Err(error) => {
                    tracing::warn!(partition, %error, "cannot subscribe to an owned partition")
                }
            }
        }
        metrics::gauge!("ampora_control_plane_partitions_owned").set(forwarders.len() as f64);
        metrics::gauge!("ampora_control_plane_replicas_live").set(f64::from(live));
        Ok(())
    }

    /// Stops consuming every partition (shutdown). The leases stay held, so the workers can
    /// still commit what they have before the replica gives them up.
    pub async fn stop_consuming(&self) {
        self.stop.cancel();
        for (_, (_, forwarder)) in self.forwarders.lock().await.drain() {
            let _ = forwarder.await;
        }
    }
}

/// Feeds one partition's envelopes to its worker, in arrival order, until `stop`. Stopping
/// ends the wait for the next message, never a hand-over: what was taken reaches the worker.
async fn forward(
    mut subscription: Subscription,
    partition: u16,
    router: Router,
    stop: CancellationToken,
) {
    let envelopes = metrics::counter!("ampora_control_plane_envelopes_total");
    while let Some(Some(message)) = stop.run_until_cancelled(subscription.next()).await {
        envelopes.increment(1);
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
            continue;
        };
        if router.config.subjects.partition_of(&uid) != partition {
            metrics::counter!("ampora_control_plane_envelopes_rejected_total", "reason" => "wrong_partition").increment(1);
            continue;
        }
        if router
            .worker_of_partition(partition)
            .send(WorkItem::Envelope(uid, envelope))
            .await
            .is_err()
        {
            return;
        }
    }
}
