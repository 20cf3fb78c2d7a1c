//! End to end on `ampora serve`: agents over WebSocket and HTTP, state in SQLite or PostgreSQL,
//! read back through the API.

mod agent;
mod support;

use std::time::Duration;

use agent::{full_state, heartbeat, HttpAgent, WsAgent};
use ampora_shared::pb::opamp::{
    AgentDisconnect, AgentToServerFlags, ComponentHealth, ServerCapabilities, ServerToAgent,
    ServerToAgentFlags,
};
use serde_json::Value;
use support::Ampora;
use uuid::Uuid;

const REPORT_FULL_STATE: u64 = ServerToAgentFlags::ReportFullState as u64;

/// `GET url` with the server's admin token.
async fn get_json(ampora: &Ampora, url: &str) -> (u16, Value) {
    let response = ampora.http().get(url).send().await.expect("API request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

async fn event_kinds(ampora: &Ampora, uid: Uuid) -> Vec<String> {
    let (status, body) = get_json(
        ampora,
        &format!(
            "{}/api/v1/agents/{uid}/events?limit=1000",
            ampora.api_base()
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

async fn postgres_url() -> String {
    ampora_control_plane::testing::TestPostgres::shared()
        .create_database()
        .await
}

// === WebSocket ===

async fn websocket_agent_state(ampora: Ampora) {
    let mut agent = WsAgent::connect(&ampora.ws_url()).await;
    let uid = agent.uid;

    // Unknown to the server, and its first report leaves out the remote config status it says
    // it reports: the server answers with its capabilities and asks for the full state.
    let mut partial = full_state("checkout", "prod");
    partial.remote_config_status = None;
    let first = agent.exchange(partial).await;
    assert_eq!(first.instance_uid.as_ref(), uid.as_bytes());
    assert_eq!(first.flags & REPORT_FULL_STATE, REPORT_FULL_STATE);
    assert_ne!(
        first.capabilities & ServerCapabilities::AcceptsStatus as u64,
        0
    );
    agent.send(full_state("checkout", "prod")).await;
    assert!(
        agent.recv(Duration::from_millis(500)).await.is_none(),
        "nothing to say after a complete report"
    );

    let snapshot = ampora
        .wait_agent(uid, "online", |a| a["status"] == "online")
        .await;
    assert_eq!(snapshot["instance_uid"], uid.to_string());
    assert_eq!(snapshot["transport"], "websocket");
    assert_eq!(
        snapshot["identifying_attributes"]["service.name"],
        "checkout"
    );
    assert_eq!(
        snapshot["non_identifying_attributes"]["deployment.environment"],
        "prod"
    );
    let capabilities: Vec<&str> = snapshot["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(
        capabilities,
        [
            "ReportsStatus",
            "AcceptsRemoteConfig",
            "ReportsEffectiveConfig",
            "ReportsHealth",
            "ReportsRemoteConfig"
        ]
    );
    assert_eq!(snapshot["health"]["healthy"], true);
    assert_eq!(snapshot["remote_config_status"]["status"], "APPLIED");
    assert_eq!(
        snapshot["remote_config_status"]["last_remote_config_hash"],
        "abcd"
    );
    let body = snapshot["effective_config"]["files"]["collector.yaml"]["body"]
        .as_str()
        .unwrap();
    assert!(body.starts_with("receivers:\n  otlp: {}"), "{body}");
    let events_before = event_kinds(&ampora, uid).await;

    // State compression: a heartbeat leaves everything as it was and writes no history.
    let seen_before = snapshot["last_seen"].as_str().unwrap().to_owned();
    agent.send(heartbeat()).await;
    // Each message is stamped to the nanosecond on arrival: the heartbeat's differs.
    let after = ampora
        .wait_agent(uid, "seen again", |a| {
            a["sequence_num"] == 2 && a["last_seen"].as_str().unwrap() != seen_before.as_str()
        })
        .await;
    assert_eq!(
        after["identifying_attributes"],
        snapshot["identifying_attributes"]
    );
    assert_eq!(after["health"], snapshot["health"]);
    assert_eq!(after["effective_config"], snapshot["effective_config"]);
    assert_eq!(after["sequence_num"], 2);
    assert_eq!(event_kinds(&ampora, uid).await, events_before);

    // One changed field: one event, the rest kept.
    let mut unhealthy = heartbeat();
    unhealthy.health = Some(ComponentHealth {
        healthy: false,
        last_error: "exporter down".into(),
        ..Default::default()
    });
    agent.send(unhealthy).await;
    let changed = ampora
        .wait_agent(uid, "unhealthy", |a| a["health"]["healthy"] == false)
        .await;
    assert_eq!(changed["health"]["last_error"], "exporter down");
    assert_eq!(
        changed["identifying_attributes"]["service.name"],
        "checkout"
    );
    let kinds = event_kinds(&ampora, uid).await;
    assert_eq!(kinds.len(), events_before.len() + 1);
    assert_eq!(kinds[0], "health");

    // A sequence gap: the server missed something and asks for everything.
    agent.next_seq += 3;
    let reply = agent.exchange(heartbeat()).await;
    assert_eq!(reply.flags & REPORT_FULL_STATE, REPORT_FULL_STATE);

    // Closing the socket takes the agent offline.
    agent.close().await;
    ampora
        .wait_agent(uid, "offline", |a| a["status"] == "offline")
        .await;
    let kinds = event_kinds(&ampora, uid).await;
    assert_eq!(kinds[0], "disconnected");
    assert!(
        kinds.contains(&"connected".to_owned()) && kinds.contains(&"description".to_owned()),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn websocket_agent_state_on_sqlite() {
    websocket_agent_state(Ampora::start(&[]).await).await;
}

#[tokio::test]
async fn websocket_agent_state_on_postgres() {
    let url = postgres_url().await;
    websocket_agent_state(Ampora::start(&[("AMPORA_DATABASE_URL", &url)]).await).await;
}

// === HTTP ===

async fn http_agent_state(ampora: Ampora) {
    let mut agent = HttpAgent::new(&ampora.http_opamp_url());
    let uid = agent.uid;
    // Its first report leaves out the health it says it reports.
    let mut partial = full_state("billing", "staging");
    partial.health = None;
    let first = agent.exchange(partial).await;
    assert_eq!(first.flags & REPORT_FULL_STATE, REPORT_FULL_STATE);
    assert_ne!(first.capabilities, 0);
    // HTTP always gets an answer; a complete, in-order report needs no flags.
    assert_eq!(
        agent.exchange(full_state("billing", "staging")).await.flags,
        0
    );
    let snapshot = ampora
        .wait_agent(uid, "online", |a| a["status"] == "online")
        .await;
    assert_eq!(snapshot["transport"], "http");
    assert_eq!(
        snapshot["identifying_attributes"]["service.name"],
        "billing"
    );
    assert_eq!(snapshot["health"]["healthy"], true);

    assert_eq!(agent.exchange(heartbeat()).await.flags, 0);
    agent.next_seq += 5;
    assert_eq!(
        agent.exchange(heartbeat()).await.flags & REPORT_FULL_STATE,
        REPORT_FULL_STATE
    );

    // It stops polling: the heartbeat timeout takes it offline.
    let offline = ampora
        .wait_agent(uid, "offline", |a| a["status"] == "offline")
        .await;
    assert_eq!(offline["identifying_attributes"]["service.name"], "billing");
    assert_eq!(event_kinds(&ampora, uid).await[0], "offline");

    // And back.
    agent.exchange(heartbeat()).await;
    ampora
        .wait_agent(uid, "online again", |a| a["status"] == "online")
        .await;
    assert_eq!(event_kinds(&ampora, uid).await[0], "connected");
}

const FAST_TIMEOUTS: &[(&str, &str)] = &[
    ("AMPORA_HEARTBEAT_TIMEOUT", "2s"),
    ("AMPORA_SWEEP_INTERVAL", "200ms"),
];

#[tokio::test]
async fn http_agent_state_on_sqlite() {
    http_agent_state(Ampora::start(FAST_TIMEOUTS).await).await;
}

#[tokio::test]
async fn http_agent_state_on_postgres() {
    let url = postgres_url().await;
    let mut env = FAST_TIMEOUTS.to_vec();
    env.push(("AMPORA_DATABASE_URL", &url));
    http_agent_state(Ampora::start(&env).await).await;
}

/// An agent the server does not know whose first report carries everything its capabilities
/// promise is not asked for it again, over either transport.
#[tokio::test]
async fn a_complete_first_report_is_not_asked_for_again() {
    let ampora = Ampora::start(&[]).await;
    let mut websocket = WsAgent::connect(&ampora.ws_url()).await;
    let first = websocket.exchange(full_state("whole-ws", "prod")).await;
    assert_eq!(first.flags & REPORT_FULL_STATE, 0);
    assert_ne!(
        first.capabilities & ServerCapabilities::AcceptsStatus as u64,
        0
    );
    let mut http = HttpAgent::new(&ampora.http_opamp_url());
    assert_eq!(
        http.exchange(full_state("whole-http", "prod")).await.flags & REPORT_FULL_STATE,
        0
    );
    for uid in [websocket.uid, http.uid] {
        let snapshot = ampora
            .wait_agent(uid, "online", |a| a["status"] == "online")
            .await;
        assert_eq!(snapshot["remote_config_status"]["status"], "APPLIED");
    }
}

// === Lifecycle ===

#[tokio::test]
async fn agent_disconnect_and_heartbeat_timeout_take_agents_offline() {
    let ampora = Ampora::start(&[
        ("AMPORA_WS_PING_INTERVAL", "200ms"),
        ("AMPORA_WS_IDLE_TIMEOUT", "1s"),
    ])
    .await;

    let mut polite = WsAgent::connect(&ampora.ws_url()).await;
    polite.exchange(full_state("polite", "prod")).await;
    ampora
        .wait_agent(polite.uid, "online", |a| a["status"] == "online")
        .await;
    let mut goodbye = heartbeat();
    goodbye.agent_disconnect = Some(AgentDisconnect {});
    polite.send(goodbye).await;
    // Offline at once, while the socket is still open.
    ampora
        .wait_agent(polite.uid, "offline", |a| a["status"] == "offline")
        .await;

    // An agent that stops answering pings (it never reads its socket) times out.
    let mut silent = WsAgent::connect(&ampora.ws_url()).await;
    silent.send(full_state("silent", "prod")).await;
    ampora
        .wait_agent(silent.uid, "online", |a| a["status"] == "online")
        .await;
    let offline = ampora
        .wait_agent(silent.uid, "offline", |a| a["status"] == "offline")
        .await;
    assert_eq!(offline["identifying_attributes"]["service.name"], "silent");
    drop(silent);
}

#[tokio::test]
async fn request_instance_uid_gets_a_new_uid() {
    let ampora = Ampora::start(&[]).await;
    let mut agent = WsAgent::connect(&ampora.ws_url()).await;
    let old = agent.uid;
    let mut message = full_state("renamed", "prod");
    message.flags = AgentToServerFlags::RequestInstanceUid as u64;
    let reply = agent.exchange(message).await;
    assert_eq!(reply.instance_uid.as_ref(), old.as_bytes());
    let new = Uuid::from_slice(
        &reply
            .agent_identification
            .expect("identification")
            .new_instance_uid,
    )
    .expect("16 bytes");
    assert_ne!(new, old);

    agent.uid = new;
    agent.send(heartbeat()).await;
    let snapshot = ampora
        .wait_agent(new, "online", |a| a["status"] == "online")
        .await;
    assert_eq!(
        snapshot["identifying_attributes"]["service.name"],
        "renamed"
    );
    assert!(
        ampora.agent_json(old).await.is_none(),
        "nothing is kept under the old uid"
    );
}

/// An agent is online while a connection it spoke on is open: closing a connection takes every
/// uid that spoke on it offline, and a uid assigned on it too, used or not.
#[tokio::test]
async fn presence_follows_connections() {
    let ampora = Ampora::start(&[]).await;

    let mut shared = WsAgent::connect(&ampora.ws_url()).await;
    let first = shared.uid;
    shared.exchange(full_state("first", "prod")).await;
    let second = Uuid::now_v7();
    shared.uid = second;
    shared.next_seq = 0;
    shared.exchange(full_state("second", "prod")).await;
    for uid in [first, second] {
        ampora
            .wait_agent(uid, "online", |a| a["status"] == "online")
            .await;
    }
    shared.close().await;
    for uid in [first, second] {
        ampora
            .wait_agent(uid, "offline", |a| a["status"] == "offline")
            .await;
    }

    let mut asking = WsAgent::connect(&ampora.ws_url()).await;
    let ask = || {
        let mut message = full_state("asking", "prod");
        message.flags = AgentToServerFlags::RequestInstanceUid as u64;
        message
    };
    let assigned_uid = |reply: ServerToAgent| {
        Uuid::from_slice(
            &reply
                .agent_identification
                .expect("identification")
                .new_instance_uid,
        )
        .expect("16 bytes")
    };
    let unused = assigned_uid(asking.exchange(ask()).await);
    ampora
        .wait_agent(unused, "online", |a| a["status"] == "online")
        .await;
    // Asking again leaves the first uid it was given unused.
    let assigned = assigned_uid(asking.exchange(ask()).await);
    ampora
        .wait_agent(unused, "offline", |a| a["status"] == "offline")
        .await;
    ampora
        .wait_agent(assigned, "online", |a| a["status"] == "online")
        .await;
    // Gone before ever speaking as the new uid.
    asking.close().await;
    ampora
        .wait_agent(assigned, "offline", |a| a["status"] == "offline")
        .await;
    assert_eq!(event_kinds(&ampora, assigned).await[0], "disconnected");
}

// === Read API ===

#[tokio::test]
async fn agents_api_filters_pages_and_errors() {
    let ampora = Ampora::start(&[]).await;
    let mut uids = Vec::new();
    for (name, environment) in [("a", "prod"), ("b", "prod"), ("c", "dev")] {
        let mut agent = HttpAgent::new(&ampora.http_opamp_url());
        agent.exchange(full_state(name, environment)).await;
        uids.push(agent.uid);
    }
    let mut leaving = WsAgent::connect(&ampora.ws_url()).await;
    leaving.exchange(full_state("d", "dev")).await;
    let leaving_uid = leaving.uid;
    leaving.close().await;
    ampora
        .wait_agent(uids[2], "online", |a| a["status"] == "online")
        .await;
    ampora
        .wait_agent(leaving_uid, "offline", |a| a["status"] == "offline")
        .await;
    let base = format!("{}/api/v1/agents", ampora.api_base());

    let (status, body) =
        get_json(&ampora, &format!("{base}?attr=deployment.environment=prod")).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = body["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a["identifying_attributes"]["service.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"a") && names.contains(&"b"));

    let (_, body) = get_json(
        &ampora,
        &format!("{base}?attr=deployment.environment=dev&attr=service.name=c"),
    )
    .await;
    assert_eq!(body["agents"].as_array().unwrap().len(), 1);
    let (_, body) = get_json(&ampora, &format!("{base}?status=offline")).await;
    assert_eq!(body["agents"].as_array().unwrap().len(), 1);
    assert_eq!(body["agents"][0]["instance_uid"], leaving_uid.to_string());
    let (_, body) = get_json(&ampora, &format!("{base}?status=online")).await;
    assert_eq!(body["agents"].as_array().unwrap().len(), 3);

    // Paging visits every agent once.
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let url = match &token {
            Some(token) => format!("{base}?limit=1&page_token={token}"),
            None => format!("{base}?limit=1"),
        };
        let (_, body) = get_json(&ampora, &url).await;
        for agent in body["agents"].as_array().unwrap() {
            seen.push(agent["instance_uid"].as_str().unwrap().to_owned());
        }
        match body["next_page_token"].as_str() {
            Some(next) => token = Some(next.to_owned()),
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((seen.len(), unique.len()), (4, 4));

    // Errors are JSON with the right status.
    for (url, expected) in [
        (format!("{base}/{}", Uuid::now_v7()), 404),
        (format!("{base}/not-a-uuid"), 400),
        (format!("{base}?status=sleeping"), 400),
        (format!("{base}?limit=0"), 400),
        (format!("{base}?attr=novalue"), 400),
        (format!("{base}?colour=blue"), 400),
        (format!("{base}/{}/events", Uuid::now_v7()), 404),
        (format!("{}/api/v1/nothing", ampora.api_base()), 404),
    ] {
        let (status, body) = get_json(&ampora, &url).await;
        assert_eq!(status, expected, "{url}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{url}: {body}"
        );
    }

    // History pages newest first.
    let uid = uids[0];
    let (_, first_page) = get_json(&ampora, &format!("{base}/{uid}/events?limit=2")).await;
    let events = first_page["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert!(events[0]["id"].as_i64() > events[1]["id"].as_i64());
    let token = first_page["next_page_token"].as_str().expect("more events");
    let (_, second_page) = get_json(
        &ampora,
        &format!("{base}/{uid}/events?limit=2&page_token={token}"),
    )
    .await;
    assert!(second_page["events"][0]["id"].as_i64() < events[1]["id"].as_i64());

    // The API wants credentials; health and metrics stay open.
    let anonymous = reqwest::get(&base).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let metrics = reqwest::get(format!("{}/metrics", ampora.api_base()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "ampora_control_plane_messages_applied_total",
        "ampora_control_plane_commit_seconds",
        "ampora_control_plane_worker_queue_depth",
        "ampora_gateway_messages_in_total",
        "ampora_gateway_connections_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }

    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            reqwest::get(format!("{}{path}", ampora.api_base()))
                .await
                .unwrap()
                .status(),
            200,
            "{path}"
        );
    }
}

/// Operators over real sockets: an admin signs in and makes a viewer and an operator's API
/// token; the viewer reads but may not change; a session's change needs its CSRF token; the
/// audit log names who did what from where, and verifies.
#[tokio::test]
async fn operators_roles_and_the_audit_log() {
    let ampora = Ampora::start(&[]).await;
    let base = ampora.api_base();
    let http = reqwest::Client::new();
    let (admin_cookie, admin_csrf) =
        support::auth::sign_in(&base, "admin", support::auth::ADMIN_PASSWORD).await;
    let as_admin = |request: reqwest::RequestBuilder| {
        request
            .header("cookie", &admin_cookie)
            .header("x-csrf-token", &admin_csrf)
    };
    let created = as_admin(http.post(format!("{base}/api/v1/users")))
        .json(&serde_json::json!({"username": "vera", "password": "viewer password", "role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    let (viewer_cookie, viewer_csrf) =
        support::auth::sign_in(&base, "vera", "viewer password").await;
    let configuration = serde_json::json!({"name": "edge", "yaml": "receivers: {}\n"});
    let read = http
        .get(format!("{base}/api/v1/configurations"))
        .header("cookie", &viewer_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let refused = http
        .post(format!("{base}/api/v1/configurations"))
        .header("cookie", &viewer_cookie)
        .header("x-csrf-token", &viewer_csrf)
        .json(&configuration)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("operator"),
        "{body}"
    );

    let without_csrf = http
        .post(format!("{base}/api/v1/configurations"))
        .header("cookie", &admin_cookie)
        .json(&configuration)
        .send()
        .await
        .unwrap();
    assert_eq!(without_csrf.status(), 403);

    let token: Value = as_admin(http.post(format!("{base}/api/v1/api-tokens")))
        .json(&serde_json::json!({"name": "ci", "role": "operator", "ttl_seconds": 600}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (token_id, secret) = (
        token["id"].as_str().unwrap(),
        token["token"].as_str().unwrap(),
    );
    let by_token = http
        .post(format!("{base}/api/v1/configurations"))
        .bearer_auth(secret)
        .json(&configuration)
        .send()
        .await
        .unwrap();
    assert_eq!(by_token.status(), 201);

    let (status, audit) = ampora.get("/api/v1/audit?limit=1000").await;
    assert_eq!(status, 200, "{audit}");
    let entries = audit["entries"].as_array().unwrap();
    let find = |action: &str, actor: &str| {
        entries
            .iter()
            .find(|entry| entry["action"] == action && entry["actor"] == actor)
            .unwrap_or_else(|| panic!("no {action} by {actor} in {audit:#}"))
    };
    let made = find("account.create", "account:admin");
    assert_eq!(made["object_id"], "vera");
    assert_eq!(made["address"], "127.0.0.1");
    find("session.login", "account:vera");
    assert_eq!(
        find("api_token.create", "account:admin")["object_id"],
        token_id
    );
    find("configuration.create", &format!("api-token:{token_id}"));
    assert!(
        !audit.to_string().contains(secret),
        "no token in the audit log"
    );
    assert!(
        !audit.to_string().contains("viewer password"),
        "no password either"
    );
    let (status, verified) = ampora.get("/api/v1/audit/verify").await;
    assert_eq!(status, 200);
    assert_eq!(verified["ok"], true, "{verified}");
}
