//! Interop with OpAMP clients we did not write: the reference Go client library (opamp-go) over
//! WebSocket and HTTP, and the PyPI `opentelemetry-opamp-client` over HTTP.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Ampora, ExternalAgent};
use uuid::Uuid;

const ENV: &[(&str, &str)] = &[
    ("AMPORA_HEARTBEAT_TIMEOUT", "3s"),
    ("AMPORA_SWEEP_INTERVAL", "250ms"),
];

async fn wait_agent(
    ampora: &Ampora,
    uid: Uuid,
    what: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        let response = reqwest::get(format!("{}/api/v1/agents/{uid}", ampora.api_base()))
            .await
            .unwrap();
        if response.status() == 200 {
            let agent: Value = response.json().await.unwrap();
            if ready(&agent) {
                return agent;
            }
            last = Some(agent);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("agent {uid} never became {what}; last: {last:#?}");
}

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
    let snapshot = wait_agent(&ampora, uid, "online with its description", |a| {
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
    let capabilities = capability_names(&snapshot);
    for expected in [
        "ReportsStatus",
        "AcceptsRemoteConfig",
        "ReportsEffectiveConfig",
        "ReportsHealth",
        "ReportsRemoteConfig",
        "ReportsHeartbeat",
    ] {
        assert!(
            capabilities.iter().any(|c| c == expected),
            "{expected} missing from {capabilities:?}"
        );
    }
    let body = snapshot["effective_config"]["files"][""]["body"]
        .as_str()
        .unwrap();
    assert!(body.contains(&format!("# go-agent {name}")), "{body}");
    assert_eq!(
        listed(&ampora, &name).await["instance_uid"],
        uid.to_string()
    );

    agent.stop();
    wait_agent(&ampora, uid, "offline", |a| a["status"] == "offline").await;
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
    let snapshot = wait_agent(&ampora, uid, "online with its description", |a| {
        a["status"] == "online" && a["identifying_attributes"]["service.name"] == "py-http"
    })
    .await;
    assert_eq!(snapshot["transport"], "http");
    assert_eq!(
        snapshot["non_identifying_attributes"]["team"],
        "observability"
    );
    let capabilities = capability_names(&snapshot);
    for expected in [
        "ReportsStatus",
        "AcceptsRemoteConfig",
        "ReportsEffectiveConfig",
        "ReportsRemoteConfig",
        "ReportsHeartbeat",
    ] {
        assert!(
            capabilities.iter().any(|c| c == expected),
            "{expected} missing from {capabilities:?}"
        );
    }
    let body = snapshot["effective_config"]["files"][""]["body"]
        .as_str()
        .unwrap();
    assert!(body.contains("# python-agent py-http"), "{body}");
    assert_eq!(
        listed(&ampora, "py-http").await["instance_uid"],
        uid.to_string()
    );

    agent.stop();
    wait_agent(&ampora, uid, "offline", |a| a["status"] == "offline").await;
}
