//! The gateway's HTTP surface: `/v1/opamp` (WebSocket upgrade or POST), health and metrics.

use std::net::SocketAddr;
use std::sync::Arc;

use ampora_shared::pb::bus::Transport;
use ampora_shared::telemetry;
use axum::extract::{ConnectInfo, Extension, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::credentials::{ClientCertificate, Credentials, Policy};
use crate::relay::{Peer, Relay};
use crate::trust::Trust;
use crate::websocket::handshake::{Refusal, Upgrade};
use crate::{http, websocket, GatewayConfig};

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<GatewayConfig>,
    pub relay: Arc<Relay>,
    pub shutdown: CancellationToken,
    /// WebSocket sessions run outside the HTTP connection that upgraded them; drain waits on them.
    pub sessions: TaskTracker,
    /// Which agents may be served.
    pub policy: Policy,
    /// With client authentication: the trust state, without which the gateway is not ready.
    pub trust: Option<Arc<Trust>>,
}

impl AppState {
    /// A new connection (a WebSocket session, or one HTTP exchange) from `remote`.
    pub fn new_peer(
        &self,
        transport: Transport,
        remote: SocketAddr,
        credentials: Credentials,
    ) -> Peer {
        Peer {
            connection_id: self.relay.next_connection_id(),
            transport,
            remote_addr: remote.to_string(),
            credentials,
        }
    }
}

/// The connection's slot under `max_connections`, attached to each of its requests by the
/// listener; a WebSocket session holds a clone until it ends.
#[derive(Clone)]
pub struct ConnectionPermit(#[allow(dead_code)] pub Arc<OwnedSemaphorePermit>);

pub fn app(state: AppState) -> Router {
    Router::new()
        .route(
            "/v1/opamp",
            get(opamp_upgrade)
                .post(http::opamp_post)
                .fallback(http::method_not_allowed),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(telemetry::metrics_get))
        .with_state(state)
}

/// `GET /v1/opamp` with `Upgrade: websocket`.
async fn opamp_upgrade(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    permit: Option<Extension<ConnectionPermit>>,
    certificate: Option<Extension<ClientCertificate>>,
    mut request: Request,
) -> Response {
    let upgrade = match Upgrade::from_request(&mut request) {
        Ok(upgrade) => upgrade,
        // A plain GET is not an OpAMP request at all.
        Err(Refusal::NotAnUpgrade) => return http::method_not_allowed().await,
        Err(refusal) => {
            let mut response = http::reject(refusal.status(), &refusal.to_string());
            response.headers_mut().extend(refusal.headers());
            return response;
        }
    };
    if state.shutdown.is_cancelled() {
        return http::unavailable(&state, "gateway shutting down; reconnect");
    }
    let certificate = certificate.map(|Extension(certificate)| certificate);
    let credentials = match state.policy.admit(request.headers(), certificate.as_ref()) {
        Ok(credentials) => credentials,
        Err(refusal) => return refusal.response(),
    };
    let config = state.config.clone();
    let peer = state.new_peer(Transport::Websocket, remote, credentials);
    // Debug level: a span lives as long as its connection and costs ~600 bytes in the
    // subscriber, so at the default level the session's warnings carry these fields instead.
    let span = tracing::debug_span!(
        "websocket",
        gateway_id = %config.gateway_id,
        connection_id = peer.connection_id,
        remote_addr = %peer.remote_addr,
        instance_uid = tracing::field::Empty,
    );
    let response = upgrade.accept();
    let sessions = state.sessions.clone();
    let handover = async move {
        let Some(socket) = websocket::upgraded(upgrade.on_upgrade, &config).await else {
            return;
        };
        let (sink, stream) = socket.split();
        let session = websocket::session(
            sink,
            stream,
            peer,
            state.relay.clone(),
            config,
            state.shutdown.clone(),
            certificate.as_ref().map(|c| c.revoked().clone()),
        );
        let session = async move {
            session.await;
            drop((permit, certificate));
        };
        // A task of its own, so this one ends here: an idle agent then costs only its
        // session's state, not also what the handover needed.
        sessions.spawn(session.instrument(tracing::Span::current()));
    };
    state.sessions.spawn(handover.instrument(span));
    response
}

async fn readyz(State(state): State<AppState>) -> Response {
    let trusted = state.trust.as_ref().is_none_or(|trust| trust.is_held());
    if state.relay.is_ready() && trusted && !state.shutdown.is_cancelled() {
        "ready".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}
