//! Configurations end to end on `ampora serve`: publish, assign, and what agents are sent —
//! over WebSocket and HTTP, exactly once per hash, never again after a rejection — and the
//! drift that follows. On the distributed shape, a selector assignment made through one
//! control-plane replica reaches the agents every replica owns.

mod agent;
mod support;

use std::time::Duration;

use agent::{full_state, heartbeat, HttpAgent, WsAgent, CAPABILITIES};
use ampora_shared::pb::opamp::{
    AgentConfigFile, AgentConfigMap, AgentToServer, EffectiveConfig, RemoteConfigStatus,
    RemoteConfigStatuses, ServerToAgent, ServerToAgentFlags,
};
use serde_json::{json, Value};
use support::cluster::{Cluster, ClusterOptions};
use support::Ampora;
use uuid::Uuid;

const REPORTS_HEARTBEAT: u64 = 0x2000;

const CONFIG_V1: &str = "receivers:\n  otlp:\n    protocols:\n      grpc: {}\nprocessors:\n  memory_limiter:\n    check_interval: 1s\n    limit_mib: 512\n  batch: {}\nexporters:\n  otlp:\n    endpoint: https://127.0.0.1:4317\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      processors: [memory_limiter, batch]\n      exporters: [otlp]\n";

/// The API of one control-plane, as a test drives it.
struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(base: impl Into<String>) -> Api {
        Api {
            base: base.into(),
            http: reqwest::Client::new(),
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.send(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Creates a configuration with `yaml` and publishes it: (configuration id, version, hash).
    async fn publish(&self, name: &str, yaml: &str) -> (i64, i64, String) {
        let (status, created) = self
            .post(
                "/api/v1/configurations",
                json!({"name": name, "description": "test", "labels": {"team": "a"}, "yaml": yaml}),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_i64().unwrap();
        let (status, published) = self
            .post(&format!("/api/v1/configurations/{id}/publish"), json!({}))
            .await;
        assert_eq!(status, 201, "{published}");
        (
            id,
            published["version"].as_i64().unwrap(),
            published["hash"].as_str().unwrap().to_owned(),
        )
    }

    async fn assign(&self, configuration_id: i64, version: i64, target: Value) {
        let (status, body) = self
            .post(
                "/api/v1/assignments",
                json!({"configuration_id": configuration_id, "version": version, "target": target}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    /// The hashes of every config offered to `uid`, oldest first, from its history.
    async fn offers(&self, uid: Uuid) -> Vec<String> {
        let mut hashes = Vec::new();
        let mut page = String::new();
        loop {
            let body = self
                .get(&format!(
                    "/api/v1/agents/{uid}/events?limit=1000&page_token={page}"
                ))
                .await;
            for event in body["events"].as_array().unwrap() {
                if event["kind"] == "config_offered" {
                    hashes.push(event["payload"]["hash"].as_str().unwrap().to_owned());
                }
            }
            match body["next_page_token"].as_str() {
                Some(next) => page = next.to_owned(),
                None => break,
            }
        }
        hashes.reverse();
        hashes
    }

    /// Polls the agent until `ready` holds for its JSON; panics with the last one after 20 s.
    async fn wait_agent(&self, uid: Uuid, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (status, agent) = self
                .send(reqwest::Method::GET, &format!("/api/v1/agents/{uid}"), None)
                .await;
            if status == 200 && ready(&agent) {
                return agent;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("agent {uid} never {what}; last: {agent:#}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls `GET /api/v1/drift` until `ready` holds; panics with the last body after 20 s.
    async fn wait_drift(&self, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let drift = self.get("/api/v1/drift?limit=1000").await;
            if ready(&drift) {
                return drift;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("drift never {what}; last: {drift:#}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn drift_state(agent: &Value) -> &str {
    agent["drift"]["state"].as_str().unwrap_or("none")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The config in an offer: (hash as hex, the one file's body).
fn offered(reply: &ServerToAgent) -> Option<(String, String)> {
    let offer = reply.remote_config.as_ref()?;
    let file = &offer.config.as_ref()?.config_map[""];
    assert_eq!(file.content_type, "text/yaml");
    Some((
        hex(&offer.config_hash),
        String::from_utf8(file.body.to_vec()).unwrap(),
    ))
}

fn bytes_of(hash: &str) -> Vec<u8> {
    (0..hash.len() / 2)
        .map(|i| u8::from_str_radix(&hash[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn status(state: RemoteConfigStatuses, hash: &str, error: &str) -> AgentToServer {
    AgentToServer {
        capabilities: CAPABILITIES,
        remote_config_status: Some(RemoteConfigStatus {
            last_remote_config_hash: bytes_of(hash).into(),
            status: state as i32,
            error_message: error.into(),
        }),
        ..Default::default()
    }
}

fn effective(message: &mut AgentToServer, body: &str) {
    let file = AgentConfigFile {
        body: body.as_bytes().to_vec().into(),
        content_type: "text/yaml".into(),
    };
    message.effective_config = Some(EffectiveConfig {
        config_map: Some(AgentConfigMap {
            config_map: [(String::new(), file)].into(),
        }),
    });
}

/// Sends `count` heartbeats, then a message one sequence number ahead: the server answers the
/// gap (asking for the full state), so every reply the heartbeats caused has arrived before
/// that answer. Returns what arrived before it.
async fn heartbeats_then_gap(agent: &mut WsAgent, count: usize) -> Vec<ServerToAgent> {
    for _ in 0..count {
        agent.send(heartbeat()).await;
    }
    agent.next_seq += 1;
    agent.send(heartbeat()).await;
    let mut before = Vec::new();
    loop {
        let reply = agent
            .recv(Duration::from_secs(10))
            .await
            .expect("the answer to the sequence gap");
        if reply.flags & ServerToAgentFlags::ReportFullState as u64 != 0 {
            return before;
        }
        before.push(reply);
    }
}

#[tokio::test]
async fn a_websocket_agent_gets_each_config_once_and_a_rejected_one_never_again() {
    let ampora = Ampora::start(&[]).await;
    let api = Api::new(ampora.api_base());
    let mut agent = WsAgent::connect(&ampora.ws_url()).await;
    let uid = agent.uid;
    agent.exchange(full_state("checkout", "prod")).await;

    let (config, v1, hash1) = api.publish("checkout", CONFIG_V1).await;
    api.assign(config, v1, json!({"instance_uid": uid})).await;
    let pushed = agent
        .recv(Duration::from_secs(10))
        .await
        .expect("the assignment is pushed to the connected agent");
    assert_eq!(
        offered(&pushed),
        Some((hash1.clone(), CONFIG_V1.to_owned()))
    );
    let pending = api
        .wait_agent(uid, "pending", |a| drift_state(a) == "pending")
        .await;
    assert_eq!(pending["assigned_config_hash"], hash1.as_str());

    // Heartbeats while the agent still reports its old config: offered once, not again.
    let extra = heartbeats_then_gap(&mut agent, 5).await;
    assert!(extra.iter().all(|r| r.remote_config.is_none()), "{extra:?}");

    // The agent applies it; its effective config is the version's bytes.
    agent
        .send(status(RemoteConfigStatuses::Applying, &hash1, ""))
        .await;
    let mut applied = status(RemoteConfigStatuses::Applied, &hash1, "");
    effective(&mut applied, CONFIG_V1);
    agent.send(applied).await;
    let in_sync = api
        .wait_agent(uid, "in sync", |a| drift_state(a) == "in_sync")
        .await;
    assert_eq!(in_sync["effective_config_hash"], hash1.as_str());
    assert_eq!(in_sync["applied_config_hash"], hash1.as_str());

    // A reconnect that reports the config it has gets nothing.
    agent.close().await;
    let mut agent = WsAgent::connect_as(&ampora.ws_url(), uid).await;
    let mut state = full_state("checkout", "prod");
    state.remote_config_status =
        status(RemoteConfigStatuses::Applied, &hash1, "").remote_config_status;
    effective(&mut state, CONFIG_V1);
    let first = agent.exchange(state).await;
    assert!(first.remote_config.is_none(), "{first:?}");
    assert_eq!(api.offers(uid).await, std::slice::from_ref(&hash1));

    // A version the agent rejects: offered once; the agent falls back and reports its old
    // config APPLIED (opamp-spec #397), and is still not offered the rejected one.
    let mut draft = CONFIG_V1.replace("limit_mib: 512", "limit_mib: 256");
    draft.push_str("# v2\n");
    let row_version = api.get(&format!("/api/v1/configurations/{config}")).await["row_version"]
        .as_i64()
        .unwrap();
    let (status_code, body) = api
        .send(
            reqwest::Method::PUT,
            &format!("/api/v1/configurations/{config}/draft"),
            Some(json!({"yaml": draft, "row_version": row_version})),
        )
        .await;
    assert_eq!(status_code, 200, "{body}");
    let (status_code, published) = api
        .post(
            &format!("/api/v1/configurations/{config}/publish"),
            json!({}),
        )
        .await;
    assert_eq!(status_code, 201, "{published}");
    let hash2 = published["hash"].as_str().unwrap().to_owned();
    assert_eq!(published["version"], 2);
    api.assign(config, 2, json!({"instance_uid": uid})).await;
    let pushed = agent
        .recv(Duration::from_secs(10))
        .await
        .expect("v2 pushed");
    assert_eq!(offered(&pushed).map(|(hash, _)| hash), Some(hash2.clone()));
    agent
        .send(status(
            RemoteConfigStatuses::Failed,
            &hash2,
            "memory_limiter: limit too low",
        ))
        .await;
    let failed = api
        .wait_agent(uid, "failed", |a| drift_state(a) == "failed")
        .await;
    assert_eq!(failed["drift"]["reason"], "memory_limiter: limit too low");
    agent
        .send(status(RemoteConfigStatuses::Applied, &hash1, ""))
        .await;
    let extra = heartbeats_then_gap(&mut agent, 5).await;
    assert!(extra.iter().all(|r| r.remote_config.is_none()), "{extra:?}");
    agent.close().await;
    let mut agent = WsAgent::connect_as(&ampora.ws_url(), uid).await;
    let mut state = full_state("checkout", "prod");
    state.remote_config_status =
        status(RemoteConfigStatuses::Applied, &hash1, "").remote_config_status;
    let first = agent.exchange(state).await;
    assert!(
        first.remote_config.is_none(),
        "rejected config offered on reconnect"
    );
    let failed = api
        .wait_agent(uid, "still failed", |a| drift_state(a) == "failed")
        .await;
    assert_eq!(failed["applied_config_hash"], hash1.as_str());
    assert_eq!(api.offers(uid).await, [hash1.clone(), hash2.clone()]);
    let kinds: Vec<String> = api
        .get(&format!("/api/v1/agents/{uid}/events?limit=1000"))
        .await["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["kind"].as_str().unwrap(),
                e["payload"]["status"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert!(
        kinds.contains(&"remote_config_status:FAILED".to_owned()),
        "{kinds:?}"
    );

    // Assigning the rejected version again is the operator's call: it is offered again.
    api.assign(config, 2, json!({"instance_uid": uid})).await;
    let pushed = agent
        .recv(Duration::from_secs(10))
        .await
        .expect("v2 re-offered");
    assert_eq!(offered(&pushed).map(|(hash, _)| hash), Some(hash2.clone()));
}

#[tokio::test]
async fn an_effective_config_edited_without_an_assignment_is_out_of_band() {
    let ampora = Ampora::start(&[]).await;
    let api = Api::new(ampora.api_base());
    let mut agent = WsAgent::connect(&ampora.ws_url()).await;
    let uid = agent.uid;
    agent.exchange(full_state("edge", "prod")).await;
    let (config, version, hash) = api.publish("edge", CONFIG_V1).await;
    api.assign(config, version, json!({"instance_uid": uid}))
        .await;
    agent.recv(Duration::from_secs(10)).await.expect("offer");
    let mut applied = status(RemoteConfigStatuses::Applied, &hash, "");
    effective(&mut applied, CONFIG_V1);
    agent.send(applied).await;
    api.wait_agent(uid, "in sync", |a| drift_state(a) == "in_sync")
        .await;

    let mut edited = heartbeat();
    effective(&mut edited, &format!("{CONFIG_V1}# edited by hand\n"));
    agent.send(edited).await;
    let agent_json = api
        .wait_agent(uid, "out of band", |a| drift_state(a) == "out_of_band")
        .await;
    assert_ne!(agent_json["effective_config_hash"], hash.as_str());
    let drift = api
        .wait_drift("counted", |d| d["counts"]["out_of_band"] == 1)
        .await;
    assert_eq!(
        drift["counts"],
        json!({"in_sync": 0, "pending": 0, "failed": 0, "out_of_band": 1})
    );
    assert_eq!(drift["agents"][0]["instance_uid"], uid.to_string());
    assert_eq!(drift["agents"][0]["state"], "out_of_band");
}

#[tokio::test]
async fn an_http_agent_gets_its_config_in_the_reply_to_its_next_poll_once() {
    let ampora = Ampora::start(&[]).await;
    let api = Api::new(ampora.api_base());
    let mut agent = HttpAgent::new(&ampora.http_opamp_url());
    let uid = agent.uid;
    let first = agent.exchange(full_state("poller", "prod")).await;
    assert!(first.remote_config.is_none());
    let (config, version, hash) = api.publish("poller", CONFIG_V1).await;
    api.assign(config, version, json!({"instance_uid": uid}))
        .await;

    let reply = agent.exchange(heartbeat()).await;
    assert_eq!(offered(&reply), Some((hash.clone(), CONFIG_V1.to_owned())));
    for _ in 0..5 {
        let reply = agent.exchange(heartbeat()).await;
        assert!(reply.remote_config.is_none(), "offered again on a poll");
    }
    let mut applied = status(RemoteConfigStatuses::Applied, &hash, "");
    effective(&mut applied, CONFIG_V1);
    let reply = agent.exchange(applied).await;
    assert!(reply.remote_config.is_none());
    api.wait_agent(uid, "in sync", |a| drift_state(a) == "in_sync")
        .await;
    assert_eq!(api.offers(uid).await, [hash]);
}

#[tokio::test]
async fn an_agent_that_does_not_accept_remote_config_is_never_offered_one() {
    let ampora = Ampora::start(&[]).await;
    let api = Api::new(ampora.api_base());
    let mut agent = HttpAgent::new(&ampora.http_opamp_url());
    let uid = agent.uid;
    let accepts_remote_config = 0x2;
    let mut state = full_state("reader", "prod");
    state.capabilities &= !accepts_remote_config;
    agent.exchange(state).await;
    let (config, version, _) = api.publish("reader", CONFIG_V1).await;
    api.assign(config, version, json!({"instance_uid": uid}))
        .await;
    for _ in 0..3 {
        let mut beat = heartbeat();
        beat.capabilities &= !accepts_remote_config;
        assert!(agent.exchange(beat).await.remote_config.is_none());
    }
    assert!(api.offers(uid).await.is_empty());
    let pending = api
        .wait_agent(uid, "pending", |a| drift_state(a) == "pending")
        .await;
    assert!(pending["drift"]["reason"]
        .as_str()
        .unwrap()
        .contains("assigned"));
}

#[tokio::test]
async fn agents_that_report_heartbeats_are_offered_the_configured_interval() {
    let ampora = Ampora::start(&[("AMPORA_AGENT_HEARTBEAT_INTERVAL", "3s")]).await;
    let mut agent = WsAgent::connect(&ampora.ws_url()).await;
    let mut state = full_state("beater", "prod");
    state.capabilities |= REPORTS_HEARTBEAT;
    let first = agent.exchange(state).await;
    let settings = first
        .connection_settings
        .expect("connection settings offered");
    assert!(!settings.hash.is_empty());
    assert_eq!(settings.opamp.unwrap().heartbeat_interval_seconds, 3);

    let mut quiet = WsAgent::connect(&ampora.ws_url()).await;
    let first = quiet.exchange(full_state("quiet", "prod")).await;
    assert!(
        first.connection_settings.is_none(),
        "an agent without ReportsHeartbeat gets no interval"
    );
}

#[tokio::test]
async fn a_selector_assignment_through_one_replica_reaches_agents_on_every_replica() {
    let mut cluster = Cluster::start(ClusterOptions {
        gateways: 2,
        control_planes: 2,
        nats_servers: 1,
        gateway_tls: false,
    })
    .await;
    let api = Api::new(cluster.api());
    let mut prod = Vec::new();
    for i in 0..8 {
        let mut agent = WsAgent::connect(&cluster.ws_url()).await;
        agent
            .exchange(full_state(&format!("svc-{i}"), "prod"))
            .await;
        prod.push(agent);
    }
    let mut dev = WsAgent::connect(&cluster.ws_url()).await;
    dev.exchange(full_state("svc-dev", "dev")).await;

    let (config, version, hash) = api.publish("fleet", CONFIG_V1).await;
    api.assign(
        config,
        version,
        json!({"selector": "deployment.environment=prod,os.type=linux"}),
    )
    .await;
    for agent in &mut prod {
        let pushed = agent
            .recv(Duration::from_secs(15))
            .await
            .unwrap_or_else(|| panic!("agent {} got no offer", agent.uid));
        assert_eq!(offered(&pushed).map(|(h, _)| h), Some(hash.clone()));
    }
    let drift = api
        .wait_drift("pending for every prod agent", |d| {
            d["counts"]["pending"] == 8
        })
        .await;
    assert_eq!(drift["counts"]["in_sync"], 0);
    let listed: Vec<&str> = drift["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["instance_uid"].as_str().unwrap())
        .collect();
    assert!(!listed.contains(&dev.uid.to_string().as_str()));

    // Every prod agent applies; the dev agent never had anything offered.
    for agent in &mut prod {
        let mut applied = status(RemoteConfigStatuses::Applied, &hash, "");
        effective(&mut applied, CONFIG_V1);
        agent.send(applied).await;
    }
    api.wait_drift("in sync everywhere", |d| {
        d["counts"]["in_sync"] == 8 && d["counts"]["pending"] == 0
    })
    .await;
    let extra = heartbeats_then_gap(&mut dev, 1).await;
    assert!(extra.iter().all(|r| r.remote_config.is_none()));
    assert!(api.offers(dev.uid).await.is_empty());
}
