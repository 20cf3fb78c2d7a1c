//! The gateway's side of the bus: numbers connections, publishes what agents send, and routes
//! the control-plane's deliveries to the connection they name.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ampora_shared::bus::Subscription;
use ampora_shared::bus::{Bus, BusError};
use ampora_shared::pb::bus::{
    agent_envelope::Event, AgentEnvelope, ConnectionClosed, ControlPlaneHeartbeat, GatewayDelivery,
    GatewayHeartbeat, Transport,
};
use bytes::Bytes;
use futures::channel::mpsc;
use futures::StreamExt;
use prost::Message;
use tokio::sync::oneshot;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::credentials::Credentials;
use crate::traffic::Traffic;
use crate::GatewayConfig;

/// Where a delivery for a connection goes.
enum Route {
    /// `futures`' channel allocates per message, not a block of slots up front: an idle
    /// connection's queue costs ~250 bytes, tokio's ~800.
    WebSocket(mpsc::Sender<GatewayDelivery>),
    Http(oneshot::Sender<GatewayDelivery>),
}

/// Who is on the other end of a connection, as the envelope reports it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub connection_id: u64,
    pub transport: Transport,
    pub remote_addr: String,
    pub credentials: Credentials,
}

/// A connection's route in the registry; dropping it removes the route, so a handler that is
/// cancelled (the client went away mid-request) cannot leak its entry.
pub struct Registration {
    relay: Arc<Relay>,
    connection_id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.relay.routes().remove(&self.connection_id);
    }
}

pub struct Relay {
    bus: Arc<dyn Bus>,
    config: Arc<GatewayConfig>,
    next_connection_id: AtomicU64,
    routes: Mutex<HashMap<u64, Route>>,
    ready: AtomicBool,
    started: Instant,
    /// Milliseconds after `started` when a control-plane was last heard.
    control_plane_heard_ms: AtomicU64,
    /// Milliseconds after `started` when the heartbeat watcher last had every heartbeat that
    /// had arrived in hand.
    control_plane_looked_ms: AtomicU64,
    traffic: Traffic,
}

impl Relay {
    /// Subscribes to this gateway's deliveries before any agent can connect; runs the relay's
    /// background tasks until `stop`.
    pub async fn start(
        bus: Arc<dyn Bus>,
        config: Arc<GatewayConfig>,
        stop: CancellationToken,
    ) -> Result<Arc<Relay>, BusError> {
        let deliveries = bus
            .subscribe(&config.subjects.gateway(&config.gateway_id))
            .await?;
        let heartbeats = bus
            .subscribe(&config.subjects.control_plane_heartbeat())
            .await?;
        let relay = Arc::new(Relay {
            bus,
            config,
            next_connection_id: AtomicU64::new(1),
            routes: Mutex::new(HashMap::new()),
            ready: AtomicBool::new(true),
            started: Instant::now(),
            control_plane_heard_ms: AtomicU64::new(0),
            control_plane_looked_ms: AtomicU64::new(0),
            traffic: Traffic::new(),
        });
        for task in [
            tokio::spawn(relay.clone().dispatch(deliveries)),
            tokio::spawn(relay.clone().hear_control_planes(heartbeats)),
            tokio::spawn(relay.clone().announce()),
        ] {
            let stop = stop.clone();
            tokio::spawn(async move {
                stop.cancelled().await;
                task.abort();
            });
        }
        Ok(relay)
    }

    /// The metrics every message on this gateway touches.
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// Whether some control-plane was heard (a heartbeat or a delivery, which only a working
    /// control-plane sends) within the timeout before the heartbeat watcher last looked,
    /// counting from our start, so a fresh gateway gives them one timeout to speak up. Silence
    /// counts only up to the watcher's last look: a gateway too busy to run its watcher (a
    /// reconnect storm's handshakes) has heartbeats waiting unread, which says nothing about
    /// the control-planes.
    pub fn control_plane_available(&self) -> bool {
        let heard = self.control_plane_heard_ms.load(Ordering::Relaxed);
        let looked = self.control_plane_looked_ms.load(Ordering::Relaxed);
        looked.saturating_sub(heard) <= self.config.control_plane_timeout.as_millis() as u64
    }

    /// Reads heartbeats as they come and looks once per heartbeat interval; each look first
    /// reads every heartbeat already waiting.
    async fn hear_control_planes(self: Arc<Self>, mut heartbeats: Subscription) {
        let mut look = tokio::time::interval(self.config.heartbeat_interval);
        look.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                message = heartbeats.next() => match message {
                    Some(message) => {
                        if ControlPlaneHeartbeat::decode(message.payload).is_ok() {
                            self.heard_control_plane();
                        }
                    }
                    None => break,
                },
                _ = look.tick() => {
                    self.control_plane_looked_ms.store(self.elapsed_ms(), Ordering::Relaxed);
                }
            }
        }
    }

    fn heard_control_plane(&self) {
        self.control_plane_heard_ms
            .store(self.elapsed_ms(), Ordering::Relaxed);
    }

    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Tells control-planes this gateway is alive, so its agents stay online.
    async fn announce(self: Arc<Self>) {
        let mut interval = tokio::time::interval(self.config.heartbeat_interval);
        let subject = self.config.subjects.gateway_heartbeat();
        loop {
            interval.tick().await;
            let beat = GatewayHeartbeat {
                gateway_id: self.config.gateway_id.clone(),
                connections: self.routes().len() as u64,
            };
            if let Err(error) = self
                .bus
                .publish(&subject, beat.encode_to_vec().into())
                .await
            {
                tracing::debug!(%error, "cannot announce the gateway");
            }
            let available = self.control_plane_available();
            metrics::gauge!("ampora_gateway_control_plane_available")
                .set(f64::from(u8::from(available)));
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Route>> {
        self.routes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Routes deliveries for a WebSocket connection into a queue of `capacity`; the route lives
    /// as long as the returned [`Registration`].
    pub fn register_websocket(
        self: &Arc<Self>,
        connection_id: u64,
        capacity: usize,
    ) -> (Registration, mpsc::Receiver<GatewayDelivery>) {
        // The channel holds its buffer plus one message per sender, and the route is the one.
        let (sender, receiver) = mpsc::channel(capacity.saturating_sub(1));
        self.routes()
            .insert(connection_id, Route::WebSocket(sender));
        (self.registration(connection_id), receiver)
    }

    /// Routes the one delivery for an HTTP exchange; the route lives as long as the returned
    /// [`Registration`] (or until the delivery arrives).
    pub fn register_http(
        self: &Arc<Self>,
        connection_id: u64,
    ) -> (Registration, oneshot::Receiver<GatewayDelivery>) {
        let (sender, receiver) = oneshot::channel();
        self.routes().insert(connection_id, Route::Http(sender));
        (self.registration(connection_id), receiver)
    }

    fn registration(self: &Arc<Self>, connection_id: u64) -> Registration {
        Registration {
            relay: self.clone(),
            connection_id,
        }
    }

    /// Publishes one AgentToServer (already validated, as received) for the control-plane.
    pub async fn publish_message(
        &self,
        peer: &Peer,
        uid: &Uuid,
        payload: Bytes,
    ) -> Result<(), BusError> {
        self.publish(peer, uid, Event::AgentToServer(payload)).await
    }

    /// Tells the control-plane a WebSocket ended without the agent saying goodbye.
    pub async fn publish_closed(
        &self,
        peer: &Peer,
        uid: &Uuid,
        reason: &str,
    ) -> Result<(), BusError> {
        self.publish(
            peer,
            uid,
            Event::ConnectionClosed(ConnectionClosed {
                reason: reason.to_owned(),
            }),
        )
        .await
    }

    async fn publish(&self, peer: &Peer, uid: &Uuid, event: Event) -> Result<(), BusError> {
        if matches!(event, Event::AgentToServer(_)) && !self.control_plane_available() {
            return Err(BusError::Unavailable(
                "no control-plane heard recently".into(),
            ));
        }
        let envelope = AgentEnvelope {
            instance_uid: Bytes::copy_from_slice(uid.as_bytes()),
            gateway_id: self.config.gateway_id.clone(),
            connection_id: peer.connection_id,
            transport: peer.transport as i32,
            received_unix_nano: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            remote_addr: peer.remote_addr.clone(),
            client_certificate_sha256: peer.credentials.certificate_sha256.clone(),
            bearer_token: peer.credentials.bearer_token.clone(),
            enrolment_only: peer.credentials.enrolment_only,
            event: Some(event),
        };
        let result = self
            .bus
            .publish(
                &self.config.subjects.agent_inbound(uid),
                envelope.encode_to_vec().into(),
            )
            .await;
        if result.is_err() {
            metrics::counter!("ampora_gateway_bus_publish_errors_total").increment(1);
        }
        result
    }

    async fn dispatch(self: Arc<Self>, mut subscription: Subscription) {
        while let Some(message) = subscription.next().await {
            let delivery = match GatewayDelivery::decode(message.payload) {
                Ok(delivery) => delivery,
                Err(error) => {
                    tracing::warn!(%error, "dropping undecodable delivery");
                    continue;
                }
            };
            // A gateway busy enough to fall behind on the heartbeat subject (a reconnect storm's
            // handshakes) still hears the control-plane answering its agents.
            self.heard_control_plane();
            let connection_id = delivery.connection_id;
            let mut routes = self.routes();
            let dropped = match routes.get_mut(&connection_id) {
                // A full queue means the agent is not reading; the control-plane re-offers
                // whatever still matters on the agent's next message, so drop rather than block
                // every other connection behind this one.
                Some(Route::WebSocket(queue)) => match queue.try_send(delivery) {
                    Ok(()) => None,
                    Err(error) if error.is_full() => Some("queue_full"),
                    Err(_) => Some("no_connection"),
                },
                Some(Route::Http(_)) => {
                    if let Some(Route::Http(waiter)) = routes.remove(&connection_id) {
                        let _ = waiter.send(delivery);
                    }
                    None
                }
                None => Some("no_connection"),
            };
            drop(routes);
            if let Some(reason) = dropped {
                metrics::counter!("ampora_gateway_deliveries_dropped_total", "reason" => reason)
                    .increment(1);
            }
        }
        self.ready.store(false, Ordering::Relaxed);
        tracing::error!(gateway_id = %self.config.gateway_id, "delivery subscription ended");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use ampora_shared::bus::InProcessBus;

    #[tokio::test]
    async fn registrations_end_with_their_guard() {
        let stop = CancellationToken::new();
        let relay = Relay::start(
            Arc::new(InProcessBus::default()),
            Arc::new(GatewayConfig::for_test()),
            stop.clone(),
        )
        .await
        .unwrap();
        let (first, second) = (relay.next_connection_id(), relay.next_connection_id());
        assert_eq!((first, second), (1, 2));
        let (http, _reply) = relay.register_http(first);
        let (websocket, _queue) = relay.register_websocket(second, 4);
        assert_eq!(relay.routes().len(), 2);
        drop(http);
        assert!(!relay.routes().contains_key(&first));
        drop(websocket);
        assert!(relay.routes().is_empty());
        stop.cancel();
    }

    async fn heartbeat(bus: &InProcessBus, config: &GatewayConfig) {
        let beat = ControlPlaneHeartbeat {
            replica_id: "replica-1".into(),
        };
        bus.publish(
            &config.subjects.control_plane_heartbeat(),
            beat.encode_to_vec().into(),
        )
        .await
        .unwrap();
    }

    /// The test's runtime has one thread: blocking it stands for a gateway whose threads are
    /// all busy, so its heartbeat watcher cannot run.
    #[tokio::test]
    async fn a_gateway_too_busy_to_read_heartbeats_does_not_take_the_control_plane_for_gone() {
        let bus = Arc::new(InProcessBus::default());
        let config = Arc::new(GatewayConfig {
            heartbeat_interval: Duration::from_millis(50),
            control_plane_timeout: Duration::from_millis(300),
            ..GatewayConfig::for_test()
        });
        let stop = CancellationToken::new();
        let relay = Relay::start(bus.clone(), config.clone(), stop.clone())
            .await
            .unwrap();
        for _ in 0..8 {
            heartbeat(&bus, &config).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(relay.control_plane_available());

        std::thread::sleep(3 * config.control_plane_timeout);
        assert!(
            relay.control_plane_available(),
            "heartbeats the gateway could not read yet were taken for silence"
        );

        // Real silence, with the watcher running, is still noticed.
        tokio::time::sleep(config.control_plane_timeout + 4 * config.heartbeat_interval).await;
        assert!(!relay.control_plane_available());
        heartbeat(&bus, &config).await;
        tokio::time::sleep(2 * config.heartbeat_interval).await;
        assert!(relay.control_plane_available());
        stop.cancel();
    }
}
