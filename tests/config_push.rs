//! Configurations end to end on `ampora serve`: publish, assign, and what agents are sent —
//! over WebSocket and HTTP, exactly once per hash, never again after a rejection — and the
//! drift that follows. On the distributed shape, a selector assignment made through one
//! control-plane replica reaches the agents every replica owns.

mod agent;
mod support;

use std::time::Duration;

use agent::{full_state, heartbeat, HttpAgent, WsAgent, CAPABILITIES};
use ampora_shared::pb::opamp::{
    AgentConfigFile, AgentConfigMap, AgentToServer, AvailableComponents, ComponentDetails,
    EffectiveConfig, RemoteConfigStatus, RemoteConfigStatuses, ServerToAgent, ServerToAgentFlags,
};
use serde_json::{json, Value};
use support::cluster::{Cluster, ClusterOptions};
use support::config_api::{ConfigApi, Published};
use support::Ampora;
use uuid::Uuid;

const REPORTS_HEARTBEAT: u64 = 0x2000;

const CONFIG_V1: &str = "receivers:\n  otlp:\n    protocols:\n      grpc: {}\nprocessors:\n  memory_limiter:\n    check_interval: 1s\n    limit_mib: 512\n  batch: {}\nexporters:\n  otlp:\n    endpoint: https://127.0.0.1:4317\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      processors: [memory_limiter, batch]\n      exporters: [otlp]\n";

/// How long an agent may take to reach a state the test waits for.
const WITHIN: Duration = Duration::from_secs(20);

/// Creates a configuration with `yaml` and publishes it.
async fn publish(api: &ConfigApi, name: &str, yaml: &str) -> Published {
    let id = api.create_configuration(name, yaml).await;
    api.publish(id).await
}

/// Waits for the agent's drift state to be `state`: its snapshot.
async fn drift(api: &ConfigApi, uid: Uuid, state: &str) -> Value {
    api.wait_drift(uid, state, WITHIN, String::new).await
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
    let api = ConfigApi::new(ampora.api_base());
    let mut agent = WsAgent::connect(&ampora.ws_url()).await;
    let uid = agent.uid;
    agent.exchange(full_state("checkout", "prod")).await;

    let v1 = publish(&api, "checkout", CONFIG_V1).await;
    let hash1 = v1.hash.clone();
    api.assign(&v1, json!({"instance_uid": uid})).await;
    let pushed = agent
        .recv(Duration::from_secs(10))
        .await
        .expect("the assignment is pushed to the connected agent");
    assert_eq!(
        offered(&pushed),
        Some((hash1.clone(), CONFIG_V1.to_owned()))
    );
    let pending = drift(&api, uid, "pending").await;
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
    let in_sync = drift(&api, uid, "in_sync").await;
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
    assert_eq!(api.offered_hashes(uid).await, std::slice::from_ref(&hash1));

    // A version the agent rejects: offered once; the agent falls back and reports its old
    // config APPLIED (opamp-spec #397), and is still not offered the rejected one.
    let mut draft = CONFIG_V1.replace("limit_mib: 512", "limit_mib: 256");
    draft.push_str("# v2\n");
    let v2 = api.publish_edit(v1.configuration_id, &draft).await;
    let hash2 = v2.hash.clone();
    assert_eq!(v2.version, 2);
    api.assign(&v2, json!({"instance_uid": uid})).await;
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
    let failed = drift(&api, uid, "failed").await;
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
    let failed = drift(&api, uid, "failed").await;
    assert_eq!(failed["applied_config_hash"], hash1.as_str());
    assert_eq!(
        api.offered_hashes(uid).await,
        [hash1.clone(), hash2.clone()]
    );
    let kinds: Vec<String> = api
        .events(uid)
        .await
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
    api.assign(&v2, json!({"instance_uid": uid})).await;
    let pushed = agent
        .recv(Duration::from_secs(10))
        .await
        .expect("v2 re-offered");
    assert_eq!(offered(&pushed).map(|(hash, _)| hash), Some(hash2.clone()));
}

#[tokio::test]
async fn an_effective_config_edited_without_an_assignment_is_out_of_band() {
    let ampora = Ampora::start(&[]).await;
    let api = ConfigApi::new(ampora.api_base());
    let mut agent = WsAgent::connect(&ampora.ws_url()).await;
    let uid = agent.uid;
    agent.exchange(full_state("edge", "prod")).await;
    let published = publish(&api, "edge", CONFIG_V1).await;
    let hash = published.hash.clone();
    api.assign(&published, json!({"instance_uid": uid})).await;
    agent.recv(Duration::from_secs(10)).await.expect("offer");
    let mut applied = status(RemoteConfigStatuses::Applied, &hash, "");
    effective(&mut applied, CONFIG_V1);
    agent.send(applied).await;
    drift(&api, uid, "in_sync").await;

    let mut edited = heartbeat();
    effective(&mut edited, &format!("{CONFIG_V1}# edited by hand\n"));
    agent.send(edited).await;
    let agent_json = drift(&api, uid, "out_of_band").await;
    assert_ne!(agent_json["effective_config_hash"], hash.as_str());
    let fleet = api.drift().await;
    assert_eq!(
        fleet["counts"],
        json!({"in_sync": 0, "pending": 0, "failed": 0, "out_of_band": 1})
    );
    assert_eq!(fleet["agents"][0]["instance_uid"], uid.to_string());
    assert_eq!(fleet["agents"][0]["state"], "out_of_band");
}

#[tokio::test]
async fn an_http_agent_gets_its_config_in_the_reply_to_its_next_poll_once() {
    let ampora = Ampora::start(&[]).await;
    let api = ConfigApi::new(ampora.api_base());
    let mut agent = HttpAgent::new(&ampora.http_opamp_url());
    let uid = agent.uid;
    let first = agent.exchange(full_state("poller", "prod")).await;
    assert!(first.remote_config.is_none());
    let published = publish(&api, "poller", CONFIG_V1).await;
    let hash = published.hash.clone();
    api.assign(&published, json!({"instance_uid": uid})).await;

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
    drift(&api, uid, "in_sync").await;
    assert_eq!(api.offered_hashes(uid).await, [hash]);
}

#[tokio::test]
async fn an_agent_that_does_not_accept_remote_config_is_never_offered_one() {
    let ampora = Ampora::start(&[]).await;
    let api = ConfigApi::new(ampora.api_base());
    let mut agent = HttpAgent::new(&ampora.http_opamp_url());
    let uid = agent.uid;
    let accepts_remote_config = 0x2;
    let mut state = full_state("reader", "prod");
    state.capabilities &= !accepts_remote_config;
    agent.exchange(state).await;
    let published = publish(&api, "reader", CONFIG_V1).await;
    api.assign(&published, json!({"instance_uid": uid})).await;
    for _ in 0..3 {
        let mut beat = heartbeat();
        beat.capabilities &= !accepts_remote_config;
        assert!(agent.exchange(beat).await.remote_config.is_none());
    }
    assert!(api.offered_hashes(uid).await.is_empty());
    let pending = drift(&api, uid, "pending").await;
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
    let api = ConfigApi::new(cluster.api());
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

    let published = publish(&api, "fleet", CONFIG_V1).await;
    let hash = published.hash.clone();
    api.assign(
        &published,
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
    let fleet = api
        .wait_fleet_drift("pending for every prod agent", WITHIN, |d| {
            d["counts"]["pending"] == 8
        })
        .await;
    assert_eq!(fleet["counts"]["in_sync"], 0);
    let listed: Vec<&str> = fleet["agents"]
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
    api.wait_fleet_drift("in sync everywhere", WITHIN, |d| {
        d["counts"]["in_sync"] == 8 && d["counts"]["pending"] == 0
    })
    .await;
    let extra = heartbeats_then_gap(&mut dev, 1).await;
    assert!(extra.iter().all(|r| r.remote_config.is_none()));
    assert!(api.offered_hashes(dev.uid).await.is_empty());
}

#[tokio::test]
async fn an_offer_the_agent_never_answers_is_made_again_after_the_retry_interval() {
    let ampora = Ampora::start(&[("AMPORA_OFFER_RETRY_INTERVAL", "1s")]).await;
    let api = ConfigApi::new(ampora.api_base());
    let mut agent = HttpAgent::new(&ampora.http_opamp_url());
    let uid = agent.uid;
    agent.exchange(full_state("deaf", "prod")).await;
    let published = publish(&api, "deaf", CONFIG_V1).await;
    api.assign(&published, json!({"instance_uid": uid})).await;
    let first = agent.exchange(heartbeat()).await;
    assert!(
        first.remote_config.is_some(),
        "the first poll gets the offer"
    );

    // As if the offer never arrived: the agent keeps reporting its old config. Polls go on
    // until the offer comes again (bounded), never more than once per retry.
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let reply = agent.exchange(heartbeat()).await;
        if reply.remote_config.is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never offered again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        api.offered_hashes(uid).await,
        [published.hash.clone(), published.hash.clone()]
    );

    // Once the agent answers, the offers end.
    let mut applied = status(RemoteConfigStatuses::Applied, &published.hash, "");
    effective(&mut applied, CONFIG_V1);
    assert!(agent.exchange(applied).await.remote_config.is_none());
    drift(&api, uid, "in_sync").await;
    assert_eq!(api.offered_hashes(uid).await.len(), 2);
}

#[tokio::test]
async fn a_version_with_components_an_agent_lacks_is_not_assigned_to_it() {
    let ampora = Ampora::start(&[]).await;
    let api = ConfigApi::new(ampora.api_base());
    let mut agent = WsAgent::connect(&ampora.ws_url()).await;
    let uid = agent.uid;
    let reports_available_components = 0x4000;
    let mut state = full_state("slim", "prod");
    state.capabilities |= reports_available_components;
    let kind = |types: &[&str]| ComponentDetails {
        sub_component_map: types
            .iter()
            .map(|name| (name.to_string(), ComponentDetails::default()))
            .collect(),
        ..Default::default()
    };
    state.available_components = Some(AvailableComponents {
        components: [
            ("receivers".to_owned(), kind(&["otlp"])),
            ("processors".to_owned(), kind(&["memory_limiter", "batch"])),
            ("exporters".to_owned(), kind(&["debug"])),
        ]
        .into(),
        hash: vec![1, 2, 3].into(),
    });
    agent.exchange(state).await;
    let published = publish(&api, "needs-otlp", CONFIG_V1).await;
    api.wait_agent(
        uid,
        "components known",
        WITHIN,
        |a| !a["available_components"].is_null(),
        String::new,
    )
    .await;

    let (status, body) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/assignments",
            Some(json!({
                "configuration_id": published.configuration_id,
                "version": published.version,
                "target": {"instance_uid": uid},
            })),
        )
        .await;
    assert_eq!(status, 422, "{body:#}");
    let problems = body["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{body:#}");
    assert_eq!(problems[0]["rule"], "unknown-component-type");
    assert_eq!(problems[0]["severity"], "error");
    assert!(problems[0]["message"].as_str().unwrap().contains("otlp"));
    assert!(api.agent(uid).await.unwrap()["drift"].is_null());

    // A version made of what the agent has is assigned.
    let fitting = publish(
        &api,
        "debug-only",
        &CONFIG_V1
            .replace(
                "  otlp:\n    endpoint: https://127.0.0.1:4317\n",
                "  debug: {}\n",
            )
            .replace("exporters: [otlp]", "exporters: [debug]"),
    )
    .await;
    api.assign(&fitting, json!({"instance_uid": uid})).await;
}

#[tokio::test]
async fn an_agent_offline_when_assigned_gets_its_config_when_it_returns() {
    let ampora = Ampora::start(&[]).await;
    let api = ConfigApi::new(ampora.api_base());
    let mut agent = WsAgent::connect(&ampora.ws_url()).await;
    let uid = agent.uid;
    agent.exchange(full_state("away", "prod")).await;
    agent.close().await;
    api.wait_agent(
        uid,
        "offline",
        WITHIN,
        |a| a["status"] == "offline",
        String::new,
    )
    .await;

    let published = publish(&api, "away", CONFIG_V1).await;
    api.assign(&published, json!({"instance_uid": uid})).await;
    drift(&api, uid, "pending").await;
    assert!(
        api.offered_hashes(uid).await.is_empty(),
        "nobody to offer it to"
    );

    let mut agent = WsAgent::connect_as(&ampora.ws_url(), uid).await;
    let first = agent.exchange(full_state("away", "prod")).await;
    assert_eq!(
        offered(&first),
        Some((published.hash.clone(), CONFIG_V1.to_owned())),
        "the first reply on the new connection carries the config"
    );
    assert_eq!(api.offered_hashes(uid).await, [published.hash]);
}
