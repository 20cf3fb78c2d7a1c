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
//!   tickets from a key file shared by the gateways, re-read when it changes;
//!   `tls/client_auth` verifies client certificates against the CAs of the trust state.
//! - `trust`: the control-planes' `TrustState` from the bus (asked for at start), applied to
//!   the verifier; live connections by certificate fingerprint, closed when it is revoked.
//! - `proxy_protocol`: the PROXY v2 header of a configured load balancer (the agent's address).
//! - `credentials`: what a connection proved (certificate fingerprint, Bearer token) and
//!   whether that is enough; the envelope carries it to the control-plane.
//!
//! A message moves: socket → `websocket`/`http` (decode, bounds) → `relay::Relay::publish`
//! → bus → control-plane → bus → `relay` dispatcher → the connection's queue → socket.

pub mod config;
mod credentials;
mod http;
mod listener;
mod proxy_protocol;
mod relay;
mod routes;
pub mod tls;
mod traffic;
mod trust;
mod websocket;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use ampora_shared::bus::{Bus, BusError};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::{CancellationToken, DropGuard};

pub use config::{ClientAuth, GatewayConfig, ProxyProtocolFrom, TlsConfig};
use credentials::Policy;
use tls::client_auth::ClientCertificates;
use trust::Trust;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// Plain connections on an address other hosts reach, without the insecure flag.
    #[error("{0}")]
    Insecure(String),
}

/// A gateway whose TLS settings are loaded and whose bus relay runs: it serves once
/// [`Gateway::serve`] is called. Starting first lets a binary report a bad certificate or
/// ticket key file before it says it is ready.
pub struct Gateway {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    config: Arc<GatewayConfig>,
    relay: Arc<relay::Relay>,
    trust: Option<Arc<Trust>>,
    policy: Policy,
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
        let local = listener.local_addr()?;
        let policy = policy(&config, local)?;
        let stop = CancellationToken::new();
        let stop_on_error = stop.clone().drop_guard();
        let verifier = (policy.client_auth != ClientAuth::None).then(|| {
            Arc::new(ClientCertificates::new(
                policy.client_auth == ClientAuth::Required,
            ))
        });
        let tls = config
            .tls
            .as_ref()
            .map(|tls| tls::acceptor(tls, verifier.clone(), stop.clone()))
            .transpose()?;
        let config = Arc::new(config);
        let relay = relay::Relay::start(bus.clone(), config.clone(), stop.clone()).await?;
        let trust = match verifier {
            Some(verifier) => {
                Some(Trust::start(bus, config.clone(), verifier, stop.clone()).await?)
            }
            None => None,
        };
        stop_on_error.disarm();
        Ok(Gateway {
            listener,
            tls,
            config,
            relay,
            trust,
            policy,
            _stop: stop.drop_guard(),
        })
    }

    /// How agents authenticate here, in a sentence for the start-up banner.
    pub fn agent_authentication(&self) -> String {
        describe(&self.policy, self.tls.is_some())
    }

    /// With client authentication, the `read_unix_nano` of each trust state the gateway applies
    /// (`None` until the first).
    pub fn trust_applied(&self) -> Option<watch::Receiver<Option<u64>>> {
        self.trust.as_ref().map(|trust| trust.applied())
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
            trust,
            policy,
            _stop,
        } = self;
        tracing::info!(
            gateway_id = %config.gateway_id,
            addr = ?listener.local_addr().ok(),
            tls = tls.is_some(),
            client_auth = policy.client_auth.as_str(),
            "gateway listening"
        );
        listener::serve(listener, tls, config, relay, trust, policy, shutdown).await;
    }
}

/// Refuses to serve plain connections on `local` when other hosts can reach it, unless the
/// settings say `insecure`. [`Gateway::start`] checks it; a binary may check first, before it
/// connects to anything.
pub fn check_exposure(config: &GatewayConfig, local: SocketAddr) -> Result<(), GatewayError> {
    if config.tls.is_none() && !is_loopback(local) && !config.insecure {
        return Err(GatewayError::Insecure(format!(
            "AMPORA_OPAMP_LISTEN {local} is not a loopback address, and agents would connect \
             without TLS and unauthenticated: set AMPORA_TLS_CERT and AMPORA_TLS_KEY, or start \
             with --insecure (AMPORA_INSECURE=true) to accept that"
        )));
    }
    Ok(())
}

fn is_loopback(local: SocketAddr) -> bool {
    local.ip().to_canonical().is_loopback()
}

/// Who may connect, from the settings and where the gateway listens: on a loopback address
/// anything goes; elsewhere TLS and a credential on every connection, unless `insecure`.
fn policy(config: &GatewayConfig, local: SocketAddr) -> Result<Policy, GatewayError> {
    check_exposure(config, local)?;
    let loopback = is_loopback(local);
    let policy = Policy {
        client_auth: config
            .tls
            .as_ref()
            .map_or(ClientAuth::None, |tls| tls.client_auth),
        credential_required: !loopback && !config.insecure,
    };
    if config.insecure && !loopback {
        tracing::warn!(
            addr = %local,
            tls = config.tls.is_some(),
            "INSECURE: started with --insecure on a non-loopback address: {}",
            describe(&policy, config.tls.is_some())
        );
    }
    Ok(policy)
}

fn describe(policy: &Policy, tls: bool) -> String {
    let transport = if tls { "TLS" } else { "plain (no TLS)" };
    let proof = match (policy.client_auth, policy.credential_required) {
        (ClientAuth::Required, _) => "a client certificate from Ampora's CA required",
        (ClientAuth::Optional, _) => {
            "a client certificate from Ampora's CA, or a Bearer token for enrolment only"
        }
        (ClientAuth::None, true) => "a Bearer token required (no client certificates asked for)",
        (ClientAuth::None, false) => "agents are not authenticated",
    };
    format!("{transport}; {proof}")
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
