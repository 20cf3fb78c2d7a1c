//! Bad input against `ampora serve`: each gets a clear error, and the server keeps serving
//! everyone else.

mod agent;
mod support;

use std::time::Duration;

use agent::{full_state, WsAgent};
use ampora_shared::codec;
use prost::Message as _;
use support::Ampora;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const LIMIT: usize = 256 * 1024;

async fn start() -> Ampora {
    Ampora::start(&[
        ("AMPORA_MAX_MESSAGE_SIZE", "262144"),
        ("AMPORA_FIRST_MESSAGE_TIMEOUT", "1s"),
        ("AMPORA_API_REQUEST_TIMEOUT", "1s"),
    ])
    .await
}

/// `host:port` of a `scheme://host:port/…` URL.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

/// Sends `bytes` on a new connection and reads until the server closes it (a reset counts);
/// `None` if it is still open after 10 s.
async fn answer_then_close(addr: &str, bytes: &[u8]) -> Option<String> {
    use tokio::io::AsyncWriteExt;
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    socket.write_all(bytes).await.expect("send");
    let mut answer = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut answer)).await {
        Ok(_) => Some(String::from_utf8_lossy(&answer).into_owned()),
        Err(_) => None,
    }
}

/// A well-behaved agent must still get through.
async fn assert_serving(ampora: &Ampora) {
    let mut agent = WsAgent::connect(&ampora.ws_url()).await;
    let reply = agent.exchange(full_state("still-here", "prod")).await;
    assert_eq!(reply.instance_uid.as_ref(), agent.uid.as_bytes());
    agent.close().await;
}

fn valid_frame(agent: &WsAgent) -> Vec<u8> {
    let mut message = full_state("x", "y");
    message.instance_uid = agent.uid.as_bytes().to_vec().into();
    codec::ws_frame_from_encoded(&message.encode_to_vec())
}

#[tokio::test]
async fn bad_websocket_frames_close_with_clear_codes() {
    let ampora = start().await;

    let mut agent = WsAgent::connect(&ampora.ws_url()).await;
    let mut frame = valid_frame(&agent);
    frame[0] = 1;
    agent.send_raw(frame).await;
    let (code, reason) = agent
        .closed(Duration::from_secs(5))
        .await
        .expect("close frame");
    assert_eq!(code, CloseCode::Protocol);
    assert!(reason.contains("header"), "{reason}");

    let mut agent = WsAgent::connect(&ampora.ws_url()).await;
    let mut frame = valid_frame(&agent);
    frame.truncate(frame.len() - 4);
    agent.send_raw(frame).await;
    let (code, reason) = agent
        .closed(Duration::from_secs(5))
        .await
        .expect("close frame");
    assert_eq!(code, CloseCode::Invalid);
    assert!(!reason.is_empty());

    let mut agent = WsAgent::connect(&ampora.ws_url()).await;
    agent.send_raw(vec![0u8; LIMIT + 1024]).await;
    let (code, _) = agent
        .closed(Duration::from_secs(5))
        .await
        .expect("close frame");
    assert_eq!(code, CloseCode::Size);

    let mut agent = WsAgent::connect(&ampora.ws_url()).await;
    agent
        .send_message(Message::Text("hello".into()))
        .await
        .unwrap();
    let (code, _) = agent
        .closed(Duration::from_secs(5))
        .await
        .expect("close frame");
    assert_eq!(code, CloseCode::Unsupported);

    assert_serving(&ampora).await;
}

#[tokio::test]
async fn bad_http_requests_get_clear_statuses() {
    let ampora = start().await;
    let url = ampora.http_opamp_url();
    // Built first: making it takes longer than the server keeps an idle connection open.
    // A gzip bomb: 64 MiB of zeros in ~64 KiB, under the body limit until inflated.
    let bomb = {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&vec![0u8; 64 << 20]).unwrap();
        encoder.finish().unwrap()
    };
    assert!(bomb.len() < LIMIT);
    // A fresh connection per request: this server closes idle ones after a second.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let valid = {
        let mut message = full_state("x", "y");
        message.instance_uid = uuid::Uuid::now_v7().as_bytes().to_vec().into();
        message.encode_to_vec()
    };

    let response = client
        .put(&url)
        .header("Content-Type", "application/x-protobuf")
        .body(valid.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);

    let post = |content_type: &str, gzip: bool, body: Vec<u8>| {
        let request = client
            .post(&url)
            .header("Content-Type", content_type)
            .body(body);
        let request = if gzip {
            request.header("Content-Encoding", "gzip")
        } else {
            request
        };
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            (status, response.text().await.unwrap())
        }
    };
    let protobuf = "application/x-protobuf";
    for (what, content_type, gzip, body, expected) in [
        ("a JSON body", "application/json", false, valid.clone(), 415),
        (
            "a broken protobuf",
            protobuf,
            false,
            vec![0xff, 0xff, 0xff],
            400,
        ),
        ("a gzip bomb", protobuf, true, bomb, 413),
        (
            "a body over the limit",
            protobuf,
            false,
            vec![0u8; LIMIT + 1],
            413,
        ),
    ] {
        let (status, reason) = post(content_type, gzip, body).await;
        assert_eq!(status, expected, "{what}: {reason}");
        assert!(!reason.is_empty(), "{what}: no reason given");
    }
    // A gzip'd valid body is fine.
    let (status, _) = post(protobuf, true, codec::gzip(&valid)).await;
    assert_eq!(status, 200);

    assert_serving(&ampora).await;
}

#[tokio::test]
async fn a_flood_of_silent_connections_is_dropped_while_agents_are_served() {
    let ampora = start().await;
    let ws_url = ampora.ws_url();
    let addr = authority(&ws_url);
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    // While they hang around, a real agent works.
    assert_serving(&ampora).await;
    // Each silent socket is closed by the server after the first-message timeout.
    for mut socket in silent {
        let mut rest = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "silent connection still open after 10 s");
    }
    assert_serving(&ampora).await;
}

#[tokio::test]
async fn requests_that_stall_are_dropped_on_both_listeners() {
    let ampora = start().await;
    let opamp_url = ampora.http_opamp_url();
    let api_base = ampora.api_base();
    let half_a_body = |head: &str| {
        format!("{head}Host: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: 100\r\n\r\n0123456789")
    };
    let stalled = [
        (
            authority(&opamp_url),
            half_a_body("POST /v1/opamp HTTP/1.1\r\n"),
        ),
        (
            authority(&opamp_url),
            "POST /v1/opamp HTTP/1.1\r\nHost: x\r\n".to_owned(),
        ),
        (authority(&api_base), String::new()),
        (
            authority(&api_base),
            "GET /api/v1/agents HTTP/1.1\r\nHost: x\r\n".to_owned(),
        ),
        (
            authority(&api_base),
            half_a_body("GET /api/v1/agents HTTP/1.1\r\n"),
        ),
    ];
    for (addr, request) in stalled {
        assert!(
            answer_then_close(addr, request.as_bytes()).await.is_some(),
            "{addr}: still open after {request:?}"
        );
    }
    assert_serving(&ampora).await;
}

#[tokio::test]
async fn api_errors_are_json_even_from_the_framework() {
    let ampora = start().await;
    let client = ampora.http();
    let agents = format!("{}/api/v1/agents", ampora.api_base());
    let anonymous = reqwest::Client::new();
    for (request, expected) in [
        (anonymous.get(&agents), 401),
        (anonymous.get(&agents).bearer_auth("ampora_forged"), 401),
        (client.delete(&agents), 405),
        (client.get(format!("{agents}/%FF")), 400),
        (client.get(format!("{agents}?limit=many")), 400),
        (client.get(format!("{}/nowhere", ampora.api_base())), 404),
    ] {
        let response = request.send().await.unwrap();
        let url = response.url().to_string();
        assert_eq!(response.status(), expected, "{url}");
        if expected == 405 {
            assert_eq!(response.headers()["allow"], "GET,HEAD");
        }
        assert!(response.headers().contains_key("x-request-id"), "{url}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{url}: {body}"
        );
    }
}
