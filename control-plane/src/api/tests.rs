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
use crate::remote_config::ConfigTrack;
use crate::storage::{self, NewEvent, StoreOptions, WriteBatch};
use ampora_shared::bus::InProcessBus;

const TIMEOUT: Duration = Duration::from_secs(30);

async fn state() -> ApiState {
    let store = storage::connect("sqlite::memory:", StoreOptions::default())
        .await
        .expect("an in-memory store");
    ApiState {
        store,
        readiness: Readiness::default(),
        bus: Arc::new(InProcessBus::default()),
        subjects: Subjects::default(),
        assignments: AssignmentWatch::default(),
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

async fn call(state: &ApiState, request: Request<Body>) -> Response {
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

async fn json_body(response: Response) -> Value {
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
        "/".to_owned(),
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
