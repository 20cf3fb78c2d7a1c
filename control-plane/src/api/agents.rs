//! `/api/v1/agents`: the fleet, one agent, and its history.

use axum::extract::{Path, RawQuery, State};
use axum::Json;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{ApiError, ApiState};
use crate::agents::capabilities::agent_capability_names;
use crate::agents::snapshot::{AgentHead, AgentStatus};
use crate::storage::{AgentEvent, AgentQuery, EventQuery};

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

fn parse_pairs(query: Option<String>) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(query.as_deref().unwrap_or_default())
        .map_err(|e| ApiError::Invalid(format!("bad query string: {e}")))
}

fn parse_limit(text: &str) -> Result<u32, ApiError> {
    match text.parse::<u32>() {
        Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => Ok(limit),
        _ => Err(ApiError::Invalid(format!(
            "limit must be a number from 1 to {MAX_LIMIT}"
        ))),
    }
}

fn parse_uid(text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|_| ApiError::Invalid(format!("{text:?} is not a UUID")))
}

fn head_json(head: &AgentHead) -> Value {
    let summary = &head.summary;
    json!({
        "instance_uid": head.instance_uid.to_string(),
        "status": head.status.as_str(),
        "transport": head.transport.as_str(),
        "identifying_attributes": summary.identifying_attributes,
        "non_identifying_attributes": summary.non_identifying_attributes,
        "capabilities": agent_capability_names(head.capabilities),
        "capabilities_bits": head.capabilities,
        "custom_capabilities": summary.custom_capabilities,
        "health": summary.health,
        "remote_config_status": summary.remote_config_status,
        "sequence_num": head.sequence_num,
        "gateway_id": head.gateway_id,
        "remote_addr": head.remote_addr,
        "first_seen": rfc3339(head.first_seen),
        "last_seen": rfc3339(head.last_seen),
    })
}

fn event_json(event: &AgentEvent) -> Value {
    json!({
        "id": event.id,
        "at": rfc3339(event.at),
        "kind": event.kind,
        "payload": event.payload,
    })
}

/// `GET /api/v1/agents?status=online&attr=key=value&limit=100&page_token=…`
pub async fn agents_list(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let mut filter = AgentQuery {
        limit: DEFAULT_LIMIT,
        ..AgentQuery::default()
    };
    for (key, value) in parse_pairs(query)? {
        match key.as_str() {
            "status" => {
                filter.status = Some(AgentStatus::parse(&value).ok_or_else(|| {
                    ApiError::Invalid(format!("status must be online or offline, not {value:?}"))
                })?)
            }
            "attr" => {
                let (name, wanted) = value.split_once('=').ok_or_else(|| {
                    ApiError::Invalid(format!("attr must be key=value, not {value:?}"))
                })?;
                filter.attributes.push((name.to_owned(), wanted.to_owned()));
            }
            "limit" => filter.limit = parse_limit(&value)?,
            "page_token" if !value.is_empty() => {
                filter.after = Some(
                    parse_uid(&value).map_err(|_| ApiError::Invalid("bad page_token".into()))?,
                )
            }
            "page_token" => {}
            other => {
                return Err(ApiError::Invalid(format!(
                    "unknown query parameter {other:?}"
                )))
            }
        }
    }
    let agents = state.store.list_agents(&filter).await?;
    let next_page_token = (agents.len() == filter.limit as usize)
        .then(|| agents.last().map(|a| a.instance_uid.to_string()))
        .flatten();
    Ok(Json(json!({
        "agents": agents.iter().map(head_json).collect::<Vec<_>>(),
        "next_page_token": next_page_token,
    })))
}

/// `GET /api/v1/agents/{instance_uid}`: the full snapshot, configs as text.
pub async fn agent_get(
    State(state): State<ApiState>,
    Path(instance_uid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let uid = parse_uid(&instance_uid)?;
    let record = state
        .store
        .get_agent(uid)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no agent {uid}")))?;
    let mut body = head_json(&record.head);
    let details = &record.details;
    body["effective_config"] = details
        .effective_config
        .as_ref()
        .map_or(Value::Null, |files| json!({ "files": files }));
    body["package_statuses"] = json!(details.package_statuses);
    body["available_components"] = details.available_components.clone().unwrap_or(Value::Null);
    Ok(Json(body))
}

/// `GET /api/v1/agents/{instance_uid}/events?limit=…&page_token=…`: history, newest first.
pub async fn agent_events_list(
    State(state): State<ApiState>,
    Path(instance_uid): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let uid = parse_uid(&instance_uid)?;
    let mut filter = EventQuery {
        limit: DEFAULT_LIMIT,
        before: None,
    };
    for (key, value) in parse_pairs(query)? {
        match key.as_str() {
            "limit" => filter.limit = parse_limit(&value)?,
            "page_token" if !value.is_empty() => {
                filter.before = Some(
                    value
                        .parse()
                        .map_err(|_| ApiError::Invalid("bad page_token".into()))?,
                )
            }
            "page_token" => {}
            other => {
                return Err(ApiError::Invalid(format!(
                    "unknown query parameter {other:?}"
                )))
            }
        }
    }
    if state.store.get_agent(uid).await?.is_none() {
        return Err(ApiError::NotFound(format!("no agent {uid}")));
    }
    let events = state.store.list_events(uid, &filter).await?;
    let next_page_token = (events.len() == filter.limit as usize)
        .then(|| events.last().map(|e| e.id.to_string()))
        .flatten();
    Ok(Json(json!({
        "events": events.iter().map(event_json).collect::<Vec<_>>(),
        "next_page_token": next_page_token,
    })))
}
