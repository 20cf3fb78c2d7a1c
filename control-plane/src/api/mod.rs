//! The operator REST API (JSON) and the health endpoints, served on the HTTP listener.

mod agents;
mod error;

use std::sync::Arc;

use ampora_shared::telemetry;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::ingest::Readiness;
use crate::storage::Store;

pub use error::ApiError;

#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub readiness: Readiness,
}

pub fn app(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/agents", get(agents::agents_list))
        .route("/api/v1/agents/{instance_uid}", get(agents::agent_get))
        .route(
            "/api/v1/agents/{instance_uid}/events",
            get(agents::agent_events_list),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(telemetry::metrics_get))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<ApiState>) -> impl IntoResponse {
    let consuming = state.readiness.is_ready();
    let database = state.store.ping().await;
    let ready = consuming && database.is_ok();
    let body = json!({
        "ready": ready,
        "ingest": consuming,
        "database": database.map(|()| "ok".to_owned()).unwrap_or_else(|e| e.to_string()),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
