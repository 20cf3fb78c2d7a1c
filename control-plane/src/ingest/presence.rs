//! Who is still there: silent HTTP agents and dead gateways' WebSocket agents go offline,
//! every replica hears which agents a sweep changed behind their owner's back, and gateways
//! hear that this replica is alive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ampora_shared::bus::Bus;
use ampora_shared::pb::bus::{ControlPlaneHeartbeat, Evictions, GatewayHeartbeat};
use ampora_shared::uid;
use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::worker::WorkItem;
use super::{Readiness, Router};
use crate::agents::snapshot::Transport;
use crate::config::ControlPlaneConfig;
use crate::storage::Store;

/// When each gateway was last heard from.
#[derive(Clone, Default)]
pub struct Gateways(Arc<Mutex<HashMap<String, Instant>>>);

impl Gateways {
    fn heard(&self, gateway_id: String) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(gateway_id, Instant::now());
    }

    fn last_heard(&self, gateway_id: &str) -> Option<Instant> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(gateway_id)
            .copied()
    }
}

/// Tells gateways, while ingest is consuming, that a control-plane is there. A task of its own:
/// a lease renewal waiting on a busy database must not silence it, or gateways would turn
/// agents away as if no control-plane were running.
pub async fn announce_alive(
    bus: Arc<dyn Bus>,
    config: Arc<ControlPlaneConfig>,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let beat = Bytes::from(
        ControlPlaneHeartbeat {
            replica_id: config.replica_id.clone(),
        }
        .encode_to_vec(),
    );
    let subject = config.subjects.control_plane_heartbeat();
    let mut heartbeat = tokio::time::interval(config.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while shutdown
        .run_until_cancelled(heartbeat.tick())
        .await
        .is_some()
    {
        if readiness.is_ready() {
            if let Err(error) = bus.publish(&subject, beat.clone()).await {
                tracing::debug!(%error, "cannot announce this control-plane");
            }
        }
    }
}

pub async fn listen_gateways(
    bus: Arc<dyn Bus>,
    config: Arc<ControlPlaneConfig>,
    gateways: Gateways,
    shutdown: CancellationToken,
) {
    let Ok(mut heartbeats) = bus.subscribe(&config.subjects.gateway_heartbeat()).await else {
        tracing::error!("cannot subscribe to gateway heartbeats");
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            message = heartbeats.next() => match message {
                Some(message) => {
                    if let Ok(beat) = GatewayHeartbeat::decode(message.payload) {
                        gateways.heard(beat.gateway_id);
                    }
                }
                None => return,
            },
        }
    }
}

/// Applies other replicas' (and our own) sweeps to this replica's caches.
pub async fn listen_evictions(
    bus: Arc<dyn Bus>,
    config: Arc<ControlPlaneConfig>,
    router: Router,
    shutdown: CancellationToken,
) {
    let Ok(mut evictions) = bus.subscribe(&config.subjects.evictions()).await else {
        tracing::error!("cannot subscribe to evictions");
        return;
    };
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return,
            message = evictions.next() => match message {
                Some(message) => message,
                None => return,
            },
        };
        let Ok(evictions) = Evictions::decode(message.payload) else {
            continue;
        };
        let cutoff =
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(evictions.cutoff_unix_nano))
                .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        for uid in evictions
            .instance_uids
            .iter()
            .filter_map(|bytes| uid::from_wire(bytes))
        {
            router
                .send(&uid, WorkItem::MarkedOffline { uid, cutoff })
                .await;
        }
    }
}

async fn publish_evictions(
    bus: &dyn Bus,
    config: &ControlPlaneConfig,
    uids: &[Uuid],
    cutoff: OffsetDateTime,
) {
    for chunk in uids.chunks(10_000) {
        let evictions = Evictions {
            instance_uids: chunk
                .iter()
                .map(|uid| Bytes::copy_from_slice(uid.as_bytes()))
                .collect(),
            cutoff_unix_nano: cutoff.unix_timestamp_nanos().max(0) as u64,
        };
        if let Err(error) = bus
            .publish(
                &config.subjects.evictions(),
                evictions.encode_to_vec().into(),
            )
            .await
        {
            tracing::warn!(%error, "cannot announce evictions");
        }
    }
}

/// Periodically: HTTP agents unseen for the heartbeat timeout, and the WebSocket agents of
/// gateways unheard for the gateway timeout, go offline. Any replica may sweep; the database
/// hands each agent to one sweeper.
pub async fn sweep(
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    config: Arc<ControlPlaneConfig>,
    gateways: Gateways,
    shutdown: CancellationToken,
) {
    let started = Instant::now();
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
            Ok(uids) if !uids.is_empty() => {
                metrics::counter!("ampora_control_plane_heartbeat_timeouts_total")
                    .increment(uids.len() as u64);
                tracing::info!(
                    agents = uids.len(),
                    "HTTP agents offline: heartbeat timeout"
                );
                publish_evictions(bus.as_ref(), &config, &uids, cutoff).await;
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "heartbeat sweep failed"),
        }

        // A gateway counts as heard at our start, so a replica starting up gives gateways one
        // timeout to introduce themselves.
        let dead_before = Instant::now().checked_sub(config.gateway_timeout);
        let Ok(holding) = store.gateways_with_online_agents().await else {
            continue;
        };
        for gateway_id in holding {
            let heard = gateways
                .last_heard(&gateway_id)
                .unwrap_or(started)
                .max(started);
            if dead_before.is_none_or(|dead_before| heard >= dead_before) {
                continue;
            }
            match store
                .mark_gateway_offline(&gateway_id, now, "gateway lost")
                .await
            {
                Ok(uids) if !uids.is_empty() => {
                    metrics::counter!("ampora_control_plane_gateway_losses_total").increment(1);
                    tracing::warn!(%gateway_id, agents = uids.len(), "gateway silent: its agents are offline");
                    // Anything seen after now is on another gateway already.
                    publish_evictions(bus.as_ref(), &config, &uids, now).await;
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%gateway_id, %error, "gateway sweep failed"),
            }
        }
    }
}
