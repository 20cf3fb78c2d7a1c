//! `/api/v1/audit`: the audit log, filtered and paged, newest first; and its verification
//! (admin only).

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::extract::Query;
use super::paging::{next_page_token, page_token, Limit};
use super::{ApiError, ApiState};
use crate::audit::{AuditEntry, AuditQuery, Verification};

/// `GET /api/v1/audit?actor=…&action=…&object_type=…&object_id=…&since=…&until=…`
/// (times RFC 3339; `since` inclusive, `until` exclusive).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    object_type: Option<String>,
    #[serde(default)]
    object_id: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    since: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    until: Option<OffsetDateTime>,
    #[serde(default)]
    limit: Limit,
    #[serde(default, deserialize_with = "page_token")]
    page_token: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct AuditPage {
    entries: Vec<AuditEntry>,
    next_page_token: Option<String>,
}

pub async fn audit_list(
    State(state): State<ApiState>,
    Query(params): Query<AuditParams>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = params.limit.get();
    let query = AuditQuery {
        actor: params.actor,
        action: params.action,
        object_type: params.object_type,
        object_id: params.object_id,
        since: params.since,
        until: params.until,
        before: params.page_token,
        limit,
    };
    let entries = state.store.list_audit(&query).await?;
    let next_page_token = next_page_token(&entries, limit, |entry| entry.id);
    Ok(Json(AuditPage {
        entries,
        next_page_token,
    }))
}

/// `GET /api/v1/audit/verify`: `{ok, checked, first_bad}`.
pub async fn audit_verify(State(state): State<ApiState>) -> Result<Json<Verification>, ApiError> {
    let verification = state.store.verify_audit().await?;
    if !verification.ok {
        tracing::warn!(first_bad = ?verification.first_bad, checked = verification.checked, "the audit chain does not verify");
    }
    Ok(Json(verification))
}
