//! Interop with OpAMP clients we did not write: the reference Go client library (opamp-go) over
//! WebSocket and HTTP, and the PyPI `opentelemetry-opamp-client` over HTTP.

mod support;

use serde_json::Value;
use support::{Ampora, ExternalAgent};

const ENV: &[(&str, &str)] = &[
    ("AMPORA_HEARTBEAT_TIMEOUT", "3s"),
    ("AMPORA_SWEEP_INTERVAL", "250ms"),
];

/// The agent is in the fleet list (not only reachable by uid) with these attributes.
async fn listed(ampora: &Ampora, name: &str) -> Value {
    let url = format!(
        "{}/api/v1/agents?attr=service.name={name}",
        ampora.api_base()
    );
    let body: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    let agents = body["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1, "{body:#}");
    agents[0].clone()
}

fn assert_capabilities(agent: &Value, expected: &[&str]) {
    let names = capability_names(agent);
    for capability in expected {
        assert!(
            names.iter().any(|c| c == capability),
            "{capability} missing from {names:?}"
        );
    }
}

fn capability_names(agent: &Value) -> Vec<String> {
    agent["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect()
}

async fn opamp_go(transport: &str, expected_transport: &str) {
    let ampora = Ampora::start(ENV).await;
    let url = if transport == "ws" {
        ampora.ws_url()
    } else {
        ampora.http_opamp_url()
    };
    let name = format!("go-{transport}");
    let agent = ExternalAgent::go(transport, &url, &name, &["deployment.environment=interop"]);
    let uid = agent.uid;
    let snapshot = ampora
        .wait_agent(uid, "online with its description", |a| {
            a["status"] == "online" && a["identifying_attributes"]["service.name"] == name.as_str()
        })
        .await;
    assert_eq!(snapshot["transport"], expected_transport);
    assert_eq!(
        snapshot["identifying_attributes"]["service.version"],
        "0.0.1"
    );
    assert_eq!(
        snapshot["non_identifying_attributes"]["deployment.environment"],
        "interop"
    );
    assert_eq!(snapshot["non_identifying_attributes"]["os.type"], "linux");
    assert_eq!(snapshot["health"]["healthy"], true);
    assert_capabilities(
        &snapshot,
        &[
            "ReportsStatus",
            "AcceptsRemoteConfig",
            "ReportsEffectiveConfig",
            "ReportsHealth",
            "ReportsRemoteConfig",
            "ReportsHeartbeat",
        ],
    );
    let body = snapshot["effective_config"]["files"][""]["body"]
        .as_str()
        .unwrap();
    assert!(body.contains(&format!("# go-agent {name}")), "{body}");
    assert_eq!(
        listed(&ampora, &name).await["instance_uid"],
        uid.to_string()
    );

    agent.stop();
    ampora
        .wait_agent(uid, "offline", |a| a["status"] == "offline")
        .await;
}

#[tokio::test]
async fn opamp_go_over_websocket() {
    opamp_go("ws", "websocket").await;
}

#[tokio::test]
async fn opamp_go_over_http() {
    opamp_go("http", "http").await;
}

#[tokio::test]
async fn python_opamp_client_over_http() {
    let ampora = Ampora::start(ENV).await;
    let agent = ExternalAgent::python(&ampora.http_opamp_url(), "py-http", &["team=observability"]);
    let uid = agent.uid;
    let snapshot = ampora
        .wait_agent(uid, "online with its description", |a| {
            a["status"] == "online" && a["identifying_attributes"]["service.name"] == "py-http"
        })
        .await;
    assert_eq!(snapshot["transport"], "http");
    assert_eq!(
        snapshot["non_identifying_attributes"]["team"],
        "observability"
    );
    assert_capabilities(
        &snapshot,
        &[
            "ReportsStatus",
            "AcceptsRemoteConfig",
            "ReportsEffectiveConfig",
            "ReportsRemoteConfig",
            "ReportsHeartbeat",
        ],
    );
    let body = snapshot["effective_config"]["files"][""]["body"]
        .as_str()
        .unwrap();
    assert!(body.contains("# python-agent py-http"), "{body}");
    assert_eq!(
        listed(&ampora, "py-http").await["instance_uid"],
        uid.to_string()
    );

    agent.stop();
    ampora
        .wait_agent(uid, "offline", |a| a["status"] == "offline")
        .await;
}
