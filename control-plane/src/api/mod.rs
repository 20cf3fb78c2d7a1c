//! The operator REST API (JSON) and the health endpoints, served on the HTTP listener.
//!
//! Every request goes through one stack of layers ([`app`]): a request id (`x-request-id`,
//! kept when the client sends one, echoed in the response), a tracing span, a whole-request
//! timeout and a body limit. Every error is `{"error": ...}` ([`ApiError`]), including the
//! framework's own refusals.

mod agents;
mod assignments;
mod configurations;
mod drift;
mod error;
mod extract;
mod paging;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ampora_shared::bus::Bus;
use ampora_shared::subjects::Subjects;
use ampora_shared::{http1, telemetry};
use axum::extract::{Request, State};
use axum::http::{Extensions, HeaderName, StatusCode};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::assignments::AssignmentWatch;
use crate::ingest::Readiness;
use crate::storage::Store;

pub use error::ApiError;

/// Largest request body: room for the largest configuration, JSON-escaped.
const MAX_REQUEST_BODY: usize = 2 << 20;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub readiness: Readiness,
    /// Announces new assignments to every replica.
    pub bus: Arc<dyn Bus>,
    pub subjects: Subjects,
    /// This replica's assignment set, reloaded at once after an assignment made here.
    pub assignments: AssignmentWatch,
    /// The change feed the web UI's open pages follow.
    pub live: crate::ui::Live,
}

/// The API's routes and layers. A request not complete (head, body and answer) within
/// `request_timeout` is answered 408 and its connection closed.
pub fn app(state: ApiState, request_timeout: Duration) -> Router {
    let layers = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let request_id = request
                        .headers()
                        .get(REQUEST_ID)
                        .and_then(|id| id.to_str().ok())
                        .unwrap_or_default();
                    let method = request.method();
                    let path = request.uri().path();
                    tracing::info_span!("api", %method, path, request_id)
                })
                // Server errors are logged once, by `ApiError`; a not-ready `/readyz` is no failure.
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .map_response(error::json_error_body)
        .layer(RequestBodyLimitLayer::new(MAX_REQUEST_BODY))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ));
    Router::new()
        .route("/api/v1/agents", get(agents::agents_list))
        .route("/api/v1/agents/{instance_uid}", get(agents::agent_get))
        .route(
            "/api/v1/agents/{instance_uid}/events",
            get(agents::agent_events_list),
        )
        .route(
            "/api/v1/configurations",
            get(configurations::configurations_list).post(configurations::configuration_create),
        )
        .route(
            "/api/v1/configurations/{id}",
            get(configurations::configuration_get),
        )
        .route(
            "/api/v1/configurations/{id}/draft",
            put(configurations::draft_put),
        )
        .route(
            "/api/v1/configurations/{id}/validate",
            post(configurations::configuration_validate),
        )
        .route(
            "/api/v1/configurations/{id}/publish",
            post(configurations::configuration_publish),
        )
        .route(
            "/api/v1/configurations/{id}/versions/{version}",
            get(configurations::version_get),
        )
        .route(
            "/api/v1/configurations/{id}/versions/{version}/swimlane.svg",
            get(configurations::swimlane_get),
        )
        .route(
            "/api/v1/configurations/{id}/diff",
            get(configurations::diff_get),
        )
        .route("/api/v1/validate", post(configurations::validate_post))
        .route("/api/v1/lint-rules", get(configurations::lint_rules_list))
        .route(
            "/api/v1/lint-rules/{id}",
            put(configurations::lint_rule_put),
        )
        .route("/api/v1/assignments", post(assignments::assignment_create))
        .route("/api/v1/drift", get(drift::drift_get))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(telemetry::metrics_get))
        .merge(crate::ui::public_router())
        .merge(crate::ui::router())
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        // axum adds the `Allow` header to this answer.
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed("method not allowed on this endpoint".into())
        })
        .layer(layers)
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets requests in progress
/// finish. A connection must send each request head within `request_timeout`, or is closed;
/// the rest of the request is timed by [`app`]'s layers.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    request_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(%error, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        connections.spawn(http1::serve_connection(
            hyper_util::rt::TokioIo::new(stream),
            router.clone(),
            Extensions::new(),
            request_timeout,
            stop.clone().cancelled_owned(),
        ));
    }
    drop(listener);
    stop.cancel();
    connections.close();
    connections.wait().await;
}

async fn healthz() -> &'static str {
    "ok"
}

#[derive(Debug, Serialize)]
struct Readyz {
    ready: bool,
    /// Agent traffic is being consumed.
    ingest: bool,
    /// `ok`, or why the database cannot be reached.
    database: String,
}

async fn readyz(State(state): State<ApiState>) -> (StatusCode, Json<Readyz>) {
    let ingest = state.readiness.is_ready();
    let database = state.store.ping().await;
    let ready = ingest && database.is_ok();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let database = database.map_or_else(|error| error.to_string(), |()| "ok".to_owned());
    (
        status,
        Json(Readyz {
            ready,
            ingest,
            database,
        }),
    )
}
