//! The operator REST API (JSON) and the health endpoints, served on the HTTP listener.
//!
//! Every request goes through one stack of layers ([`app`]): a request id (`x-request-id`,
//! kept when the client sends one, echoed in the response), a tracing span, a whole-request
//! timeout and a body limit. Every error is `{"error": ...}` ([`ApiError`]), including the
//! framework's own refusals.
//!
//! # Who may call what
//!
//! Routes are grouped in [`app`] by who may call them; the group's `route_layer` runs
//! [`auth::authorize`], which authenticates the caller (session cookie or
//! `Authorization: Bearer` API token: 401 without one), refuses a cookie request with an
//! unsafe method and no matching `X-CSRF-Token` (403), checks the role (403), and leaves the
//! [`Principal`] in the request. So, to add a route:
//! - **reads for viewers, changes for operators**: add it to `read_or_change`
//!   ([`Access::ReadOrChange`]: `GET`/`HEAD` need `viewer`, other methods `operator`);
//! - **one role whatever the method**: add it to the group of that role, e.g. `admin`
//!   ([`Access::Role`]`(Role::Admin)`), or make a group:
//!   `Router::new().route(..).route_layer(from_fn_with_state((state.clone(),
//!   Access::Role(Role::Operator)), auth::authorize))`;
//! - **open** (health, metrics, sign-in, agents' own bootstrap-token routes, which check
//!   their token themselves): add it to `open`;
//! - **one path, different callers per method** (e.g. `GET` for admins, `POST` open to agents
//!   with a bootstrap token): layer the guarded methods only, before adding the open ones:
//!   `get(list).route_layer(from_fn_with_state((state.clone(), Access::Role(Role::Admin)),
//!   auth::authorize)).post(enrol)`, in `open`.
//!
//! A handler that records who did something takes a [`Principal`] argument and passes
//! `&principal.audit` (an [`crate::audit::AuditContext`]) to the storage method that
//! changes state; that method appends the audit entry in its own transaction
//! (`storage::audit::append`, with a [`crate::audit::Change`]).
//!
//! HTML pages call [`auth::page_session`] with the request's parts: the signed-in
//! [`Principal`] (its `session.csrf_token` to embed in forms), or a redirect to
//! `/login?next=…`; `principal.require(role)` then checks the role, and
//! `principal.csrf_matches(form_field)` a form's CSRF token. A sign-in page's form calls
//! [`auth::sign_in`] (it answers with the `Set-Cookie` value), a sign-out form
//! [`auth::sign_out`].

mod agents;
mod api_tokens;
mod assignments;
mod audit;
pub mod auth;
#[cfg(test)]
mod auth_tests;
mod configurations;
mod drift;
mod error;
mod extract;
mod paging;
#[cfg(test)]
pub(crate) mod tests;
pub mod tls;
mod trust;
mod users;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ampora_shared::bus::Bus;
use ampora_shared::subjects::Subjects;
use ampora_shared::{http1, telemetry};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Extensions, HeaderName, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::routing::{delete, get, patch, post, put};
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
use crate::operators::{Operators, Role};
use crate::storage::Store;
use crate::trust::Trust;

pub use auth::{Access, Principal};
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
    /// The CA, bootstrap tokens and agents' certificates.
    pub trust: Arc<Trust>,
    /// Sessions' lifetime, password hashing and the sign-in guard.
    pub operators: Operators,
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
    let open = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(telemetry::metrics_get))
        .route("/api/v1/auth/login", post(auth::login))
        // Agents fetch the CA and exchange a bootstrap token (their credential) for a
        // certificate; listing certificates is the admins'.
        .route("/api/v1/ca.pem", get(trust::ca_pem_get))
        .route(
            "/api/v1/certificates",
            get(trust::certificates_list)
                .route_layer(from_fn_with_state(
                    (state.clone(), Access::Role(Role::Admin)),
                    auth::authorize,
                ))
                .post(trust::certificate_create),
        );
    let read_or_change = Router::new()
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
        .route("/api/v1/lint-rules", get(configurations::lint_rules_list))
        .route(
            "/api/v1/lint-rules/{id}",
            put(configurations::lint_rule_put),
        )
        .route("/api/v1/assignments", post(assignments::assignment_create))
        .route("/api/v1/drift", get(drift::drift_get))
        .route_layer(from_fn_with_state(
            (state.clone(), Access::ReadOrChange),
            auth::authorize,
        ));
    // Any signed-in caller: validating changes nothing, and anyone may sign out.
    let viewer = Router::new()
        .route(
            "/api/v1/configurations/{id}/validate",
            post(configurations::configuration_validate),
        )
        .route("/api/v1/validate", post(configurations::validate_post))
        .route("/api/v1/auth/logout", post(auth::logout))
        .route("/api/v1/auth/session", get(auth::session_get))
        .route_layer(from_fn_with_state(
            (state.clone(), Access::Role(Role::Viewer)),
            auth::authorize,
        ));
    // Bootstrap tokens are the operators' to hand out.
    let operator = Router::new()
        .route(
            "/api/v1/bootstrap-tokens",
            get(trust::bootstrap_tokens_list).post(trust::bootstrap_token_create),
        )
        .route(
            "/api/v1/bootstrap-tokens/{id}",
            delete(trust::bootstrap_token_delete),
        )
        .route_layer(from_fn_with_state(
            (state.clone(), Access::Role(Role::Operator)),
            auth::authorize,
        ));
    let admin = Router::new()
        .route("/api/v1/ca/rotate", post(trust::ca_rotate))
        .route(
            "/api/v1/certificates/{fingerprint}/revoke",
            post(trust::certificate_revoke),
        )
        .route(
            "/api/v1/users",
            get(users::users_list).post(users::user_create),
        )
        .route(
            "/api/v1/users/{username}",
            patch(users::user_update).delete(users::user_delete),
        )
        .route(
            "/api/v1/api-tokens",
            get(api_tokens::api_tokens_list).post(api_tokens::api_token_create),
        )
        .route(
            "/api/v1/api-tokens/{id}",
            delete(api_tokens::api_token_delete),
        )
        .route("/api/v1/audit", get(audit::audit_list))
        .route("/api/v1/audit/verify", get(audit::audit_verify))
        .route_layer(from_fn_with_state(
            (state.clone(), Access::Role(Role::Admin)),
            auth::authorize,
        ));
    let pages = crate::ui::router().route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::pages,
    ));
    Router::new()
        .merge(open)
        .merge(crate::ui::public_router())
        .merge(pages)
        .merge(read_or_change)
        .merge(viewer)
        .merge(operator)
        .merge(admin)
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        // axum adds the `Allow` header to this answer.
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed("method not allowed on this endpoint".into())
        })
        .layer(layers)
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets requests in progress
/// finish; over TLS with `tls`. A connection must finish its TLS handshake and send each
/// request head within `request_timeout`, or is closed; the rest of the request is timed by
/// [`app`]'s layers.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    request_timeout: Duration,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(%error, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // The client's address, for the audit log and the sign-in guard.
        let mut extensions = Extensions::new();
        extensions.insert(ConnectInfo::<SocketAddr>(peer));
        let Some(tls) = &tls else {
            connections.spawn(http1::serve_connection(
                hyper_util::rt::TokioIo::new(stream),
                router.clone(),
                extensions,
                request_timeout,
                stop.clone().cancelled_owned(),
            ));
            continue;
        };
        let (tls, router, stop) = (tls.clone(), router.clone(), stop.clone());
        connections.spawn(async move {
            let stream = match tokio::time::timeout(request_timeout, tls.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "API TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            http1::serve_connection(
                hyper_util::rt::TokioIo::new(stream),
                router,
                extensions,
                request_timeout,
                stop.cancelled_owned(),
            )
            .await;
        });
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
