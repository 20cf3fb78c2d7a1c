//! The API in process: requests through `app(..).oneshot(..)` against a real (SQLite) store,
//! and the listener's deadlines over real sockets.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::response::Response;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;
use uuid::Uuid;

use super::*;
use crate::agents::merge::event_payload;
use crate::agents::snapshot::{
    AgentDetails, AgentHead, AgentRecord, AgentStatus, AgentSummary, ConfigFile, Transport,
};
use crate::audit::AuditContext;
use crate::operators::secrets;
use crate::remote_config::ConfigTrack;
use crate::storage::{self, NewApiToken, NewEvent, StoreOptions, WriteBatch};
use ampora_shared::bus::InProcessBus;

const TIMEOUT: Duration = Duration::from_secs(30);

/// The admin API token every [`state`] has; [`call`] sends it unless a request carries its
/// own credentials.
pub const ADMIN_TOKEN: &str = "ampora_test-admin-token";

pub async fn state() -> ApiState {
    let store = storage::connect("sqlite::memory:", StoreOptions::default())
        .await
        .expect("an in-memory store");
    let now = OffsetDateTime::now_utc();
    let admin = NewApiToken {
        id: "test-admin".into(),
        name: "tests".into(),
        role: Role::Admin,
        token_hash: secrets::hash(ADMIN_TOKEN),
        created_at: now,
        expires_at: None,
    };
    store
        .create_api_token(&admin, &AuditContext::system())
        .await
        .expect("an admin token");
    ApiState {
        live: crate::ui::Live::new(store.clone()),
        store: store.clone(),
        readiness: Readiness::default(),
        bus: Arc::new(InProcessBus::default()),
        subjects: Subjects::default(),
        assignments: AssignmentWatch::default(),
        trust: crate::trust::Trust::start(store, crate::trust::TrustConfig::for_test())
            .await
            .expect("a CA"),
        operators: Operators::default(),
    }
}

fn record(uid: Uuid, attributes: &[(&str, &str)]) -> AgentRecord {
    let now = OffsetDateTime::now_utc();
    AgentRecord {
        head: AgentHead {
            instance_uid: uid,
            status: AgentStatus::Online,
            transport: Transport::Websocket,
            gateway_id: "gw-1".into(),
            connection_id: 7,
            remote_addr: "127.0.0.1:4000".into(),
            sequence_num: 3,
            capabilities: 1,
            first_seen: now,
            last_seen: now,
            summary: AgentSummary {
                identifying_attributes: attributes
                    .iter()
                    .map(|(name, value)| ((*name).to_owned(), json!(value)))
                    .collect(),
                ..AgentSummary::default()
            },
        },
        details: AgentDetails {
            effective_config: Some(
                [(
                    "collector.yaml".to_owned(),
                    ConfigFile {
                        content_type: "text/yaml".into(),
                        body: "receivers: {}".into(),
                    },
                )]
                .into(),
            ),
            ..AgentDetails::default()
        },
        config: ConfigTrack::default(),
    }
}

/// Stores agents with `history` events each.
async fn store_agents(state: &ApiState, agents: &[AgentRecord], history: usize) {
    let events = agents
        .iter()
        .flat_map(|agent| {
            (0..history).map(|n| NewEvent {
                instance_uid: agent.head.instance_uid,
                at: agent.head.last_seen,
                kind: "health",
                payload: event_payload(&json!({ "n": n })),
            })
        })
        .collect();
    let batch = WriteBatch {
        agents: agents.iter().collect(),
        events,
        ..WriteBatch::default()
    };
    state.store.write(&batch).await.expect("stored");
}

pub async fn call(state: &ApiState, mut request: Request<Body>) -> Response {
    let headers = request.headers_mut();
    if !headers.contains_key(header::AUTHORIZATION) && !headers.contains_key(header::COOKIE) {
        let bearer = format!("Bearer {ADMIN_TOKEN}");
        headers.insert(header::AUTHORIZATION, bearer.parse().unwrap());
    }
    app(state.clone(), TIMEOUT)
        .oneshot(request)
        .await
        .expect("infallible")
}

async fn get(state: &ApiState, uri: &str) -> (StatusCode, Value) {
    let response = call(state, Request::get(uri).body(Body::empty()).unwrap()).await;
    let status = response.status();
    (status, json_body(response).await)
}

pub async fn json_body(response: Response) -> Value {
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/json",
        "{:?}",
        response.headers()
    );
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).expect("a JSON body")
}

fn error_text(body: &Value) -> &str {
    body["error"].as_str().expect("an error message")
}

#[tokio::test]
async fn agents_read_back_as_json() {
    let state = state().await;
    let uid = Uuid::now_v7();
    store_agents(&state, &[record(uid, &[("service.name", "a")])], 0).await;

    let (status, body) = get(&state, "/api/v1/agents").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["next_page_token"], Value::Null);
    let agent = &body["agents"][0];
    assert_eq!(agent["instance_uid"], uid.to_string());
    assert_eq!(agent["status"], "online");
    assert_eq!(agent["transport"], "websocket");
    assert_eq!(agent["identifying_attributes"]["service.name"], "a");
    assert_eq!(agent["capabilities"], json!(["ReportsStatus"]));
    assert_eq!(agent["capabilities_bits"], 1);
    assert_eq!(agent["sequence_num"], 3);
    assert_eq!(agent["gateway_id"], "gw-1");
    let first_seen = agent["first_seen"].as_str().unwrap();
    assert!(
        OffsetDateTime::parse(first_seen, &time::format_description::well_known::Rfc3339).is_ok(),
        "{first_seen}"
    );
    assert!(agent.get("effective_config").is_none(), "{agent}");

    let (status, body) = get(&state, &format!("/api/v1/agents/{uid}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["instance_uid"], uid.to_string());
    assert_eq!(
        body["effective_config"]["files"]["collector.yaml"]["body"],
        "receivers: {}"
    );
    assert_eq!(body["package_statuses"], Value::Null);
    assert_eq!(body["available_components"], Value::Null);
}

#[tokio::test]
async fn attribute_filters_repeat_and_all_must_match() {
    let state = state().await;
    let agents = [
        record(Uuid::now_v7(), &[("env", "prod"), ("service.name", "a")]),
        record(Uuid::now_v7(), &[("env", "prod"), ("service.name", "b")]),
        record(Uuid::now_v7(), &[("env", "dev"), ("service.name", "a")]),
    ];
    store_agents(&state, &agents, 0).await;

    let (_, body) = get(&state, "/api/v1/agents?attr=env=prod").await;
    assert_eq!(body["agents"].as_array().unwrap().len(), 2);
    let (_, body) = get(&state, "/api/v1/agents?attr=env=prod&attr=service.name=a").await;
    let listed = body["agents"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0]["instance_uid"],
        agents[0].head.instance_uid.to_string()
    );
    let (_, body) = get(&state, "/api/v1/agents?status=offline").await;
    assert_eq!(body["agents"], json!([]));
}

#[tokio::test]
async fn pages_follow_their_tokens() {
    let state = state().await;
    let agents: Vec<_> = (0..3).map(|_| record(Uuid::now_v7(), &[])).collect();
    store_agents(&state, &agents, 3).await;

    let mut seen = Vec::new();
    let mut uri = "/api/v1/agents?limit=2&page_token=".to_owned();
    loop {
        let (status, body) = get(&state, &uri).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for agent in body["agents"].as_array().unwrap() {
            seen.push(agent["instance_uid"].as_str().unwrap().to_owned());
        }
        let Some(token) = body["next_page_token"].as_str() else {
            break;
        };
        uri = format!("/api/v1/agents?limit=2&page_token={token}");
    }
    let expected: Vec<_> = agents
        .iter()
        .map(|a| a.head.instance_uid.to_string())
        .collect();
    assert_eq!(seen, expected);

    let uid = agents[0].head.instance_uid;
    let (_, first) = get(&state, &format!("/api/v1/agents/{uid}/events?limit=2")).await;
    let events = first["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert!(events[0]["id"].as_i64() > events[1]["id"].as_i64());
    assert_eq!(events[0]["kind"], "health");
    assert_eq!(events[0]["payload"], json!({ "n": 2 }));
    let token = first["next_page_token"].as_str().expect("a second page");
    assert_eq!(token, events[1]["id"].to_string());
    let (_, second) = get(
        &state,
        &format!("/api/v1/agents/{uid}/events?limit=2&page_token={token}"),
    )
    .await;
    assert_eq!(second["events"].as_array().unwrap().len(), 1);
    assert_eq!(second["events"][0]["payload"], json!({ "n": 0 }));
    assert_eq!(second["next_page_token"], Value::Null);
}

#[tokio::test]
async fn bad_paths_and_queries_are_400_with_a_json_error() {
    let state = state().await;
    let uid = Uuid::now_v7();
    for (uri, says) in [
        (
            "/api/v1/agents?status=sleeping".to_owned(),
            "status must be",
        ),
        ("/api/v1/agents?status=".to_owned(), "status must be"),
        ("/api/v1/agents?limit=0".to_owned(), "limit must be"),
        ("/api/v1/agents?limit=".to_owned(), "limit must be"),
        ("/api/v1/agents?attr=".to_owned(), "attr must be key=value"),
        ("/api/v1/agents?limit=lots".to_owned(), "limit must be"),
        ("/api/v1/agents?limit=1001".to_owned(), "limit must be"),
        (
            "/api/v1/agents?attr=novalue".to_owned(),
            "attr must be key=value",
        ),
        ("/api/v1/agents?colour=blue".to_owned(), "colour"),
        ("/api/v1/agents?page_token=zzz".to_owned(), "bad page_token"),
        ("/api/v1/agents/not-a-uuid".to_owned(), "not-a-uuid"),
        ("/api/v1/agents/%FF%FE".to_owned(), "UTF-8"),
        (
            format!("/api/v1/agents/{uid}/events?page_token=x"),
            "bad page_token",
        ),
        (format!("/api/v1/agents/{uid}/events?before=1"), "before"),
    ] {
        let (status, body) = get(&state, &uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert!(error_text(&body).contains(says), "{uri}: {body}");
    }
}

#[tokio::test]
async fn unknown_agents_and_paths_are_404_with_a_json_error() {
    let state = state().await;
    let uid = Uuid::now_v7();
    for uri in [
        format!("/api/v1/agents/{uid}"),
        format!("/api/v1/agents/{uid}/events"),
        "/api/v1/nothing".to_owned(),
        // `/` is the web UI's; paths neither serves are the API's 404.
        "/nothing-here".to_owned(),
    ] {
        let (status, body) = get(&state, &uri).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: {body}");
        assert!(!error_text(&body).is_empty());
    }
}

#[tokio::test]
async fn a_wrong_method_is_405_with_allow_and_a_json_error() {
    let state = state().await;
    for uri in ["/api/v1/agents", "/healthz", "/metrics"] {
        let request = Request::builder()
            .method(Method::DELETE)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let response = call(&state, request).await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{uri}");
        assert_eq!(response.headers()[header::ALLOW], "GET,HEAD", "{uri}");
        let body = json_body(response).await;
        assert!(error_text(&body).contains("method"), "{body}");
    }
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_with_a_json_error() {
    let state = state().await;
    let request = Request::get("/api/v1/agents")
        .header(header::CONTENT_LENGTH, MAX_REQUEST_BODY + 1)
        .body(Body::from(vec![0u8; MAX_REQUEST_BODY + 1]))
        .unwrap();
    let response = call(&state, request).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(!error_text(&json_body(response).await).is_empty());
}

#[test]
fn a_bodiless_framework_error_gets_a_json_body_and_keeps_its_headers() {
    let response = Response::builder()
        .status(StatusCode::REQUEST_TIMEOUT)
        .header(header::CONNECTION, "close")
        .body(Body::empty())
        .unwrap();
    let response = error::json_error_body(response);
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(response.headers()[header::CONNECTION], "close");
    let body = futures::executor::block_on(json_body(response));
    assert_eq!(body, json!({ "error": "request timeout" }));
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let state = state().await;
    let response = call(
        &state,
        Request::get("/healthz").body(Body::empty()).unwrap(),
    )
    .await;
    let made = response.headers()[REQUEST_ID].to_str().unwrap();
    assert!(Uuid::parse_str(made).is_ok(), "{made}");

    let request = Request::get("/api/v1/nothing")
        .header(REQUEST_ID, "client-chosen-7")
        .body(Body::empty())
        .unwrap();
    let response = call(&state, request).await;
    assert_eq!(response.headers()[REQUEST_ID], "client-chosen-7");
}

#[tokio::test]
async fn readiness_says_what_is_missing() {
    let state = state().await;
    let (status, body) = get(&state, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        json!({ "ready": false, "ingest": false, "database": "ok" })
    );
}

// === the listener's deadlines ===

/// The API served on a free port with a short request timeout.
async fn listening() -> (std::net::SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let timeout = Duration::from_millis(300);
    let router = app(state().await, timeout);
    tokio::spawn(serve(
        listener,
        router,
        timeout,
        None,
        stop.clone().cancelled_owned(),
    ));
    (addr, stop)
}

/// Sends `bytes`, then waits (a bounded while) for the server to close the connection; returns
/// what it answered before closing, or `None` if it kept the connection open.
async fn answer_then_close(addr: std::net::SocketAddr, bytes: &[u8]) -> Option<String> {
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut answer)).await {
        Ok(Ok(_)) => Some(String::from_utf8_lossy(&answer).into_owned()),
        // A reset is a close too.
        Ok(Err(_)) => Some(String::new()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn connections_that_never_complete_a_request_are_closed() {
    let (addr, _stop) = listening().await;
    assert!(
        answer_then_close(addr, b"").await.is_some(),
        "a silent connection stayed open"
    );
    assert!(
        answer_then_close(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .is_some(),
        "a connection with half a request head stayed open"
    );
    let half_a_body =
        b"GET /api/v1/agents HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"half\":";
    assert!(
        answer_then_close(addr, half_a_body).await.is_some(),
        "a connection with half a body stayed open"
    );
    // A complete request is answered in full.
    let answer = answer_then_close(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("closed after answering");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

// === configurations, lint rules, assignments and drift ===

/// Clean under every built-in rule.
const CLEAN: &str = "\
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:4317
processors:
  memory_limiter:
    check_interval: 1s
    limit_mib: 512
  batch:
exporters:
  otlp:
    endpoint: https://127.0.0.1:4317
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [otlp]
";

/// [`CLEAN`] with exporters to a pipeline that names one that is not defined (line 19).
const BAD_REFERENCE: &str = "\
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:4317
processors:
  memory_limiter:
    check_interval: 1s
    limit_mib: 512
  batch:
exporters:
  otlp:
    endpoint: https://127.0.0.1:4317
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [otlp, otlphttp]
";

/// [`CLEAN`] without the batch processor: a `batch-processor` finding.
const NO_BATCH: &str = "\
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:4317
processors:
  memory_limiter:
    check_interval: 1s
    limit_mib: 512
exporters:
  otlp:
    endpoint: https://127.0.0.1:4317
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter]
      exporters: [otlp]
";

async fn send(state: &ApiState, method: Method, uri: &str, body: &Value) -> (StatusCode, Value) {
    send_text(state, method, uri, &body.to_string()).await
}

async fn send_text(state: &ApiState, method: Method, uri: &str, body: &str) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let response = call(state, request).await;
    let status = response.status();
    (status, json_body(response).await)
}

async fn get_text(state: &ApiState, uri: &str) -> (StatusCode, String, String) {
    let response = call(state, Request::get(uri).body(Body::empty()).unwrap()).await;
    let status = response.status();
    let content_type = response.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

/// Creates configuration `name` with `yaml` as its draft; returns its id.
async fn create_configuration(state: &ApiState, name: &str, yaml: &str) -> i64 {
    let (status, body) = send(
        state,
        Method::POST,
        "/api/v1/configurations",
        &json!({ "name": name, "yaml": yaml }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_i64().expect("an id")
}

async fn publish(state: &ApiState, id: i64) -> (StatusCode, Value) {
    send_text(
        state,
        Method::POST,
        &format!("/api/v1/configurations/{id}/publish"),
        "",
    )
    .await
}

async fn put_draft(state: &ApiState, id: i64, yaml: &str, row_version: i64) -> (StatusCode, Value) {
    send(
        state,
        Method::PUT,
        &format!("/api/v1/configurations/{id}/draft"),
        &json!({ "yaml": yaml, "row_version": row_version }),
    )
    .await
}

fn rules_of(problems: &Value) -> Vec<(String, String)> {
    problems
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| {
            (
                p["rule"].as_str().unwrap().to_owned(),
                p["severity"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn configurations_are_created_once_and_drafts_guarded_by_row_version() {
    let state = state().await;
    let (status, created) = send(
        &state,
        Method::POST,
        "/api/v1/configurations",
        &json!({ "name": "edge", "description": "edge collectors", "labels": {"team": "a"}, "yaml": CLEAN }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_i64().expect("an id");
    assert_eq!(created["row_version"], 1);
    assert_eq!(created["name"], "edge");
    assert_eq!(created["labels"], json!({"team": "a"}));
    assert_eq!(created["yaml"], CLEAN);
    assert_eq!(created["versions"], json!([]));

    let (status, body) = send(
        &state,
        Method::POST,
        "/api/v1/configurations",
        &json!({ "name": "edge", "yaml": "other: 1\n" }),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(error_text(&body).contains("edge"), "{body}");

    for (request, says) in [
        (json!({ "name": "gateway" }).to_string(), "yaml"),
        (
            json!({ "name": "gateway", "yaml": CLEAN, "colour": "blue" }).to_string(),
            "colour",
        ),
        (json!({ "name": "", "yaml": CLEAN }).to_string(), "name"),
        ("{\"name\": ".to_owned(), ""),
    ] {
        let (status, body) =
            send_text(&state, Method::POST, "/api/v1/configurations", &request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{request}: {body}");
        assert!(error_text(&body).contains(says), "{request}: {body}");
    }
    let (_, listed) = get(&state, "/api/v1/configurations").await;
    assert_eq!(listed["configurations"].as_array().unwrap().len(), 1);

    let (status, body) = put_draft(&state, id, NO_BATCH, 1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "id": id, "row_version": 2 }));
    let (status, body) = put_draft(&state, id, BAD_REFERENCE, 1).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let fields: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(fields, ["error", "row_version"], "{body}");
    assert_eq!(body["row_version"], 2);
    assert!(!error_text(&body).is_empty());

    let (status, stored) = get(&state, &format!("/api/v1/configurations/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (&stored["yaml"], &stored["row_version"]),
        (&json!(NO_BATCH), &json!(2)),
        "the stale edit changed nothing"
    );
    let (status, body) = put_draft(&state, id + 1000, CLEAN, 1).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = put_draft(&state, id, CLEAN, 2).await;
    assert_eq!((status, &body["row_version"]), (StatusCode::OK, &json!(3)));
}

#[tokio::test]
async fn validation_places_each_problem() {
    let state = state().await;
    let (status, body) = send(
        &state,
        Method::POST,
        "/api/v1/validate",
        &json!({ "yaml": BAD_REFERENCE }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let problems = body["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{body}");
    let problem = &problems[0];
    assert_eq!(problem["rule"], "undefined-component");
    assert_eq!(problem["severity"], "error");
    assert_eq!(
        (&problem["line"], &problem["column"]),
        (&json!(19), &json!(25))
    );
    assert_eq!(
        problem["message"],
        "service::pipelines::traces: references exporter \"otlphttp\", which is not defined"
    );
    assert_eq!(body["graph"]["pipelines"][0]["id"], "traces", "{body}");

    let (status, body) = send(
        &state,
        Method::POST,
        "/api/v1/validate",
        &json!({ "yaml": CLEAN }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["problems"], json!([]), "{body}");
    let (status, body) = send(
        &state,
        Method::POST,
        "/api/v1/validate",
        &json!({ "yml": CLEAN }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn published_versions_are_content_addressed_diffed_and_drawn() {
    let state = state().await;
    let id = create_configuration(&state, "edge", CLEAN).await;
    let (status, body) = publish(&state, id).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let hash = crate::remote_config::sha256_hex(CLEAN.as_bytes());
    assert_eq!(body, json!({ "version": 1, "hash": hash, "problems": [] }));
    let (status, body) = publish(&state, id).await;
    assert_eq!(status, StatusCode::OK, "unchanged: {body}");
    assert_eq!((&body["version"], &body["hash"]), (&json!(1), &json!(hash)));

    let (status, version) = get(&state, &format!("/api/v1/configurations/{id}/versions/1")).await;
    assert_eq!(status, StatusCode::OK, "{version}");
    assert_eq!(version["yaml"], CLEAN);
    assert_eq!(version["hash"], hash);
    assert_eq!(version["configuration_id"], id);
    assert_eq!(
        version["graph"]["pipelines"][0]["id"], "traces",
        "{version}"
    );

    let changed = CLEAN.replace(
        "endpoint: https://127.0.0.1:4317",
        "endpoint: https://127.0.0.2:4317",
    );
    assert_eq!(put_draft(&state, id, &changed, 1).await.0, StatusCode::OK);
    let (status, body) = publish(&state, id).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["version"], 2);
    assert_eq!(
        body["hash"],
        crate::remote_config::sha256_hex(changed.as_bytes())
    );
    let (status, version) = get(&state, &format!("/api/v1/configurations/{id}/versions/1")).await;
    assert_eq!((status, &version["yaml"]), (StatusCode::OK, &json!(CLEAN)));

    let (status, content_type, diff) = get_text(
        &state,
        &format!("/api/v1/configurations/{id}/diff?from=1&to=2"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{diff}");
    assert!(content_type.starts_with("text/x-diff"), "{content_type}");
    assert!(diff.contains("--- version 1\n+++ version 2\n"), "{diff}");
    assert!(
        diff.contains("\n-    endpoint: https://127.0.0.1:4317\n"),
        "{diff}"
    );
    assert!(
        diff.contains("\n+    endpoint: https://127.0.0.2:4317\n"),
        "{diff}"
    );
    assert!(
        !diff.contains("-        endpoint: 127.0.0.1:4317"),
        "unchanged lines are context: {diff}"
    );

    let (status, content_type, svg) = get_text(
        &state,
        &format!("/api/v1/configurations/{id}/versions/2/swimlane.svg"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{svg}");
    assert_eq!(content_type, "image/svg+xml");
    assert!(svg.starts_with("<svg"), "{svg}");
    assert!(svg.contains("traces"), "{svg}");

    // A draft with an error is not published.
    assert_eq!(
        put_draft(&state, id, BAD_REFERENCE, 2).await.0,
        StatusCode::OK
    );
    let (status, body) = publish(&state, id).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(!error_text(&body).is_empty());
    assert_eq!(
        rules_of(&body["problems"]),
        [("undefined-component".to_owned(), "error".to_owned())]
    );
    assert_eq!(body["problems"][0]["line"], 19);
    let (_, stored) = get(&state, &format!("/api/v1/configurations/{id}")).await;
    assert_eq!(stored["versions"].as_array().unwrap().len(), 2, "{stored}");
    for uri in [
        format!("/api/v1/configurations/{id}/versions/3"),
        format!("/api/v1/configurations/{id}/versions/3/swimlane.svg"),
        format!("/api/v1/configurations/{id}/diff?from=1&to=3"),
        format!("/api/v1/configurations/{}/publish", id + 1000),
    ] {
        let response = call(
            &state,
            Request::builder()
                .method(if uri.ends_with("publish") {
                    Method::POST
                } else {
                    Method::GET
                })
                .uri(&uri)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{uri}");
        assert!(!error_text(&json_body(response).await).is_empty(), "{uri}");
    }
}

#[tokio::test]
async fn lint_rules_can_block_publishing() {
    let state = state().await;
    let (status, body) = get(&state, "/api/v1/lint-rules").await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = body["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rule| rule["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "memory-limiter-first",
            "batch-processor",
            "no-debug-exporter",
            "plaintext-endpoint",
            "secret-literal",
            "unused-component"
        ]
    );
    assert!(body["rules"]
        .as_array()
        .unwrap()
        .iter()
        .all(|rule| rule["enabled"] == true && rule["severity"] == "warning"));

    let (status, rule) = send(
        &state,
        Method::PUT,
        "/api/v1/lint-rules/batch-processor",
        &json!({ "severity": "error" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{rule}");
    assert_eq!(
        (&rule["id"], &rule["severity"]),
        (&json!("batch-processor"), &json!("error"))
    );
    assert_eq!(rule["enabled"], true, "what is absent stays as it is");
    let (_, body) = get(&state, "/api/v1/lint-rules").await;
    assert_eq!(body["rules"][1]["severity"], "error", "{body}");

    let id = create_configuration(&state, "edge", NO_BATCH).await;
    let (status, body) = publish(&state, id).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        rules_of(&body["problems"]),
        [("batch-processor".to_owned(), "error".to_owned())]
    );
    let (_, stored) = get(&state, &format!("/api/v1/configurations/{id}")).await;
    assert_eq!(stored["versions"], json!([]));

    for (uri, request) in [
        (
            "/api/v1/lint-rules/no-such-rule",
            json!({ "severity": "error" }),
        ),
        (
            "/api/v1/lint-rules/batch-processor",
            json!({ "severity": "fatal" }),
        ),
        (
            "/api/v1/lint-rules/batch-processor",
            json!({ "level": "error" }),
        ),
    ] {
        let (status, body) = send(&state, Method::PUT, uri, &request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri} {request}: {body}");
    }

    // Back to a warning: it no longer blocks.
    let (status, _) = send(
        &state,
        Method::PUT,
        "/api/v1/lint-rules/batch-processor",
        &json!({ "severity": "warning" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = publish(&state, id).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        rules_of(&body["problems"]),
        [("batch-processor".to_owned(), "warning".to_owned())]
    );
}

#[tokio::test]
async fn assignments_show_as_drift() {
    let state = state().await;
    let uid = Uuid::now_v7();
    store_agents(&state, &[record(uid, &[("env", "prod")])], 0).await;
    let id = create_configuration(&state, "edge", CLEAN).await;
    let (status, published) = publish(&state, id).await;
    assert_eq!(status, StatusCode::CREATED);
    let hash = published["hash"].as_str().unwrap().to_owned();

    let assign = |version: i64, target: Value| {
        let state = state.clone();
        async move {
            send(
                &state,
                Method::POST,
                "/api/v1/assignments",
                &json!({ "configuration_id": id, "version": version, "target": target }),
            )
            .await
        }
    };
    let (status, body) = assign(2, json!({ "instance_uid": uid })).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = assign(1, json!({ "selector": "x" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(error_text(&body).contains("key=value"), "{body}");
    let (status, body) = assign(1, json!({ "everyone": true })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(state.store.newest_assignment_id().await.unwrap(), 0);

    let (status, by_selector) = assign(1, json!({ "selector": "env = prod" })).await;
    assert_eq!(status, StatusCode::CREATED, "{by_selector}");
    assert_eq!(by_selector["target"], json!({ "selector": "env=prod" }));
    let (status, direct) = assign(1, json!({ "instance_uid": uid })).await;
    assert_eq!(status, StatusCode::CREATED, "{direct}");
    assert_eq!(direct["target"], json!({ "instance_uid": uid }));
    assert_eq!(
        (&direct["version"], &direct["hash"]),
        (&json!(1), &json!(hash))
    );
    assert!(direct["id"].as_i64() > by_selector["id"].as_i64());

    let (status, agent) = get(&state, &format!("/api/v1/agents/{uid}")).await;
    assert_eq!(status, StatusCode::OK, "{agent}");
    assert_eq!(agent["assigned_config_hash"], hash);
    assert_eq!(agent["drift"]["state"], "pending", "{agent}");
    assert_eq!(agent["drift"]["since"], direct["created_at"], "{agent}");
    assert_eq!(agent["applied_config_hash"], Value::Null);

    let (status, drift) = get(&state, "/api/v1/drift").await;
    assert_eq!(status, StatusCode::OK, "{drift}");
    assert_eq!(
        drift["counts"],
        json!({ "in_sync": 0, "pending": 1, "failed": 0, "out_of_band": 0 })
    );
    let agents = drift["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1, "{drift}");
    assert_eq!(agents[0]["instance_uid"], uid.to_string());
    assert_eq!(agents[0]["state"], "pending");
    assert_eq!(agents[0]["since"], direct["created_at"]);
    let reason = agents[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("configuration {id} version 1")) && reason.contains(&hash[..12]),
        "{reason}"
    );
    assert_eq!(drift["next_page_token"], Value::Null);

    // An agent nothing is assigned to has no drift.
    let other = Uuid::now_v7();
    store_agents(&state, &[record(other, &[("env", "dev")])], 0).await;
    let (_, agent) = get(&state, &format!("/api/v1/agents/{other}")).await;
    assert_eq!(
        (&agent["assigned_config_hash"], &agent["drift"]),
        (&Value::Null, &Value::Null)
    );
}

#[tokio::test]
async fn configurations_and_drift_page_by_their_tokens() {
    let state = state().await;
    let mut ids = Vec::new();
    for name in ["a", "b", "c"] {
        let id = create_configuration(&state, name, CLEAN).await;
        assert_eq!(publish(&state, id).await.0, StatusCode::CREATED);
        ids.push(id);
    }
    let (status, first) = get(&state, "/api/v1/configurations?limit=2").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let listed: Vec<i64> = first["configurations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed, ids[..2]);
    assert_eq!(first["configurations"][0]["versions"][0]["version"], 1);
    let token = first["next_page_token"].as_str().expect("a second page");
    let (_, second) = get(
        &state,
        &format!("/api/v1/configurations?limit=2&page_token={token}"),
    )
    .await;
    assert_eq!(second["configurations"][0]["id"], ids[2]);
    assert_eq!(second["next_page_token"], Value::Null);
    let (status, _) = get(&state, "/api/v1/configurations?page_token=x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let mut uids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    uids.sort();
    let agents: Vec<_> = uids
        .iter()
        .map(|uid| record(*uid, &[("env", "prod")]))
        .collect();
    store_agents(&state, &agents, 0).await;
    let (status, _) = send(
        &state,
        Method::POST,
        "/api/v1/assignments",
        &json!({ "configuration_id": ids[0], "version": 1, "target": { "selector": "env=prod" } }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let mut seen = Vec::new();
    let mut uri = "/api/v1/drift?limit=2".to_owned();
    loop {
        let (status, page) = get(&state, &uri).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["counts"]["pending"], 3, "{page}");
        for agent in page["agents"].as_array().unwrap() {
            seen.push(
                agent["instance_uid"]
                    .as_str()
                    .unwrap()
                    .parse::<Uuid>()
                    .unwrap(),
            );
        }
        let Some(token) = page["next_page_token"].as_str() else {
            break;
        };
        uri = format!("/api/v1/drift?limit=2&page_token={token}");
    }
    assert_eq!(seen, uids);

    // Validating a stored draft against an agent that does not exist.
    let unknown = Uuid::now_v7();
    let (status, body) = send_text(
        &state,
        Method::POST,
        &format!(
            "/api/v1/configurations/{}/validate?instance_uid={unknown}",
            ids[0]
        ),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = send_text(
        &state,
        Method::POST,
        &format!(
            "/api/v1/configurations/{}/validate?instance_uid={}",
            ids[0], uids[0]
        ),
        "",
    )
    .await;
    assert_eq!(
        (status, &body["problems"]),
        (StatusCode::OK, &json!([])),
        "{body}"
    );
}

// === trust ===

async fn create_token(state: &ApiState, body: Value) -> (i64, String) {
    let (status, body) = send(state, Method::POST, "/api/v1/bootstrap-tokens", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    (
        body["id"].as_i64().unwrap(),
        body["token"].as_str().unwrap().to_owned(),
    )
}

fn csr_for(common_name: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params.serialize_request(&key).unwrap().pem().unwrap()
}

#[tokio::test]
async fn bootstrap_tokens_are_shown_once_listed_and_revoked() {
    let state = state().await;
    let before = OffsetDateTime::now_utc().unix_timestamp();
    let (status, created) = send(
        &state,
        Method::POST,
        "/api/v1/bootstrap-tokens",
        &json!({"labels": {"env": "prod"}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().unwrap();
    assert!(token.starts_with("ampbt_"), "{token}");
    // The default lifetime is a day.
    let expires_at = created["expires_at"].as_i64().unwrap();
    assert!((before + 86_400..=before + 86_401 + 5).contains(&expires_at));
    let (short, _) = create_token(&state, json!({"ttl_seconds": 60})).await;

    let (status, listed) = get(&state, "/api/v1/bootstrap-tokens").await;
    assert_eq!(status, StatusCode::OK);
    let tokens = listed["bootstrap_tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 2);
    assert_eq!(tokens[0]["labels"]["env"], "prod");
    assert_eq!(tokens[0]["state"], "active");
    assert!(
        !listed.to_string().contains(token),
        "a listing never shows a token"
    );

    let (status, revoked) = send(
        &state,
        Method::DELETE,
        &format!("/api/v1/bootstrap-tokens/{short}"),
        &json!(null),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert_eq!(revoked["state"], "revoked");
    let (status, body) = send(
        &state,
        Method::DELETE,
        "/api/v1/bootstrap-tokens/999",
        &json!(null),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_text(&body).contains("999"));

    for (bad, why) in [
        (json!({"ttl_seconds": 0}), "at least 1"),
        (json!({"ttl_seconds": 100_000_000}), "at most"),
        (json!({"labels": {"": "x"}}), "keys must be"),
        (json!({"lifetime": 3}), "unknown field"),
    ] {
        let (status, body) = send(&state, Method::POST, "/api/v1/bootstrap-tokens", &bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(error_text(&body).contains(why), "{bad}: {body}");
    }
}

#[tokio::test]
async fn a_token_buys_one_certificate_and_is_refused_used_expired_or_revoked() {
    let state = state().await;
    let (_, token) = create_token(&state, json!({"labels": {"site": "berlin"}})).await;
    let csr = csr_for("collector");
    let (status, issued) = send(
        &state,
        Method::POST,
        "/api/v1/certificates",
        &json!({"token": token, "csr_pem": csr}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    assert!(issued["certificate_pem"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE"));
    assert!(issued.get("private_key_pem").is_none(), "{issued}");
    assert_eq!(issued["fingerprint"].as_str().unwrap().len(), 64);
    let uid: Uuid = issued["instance_uid"].as_str().unwrap().parse().unwrap();

    // Reused: refused, with why.
    let (status, body) = send(
        &state,
        Method::POST,
        "/api/v1/certificates",
        &json!({"token": token, "csr_pem": csr}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(error_text(&body), "bootstrap token already used");

    // Expired.
    let expired = state
        .store
        .create_bootstrap_token(
            &storage::NewBootstrapToken {
                token_hash: crate::trust::tokens::hash("ampbt_expired"),
                labels: Default::default(),
                expires_at: OffsetDateTime::now_utc() - time::Duration::seconds(1),
            },
            OffsetDateTime::now_utc() - time::Duration::hours(1),
            &crate::audit::AuditContext::system(),
        )
        .await
        .unwrap();
    assert!(expired.id > 0);
    let (status, body) = send(
        &state,
        Method::POST,
        "/api/v1/certificates",
        &json!({"token": "ampbt_expired"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(error_text(&body), "bootstrap token expired");

    // Revoked.
    let (id, revoked) = create_token(&state, json!({})).await;
    let (status, _) = send(
        &state,
        Method::DELETE,
        &format!("/api/v1/bootstrap-tokens/{id}"),
        &json!(null),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = send(
        &state,
        Method::POST,
        "/api/v1/certificates",
        &json!({"token": revoked}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(error_text(&body), "bootstrap token revoked");

    // Unknown, and a CSR that is no CSR.
    let (status, body) = send(
        &state,
        Method::POST,
        "/api/v1/certificates",
        &json!({"token": "ampbt_nope"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error_text(&body), "unknown bootstrap token");
    let (_, fresh) = create_token(&state, json!({})).await;
    let (status, body) = send(
        &state,
        Method::POST,
        "/api/v1/certificates",
        &json!({"token": fresh, "csr_pem": "garbage"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        error_text(&body).contains("certificate signing request"),
        "{body}"
    );
    // The refused CSR did not use the token up.
    let (status, generated) = send(
        &state,
        Method::POST,
        "/api/v1/certificates",
        &json!({"token": fresh}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{generated}");
    assert!(generated["private_key_pem"]
        .as_str()
        .unwrap()
        .contains("PRIVATE KEY"));

    // Listed with the token's labels; the used token names its agent.
    let (_, listed) = get(&state, "/api/v1/certificates").await;
    let certificates = listed["certificates"].as_array().unwrap();
    assert_eq!(certificates.len(), 2);
    let first = certificates
        .iter()
        .find(|c| c["fingerprint"] == issued["fingerprint"])
        .unwrap();
    assert_eq!(first["labels"]["site"], "berlin");
    assert_eq!(first["instance_uid"], uid.to_string());
    let (_, tokens) = get(&state, "/api/v1/bootstrap-tokens").await;
    assert_eq!(tokens["bootstrap_tokens"][0]["state"], "used");
    assert_eq!(tokens["bootstrap_tokens"][0]["used_by"], uid.to_string());
    let (status, body) = send(
        &state,
        Method::DELETE,
        "/api/v1/bootstrap-tokens/1",
        &json!(null),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

#[tokio::test]
async fn certificates_are_revoked_and_the_ca_rotated_keeping_the_old_one_trusted() {
    let state = state().await;
    let (_, token) = create_token(&state, json!({})).await;
    let (_, issued) = send(
        &state,
        Method::POST,
        "/api/v1/certificates",
        &json!({"token": token}),
    )
    .await;
    let fingerprint = issued["fingerprint"].as_str().unwrap();

    let (status, content_type, pem) = get_text(&state, "/api/v1/ca.pem").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "application/x-pem-file");
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 1);
    assert_eq!(pem, issued["ca_pem"].as_str().unwrap());

    let (status, rotated) = send(&state, Method::POST, "/api/v1/ca/rotate", &json!(null)).await;
    assert_eq!(status, StatusCode::CREATED, "{rotated}");
    assert_ne!(rotated["ca_pem"], issued["ca_pem"]);
    // The old CA issued a certificate still valid: both are trusted, the new one first.
    let (_, _, pem) = get_text(&state, "/api/v1/ca.pem").await;
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(pem.starts_with(rotated["ca_pem"].as_str().unwrap()));
    // New certificates come from the new CA.
    let (_, token) = create_token(&state, json!({})).await;
    let (_, renewed) = send(
        &state,
        Method::POST,
        "/api/v1/certificates",
        &json!({"token": token}),
    )
    .await;
    assert_eq!(renewed["ca_pem"], rotated["ca_pem"]);

    let (status, revoked) = send(
        &state,
        Method::POST,
        &format!("/api/v1/certificates/{}/revoke", fingerprint.to_uppercase()),
        &json!(null),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert!(revoked["revoked_at"].is_i64());
    assert_eq!(revoked["revoked_reason"], "revoked by an operator");
    let snapshot = state
        .store
        .trust_snapshot(OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert_eq!(snapshot.revoked, [fingerprint.to_owned()]);
    let (status, body) = send(
        &state,
        Method::POST,
        "/api/v1/certificates/00ff/revoke",
        &json!(null),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

/// With a certificate and key, the API answers over HTTPS only; unusable files are refused
/// with what is wrong.
#[tokio::test]
async fn the_api_is_served_over_https_when_given_a_certificate() {
    use tokio_rustls::rustls;

    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let certificate = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.path().join("api.pem"), dir.path().join("api.key"));
    std::fs::write(&cert_path, certificate.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let config = tls::server_config(&cert_path, &key_path).unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let timeout = Duration::from_secs(5);
    tokio::spawn(serve(
        listener,
        app(state().await, timeout),
        timeout,
        Some(config),
        stop.clone().cancelled_owned(),
    ));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certificate.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("a TLS handshake");
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");

    // Plain HTTP gets no HTTP answer from it.
    let plain = answer_then_close(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("the connection is closed");
    assert!(!plain.contains("200 OK"), "{plain}");
    stop.cancel();

    let error = tls::server_config(&dir.path().join("missing.pem"), &key_path).unwrap_err();
    assert!(error.contains("missing.pem"), "{error}");
    let error = tls::server_config(&key_path, &key_path).unwrap_err();
    assert!(error.contains("no certificate"), "{error}");
}
