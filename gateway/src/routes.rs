//! The gateway's HTTP surface: `/v1/opamp` (WebSocket upgrade or POST), health and metrics.

use std::net::SocketAddr;
use std::sync::Arc;

use ampora_shared::pb::bus::Transport;
use axum::extract::ws::{rejection::WebSocketUpgradeRejection, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Extension, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

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
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// `GET /v1/opamp` with `Upgrade: websocket`.
async fn opamp_upgrade(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    permit: Option<Extension<ConnectionPermit>>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        // A plain GET is not an OpAMP request at all.
        Err(_) if !headers.contains_key(header::UPGRADE) => {
            return http::method_not_allowed().await;
        }
        Err(rejection) => {
            return http::reject(rejection.status(), &rejection.body_text());
        }
    };
    if state.shutdown.is_cancelled() {
        return http::unavailable(&state, "gateway shutting down; reconnect");
    }
    let config = state.config.clone();
    let peer = Peer {
        connection_id: state.relay.next_connection_id(),
        transport: Transport::Websocket,
        remote_addr: remote.to_string(),
    };
    // Debug level: a span lives as long as its connection and costs ~600 bytes in the
    // subscriber, so at the default level the session's warnings carry these fields instead.
    let span = tracing::debug_span!(
        "websocket",
        gateway_id = %config.gateway_id,
        connection_id = peer.connection_id,
        remote_addr = %peer.remote_addr,
        instance_uid = tracing::field::Empty,
    );
    upgrade
        .read_buffer_size(config.ws_read_buffer_size)
        .write_buffer_size(config.ws_write_buffer_size)
        // tungstenite panics unless the bound exceeds the write buffer.
        .max_write_buffer_size(
            config
                .ws_max_write_buffer_size
                .max(config.ws_write_buffer_size + 1),
        )
        .max_message_size(config.max_message_size)
        .max_frame_size(config.max_message_size)
        .on_failed_upgrade(|error| tracing::debug!(%error, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| {
            let (sink, stream) = socket.split();
            let session = websocket::session(
                sink,
                stream,
                peer,
                state.relay.clone(),
                config,
                state.shutdown.clone(),
            );
            let session = async move {
                session.await;
                drop(permit);
            };
            // A task of its own, so the upgrade task calling us ends here: an idle agent then
            // costs only its session's state (~2 KiB less per connection).
            state.sessions.spawn(session.instrument(span));
            std::future::ready(())
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
