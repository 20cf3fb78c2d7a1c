//! `/api/v1/agents`: the fleet, one agent, and its history.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use super::extract::{Path, Query};
use super::paging::{next_page_token, page_token, Limit};
use super::{ApiError, ApiState};
use crate::agents::capabilities::agent_capability_names;
use crate::agents::snapshot::{
    AgentHead, AgentRecord, AgentStatus, Attributes, ConfigFile, Health, PackageStatuses,
    RemoteConfigStatus, Transport,
};
use crate::remote_config::drift::{AgentConfig, Drift, DriftState};
use crate::remote_config::effective_hash;
use crate::storage::{AgentEvent, AgentQuery, EventQuery};

/// `attr=key=value`: the agent has attribute `key` (identifying or not) with this value.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "String")]
pub struct AttributeFilter {
    name: String,
    value: String,
}

impl TryFrom<String> for AttributeFilter {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        let (name, value) = text
            .split_once('=')
            .ok_or_else(|| format!("attr must be key=value, not {text:?}"))?;
        Ok(AttributeFilter {
            name: name.to_owned(),
            value: value.to_owned(),
        })
    }
}

/// `status`: `online` or `offline`; present but empty is a mistake, not "any".
fn status<'de, D>(deserializer: D) -> Result<Option<AgentStatus>, D::Error>
where
    D: Deserializer<'de>,
{
    let text = String::deserialize(deserializer)?;
    AgentStatus::parse(&text)
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("status must be online or offline, not {text:?}")))
}

/// `GET /api/v1/agents?status=online&attr=key=value&attr=…&limit=100&page_token=…`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsListQuery {
    #[serde(default, deserialize_with = "status")]
    status: Option<AgentStatus>,
    #[serde(default)]
    attr: Vec<AttributeFilter>,
    #[serde(default)]
    limit: Limit,
    #[serde(default, deserialize_with = "page_token")]
    page_token: Option<Uuid>,
}

impl From<AgentsListQuery> for AgentQuery {
    fn from(query: AgentsListQuery) -> Self {
        AgentQuery {
            status: query.status,
            attributes: query
                .attr
                .into_iter()
                .map(|filter| (filter.name, filter.value))
                .collect(),
            limit: query.limit.get(),
            after: query.page_token,
        }
    }
}

/// `GET /api/v1/agents/{instance_uid}/events?limit=…&page_token=…`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsListQuery {
    #[serde(default)]
    limit: Limit,
    #[serde(default, deserialize_with = "page_token")]
    page_token: Option<i64>,
}

impl From<EventsListQuery> for EventQuery {
    fn from(query: EventsListQuery) -> Self {
        EventQuery {
            limit: query.limit.get(),
            before: query.page_token,
        }
    }
}

// === responses ===

/// One agent as the fleet listing shows it.
#[derive(Debug, Serialize)]
pub struct AgentView {
    instance_uid: Uuid,
    status: AgentStatus,
    transport: Transport,
    identifying_attributes: Attributes,
    non_identifying_attributes: Attributes,
    /// The capability names the specification gives the bits below.
    capabilities: Vec<&'static str>,
    capabilities_bits: u64,
    custom_capabilities: Vec<String>,
    health: Option<Health>,
    remote_config_status: Option<RemoteConfigStatus>,
    sequence_num: u64,
    gateway_id: String,
    remote_addr: String,
    #[serde(with = "time::serde::rfc3339")]
    first_seen: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    last_seen: OffsetDateTime,
}

impl From<AgentHead> for AgentView {
    fn from(head: AgentHead) -> Self {
        let summary = head.summary;
        AgentView {
            instance_uid: head.instance_uid,
            status: head.status,
            transport: head.transport,
            identifying_attributes: summary.identifying_attributes,
            non_identifying_attributes: summary.non_identifying_attributes,
            capabilities: agent_capability_names(head.capabilities),
            capabilities_bits: head.capabilities,
            custom_capabilities: summary.custom_capabilities,
            health: summary.health,
            remote_config_status: summary.remote_config_status,
            sequence_num: head.sequence_num,
            gateway_id: head.gateway_id,
            remote_addr: head.remote_addr,
            first_seen: head.first_seen,
            last_seen: head.last_seen,
        }
    }
}

/// One agent in full: its listing row, what it reported at length, and its config drift.
#[derive(Debug, Serialize)]
pub struct AgentDetailView {
    #[serde(flatten)]
    agent: AgentView,
    effective_config: Option<EffectiveConfigView>,
    package_statuses: Option<PackageStatuses>,
    available_components: Option<serde_json::Value>,
    /// The hash of the version assigned to the agent (lowercase hex), if any.
    assigned_config_hash: Option<String>,
    /// SHA-256 of the effective config the agent reports (of the one file's body).
    effective_config_hash: Option<String>,
    /// The last hash the agent reported APPLIED for.
    applied_config_hash: Option<String>,
    /// `null` when nothing is assigned.
    drift: Option<Drift>,
}

/// The config the agent runs, file name → file.
#[derive(Debug, Serialize)]
pub struct EffectiveConfigView {
    files: BTreeMap<String, ConfigFile>,
}

impl AgentDetailView {
    fn new(record: AgentRecord, config: Option<(AgentConfig, Option<DriftState>)>) -> Self {
        let details = record.details;
        let effective_config_hash = details.effective_config.as_ref().and_then(effective_hash);
        let assigned_config_hash = config
            .as_ref()
            .and_then(|(config, _)| config.assigned.as_ref())
            .map(|assigned| assigned.hash.clone());
        let drift = config.and_then(|(config, state)| config.drift(state?));
        AgentDetailView {
            agent: record.head.into(),
            effective_config: details
                .effective_config
                .map(|files| EffectiveConfigView { files }),
            package_statuses: details.package_statuses,
            available_components: details.available_components,
            assigned_config_hash,
            effective_config_hash,
            applied_config_hash: record.config.applied.map(|applied| applied.hash),
            drift,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct EventView {
    id: i64,
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    kind: String,
    payload: serde_json::Value,
}

impl From<AgentEvent> for EventView {
    fn from(event: AgentEvent) -> Self {
        EventView {
            id: event.id,
            at: event.at,
            kind: event.kind,
            payload: event.payload,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct AgentsPage {
    agents: Vec<AgentView>,
    next_page_token: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct EventsPage {
    events: Vec<EventView>,
    next_page_token: Option<String>,
}

// === handlers ===

pub async fn agents_list(
    State(state): State<ApiState>,
    Query(query): Query<AgentsListQuery>,
) -> Result<Json<AgentsPage>, ApiError> {
    let filter = AgentQuery::from(query);
    let agents = state.store.list_agents(&filter).await?;
    let next_page_token = next_page_token(&agents, filter.limit, |agent| agent.instance_uid);
    Ok(Json(AgentsPage {
        agents: agents.into_iter().map(AgentView::from).collect(),
        next_page_token,
    }))
}

/// `GET /api/v1/agents/{instance_uid}`: the full snapshot, configs as text.
pub async fn agent_get(
    State(state): State<ApiState>,
    Path(instance_uid): Path<Uuid>,
) -> Result<Json<AgentDetailView>, ApiError> {
    // The drift row first: both are written in one transaction, so the snapshot read after it
    // is at least as new, and a caller that waited for a drift state sees the hashes behind it.
    let config = state.store.agent_config(instance_uid).await?;
    let record = state
        .store
        .get_agent(instance_uid)
        .await?
        .ok_or_else(|| no_agent(instance_uid))?;
    Ok(Json(AgentDetailView::new(record, config)))
}

/// History, newest first.
pub async fn agent_events_list(
    State(state): State<ApiState>,
    Path(instance_uid): Path<Uuid>,
    Query(query): Query<EventsListQuery>,
) -> Result<Json<EventsPage>, ApiError> {
    let filter = EventQuery::from(query);
    if state.store.get_agent(instance_uid).await?.is_none() {
        return Err(no_agent(instance_uid));
    }
    let events = state.store.list_events(instance_uid, &filter).await?;
    let next_page_token = next_page_token(&events, filter.limit, |event| event.id);
    Ok(Json(EventsPage {
        events: events.into_iter().map(EventView::from).collect(),
        next_page_token,
    }))
}

fn no_agent(instance_uid: Uuid) -> ApiError {
    ApiError::NotFound(format!("no agent {instance_uid}"))
}
