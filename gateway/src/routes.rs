//! The gateway's HTTP surface: `/v1/opamp` (WebSocket upgrade or POST), health and metrics.

use std::sync::Arc;

use ampora_shared::pb::bus::Transport;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Extension, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::relay::{Peer, Relay};
use crate::{http, websocket, GatewayConfig};

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<GatewayConfig>,
    pub relay: Arc<Relay>,
    pub shutdown: CancellationToken,
    /// WebSocket sessions run outside the HTTP connection that upgraded them; drain waits on them.
    pub sessions: TaskTracker,
}

/// The peer's address, attached to every request of a connection by the listener.
#[derive(Clone)]
pub struct RemoteAddr(pub String);

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
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// `GET /v1/opamp` with `Upgrade: websocket`.
async fn opamp_upgrade(
    State(state): State<AppState>,
    Extension(RemoteAddr(remote_addr)): Extension<RemoteAddr>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let config = state.config.clone();
    let peer = Peer {
        connection_id: state.relay.next_connection_id(),
        transport: Transport::Websocket,
        remote_addr,
    };
    upgrade
        .read_buffer_size(config.ws_read_buffer_size)
        .write_buffer_size(config.ws_write_buffer_size)
        .max_write_buffer_size(config.ws_max_write_buffer_size)
        .max_message_size(config.max_message_size)
        .max_frame_size(config.max_message_size)
        .on_failed_upgrade(|error| tracing::debug!(%error, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| {
            let session = websocket::session(
                socket,
                peer,
                state.relay.clone(),
                config,
                state.shutdown.clone(),
            );
            state.sessions.track_future(session)
        })
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.relay.is_ready() && !state.shutdown.is_cancelled() {
        "ready".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ampora_shared::telemetry::prometheus().render(),
    )
        .into_response()
}
