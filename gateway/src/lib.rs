//! Ampora's gateway: terminates agent connections and relays OpAMP over the bus.
//!
//! # Layout
//! - [`config`]: settings and their defaults.
//! - `listener`: the accept loop — connection limit (a semaphore whose permit a WebSocket
//!   session keeps), TLS handshake (rustls), HTTP/1.1 and upgrades via hyper, the peer address
//!   as axum's `ConnectInfo`, deadlines for peers that never speak, graceful drain.
//! - `routes`: `fn app(state) -> Router`: `/v1/opamp` (GET upgrade → WebSocket, POST → plain
//!   HTTP), `/healthz`, `/readyz`, `/metrics`.
//! - `websocket`: one task per WebSocket agent, written over any `Sink`/`Stream` of messages:
//!   frames in, envelopes out, deliveries back, pings, close codes, `ConnectionClosed`.
//! - `http`: one OpAMP exchange per POST, answered within the request.
//! - `relay`: connection ids, the registry of open connections (RAII registrations), the bus
//!   side — publishing envelopes, routing deliveries to the connection they name, heartbeats.
//! - `tls`: loading certificates into a rustls server config; `tls/tickets` makes session
//!   tickets from a key file shared by the gateways, re-read when it changes.
//!
//! A message moves: socket → `websocket`/`http` (decode, bounds) → `relay::Relay::publish`
//! → bus → control-plane → bus → `relay` dispatcher → the connection's queue → socket.

pub mod config;
mod http;
mod listener;
mod relay;
mod routes;
pub mod tls;
mod traffic;
mod websocket;

use std::future::Future;
use std::sync::Arc;

use ampora_shared::bus::{Bus, BusError};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::{CancellationToken, DropGuard};

pub use config::{GatewayConfig, TlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// A gateway whose TLS settings are loaded and whose bus relay runs: it serves once
/// [`Gateway::serve`] is called. Starting first lets a binary report a bad certificate or
/// ticket key file before it says it is ready.
pub struct Gateway {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    config: Arc<GatewayConfig>,
    relay: Arc<relay::Relay>,
    /// Ends the tasks the gateway started (relay, ticket key reloads) when it is dropped,
    /// served or not.
    _stop: DropGuard,
}

impl Gateway {
    pub async fn start(
        listener: TcpListener,
        config: GatewayConfig,
        bus: Arc<dyn Bus>,
    ) -> Result<Gateway, GatewayError> {
        let stop = CancellationToken::new();
        let stop_on_error = stop.clone().drop_guard();
        let tls = config
            .tls
            .as_ref()
            .map(|tls| tls::acceptor(tls, stop.clone()))
            .transpose()?;
        let config = Arc::new(config);
        let relay = relay::Relay::start(bus, config.clone(), stop.clone()).await?;
        stop_on_error.disarm();
        Ok(Gateway {
            listener,
            tls,
            config,
            relay,
            _stop: stop.drop_guard(),
        })
    }

    /// Serves agents until `shutdown` resolves, then drains: stops accepting, closes WebSockets
    /// with 1001 ("going away"), and lets in-flight HTTP exchanges finish within
    /// `config.shutdown_grace`.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let Gateway {
            listener,
            tls,
            config,
            relay,
            _stop,
        } = self;
        tracing::info!(gateway_id = %config.gateway_id, addr = ?listener.local_addr().ok(), tls = tls.is_some(), "gateway listening");
        listener::serve(listener, tls, config, relay, shutdown).await;
    }
}

/// [`Gateway::start`], then [`Gateway::serve`].
pub async fn run(
    listener: TcpListener,
    config: GatewayConfig,
    bus: Arc<dyn Bus>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    Gateway::start(listener, config, bus)
        .await?
        .serve(shutdown)
        .await;
    Ok(())
}
