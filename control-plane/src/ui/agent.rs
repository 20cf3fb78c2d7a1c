//! `/agents/{uid}`: one agent — description, capabilities, component health, effective config,
//! connection, its history — and, with `?at=`, the agent as it was at that moment.

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Response;
use axum_extra::extract::{Query, QueryRejection};
use serde::Deserialize;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, PrimitiveDateTime};
use uuid::Uuid;

use super::view::{self, Frame, Looking, PageError};
use crate::agents::capabilities::agent_capability_names;
use crate::agents::history::EventKind;
use crate::agents::replay::{PastState, Rebuild};
use crate::agents::snapshot::{AgentRecord, Health};
use crate::api::ApiState;
use crate::remote_config::drift::Drift;
use crate::remote_config::effective_hash;
use crate::storage::{AgentEvent, EventQuery, Store};

const EVENTS_PER_PAGE: u32 = 50;

/// History read per round trip while rebuilding a past state.
const REBUILD_PAGE: u32 = 500;

/// Most history rows a rebuild reads (newest first): older state beyond it is not shown.
const REBUILD_MAX_EVENTS: usize = 20_000;

#[derive(Debug, Default, Deserialize)]
pub struct AgentParams {
    /// A past moment: RFC 3339, or `YYYY-MM-DDTHH:MM[:SS]` in UTC (a datetime-local field).
    #[serde(default)]
    at: String,
    /// History page: events older than this id.
    #[serde(default)]
    before: Option<i64>,
}

/// Reads the moment a page asks for.
fn parse_moment(text: &str) -> Result<OffsetDateTime, String> {
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(at);
    }
    let seconds =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let minutes = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]");
    PrimitiveDateTime::parse(text, seconds)
        .or_else(|_| PrimitiveDateTime::parse(text, minutes))
        .map(PrimitiveDateTime::assume_utc)
        .map_err(|_| format!("{text:?} is not a moment (YYYY-MM-DDTHH:MM:SS, UTC)"))
}

/// A component of the health tree, flattened with its depth.
pub struct HealthLine {
    pub depth: usize,
    pub name: String,
    pub healthy: bool,
    pub status: String,
    pub last_error: String,
}

fn health_lines(name: &str, health: &Health, depth: usize, lines: &mut Vec<HealthLine>) {
    lines.push(HealthLine {
        depth,
        name: name.to_owned(),
        healthy: health.healthy,
        status: health.status.clone(),
        last_error: health.last_error.clone(),
    });
    for (child, component) in &health.components {
        health_lines(child, component, depth + 1, lines);
    }
}

fn health_tree(health: Option<&Health>) -> Vec<HealthLine> {
    let mut lines = Vec::new();
    if let Some(health) = health {
        health_lines("agent", health, 0, &mut lines);
    }
    lines
}

/// An attribute map as (key, value text) rows.
fn attribute_rows(attributes: Option<&Value>) -> Vec<(String, String)> {
    attributes
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .map(|(key, value)| (key.clone(), view::compact(value, 500)))
                .collect()
        })
        .unwrap_or_default()
}

/// An effective config's files, as (name, body) rows.
fn config_files(files: Option<&Value>) -> Vec<(String, String)> {
    files
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .map(|(name, file)| {
                    let body = file.get("body").and_then(Value::as_str).unwrap_or_default();
                    (name.clone(), body.to_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

pub struct EventLine {
    pub id: i64,
    pub at: String,
    pub at_machine: String,
    /// The exact moment, for the link to the state then.
    pub moment: String,
    pub kind: String,
    pub summary: String,
}

impl From<&AgentEvent> for EventLine {
    fn from(event: &AgentEvent) -> Self {
        EventLine {
            id: event.id,
            at: view::when(event.at),
            at_machine: view::rfc3339(event.at),
            moment: view::moment(event.at),
            kind: event.kind.clone(),
            summary: view::compact(&event.payload, 160),
        }
    }
}

/// The past state as the page shows it.
pub struct PastView {
    pub at: String,
    pub status: String,
    pub status_since: String,
    pub connection: Vec<(String, String)>,
    pub identifying: Vec<(String, String)>,
    pub non_identifying: Vec<(String, String)>,
    pub capabilities: String,
    pub health: Vec<HealthLine>,
    pub remote_config_status: String,
    pub config_offered: String,
    pub effective_config: Vec<(String, String)>,
    pub events_read: usize,
    pub truncated: bool,
}

impl PastView {
    fn new(past: &PastState, truncated: bool) -> PastView {
        let part = |kind: EventKind| past.part(kind).map(|part| &part.value);
        let description = part(EventKind::Description);
        PastView {
            at: view::when(past.at),
            status: past.status.map_or_else(
                || "unknown (not yet seen)".to_owned(),
                |s| s.as_str().to_owned(),
            ),
            status_since: past.status_since.map(view::when).unwrap_or_default(),
            connection: attribute_rows(past.connection.as_ref()),
            identifying: attribute_rows(description.and_then(|d| d.get("identifying_attributes"))),
            non_identifying: attribute_rows(
                description.and_then(|d| d.get("non_identifying_attributes")),
            ),
            capabilities: part(EventKind::Capabilities)
                .and_then(|c| c.get("names"))
                .map(|names| view::compact(names, 1000))
                .unwrap_or_default(),
            health: health_tree(past.health().as_ref()),
            remote_config_status: part(EventKind::RemoteConfigStatus)
                .map(|status| view::compact(status, 300))
                .unwrap_or_default(),
            config_offered: part(EventKind::ConfigOffered)
                .map(|offer| view::compact(offer, 300))
                .unwrap_or_default(),
            effective_config: config_files(
                part(EventKind::EffectiveConfig).and_then(|c| c.get("files")),
            ),
            events_read: past.events_read,
            truncated,
        }
    }
}

/// Rebuilds the agent at `at` from its history, newest first, bounded.
async fn rebuild(store: &dyn Store, uid: Uuid, at: OffsetDateTime) -> Result<PastView, PageError> {
    let mut rebuild = Rebuild::new(at);
    let mut before = None;
    let mut read = 0;
    loop {
        let page = store
            .list_events(
                uid,
                &EventQuery {
                    limit: REBUILD_PAGE,
                    before,
                },
            )
            .await?;
        for event in &page {
            rebuild.push(event);
        }
        read += page.len();
        before = page.last().map(|event| event.id);
        let exhausted = page.len() < REBUILD_PAGE as usize;
        if exhausted || rebuild.done() || read >= REBUILD_MAX_EVENTS {
            let truncated = !exhausted && !rebuild.done();
            return Ok(PastView::new(&rebuild.finish(), truncated));
        }
    }
}

#[derive(Template)]
#[template(path = "agent.html")]
struct AgentPage {
    frame: Frame,
    uid: String,
    name: String,
    status: &'static str,
    transport: &'static str,
    gateway_id: String,
    connection_id: u64,
    remote_addr: String,
    sequence_num: u64,
    first_seen: String,
    last_seen: String,
    identifying: Vec<(String, String)>,
    non_identifying: Vec<(String, String)>,
    capabilities: Vec<&'static str>,
    custom_capabilities: Vec<String>,
    health: Vec<HealthLine>,
    remote_config_status: String,
    assigned_hash: String,
    effective_hash: String,
    applied_hash: String,
    drift: Option<Drift>,
    effective_config: Vec<(String, String)>,
    package_statuses: String,
    available_components: String,
    events: Vec<EventLine>,
    older_events: Option<i64>,
    at: String,
    problem: Option<String>,
    past: Option<PastView>,
}

impl AgentPage {
    fn drift_state(&self) -> &'static str {
        self.drift.as_ref().map_or("", |drift| drift.state.as_str())
    }
}

/// `GET /agents/{uid}?at=…&before=…`
pub async fn agent_page(
    State(state): State<ApiState>,
    looking: Looking,
    Path(uid): Path<String>,
    params: Result<Query<AgentParams>, QueryRejection>,
) -> Result<Response, PageError> {
    let params = params.map(|Query(params)| params).unwrap_or_default();
    let uid = Uuid::parse_str(&uid)
        .map_err(|_| PageError::Invalid(format!("{uid:?} is not an instance uid")))?;
    let record: AgentRecord = state
        .store
        .get_agent(uid)
        .await?
        .ok_or_else(|| PageError::NotFound(format!("no agent {uid}")))?;
    let config = state.store.agent_config(uid).await?;
    let events = state
        .store
        .list_events(
            uid,
            &EventQuery {
                limit: EVENTS_PER_PAGE,
                before: params.before,
            },
        )
        .await?;
    let (past, problem) = match params.at.trim() {
        "" => (None, None),
        text => match parse_moment(text) {
            Ok(at) => (Some(rebuild(state.store.as_ref(), uid, at).await?), None),
            Err(problem) => (None, Some(problem)),
        },
    };
    let head = &record.head;
    let summary = &head.summary;
    let identifying = serde_json::to_value(&summary.identifying_attributes).ok();
    let non_identifying = serde_json::to_value(&summary.non_identifying_attributes).ok();
    let name = summary
        .identifying_attributes
        .to_map()
        .get("service.name")
        .map(|name| view::compact(name, 100))
        .unwrap_or_default();
    let details = &record.details;
    let effective_config = details
        .effective_config
        .as_ref()
        .map(|files| {
            files
                .iter()
                .map(|(name, file)| (name.clone(), file.body.clone()))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let pretty = |value: Option<Value>| {
        value
            .map(|value| serde_json::to_string_pretty(&value).unwrap_or_default())
            .unwrap_or_default()
    };
    let drift = config
        .as_ref()
        .and_then(|(config, state)| config.drift((*state)?));
    let older_events = (events.len() == EVENTS_PER_PAGE as usize)
        .then(|| events.last().map(|event| event.id))
        .flatten();
    view::page(&AgentPage {
        frame: looking.frame(
            "fleet",
            if name.is_empty() {
                uid.to_string()
            } else {
                name.clone()
            },
        ),
        uid: uid.to_string(),
        name,
        status: head.status.as_str(),
        transport: head.transport.as_str(),
        gateway_id: head.gateway_id.clone(),
        connection_id: head.connection_id,
        remote_addr: head.remote_addr.clone(),
        sequence_num: head.sequence_num,
        first_seen: view::when(head.first_seen),
        last_seen: view::when(head.last_seen),
        identifying: attribute_rows(identifying.as_ref()),
        non_identifying: attribute_rows(non_identifying.as_ref()),
        capabilities: agent_capability_names(head.capabilities),
        custom_capabilities: summary.custom_capabilities.clone(),
        health: health_tree(summary.health.as_ref()),
        remote_config_status: summary
            .remote_config_status
            .as_ref()
            .and_then(|status| serde_json::to_value(status).ok())
            .map(|status| view::compact(&status, 300))
            .unwrap_or_default(),
        assigned_hash: config
            .as_ref()
            .and_then(|(config, _)| config.assigned.as_ref())
            .map(|assigned| assigned.hash.clone())
            .unwrap_or_default(),
        effective_hash: details
            .effective_config
            .as_ref()
            .and_then(effective_hash)
            .unwrap_or_default(),
        applied_hash: record
            .config
            .applied
            .as_ref()
            .map(|applied| applied.hash.clone())
            .unwrap_or_default(),
        drift,
        effective_config,
        package_statuses: pretty(
            details
                .package_statuses
                .as_ref()
                .and_then(|packages| serde_json::to_value(packages).ok()),
        ),
        available_components: pretty(details.available_components.clone()),
        events: events.iter().map(EventLine::from).collect(),
        older_events,
        at: params.at.clone(),
        problem,
        past,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_are_rfc3339_or_a_datetime_local_in_utc() {
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        assert_eq!(parse_moment("2023-11-14T22:13:20Z").unwrap(), at);
        assert_eq!(parse_moment("2023-11-14T22:13:20").unwrap(), at);
        assert_eq!(
            parse_moment("2023-11-14T22:13").unwrap(),
            at - time::Duration::seconds(20)
        );
        assert!(parse_moment("yesterday")
            .unwrap_err()
            .contains("not a moment"));
    }

    #[test]
    fn the_health_tree_is_flattened_depth_first() {
        let health: Health = serde_json::from_value(serde_json::json!({
            "healthy": false,
            "components": {
                "pipeline:traces": {"healthy": false, "components": {
                    "receiver:otlp": {"healthy": false, "last_error": "port in use"}
                }},
                "pipeline:metrics": {"healthy": true}
            }
        }))
        .unwrap();
        let lines = health_tree(Some(&health));
        let shape: Vec<(usize, &str, bool)> = lines
            .iter()
            .map(|line| (line.depth, line.name.as_str(), line.healthy))
            .collect();
        assert_eq!(
            shape,
            [
                (0, "agent", false),
                (1, "pipeline:metrics", true),
                (1, "pipeline:traces", false),
                (2, "receiver:otlp", false)
            ]
        );
        assert_eq!(lines[3].last_error, "port in use");
    }
}
