//! `/drift`: agents per drift state, and the drifting agents grouped by cause.

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use axum_extra::extract::{Query, QueryRejection};
use serde::Deserialize;
use uuid::Uuid;

use super::view::{self, Frame, Looking, PageError};
use crate::api::ApiState;
use crate::remote_config::drift::{DriftCounts, DriftState};

const PAGE_SIZE: u32 = 200;

pub struct DriftRow {
    pub uid: String,
    pub reason: String,
    pub since: String,
}

/// The drifting agents of one state, on this page.
pub struct DriftGroup {
    pub state: &'static str,
    pub title: &'static str,
    pub rows: Vec<DriftRow>,
}

#[derive(Template)]
#[template(path = "drift.html")]
struct DriftPage {
    frame: Frame,
    counts: DriftCounts,
    groups: Vec<DriftGroup>,
    next_page: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct DriftParams {
    #[serde(default)]
    page_token: Option<Uuid>,
}

fn title(state: DriftState) -> &'static str {
    match state {
        DriftState::InSync => "In sync",
        DriftState::Pending => "Pending: assigned, not yet applied",
        DriftState::Failed => "Failed: the agent rejected its configuration",
        DriftState::OutOfBand => "Out of band: changed without an assignment",
    }
}

/// `GET /drift?page_token=`
pub async fn drift_page(
    State(state): State<ApiState>,
    looking: Looking,
    params: Result<Query<DriftParams>, QueryRejection>,
) -> Result<Response, PageError> {
    let params = params.map(|Query(params)| params).unwrap_or_default();
    let counts = state.store.drift_counts().await?;
    let drifting = state
        .store
        .list_drifting(params.page_token, PAGE_SIZE)
        .await?;
    let next_page = (drifting.len() == PAGE_SIZE as usize)
        .then(|| drifting.last())
        .flatten()
        .map(|(config, _)| format!("/drift?page_token={}", config.instance_uid));
    let groups = [
        DriftState::Failed,
        DriftState::Pending,
        DriftState::OutOfBand,
    ]
    .into_iter()
    .map(|group| DriftGroup {
        state: group.as_str(),
        title: title(group),
        rows: drifting
            .iter()
            .filter(|(_, state)| *state == group)
            .filter_map(|(config, state)| {
                let drift = config.drift(*state)?;
                Some(DriftRow {
                    uid: config.instance_uid.to_string(),
                    reason: drift.reason,
                    since: view::when(drift.since),
                })
            })
            .collect(),
    })
    .collect();
    view::page(&DriftPage {
        frame: looking.frame("drift", "Drift"),
        counts,
        groups,
        next_page,
    })
}
