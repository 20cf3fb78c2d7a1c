//! `/fleet`: every agent, filtered and paged in SQL, with counts at the top.

use askama::Template;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::{Query, QueryRejection};
use serde::Deserialize;
use uuid::Uuid;

use super::view::{self, Frame, Looking, PageError};
use crate::agents::snapshot::{AgentStatus, Transport};
use crate::api::ApiState;
use crate::remote_config::drift::{DriftCounts, DriftState};
use crate::storage::{FleetCounts, FleetQuery, FleetRow};

const PAGE_SIZE: u32 = 50;
const MAX_PAGE_SIZE: u32 = 500;

/// The filter form's fields, as typed: checked in [`FleetParams::query`].
#[derive(Debug, Default, Deserialize)]
pub struct FleetParams {
    #[serde(default)]
    q: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    transport: String,
    #[serde(default)]
    drift: String,
    #[serde(default)]
    attr: Vec<String>,
    #[serde(default)]
    page_token: String,
    #[serde(default)]
    limit: Option<u32>,
}

impl FleetParams {
    /// The storage query, or what is wrong with the form.
    fn query(&self) -> Result<FleetQuery, String> {
        let mut query = FleetQuery {
            limit: self.limit.unwrap_or(PAGE_SIZE).clamp(1, MAX_PAGE_SIZE),
            ..FleetQuery::default()
        };
        if !self.status.is_empty() {
            query.status = Some(AgentStatus::parse(&self.status).ok_or_else(|| {
                format!("status must be online or offline, not {:?}", self.status)
            })?);
        }
        if !self.transport.is_empty() {
            query.transport = Some(Transport::parse(&self.transport).ok_or_else(|| {
                format!(
                    "transport must be websocket or http, not {:?}",
                    self.transport
                )
            })?);
        }
        if !self.drift.is_empty() {
            query.drift = Some(
                DriftState::parse(&self.drift)
                    .ok_or_else(|| format!("no drift state {:?}", self.drift))?,
            );
        }
        for attr in self.attr.iter().filter(|attr| !attr.is_empty()) {
            let (key, value) = attr
                .split_once('=')
                .ok_or_else(|| format!("an attribute filter is key=value, not {attr:?}"))?;
            query
                .attributes
                .push((key.trim().to_owned(), value.trim().to_owned()));
        }
        // `key=value` typed in the search box filters on that attribute.
        let q = self.q.trim();
        match q.split_once('=') {
            Some((key, value)) => query
                .attributes
                .push((key.trim().to_owned(), value.trim().to_owned())),
            None if !q.is_empty() => query.search = Some(q.to_owned()),
            None => {}
        }
        if !self.page_token.is_empty() {
            query.after =
                Some(Uuid::parse_str(&self.page_token).map_err(|_| "bad page token".to_owned())?);
        }
        Ok(query)
    }

    /// The filters as a query string (without the page token), for the next page's link.
    fn filters(&self) -> String {
        let mut pairs = url_pairs();
        for (name, value) in [
            ("q", &self.q),
            ("status", &self.status),
            ("transport", &self.transport),
            ("drift", &self.drift),
        ] {
            if !value.is_empty() {
                pairs.append_pair(name, value);
            }
        }
        for attr in self.attr.iter().filter(|attr| !attr.is_empty()) {
            pairs.append_pair("attr", attr);
        }
        pairs.finish()
    }
}

fn url_pairs() -> form_urlencoded::Serializer<'static, String> {
    form_urlencoded::Serializer::new(String::new())
}

/// One row of the table, as shown.
pub struct AgentRowView {
    pub uid: String,
    pub name: String,
    pub version: String,
    pub status: &'static str,
    pub transport: &'static str,
    /// `healthy`, `unhealthy` or `unknown`.
    pub health: &'static str,
    pub health_detail: String,
    pub drift: &'static str,
    pub attributes: String,
    pub last_seen: String,
    pub last_seen_at: String,
}

impl From<&FleetRow> for AgentRowView {
    fn from(row: &FleetRow) -> Self {
        let head = &row.head;
        let summary = &head.summary;
        let identifying = summary.identifying_attributes.to_map();
        let text = |key: &str| {
            identifying
                .get(key)
                .map(|value| view::compact(value, 60))
                .unwrap_or_default()
        };
        let attributes = summary
            .attribute_pairs()
            .into_iter()
            .filter(|(key, _)| key != "service.name" && key != "service.version")
            .take(4)
            .map(|(key, value)| format!("{key}={value}"))
            .collect::<Vec<_>>()
            .join(", ");
        let (health, health_detail) = match &summary.health {
            Some(health) if health.healthy => ("healthy", health.status.clone()),
            Some(health) => ("unhealthy", health.last_error.clone()),
            None => ("unknown", String::new()),
        };
        AgentRowView {
            uid: head.instance_uid.to_string(),
            name: text("service.name"),
            version: text("service.version"),
            status: head.status.as_str(),
            transport: head.transport.as_str(),
            health,
            health_detail,
            drift: row.drift.map_or("", DriftState::as_str),
            attributes,
            last_seen: view::when(head.last_seen),
            last_seen_at: view::rfc3339(head.last_seen),
        }
    }
}

#[derive(Template)]
#[template(path = "fleet.html")]
struct FleetPage {
    frame: Frame,
    params: FleetParams,
    problem: Option<String>,
    counts: FleetCounts,
    drift: DriftCounts,
    rows: Vec<AgentRowView>,
    next_page: Option<String>,
    first_page: Option<String>,
}

impl FleetPage {
    fn selected(&self, field: &str, value: &str) -> bool {
        let current = match field {
            "status" => &self.params.status,
            "transport" => &self.params.transport,
            _ => &self.params.drift,
        };
        current == value
    }

    fn attr_text(&self) -> String {
        self.params.attr.join(", ")
    }
}

/// `GET /fleet?q=&status=&transport=&drift=&attr=k=v&page_token=`
pub async fn fleet_page(
    State(state): State<ApiState>,
    looking: Looking,
    params: Result<Query<FleetParams>, QueryRejection>,
) -> Result<Response, PageError> {
    let params = params.map(|Query(params)| params).unwrap_or_default();
    // A whole instance uid in the search box opens that agent.
    if let Ok(uid) = Uuid::parse_str(params.q.trim()) {
        return Ok(Redirect::to(&format!("/agents/{uid}")).into_response());
    }
    let (counts, drift) = (
        state.store.fleet_counts().await?,
        state.store.drift_counts().await?,
    );
    let (rows, problem, next_page) = match params.query() {
        Ok(query) => {
            let rows = state.store.list_fleet(&query).await?;
            let filters = params.filters();
            let next_page = (rows.len() == query.limit as usize)
                .then(|| rows.last())
                .flatten()
                .map(|last| {
                    let token = format!("page_token={}", last.head.instance_uid);
                    if filters.is_empty() {
                        format!("/fleet?{token}")
                    } else {
                        format!("/fleet?{filters}&{token}")
                    }
                });
            (rows, None, next_page)
        }
        Err(problem) => (Vec::new(), Some(problem), None),
    };
    let first_page = (!params.page_token.is_empty()).then(|| {
        let filters = params.filters();
        if filters.is_empty() {
            "/fleet".to_owned()
        } else {
            format!("/fleet?{filters}")
        }
    });
    view::page(&FleetPage {
        frame: looking.frame("fleet", "Fleet"),
        rows: rows.iter().map(AgentRowView::from).collect(),
        params,
        problem,
        counts,
        drift,
        next_page,
        first_page,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_becomes_a_storage_query() {
        let params = FleetParams {
            q: " edge ".into(),
            status: "online".into(),
            transport: "http".into(),
            drift: "failed".into(),
            attr: vec!["env=prod".into(), String::new()],
            ..FleetParams::default()
        };
        let query = params.query().unwrap();
        assert_eq!(query.status, Some(AgentStatus::Online));
        assert_eq!(query.transport, Some(Transport::Http));
        assert_eq!(query.drift, Some(DriftState::Failed));
        assert_eq!(query.attributes, [("env".into(), "prod".into())]);
        assert_eq!(query.search.as_deref(), Some("edge"));
        assert_eq!(query.limit, PAGE_SIZE);
        assert_eq!(
            params.filters(),
            "q=+edge+&status=online&transport=http&drift=failed&attr=env%3Dprod"
        );

        let by_attribute = FleetParams {
            q: "service.name = a".into(),
            ..FleetParams::default()
        };
        let query = by_attribute.query().unwrap();
        assert_eq!(query.attributes, [("service.name".into(), "a".into())]);
        assert_eq!(query.search, None);
    }

    #[test]
    fn bad_filters_are_told() {
        let bad = |params: FleetParams| params.query().unwrap_err();
        assert!(bad(FleetParams {
            status: "asleep".into(),
            ..FleetParams::default()
        })
        .contains("online or offline"));
        assert!(bad(FleetParams {
            attr: vec!["novalue".into()],
            ..FleetParams::default()
        })
        .contains("key=value"));
        assert!(bad(FleetParams {
            page_token: "x".into(),
            ..FleetParams::default()
        })
        .contains("page token"));
    }
}
