//! `/api/v1/assignments`: a published version for one agent or a selector's agents.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use super::auth::Principal;
use super::extract::JsonBody;
use super::{ApiError, ApiState};
use crate::assignments::{Assignment, NewAssignment, Selector, Target};
use crate::configurations::{self, reported_components};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignRequest {
    configuration_id: i64,
    version: i64,
    target: TargetBody,
}

/// `{"instance_uid": "…"}` or `{"selector": "k=v,k2=v2"}`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum TargetBody {
    InstanceUid(Uuid),
    Selector(String),
}

#[derive(Debug, Serialize)]
pub struct AssignmentView {
    id: i64,
    configuration_id: i64,
    version: i64,
    hash: String,
    target: TargetBody,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
}

impl From<Assignment> for AssignmentView {
    fn from(assignment: Assignment) -> Self {
        AssignmentView {
            id: assignment.id,
            configuration_id: assignment.configuration_id,
            version: assignment.version,
            hash: assignment.hash,
            target: match assignment.target {
                Target::Agent(uid) => TargetBody::InstanceUid(uid),
                Target::Selector(selector) => TargetBody::Selector(selector.to_string()),
            },
            created_at: assignment.created_at,
        }
    }
}

/// Refuses to assign an agent a version that uses component types the agent reported it does
/// not have (an agent not seen yet, or that reports no components, is not checked).
async fn refuse_missing_components(
    state: &ApiState,
    uid: Uuid,
    new: &NewAssignment,
) -> Result<(), ApiError> {
    let store = state.store.as_ref();
    let Some(record) = store.get_agent(uid).await? else {
        return Ok(());
    };
    let Some(reported) = reported_components(&record.details) else {
        return Ok(());
    };
    let problems =
        configurations::missing_components(store, new.configuration_id, new.version, &reported)
            .await?;
    if problems.is_empty() {
        return Ok(());
    }
    Err(ApiError::Refused {
        message: format!("agent {uid} reported that it lacks components this version uses"),
        problems,
    })
}

/// Records the assignment (and the assigned side of every agent it concerns), then tells every
/// replica: the workers holding those agents offer it at once.
pub async fn assignment_create(
    State(state): State<ApiState>,
    principal: Principal,
    JsonBody(request): JsonBody<AssignRequest>,
) -> Result<(StatusCode, Json<AssignmentView>), ApiError> {
    let target = match request.target {
        TargetBody::InstanceUid(uid) => Target::Agent(uid),
        TargetBody::Selector(text) => Target::Selector(
            Selector::parse(&text).map_err(|error| ApiError::Invalid(error.to_string()))?,
        ),
    };
    let new = NewAssignment {
        configuration_id: request.configuration_id,
        version: request.version,
        target,
    };
    if let Target::Agent(uid) = &new.target {
        refuse_missing_components(&state, *uid, &new).await?;
    }
    let assignment = state
        .store
        .create_assignment(&new, OffsetDateTime::now_utc(), &principal.audit)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "configuration {} has no published version {}",
                new.configuration_id, new.version
            ))
        })?;
    tracing::info!(
        assignment_id = assignment.id,
        configuration_id = assignment.configuration_id,
        version = assignment.version,
        "assignment created"
    );
    if let Err(error) = state.assignments.refresh(state.store.as_ref()).await {
        tracing::warn!(%error, "cannot reload assignments; the periodic check will");
    }
    let subject = state.subjects.assignments();
    if let Err(error) = state.bus.publish(&subject, Default::default()).await {
        tracing::warn!(%error, "cannot announce the assignment; replicas find it on their next check");
    }
    Ok((StatusCode::CREATED, Json(assignment.into())))
}
