//! The gateway's side of the bus: numbers connections, publishes what agents send, and routes
//! the control-plane's deliveries to the connection they name.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use ampora_shared::bus::{Bus, BusError};
use ampora_shared::pb::bus::{
    agent_envelope::Event, AgentEnvelope, ConnectionClosed, GatewayDelivery, Transport,
};
use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::GatewayConfig;

/// Where a delivery for a connection goes.
enum Route {
    WebSocket(mpsc::Sender<GatewayDelivery>),
    Http(oneshot::Sender<GatewayDelivery>),
}

/// Who is on the other end of a connection, as the envelope reports it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub connection_id: u64,
    pub transport: Transport,
    pub remote_addr: String,
}

pub struct Relay {
    bus: Arc<dyn Bus>,
    config: Arc<GatewayConfig>,
    next_connection_id: AtomicU64,
    routes: Mutex<HashMap<u64, Route>>,
    ready: AtomicBool,
}

impl Relay {
    /// Subscribes to this gateway's deliveries before any agent can connect.
    pub async fn start(
        bus: Arc<dyn Bus>,
        config: Arc<GatewayConfig>,
    ) -> Result<Arc<Relay>, BusError> {
        let subscription = bus
            .subscribe(&config.subjects.gateway(&config.gateway_id))
            .await?;
        let relay = Arc::new(Relay {
            bus,
            config,
            next_connection_id: AtomicU64::new(1),
            routes: Mutex::new(HashMap::new()),
            ready: AtomicBool::new(true),
        });
        tokio::spawn(relay.clone().dispatch(subscription));
        Ok(relay)
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

    pub fn register_websocket(&self, connection_id: u64, queue: mpsc::Sender<GatewayDelivery>) {
        self.routes().insert(connection_id, Route::WebSocket(queue));
    }

    pub fn register_http(&self, connection_id: u64) -> oneshot::Receiver<GatewayDelivery> {
        let (sender, receiver) = oneshot::channel();
        self.routes().insert(connection_id, Route::Http(sender));
        receiver
    }

    pub fn deregister(&self, connection_id: u64) {
        self.routes().remove(&connection_id);
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
        let envelope = AgentEnvelope {
            instance_uid: Bytes::copy_from_slice(uid.as_bytes()),
            gateway_id: self.config.gateway_id.clone(),
            connection_id: peer.connection_id,
            transport: peer.transport as i32,
            received_unix_nano: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            remote_addr: peer.remote_addr.clone(),
            peer_identity: String::new(),
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

    async fn dispatch(self: Arc<Self>, mut subscription: ampora_shared::bus::Subscription) {
        while let Some(message) = subscription.next().await {
            let delivery = match GatewayDelivery::decode(message.payload) {
                Ok(delivery) => delivery,
                Err(error) => {
                    tracing::warn!(%error, "dropping undecodable delivery");
                    continue;
                }
            };
            let connection_id = delivery.connection_id;
            let route = {
                let mut routes = self.routes();
                match routes.get(&connection_id) {
                    Some(Route::WebSocket(queue)) => Some(Route::WebSocket(queue.clone())),
                    Some(Route::Http(_)) => routes.remove(&connection_id),
                    None => None,
                }
            };
            match route {
                Some(Route::WebSocket(queue)) => {
                    // A full queue means the agent is not reading; the control-plane re-offers
                    // whatever still matters on the agent's next message, so drop rather than block
                    // every other connection behind this one.
                    if queue.try_send(delivery).is_err() {
                        metrics::counter!("ampora_gateway_deliveries_dropped_total", "reason" => "queue_full").increment(1);
                    }
                }
                Some(Route::Http(waiter)) => {
                    let _ = waiter.send(delivery);
                }
                None => {
                    metrics::counter!("ampora_gateway_deliveries_dropped_total", "reason" => "no_connection").increment(1);
                }
            }
        }
        self.ready.store(false, Ordering::Relaxed);
        tracing::error!(gateway_id = %self.config.gateway_id, "delivery subscription ended");
    }
}
