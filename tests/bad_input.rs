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
    ])
    .await
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

    let response = client
        .post(&url)
        .header("Content-Type", "application/json")
        .body(valid.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    assert!(!response.text().await.unwrap().is_empty());

    let response = client
        .post(&url)
        .header("Content-Type", "application/x-protobuf")
        .body(vec![0xff, 0xff, 0xff])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(!response.text().await.unwrap().is_empty());

    let response = client
        .post(&url)
        .header("Content-Type", "application/x-protobuf")
        .header("Content-Encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);

    // A body over the limit without compression.
    let response = client
        .post(&url)
        .header("Content-Type", "application/x-protobuf")
        .body(vec![0u8; LIMIT + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);

    // A gzip'd valid body is fine.
    let response = client
        .post(&url)
        .header("Content-Type", "application/x-protobuf")
        .header("Content-Encoding", "gzip")
        .body(codec::gzip(&valid))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    assert_serving(&ampora).await;
}

#[tokio::test]
async fn a_flood_of_silent_connections_is_dropped_while_agents_are_served() {
    let ampora = start().await;
    let addr = ampora
        .ws_url()
        .trim_start_matches("ws://")
        .trim_end_matches("/v1/opamp")
        .to_owned();
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(
            tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect"),
        );
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
