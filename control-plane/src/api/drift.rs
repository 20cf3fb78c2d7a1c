//! `/api/v1/drift`: agents per drift state, and the drifting agents with why and since when.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::extract::Query;
use super::paging::{next_page_token, page_token, Limit};
use super::{ApiError, ApiState};
use crate::remote_config::drift::{Drift, DriftCounts};

/// `GET /api/v1/drift?limit=…&page_token=…`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftQuery {
    #[serde(default)]
    limit: Limit,
    #[serde(default, deserialize_with = "page_token")]
    page_token: Option<Uuid>,
}

/// `{instance_uid, state, reason, since}`.
#[derive(Debug, Serialize)]
pub struct DriftingAgent {
    instance_uid: Uuid,
    #[serde(flatten)]
    drift: Drift,
}

#[derive(Debug, Serialize)]
pub struct DriftView {
    counts: DriftCounts,
    agents: Vec<DriftingAgent>,
    next_page_token: Option<String>,
}

pub async fn drift_get(
    State(state): State<ApiState>,
    Query(query): Query<DriftQuery>,
) -> Result<Json<DriftView>, ApiError> {
    let limit = query.limit.get();
    let counts = state.store.drift_counts().await?;
    let drifting = state.store.list_drifting(query.page_token, limit).await?;
    let next_page_token = next_page_token(&drifting, limit, |(config, _)| config.instance_uid);
    let agents = drifting
        .into_iter()
        .filter_map(|(config, state)| {
            Some(DriftingAgent {
                instance_uid: config.instance_uid,
                drift: config.drift(state)?,
            })
        })
        .collect();
    Ok(Json(DriftView {
        counts,
        agents,
        next_page_token,
    }))
}
