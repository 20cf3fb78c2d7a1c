//! Interop with OpAMP clients we did not write, run as real processes against `ampora serve`:
//! the reference Go client library (opamp-go) over WebSocket and over plain HTTP, and the PyPI
//! `opentelemetry-opamp-client` over HTTP.
//!
//! Needs the Go toolchain and `$REPO/.venv`: `scripts/install-test-deps.sh` sets them up, and
//! these tests fail (never skip) when they are missing.

mod agent;
mod support;

use std::time::Duration;

use agent::{full_state, HttpAgent};
use serde_json::Value;
use support::{listed_agent, Ampora, ExternalAgent, GoAgent, PythonAgent};
use uuid::Uuid;

/// How long an agent may take to show up (or change) in the API.
const WAIT: Duration = Duration::from_secs(20);

/// Short liveness settings, for agents that can only go offline by going silent.
const SHORT_HEARTBEAT: &[(&str, &str)] = &[
    ("AMPORA_HEARTBEAT_TIMEOUT", "3s"),
    ("AMPORA_SWEEP_INTERVAL", "500ms"),
];

/// Capabilities every client here reports (the Go agent adds ReportsHealth).
const COMMON_CAPABILITIES: &[&str] = &[
    "ReportsStatus",
    "AcceptsRemoteConfig",
    "ReportsEffectiveConfig",
    "ReportsRemoteConfig",
    "ReportsHeartbeat",
];

/// What the list entry of a third-party agent must show.
struct Expected<'a> {
    name: &'a str,
    transport: &'a str,
    non_identifying: &'a [(&'a str, &'a str)],
    capabilities: &'a [&'a str],
}

/// Waits until `agent` is listed online by `GET /api/v1/agents` with its description, then
/// checks the entry field by field and returns it.
async fn listed_online(ampora: &Ampora, agent: &ExternalAgent, expected: &Expected<'_>) -> Value {
    let uid = agent.uid;
    let body = ampora
        .wait_for(&format!("agent {uid} listed online"), WAIT, |body| {
            listed_agent(body, uid).is_some_and(|entry| {
                entry["status"] == "online"
                    && entry["identifying_attributes"]["service.name"] == expected.name
            })
        })
        .await;
    let entry = listed_agent(&body, uid).unwrap().clone();
    let context = format!("{entry:#}\n{}", agent.output());

    assert_eq!(entry["instance_uid"], uid.to_string(), "{context}");
    assert_eq!(entry["transport"], expected.transport, "{context}");
    assert_eq!(
        entry["identifying_attributes"]["service.version"], "0.0.1",
        "{context}"
    );
    assert_eq!(
        entry["non_identifying_attributes"]["os.type"], "linux",
        "{context}"
    );
    for (key, value) in expected.non_identifying {
        assert_eq!(
            entry["non_identifying_attributes"][key], *value,
            "{key}: {context}"
        );
    }
    let capabilities = capability_names(&entry);
    for capability in expected.capabilities {
        assert!(
            capabilities.iter().any(|c| c == capability),
            "{capability} missing from {capabilities:?}: {context}"
        );
    }
    for field in ["first_seen", "last_seen"] {
        let text = entry[field].as_str().unwrap_or_default();
        assert!(looks_like_rfc3339(text), "{field} {text:?}: {context}");
    }

    // The list's filters find it too.
    let name = expected.name;
    for query in [
        format!("attr=service.name={name}"),
        format!("status=online&attr=service.name={name}"),
        format!("attr=service.name={name}&attr=os.type=linux"),
    ] {
        let filtered = ampora.agents(&query).await;
        let uids: Vec<&Value> = filtered["agents"]
            .as_array()
            .unwrap_or_else(|| panic!("{query}: {filtered}"))
            .iter()
            .map(|agent| &agent["instance_uid"])
            .collect();
        assert_eq!(
            uids,
            [&Value::from(uid.to_string())],
            "?{query}: {filtered:#}"
        );
    }
    entry
}

fn capability_names(agent: &Value) -> Vec<String> {
    agent["capabilities"]
        .as_array()
        .unwrap_or_else(|| panic!("capabilities is not a list: {agent}"))
        .iter()
        .map(|c| c.as_str().expect("capability names are strings").to_owned())
        .collect()
}

/// `2026-01-02T03:04:05…Z` or with an offset; enough to tell RFC 3339 from other formats.
fn looks_like_rfc3339(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() >= 20
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[10] == b'T'
        && bytes[13] == b':'
        && bytes[16] == b':'
        && (text.ends_with('Z') || text[19..].contains(['+', '-']))
}

/// The agent's full snapshot holds its effective config as text.
async fn effective_config_body(ampora: &Ampora, uid: Uuid) -> String {
    let snapshot = ampora
        .agent(uid)
        .await
        .unwrap_or_else(|| panic!("GET /api/v1/agents/{uid} is 404"));
    let file = &snapshot["effective_config"]["files"][""];
    assert_eq!(file["content_type"], "text/yaml", "{snapshot:#}");
    file["body"]
        .as_str()
        .unwrap_or_else(|| panic!("no effective config body: {snapshot:#}"))
        .to_owned()
}

/// Stops the agent with SIGTERM and waits until the API lists it offline.
async fn stopped_goes_offline(ampora: &Ampora, agent: ExternalAgent, why: &str) {
    let uid = agent.uid;
    agent.stop();
    ampora
        .wait_for(&format!("agent {uid} offline ({why})"), WAIT, |body| {
            listed_agent(body, uid).is_some_and(|entry| entry["status"] == "offline")
        })
        .await;
    let offline = ampora.agents("status=offline").await;
    assert!(
        listed_agent(&offline, uid).is_some(),
        "?status=offline: {offline:#}"
    );
    let online = ampora.agents("status=online").await;
    assert!(
        listed_agent(&online, uid).is_none(),
        "?status=online: {online:#}"
    );
}

#[tokio::test]
async fn opamp_go_over_websocket() {
    // The default (long) heartbeat timeout: going offline can only come from the closed
    // connection, which opamp-go's Stop ends with AgentDisconnect.
    let ampora = Ampora::start(&[]).await;
    let agent = GoAgent::start(
        "ws",
        &ampora.ws_url(),
        "go-ws",
        &["deployment.environment=interop", "host.name=interop-host"],
    );
    let mut capabilities = COMMON_CAPABILITIES.to_vec();
    capabilities.push("ReportsHealth");
    let entry = listed_online(
        &ampora,
        &agent,
        &Expected {
            name: "go-ws",
            transport: "websocket",
            non_identifying: &[
                ("deployment.environment", "interop"),
                ("host.name", "interop-host"),
            ],
            capabilities: &capabilities,
        },
    )
    .await;
    assert_eq!(entry["health"]["healthy"], true, "{entry:#}");

    let body = effective_config_body(&ampora, agent.uid).await;
    assert!(body.starts_with("# go-agent go-ws\n"), "{body}");
    assert!(body.contains("receivers:\n  otlp:"), "{body}");

    stopped_goes_offline(&ampora, agent, "WebSocket closed after AgentDisconnect").await;
}

#[tokio::test]
async fn opamp_go_over_http() {
    // opamp-go's HTTP client sends no AgentDisconnect on Stop: it goes offline by going silent.
    let ampora = Ampora::start(SHORT_HEARTBEAT).await;
    let agent = GoAgent::start(
        "http",
        &ampora.http_opamp_url(),
        "go-http",
        &["deployment.environment=interop"],
    );
    let mut capabilities = COMMON_CAPABILITIES.to_vec();
    capabilities.push("ReportsHealth");
    let expected = Expected {
        name: "go-http",
        transport: "http",
        non_identifying: &[("deployment.environment", "interop")],
        capabilities: &capabilities,
    };
    let first = listed_online(&ampora, &agent, &expected).await;
    assert_eq!(first["health"]["healthy"], true, "{first:#}");

    let body = effective_config_body(&ampora, agent.uid).await;
    assert!(body.starts_with("# go-agent go-http\n"), "{body}");

    // Polling every 500 ms keeps it online past the 3 s heartbeat timeout: an agent that
    // spoke once after it and then went silent is swept offline first.
    let mut silent = HttpAgent::new(&ampora.http_opamp_url());
    silent.exchange(full_state("silent", "interop")).await;
    ampora
        .wait_agent(silent.uid, "offline once silent", |a| {
            a["status"] == "offline"
        })
        .await;
    let later = ampora.agent(agent.uid).await.expect("still known");
    assert_eq!(
        later["status"], "online",
        "polls must keep it online: {later:#}"
    );
    assert_ne!(
        later["last_seen"], first["last_seen"],
        "polls move last_seen: {later:#}"
    );

    stopped_goes_offline(
        &ampora,
        agent,
        "silent longer than AMPORA_HEARTBEAT_TIMEOUT=3s",
    )
    .await;
}

#[tokio::test]
async fn python_opamp_client_over_http() {
    // The default (long) heartbeat timeout: the library's AgentDisconnect on stop is what must
    // take it offline.
    let ampora = Ampora::start(&[]).await;
    let agent = PythonAgent::start(
        &ampora.http_opamp_url(),
        "py-http",
        &["team=observability", "deployment.environment=interop"],
    );
    let entry = listed_online(
        &ampora,
        &agent,
        &Expected {
            name: "py-http",
            transport: "http",
            non_identifying: &[
                ("team", "observability"),
                ("deployment.environment", "interop"),
            ],
            capabilities: COMMON_CAPABILITIES,
        },
    )
    .await;
    // The library reports no health (it lacks ReportsHealth), so the server has none to show.
    assert!(
        !capability_names(&entry)
            .iter()
            .any(|c| c == "ReportsHealth"),
        "{entry:#}"
    );
    assert_eq!(entry["health"], Value::Null, "{entry:#}");

    let body = effective_config_body(&ampora, agent.uid).await;
    assert!(body.starts_with("# python-agent py-http\n"), "{body}");
    assert!(body.contains("exporters:"), "{body}");

    stopped_goes_offline(&ampora, agent, "AgentDisconnect over HTTP").await;
}
