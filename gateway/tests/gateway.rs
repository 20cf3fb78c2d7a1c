//! The gateway on real sockets (plain and TLS) with a stand-in control-plane on the in-process
//! bus that answers every agent message.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ampora_gateway::{GatewayConfig, TlsConfig};
use ampora_shared::bus::{Bus, InProcessBus};
use ampora_shared::codec;
use ampora_shared::pb::bus::{
    agent_envelope::Event, AgentEnvelope, ControlPlaneHeartbeat, GatewayDelivery, Transport,
};
use ampora_shared::pb::opamp::{
    server_error_response::Details, AgentToServer, ComponentHealth, ServerErrorResponseType,
    ServerToAgent,
};
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use support::{certificates, tls_client};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How the stand-in control-plane behaves.
#[derive(Clone, Copy)]
struct ControlPlane {
    /// Reply to each message with the uid echoed and `flags = sequence_num`.
    answer: bool,
    /// Announce itself on the heartbeat subject, as the real one does.
    heartbeats: bool,
    /// Wait this long before each reply.
    delay: Duration,
}

const ANSWERING: ControlPlane = ControlPlane {
    answer: true,
    heartbeats: true,
    delay: Duration::ZERO,
};
/// Heard (heartbeats) but never replying: a stuck control-plane.
const MUTE: ControlPlane = ControlPlane {
    answer: false,
    heartbeats: true,
    delay: Duration::ZERO,
};
/// Replying, but its heartbeats never reach the gateway (as when the gateway falls behind).
const UNHEARD: ControlPlane = ControlPlane {
    answer: true,
    heartbeats: false,
    delay: Duration::ZERO,
};
/// Neither heard nor replying.
const ABSENT: ControlPlane = ControlPlane {
    answer: false,
    heartbeats: false,
    delay: Duration::ZERO,
};

struct Gateway {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    /// Every envelope the stand-in control-plane received.
    envelopes: mpsc::UnboundedReceiver<AgentEnvelope>,
}

impl Gateway {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn websocket(&self) -> Socket {
        let (socket, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/opamp", self.addr))
            .await
            .unwrap();
        socket
    }

    async fn envelope(&mut self) -> Option<AgentEnvelope> {
        tokio::time::timeout(Duration::from_secs(5), self.envelopes.recv())
            .await
            .ok()
            .flatten()
    }

    /// Skips envelopes carrying agent messages; returns the next ConnectionClosed.
    async fn closed_event(&mut self) -> AgentEnvelope {
        loop {
            let envelope = self.envelope().await.expect("a ConnectionClosed envelope");
            if matches!(envelope.event, Some(Event::ConnectionClosed(_))) {
                return envelope;
            }
        }
    }
}

async fn start(config: GatewayConfig, control_plane: ControlPlane) -> Gateway {
    start_on(config, control_plane, InProcessBus::default()).await
}

async fn start_on(
    config: GatewayConfig,
    control_plane: ControlPlane,
    bus: InProcessBus,
) -> Gateway {
    let bus: Arc<dyn Bus> = Arc::new(bus);
    let subjects = config.subjects.clone();
    let mut inbound = bus.subscribe(&subjects.agent_inbound_all()).await.unwrap();
    if control_plane.heartbeats {
        let bus = bus.clone();
        let subject = subjects.control_plane_heartbeat();
        tokio::spawn(async move {
            loop {
                let beat = ControlPlaneHeartbeat {
                    replica_id: "stand-in".to_owned(),
                };
                let _ = bus.publish(&subject, beat.encode_to_vec().into()).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    let (seen, envelopes) = mpsc::unbounded_channel();
    let replies = bus.clone();
    tokio::spawn(async move {
        while let Some(message) = inbound.next().await {
            let envelope = AgentEnvelope::decode(message.payload).unwrap();
            if let (true, Some(Event::AgentToServer(payload))) =
                (control_plane.answer, &envelope.event)
            {
                let agent = AgentToServer::decode(payload.clone()).unwrap();
                let reply = ServerToAgent {
                    instance_uid: agent.instance_uid,
                    flags: agent.sequence_num,
                    ..Default::default()
                };
                let delivery = GatewayDelivery {
                    instance_uid: envelope.instance_uid.clone(),
                    connection_id: envelope.connection_id,
                    server_to_agent: reply.encode_to_vec().into(),
                    close_after: false,
                };
                let replies = replies.clone();
                let subject = subjects.gateway(&envelope.gateway_id);
                tokio::spawn(async move {
                    tokio::time::sleep(control_plane.delay).await;
                    replies
                        .publish(&subject, delivery.encode_to_vec().into())
                        .await
                        .unwrap();
                });
            }
            let _ = seen.send(envelope);
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        ampora_gateway::run(listener, config, bus, stop.cancelled_owned())
            .await
            .unwrap();
    });
    Gateway {
        addr,
        shutdown,
        task,
        envelopes,
    }
}

fn agent_message(seq: u64) -> AgentToServer {
    AgentToServer {
        instance_uid: vec![9; 16].into(),
        sequence_num: seq,
        capabilities: 1,
        ..Default::default()
    }
}

fn frame(message: &AgentToServer) -> Message {
    Message::Binary(codec::ws_frame_from_encoded(&message.encode_to_vec()).into())
}

async fn next_reply<S>(socket: &mut S) -> ServerToAgent
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("a reply in time")
        {
            Some(Ok(Message::Binary(data))) => {
                return ServerToAgent::decode(codec::ws_payload(&data).unwrap()).unwrap()
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The close frame the server sends, as (code, reason); `None` if the socket ended without one.
async fn close_frame<S>(socket: &mut S) -> Option<(CloseCode, String)>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .ok()?
        {
            Some(Ok(Message::Close(frame))) => {
                return frame.map(|f| (f.code, f.reason.to_string()))
            }
            Some(Ok(_)) => continue,
            _ => return None,
        }
    }
}

async fn close_code<S>(socket: &mut S) -> Option<CloseCode>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    close_frame(socket).await.map(|(code, _)| code)
}

fn post(url: &str) -> reqwest::RequestBuilder {
    reqwest::Client::builder()
        .no_gzip()
        .build()
        .unwrap()
        .post(url)
        .header("Content-Type", "application/x-protobuf")
}

/// Whether the server ends a raw TCP connection within `within` (EOF or reset).
async fn dropped_within(socket: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // A response (e.g. an error status) before closing is fine; keep reading.
            Ok(Ok(_)) => continue,
        }
    }
}

// === WebSocket ===

#[tokio::test]
async fn websocket_round_trip_and_closed_event() {
    let mut gateway = start(GatewayConfig::for_test(), ANSWERING).await;
    let mut socket = gateway.websocket().await;
    socket.send(frame(&agent_message(7))).await.unwrap();
    assert_eq!(next_reply(&mut socket).await.flags, 7);
    socket.send(frame(&agent_message(8))).await.unwrap();
    assert_eq!(next_reply(&mut socket).await.flags, 8);
    let envelope = gateway.envelope().await.unwrap();
    assert_eq!(envelope.transport, Transport::Websocket as i32);
    assert_eq!(&envelope.instance_uid[..], &[9; 16]);
    assert!(envelope.remote_addr.starts_with("127.0.0.1:"));
    assert!(envelope.received_unix_nano > 0);
    let second = gateway.envelope().await.unwrap();
    assert_eq!(second.connection_id, envelope.connection_id);

    socket.close(None).await.unwrap();
    let closed = gateway.closed_event().await;
    assert_eq!(closed.connection_id, envelope.connection_id);
    assert_eq!(&closed.instance_uid[..], &[9; 16]);
}

#[tokio::test]
async fn abrupt_disconnect_is_reported_too() {
    let mut gateway = start(GatewayConfig::for_test(), ANSWERING).await;
    let mut socket = gateway.websocket().await;
    socket.send(frame(&agent_message(1))).await.unwrap();
    next_reply(&mut socket).await;
    drop(socket); // no closing handshake: the TCP connection just goes
    let closed = gateway.closed_event().await;
    assert_eq!(closed.transport, Transport::Websocket as i32);
}

#[tokio::test]
async fn every_uid_that_spoke_on_a_connection_is_reported_closed() {
    let mut gateway = start(GatewayConfig::for_test(), ANSWERING).await;
    let mut socket = gateway.websocket().await;
    let (polite, first, second) = ([3; 16], [1; 16], [2; 16]);
    let mut goodbye = agent_message(1);
    goodbye.instance_uid = polite.to_vec().into();
    goodbye.agent_disconnect = Some(Default::default());
    socket.send(frame(&goodbye)).await.unwrap();
    next_reply(&mut socket).await;
    for uid in [first, second] {
        let mut message = agent_message(1);
        message.instance_uid = uid.to_vec().into();
        socket.send(frame(&message)).await.unwrap();
        next_reply(&mut socket).await;
    }
    socket.close(None).await.unwrap();

    // Reported in the order they spoke, from one task: had the goodbye not counted, the uid
    // that said it would come first.
    let mut closed = Vec::new();
    for _ in 0..2 {
        let envelope = gateway.closed_event().await;
        closed.push(envelope.instance_uid.to_vec());
    }
    assert_eq!(closed, [first.to_vec(), second.to_vec()]);
}

#[tokio::test]
async fn a_connection_speaking_for_too_many_uids_is_closed() {
    let mut gateway = start(GatewayConfig::for_test(), ANSWERING).await;
    let mut socket = gateway.websocket().await;
    for byte in 1..=8u8 {
        let mut message = agent_message(1);
        message.instance_uid = vec![byte; 16].into();
        socket.send(frame(&message)).await.unwrap();
        next_reply(&mut socket).await;
    }
    let mut ninth = agent_message(1);
    ninth.instance_uid = vec![9; 16].into();
    socket.send(frame(&ninth)).await.unwrap();
    assert_eq!(
        close_frame(&mut socket).await,
        Some((
            CloseCode::Policy,
            "one connection may speak for at most 8 instance uids".to_owned()
        ))
    );
    let mut closed = Vec::new();
    for _ in 1..=8 {
        closed.push(gateway.closed_event().await.instance_uid[0]);
    }
    closed.sort();
    assert_eq!(closed, (1..=8).collect::<Vec<u8>>());
}

#[tokio::test]
async fn no_closed_event_after_agent_disconnect() {
    let mut gateway = start(GatewayConfig::for_test(), ANSWERING).await;
    let mut socket = gateway.websocket().await;
    let mut goodbye = agent_message(1);
    goodbye.agent_disconnect = Some(Default::default());
    socket.send(frame(&goodbye)).await.unwrap();
    next_reply(&mut socket).await;
    socket.close(None).await.unwrap();
    gateway.envelopes.recv().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), gateway.envelopes.recv())
            .await
            .is_err(),
        "no ConnectionClosed after AgentDisconnect"
    );
}

#[tokio::test]
async fn wrong_header_byte_closes_with_protocol_error() {
    let gateway = start(GatewayConfig::for_test(), ANSWERING).await;
    let mut socket = gateway.websocket().await;
    let mut data = vec![1u8];
    agent_message(1).encode(&mut data).unwrap();
    socket.send(Message::Binary(data.into())).await.unwrap();
    assert_eq!(
        close_frame(&mut socket).await,
        Some((CloseCode::Protocol, "unsupported OpAMP header 1".to_owned()))
    );
}

#[tokio::test]
async fn truncated_protobuf_closes_with_invalid_payload() {
    let gateway = start(GatewayConfig::for_test(), ANSWERING).await;
    let mut socket = gateway.websocket().await;
    let mut data = codec::ws_frame_from_encoded(&agent_message(1).encode_to_vec());
    data.truncate(data.len() - 3);
    socket.send(Message::Binary(data.into())).await.unwrap();
    let (code, reason) = close_frame(&mut socket).await.expect("a close frame");
    assert_eq!(code, CloseCode::Invalid);
    assert!(!reason.is_empty() && reason.len() <= 123, "{reason}");
}

#[tokio::test]
async fn oversize_message_closes_with_too_big() {
    let gateway = start(
        GatewayConfig {
            max_message_size: 64 << 10,
            ..GatewayConfig::for_test()
        },
        ANSWERING,
    )
    .await;
    let mut socket = gateway.websocket().await;
    let mut big = agent_message(1);
    big.health = Some(ComponentHealth {
        last_error: "x".repeat(100 << 10),
        ..Default::default()
    });
    socket.send(frame(&big)).await.unwrap();
    assert_eq!(
        close_frame(&mut socket).await,
        Some((
            CloseCode::Size,
            format!("message exceeds {} bytes", 64 << 10)
        ))
    );

    // Just under the limit is fine.
    let mut socket = gateway.websocket().await;
    big.health = Some(ComponentHealth {
        last_error: "x".repeat(60 << 10),
        ..Default::default()
    });
    socket.send(frame(&big)).await.unwrap();
    assert_eq!(next_reply(&mut socket).await.flags, 1);
}

#[tokio::test]
async fn text_frame_closes_with_unsupported_data() {
    let gateway = start(GatewayConfig::for_test(), ANSWERING).await;
    let mut socket = gateway.websocket().await;
    socket.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(close_code(&mut socket).await, Some(CloseCode::Unsupported));
}

#[tokio::test]
async fn websocket_without_opamp_message_is_closed_with_policy() {
    let gateway = start(
        GatewayConfig {
            first_message_timeout: Duration::from_millis(400),
            ..GatewayConfig::for_test()
        },
        ANSWERING,
    )
    .await;
    let mut socket = gateway.websocket().await;
    let started = Instant::now();
    assert_eq!(
        close_frame(&mut socket).await,
        Some((CloseCode::Policy, "no OpAMP message received".to_owned()))
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn bad_uid_gets_a_bad_request_error_and_the_connection_stays() {
    let gateway = start(GatewayConfig::for_test(), ANSWERING).await;
    let mut socket = gateway.websocket().await;
    let mut bad = agent_message(1);
    bad.instance_uid = vec![1, 2, 3].into();
    socket.send(frame(&bad)).await.unwrap();
    let reply = next_reply(&mut socket).await;
    let error = reply.error_response.expect("an error response");
    assert_eq!(error.r#type, ServerErrorResponseType::BadRequest as i32);
    assert_eq!(error.error_message, "instance_uid must be 16 bytes");
    socket.send(frame(&agent_message(2))).await.unwrap();
    assert_eq!(next_reply(&mut socket).await.flags, 2);
}

#[tokio::test]
async fn bus_error_is_answered_unavailable_with_retry_info() {
    // A bus that refuses payloads over 1 KiB stands in for a bus that fails.
    let gateway = start_on(
        GatewayConfig::for_test(),
        ANSWERING,
        InProcessBus::new(1024, 1024),
    )
    .await;
    let mut socket = gateway.websocket().await;
    let mut big = agent_message(1);
    big.health = Some(ComponentHealth {
        last_error: "x".repeat(4096),
        ..Default::default()
    });
    socket.send(frame(&big)).await.unwrap();
    let error = next_reply(&mut socket)
        .await
        .error_response
        .expect("an error response");
    assert_eq!(error.r#type, ServerErrorResponseType::Unavailable as i32);
    let Some(Details::RetryInfo(retry)) = error.details else {
        panic!("expected RetryInfo, got {:?}", error.details);
    };
    assert_eq!(retry.retry_after_nanoseconds, 5_000_000_000);
    // The connection stays usable.
    socket.send(frame(&agent_message(2))).await.unwrap();
    assert_eq!(next_reply(&mut socket).await.flags, 2);

    let response = post(&gateway.url("/v1/opamp"))
        .body(big.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
}

#[tokio::test]
async fn silent_control_plane_makes_agents_retry_at_once() {
    let gateway = start(
        GatewayConfig {
            control_plane_timeout: Duration::from_millis(200),
            http_reply_timeout: Duration::from_secs(5),
            ..GatewayConfig::for_test()
        },
        ABSENT,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let started = Instant::now();
    let response = post(&gateway.url("/v1/opamp"))
        .body(agent_message(1).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "not waiting for the reply timeout"
    );
    let mut socket = gateway.websocket().await;
    socket.send(frame(&agent_message(1))).await.unwrap();
    let error = next_reply(&mut socket).await.error_response.unwrap();
    assert_eq!(error.r#type, ServerErrorResponseType::Unavailable as i32);
}

/// Deliveries come only from a working control-plane: while they arrive, its heartbeats being
/// late is no reason to turn agents away.
#[tokio::test]
async fn a_control_plane_answering_agents_counts_as_heard() {
    let gateway = start(
        GatewayConfig {
            control_plane_timeout: Duration::from_millis(300),
            ..GatewayConfig::for_test()
        },
        UNHEARD,
    )
    .await;
    let mut socket = gateway.websocket().await;
    for sequence_num in 1..=10 {
        socket
            .send(frame(&agent_message(sequence_num)))
            .await
            .unwrap();
        let reply = next_reply(&mut socket).await;
        assert_eq!(reply.error_response, None, "message {sequence_num}");
        assert_eq!(reply.flags, sequence_num);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn idle_websocket_is_closed_after_the_heartbeat_timeout() {
    let mut gateway = start(
        GatewayConfig {
            ws_idle_timeout: Duration::from_millis(600),
            ..GatewayConfig::for_test()
        },
        ANSWERING,
    )
    .await;
    let mut socket = gateway.websocket().await;
    socket.send(frame(&agent_message(1))).await.unwrap();
    next_reply(&mut socket).await;
    // Not reading means not answering pings: the server hears nothing and gives up, and tells
    // the control-plane. (Our pongs to the queued pings may then hit a closed socket, so the
    // close frame itself may be lost.)
    gateway.closed_event().await;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Close(frame) = message {
                return frame.map(|f| f.code);
            }
        }
        None
    })
    .await
    .expect("the server closed the connection");
    assert!(matches!(ended, None | Some(CloseCode::Away)), "{ended:?}");
}

#[tokio::test]
async fn answering_pings_keeps_a_quiet_agent_connected() {
    let gateway = start(
        GatewayConfig {
            ws_ping_interval: Duration::from_millis(100),
            ws_idle_timeout: Duration::from_millis(800),
            ..GatewayConfig::for_test()
        },
        ANSWERING,
    )
    .await;
    let mut socket = gateway.websocket().await;
    socket.send(frame(&agent_message(1))).await.unwrap();
    next_reply(&mut socket).await;
    // Reading answers pings (tungstenite pongs automatically) for well past the idle timeout.
    let quiet = tokio::time::timeout(Duration::from_millis(1500), socket.next()).await;
    assert!(
        !matches!(quiet, Ok(Some(Ok(Message::Close(_)))) | Ok(None)),
        "{quiet:?}"
    );
    let listening = tokio::time::timeout(Duration::from_millis(1500), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Ping(_))) => continue,
                other => return other,
            }
        }
    })
    .await;
    assert!(listening.is_err(), "still connected: {listening:?}");
    socket.send(frame(&agent_message(2))).await.unwrap();
    assert_eq!(next_reply(&mut socket).await.flags, 2);
}

// === plain HTTP ===

#[tokio::test]
async fn http_round_trip_with_gzip_both_ways() {
    let mut gateway = start(GatewayConfig::for_test(), ANSWERING).await;
    let response = post(&gateway.url("/v1/opamp"))
        .header("Content-Encoding", "gzip")
        .header("Accept-Encoding", "gzip")
        .body(codec::gzip(&agent_message(3).encode_to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-encoding"], "gzip");
    assert_eq!(response.headers()["content-type"], "application/x-protobuf");
    let body = codec::gunzip_bounded(&response.bytes().await.unwrap(), 1 << 20).unwrap();
    assert_eq!(ServerToAgent::decode(&body[..]).unwrap().flags, 3);
    let envelope = gateway.envelope().await.unwrap();
    assert_eq!(envelope.transport, Transport::Http as i32);
    assert!(envelope.remote_addr.starts_with("127.0.0.1:"));
}

#[tokio::test]
async fn http_round_trip_plain_and_every_request_is_its_own_connection() {
    let mut gateway = start(GatewayConfig::for_test(), ANSWERING).await;
    let client = reqwest::Client::builder().no_gzip().build().unwrap();
    let mut connection_ids = Vec::new();
    for seq in 1..=3 {
        let response = client
            .post(gateway.url("/v1/opamp"))
            .header("Content-Type", "application/x-protobuf")
            .body(agent_message(seq).encode_to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers().get("content-encoding").is_none());
        let reply = ServerToAgent::decode(response.bytes().await.unwrap()).unwrap();
        assert_eq!(reply.flags, seq);
        connection_ids.push(gateway.envelope().await.unwrap().connection_id);
    }
    connection_ids.dedup();
    assert_eq!(connection_ids.len(), 3, "{connection_ids:?}");
    // HTTP agents never produce ConnectionClosed events.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), gateway.envelopes.recv())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn http_rejects_bad_requests_with_short_reasons() {
    let gateway = start(
        GatewayConfig {
            max_message_size: 1 << 20,
            ..GatewayConfig::for_test()
        },
        ANSWERING,
    )
    .await;
    let url = gateway.url("/v1/opamp");
    let client = reqwest::Client::builder().no_gzip().build().unwrap();
    let good = agent_message(1).encode_to_vec();

    async fn check(request: reqwest::RequestBuilder, status: u16) -> reqwest::Response {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status);
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        response
    }

    // Wrong methods, including a GET that is not a WebSocket upgrade.
    for method in [
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
        reqwest::Method::GET,
    ] {
        let response = check(client.request(method, &url), 405).await;
        assert_eq!(response.headers()["allow"], "GET, POST");
    }
    // WebSocket upgrades we cannot accept: another protocol version, no key.
    let upgrade = |version: &str| {
        client
            .get(&url)
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", version)
    };
    let response = check(
        upgrade("8").header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        426,
    )
    .await;
    assert_eq!(response.headers()["sec-websocket-version"], "13");
    check(upgrade("13"), 400).await;
    // Wrong content type, or none.
    check(
        client
            .post(&url)
            .header("Content-Type", "application/json")
            .body(good.clone()),
        415,
    )
    .await;
    check(client.post(&url).body(good.clone()), 415).await;
    // Content encodings other than gzip.
    check(
        post(&url)
            .header("Content-Encoding", "br")
            .body(good.clone()),
        415,
    )
    .await;
    // Not a protobuf AgentToServer, not gzip, or a uid of the wrong length.
    check(post(&url).body(vec![0xff; 32]), 400).await;
    check(
        post(&url)
            .header("Content-Encoding", "gzip")
            .body(good.clone()),
        400,
    )
    .await;
    let mut bad = agent_message(1);
    bad.instance_uid = vec![1, 2, 3].into();
    let response = check(post(&url).body(bad.encode_to_vec()), 400).await;
    assert_eq!(
        response.text().await.unwrap().trim(),
        "instance_uid must be 16 bytes"
    );
    // Too large as sent.
    check(post(&url).body(vec![0u8; 2 << 20]), 413).await;
}

#[tokio::test]
async fn http_gzip_bomb_is_refused_at_the_limit() {
    let mut gateway = start(
        GatewayConfig {
            max_message_size: 1 << 20,
            ..GatewayConfig::for_test()
        },
        ANSWERING,
    )
    .await;
    let bomb = codec::gzip(&vec![0u8; 64 << 20]);
    assert!(bomb.len() < 1 << 20, "small on the wire: {}", bomb.len());
    let response = post(&gateway.url("/v1/opamp"))
        .header("Content-Encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), gateway.envelopes.recv())
            .await
            .is_err(),
        "nothing relayed"
    );
}

#[tokio::test]
async fn http_without_a_reply_is_503_with_retry_after() {
    let gateway = start(
        GatewayConfig {
            http_reply_timeout: Duration::from_millis(300),
            ..GatewayConfig::for_test()
        },
        MUTE,
    )
    .await;
    let started = Instant::now();
    let response = post(&gateway.url("/v1/opamp"))
        .body(agent_message(1).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(!response.text().await.unwrap().is_empty());
}

// === connection limits and deadlines ===

#[tokio::test]
async fn silent_connections_are_dropped_while_agents_keep_working() {
    let gateway = start(
        GatewayConfig {
            first_message_timeout: Duration::from_millis(500),
            ..GatewayConfig::for_test()
        },
        ANSWERING,
    )
    .await;
    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.push(TcpStream::connect(gateway.addr).await.unwrap());
    }
    let mut socket = gateway.websocket().await;
    for seq in 1..=5 {
        socket.send(frame(&agent_message(seq))).await.unwrap();
        assert_eq!(next_reply(&mut socket).await.flags, seq);
    }
    let started = Instant::now();
    for silent in &mut flood {
        assert!(
            dropped_within(silent, Duration::from_secs(3)).await,
            "a silent connection outlived the first-message timeout"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    // An HTTP client that starts a request head but never finishes it goes the same way.
    let mut slow = TcpStream::connect(gateway.addr).await.unwrap();
    slow.write_all(b"POST /v1/opamp HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(dropped_within(&mut slow, Duration::from_secs(3)).await);
    // The agent is still connected and served.
    socket.send(frame(&agent_message(6))).await.unwrap();
    assert_eq!(next_reply(&mut socket).await.flags, 6);
}

#[tokio::test]
async fn an_http_body_that_stalls_is_cut_and_its_slot_freed() {
    let gateway = start(
        GatewayConfig {
            max_connections: 1,
            first_message_timeout: Duration::from_millis(300),
            ..GatewayConfig::for_test()
        },
        ANSWERING,
    )
    .await;
    // A whole head, half a body, then nothing: the one slot is this client's.
    let mut stalled = TcpStream::connect(gateway.addr).await.unwrap();
    stalled
        .write_all(
            b"POST /v1/opamp HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n\
              Content-Length: 100\r\n\r\n0123456789",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stalled.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "a stalled body kept its connection");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // The slot is free again: an agent gets through.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let sent = post(&gateway.url("/v1/opamp"))
            .body(agent_message(4).encode_to_vec())
            .send()
            .await;
        if let Ok(response) = sent {
            assert_eq!(response.status(), 200);
            let reply = ServerToAgent::decode(response.bytes().await.unwrap()).unwrap();
            assert_eq!(reply.flags, 4);
            break;
        }
        assert!(Instant::now() < deadline, "the slot was never released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_at_once() {
    let gateway = start(
        GatewayConfig {
            max_connections: 2,
            first_message_timeout: Duration::from_secs(10),
            ..GatewayConfig::for_test()
        },
        ANSWERING,
    )
    .await;
    // Two upgraded WebSockets hold both slots (after hyper has let go of them).
    let mut first = gateway.websocket().await;
    let mut second = gateway.websocket().await;
    for socket in [&mut first, &mut second] {
        socket.send(frame(&agent_message(1))).await.unwrap();
        next_reply(socket).await;
    }
    let mut third = TcpStream::connect(gateway.addr).await.unwrap();
    assert!(
        dropped_within(&mut third, Duration::from_secs(1)).await,
        "closed at once, not after the first-message timeout"
    );
    // A slot frees up when a session ends.
    first.close(None).await.unwrap();
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(1),
            tokio_tungstenite::connect_async(format!("ws://{}/v1/opamp", gateway.addr)),
        )
        .await;
        if let Ok(Ok((mut socket, _))) = attempt {
            socket.send(frame(&agent_message(9))).await.unwrap();
            assert_eq!(next_reply(&mut socket).await.flags, 9);
            break;
        }
        assert!(Instant::now() < deadline, "the slot was never released");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// === shutdown ===

#[tokio::test]
async fn shutdown_closes_websockets_with_going_away() {
    let mut gateway = start(GatewayConfig::for_test(), ANSWERING).await;
    let mut socket = gateway.websocket().await;
    socket.send(frame(&agent_message(1))).await.unwrap();
    next_reply(&mut socket).await;
    gateway.shutdown.cancel();
    assert_eq!(
        close_frame(&mut socket).await,
        Some((CloseCode::Away, "server shutting down".to_owned()))
    );
    tokio::time::timeout(Duration::from_secs(5), &mut gateway.task)
        .await
        .expect("run returns after the drain")
        .unwrap();
    assert!(
        TcpStream::connect(gateway.addr).await.is_err(),
        "no longer accepting"
    );
    // The control-plane hears the agent went (it will reconnect elsewhere).
    let closed = gateway.closed_event().await;
    let Some(Event::ConnectionClosed(closed)) = closed.event else {
        unreachable!()
    };
    assert_eq!(closed.reason, "server shutting down");
}

#[tokio::test]
async fn shutdown_lets_in_flight_http_exchanges_finish() {
    let mut gateway = start(
        GatewayConfig::for_test(),
        ControlPlane {
            delay: Duration::from_millis(700),
            ..ANSWERING
        },
    )
    .await;
    let request = tokio::spawn(
        post(&gateway.url("/v1/opamp"))
            .body(agent_message(4).encode_to_vec())
            .send(),
    );
    // In flight: the control-plane has it and has not answered yet.
    gateway.envelope().await.expect("the request relayed");
    gateway.shutdown.cancel();
    let response = request.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let reply = ServerToAgent::decode(response.bytes().await.unwrap()).unwrap();
    assert_eq!(reply.flags, 4);
    tokio::time::timeout(Duration::from_secs(5), gateway.task)
        .await
        .expect("run returns once the exchange is done")
        .unwrap();
}

// === TLS ===

#[tokio::test]
async fn tls_websocket_and_http() {
    let certs = certificates();
    let gateway = start(
        GatewayConfig {
            tls: Some(certs.tls.clone()),
            ..GatewayConfig::for_test()
        },
        ANSWERING,
    )
    .await;

    let client = Arc::new(tls_client(&certs.ca_pem));
    let (mut socket, _) = tokio_tungstenite::connect_async_tls_with_config(
        format!("wss://localhost:{}/v1/opamp", gateway.addr.port()),
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(client.clone())),
    )
    .await
    .unwrap();
    socket.send(frame(&agent_message(11))).await.unwrap();
    assert_eq!(next_reply(&mut socket).await.flags, 11);

    // A second connection from the same client config resumes the session.
    let tcp = TcpStream::connect(gateway.addr).await.unwrap();
    let resumed = tokio_rustls::TlsConnector::from(client.clone())
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(
        resumed.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    drop(resumed);

    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(certs.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let response = https
        .post(format!(
            "https://localhost:{}/v1/opamp",
            gateway.addr.port()
        ))
        .header("Content-Type", "application/x-protobuf")
        .body(agent_message(12).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        ServerToAgent::decode(response.bytes().await.unwrap())
            .unwrap()
            .flags,
        12
    );

    // Plain HTTP to a TLS port is not served.
    assert!(
        reqwest::get(format!("http://127.0.0.1:{}/healthz", gateway.addr.port()))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn tls_peer_that_never_finishes_the_handshake_is_dropped() {
    let certs = certificates();
    let gateway = start(
        GatewayConfig {
            tls: Some(certs.tls.clone()),
            first_message_timeout: Duration::from_millis(500),
            ..GatewayConfig::for_test()
        },
        ANSWERING,
    )
    .await;
    // The first bytes of a TLS record header, then nothing.
    let mut stalled = TcpStream::connect(gateway.addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    assert!(dropped_within(&mut stalled, Duration::from_secs(3)).await);
}

#[tokio::test]
async fn tls_handshakes_beyond_the_limit_wait_their_turn_and_keep_their_full_time() {
    let certs = certificates();
    let gateway = start(
        GatewayConfig {
            tls: Some(certs.tls.clone()),
            first_message_timeout: Duration::from_millis(600),
            max_tls_handshakes: 1,
            ..GatewayConfig::for_test()
        },
        ANSWERING,
    )
    .await;
    // Two peers in turn take the only slot and stall in their handshakes, until each one's
    // timeout drops it.
    let started = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut peer = TcpStream::connect(gateway.addr).await.unwrap();
        peer.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
        stalled.push(peer);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // This agent waits behind both, longer than its own handshake may take, and still gets in.
    let client = Arc::new(tls_client(&certs.ca_pem));
    let (mut socket, _) = tokio_tungstenite::connect_async_tls_with_config(
        format!("wss://localhost:{}/v1/opamp", gateway.addr.port()),
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(client)),
    )
    .await
    .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "handshakes were not limited: in after {:?}",
        started.elapsed()
    );
    socket.send(frame(&agent_message(5))).await.unwrap();
    assert_eq!(next_reply(&mut socket).await.flags, 5);
    for peer in &mut stalled {
        assert!(dropped_within(peer, Duration::from_secs(1)).await);
    }
}

#[tokio::test]
async fn tls_with_a_key_that_does_not_fit_fails_clearly() {
    let certs = certificates();
    let other = certificates();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = GatewayConfig {
        tls: Some(TlsConfig {
            key_path: other.tls.key_path.clone(),
            ..certs.tls.clone()
        }),
        ..GatewayConfig::for_test()
    };
    let error = ampora_gateway::run(
        listener,
        config,
        Arc::new(InProcessBus::default()),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("do not fit"), "{error}");
}

// === health and metrics ===

#[tokio::test]
async fn health_endpoints_and_metrics() {
    ampora_shared::telemetry::prometheus();
    let gateway = start(GatewayConfig::for_test(), ANSWERING).await;
    for path in ["/healthz", "/readyz"] {
        let response = reqwest::get(gateway.url(path)).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    assert_eq!(
        reqwest::get(gateway.url("/healthz"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok"
    );
    let response = post(&gateway.url("/v1/opamp"))
        .body(agent_message(1).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let metrics = reqwest::get(gateway.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "ampora_gateway_connections_total",
        "ampora_gateway_messages_in_total{transport=\"http\"}",
        "ampora_gateway_messages_out_total{transport=\"http\"}",
        "ampora_gateway_bytes_in_total",
        "ampora_gateway_http_reply_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
}
