//! The gateway on real sockets (plain and TLS) with a stand-in control-plane on the in-process
//! bus that answers every agent message.

use std::sync::Arc;
use std::time::Duration;

use ampora_gateway::{GatewayConfig, TlsConfig};
use ampora_shared::bus::{Bus, InProcessBus};
use ampora_shared::codec;
use ampora_shared::pb::bus::{agent_envelope::Event, AgentEnvelope, GatewayDelivery};
use ampora_shared::pb::opamp::{AgentToServer, ServerToAgent};
use ampora_shared::subjects::CONTROL_PLANE_QUEUE;
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

struct Gateway {
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    /// Every envelope the stand-in control-plane received.
    envelopes: mpsc::UnboundedReceiver<AgentEnvelope>,
}

/// Starts a gateway; when `answer` is set, a stand-in control-plane replies to each message
/// with the uid echoed and flags = sequence_num.
async fn start(config: GatewayConfig, answer: bool) -> Gateway {
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::default());
    let subjects = config.subjects.clone();
    let mut inbound = bus
        .queue_subscribe(&subjects.agent_inbound_all(), CONTROL_PLANE_QUEUE)
        .await
        .unwrap();
    let (seen, envelopes) = mpsc::unbounded_channel();
    let replies = bus.clone();
    tokio::spawn(async move {
        while let Some(message) = inbound.next().await {
            let envelope = AgentEnvelope::decode(message.payload).unwrap();
            if let (true, Some(Event::AgentToServer(payload))) = (answer, &envelope.event) {
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
                replies
                    .publish(
                        &subjects.gateway(&envelope.gateway_id),
                        delivery.encode_to_vec().into(),
                    )
                    .await
                    .unwrap();
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

async fn close_code<S>(socket: &mut S) -> Option<CloseCode>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .ok()?
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(_)) => continue,
            _ => return None,
        }
    }
}

#[tokio::test]
async fn websocket_round_trip_and_closed_event() {
    let mut gateway = start(GatewayConfig::for_test(), true).await;
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/opamp", gateway.addr))
            .await
            .unwrap();
    socket.send(frame(&agent_message(7))).await.unwrap();
    assert_eq!(next_reply(&mut socket).await.flags, 7);
    let envelope = gateway.envelopes.recv().await.unwrap();
    assert_eq!(
        envelope.transport,
        ampora_shared::pb::bus::Transport::Websocket as i32
    );
    assert!(envelope.remote_addr.starts_with("127.0.0.1:"));
    assert!(envelope.received_unix_nano > 0);

    socket.close(None).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), gateway.envelopes.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(closed.event, Some(Event::ConnectionClosed(_))),
        "{closed:?}"
    );
    assert_eq!(closed.connection_id, envelope.connection_id);
}

#[tokio::test]
async fn no_closed_event_after_agent_disconnect() {
    let mut gateway = start(GatewayConfig::for_test(), true).await;
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/opamp", gateway.addr))
            .await
            .unwrap();
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
async fn http_round_trip_with_gzip_both_ways() {
    let gateway = start(GatewayConfig::for_test(), true).await;
    let url = format!("http://{}/v1/opamp", gateway.addr);
    let response = reqwest::Client::builder()
        .no_gzip()
        .build()
        .unwrap()
        .post(&url)
        .header("Content-Type", "application/x-protobuf")
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
}

#[tokio::test]
async fn http_without_a_control_plane_is_503_with_retry_after() {
    let gateway = start(
        GatewayConfig {
            http_reply_timeout: Duration::from_millis(300),
            ..GatewayConfig::for_test()
        },
        false,
    )
    .await;
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/opamp", gateway.addr))
        .header("Content-Type", "application/x-protobuf")
        .body(agent_message(1).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
}

#[tokio::test]
async fn bad_uid_gets_a_bad_request_error_and_the_connection_stays() {
    let gateway = start(GatewayConfig::for_test(), true).await;
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/opamp", gateway.addr))
            .await
            .unwrap();
    let mut bad = agent_message(1);
    bad.instance_uid = vec![1, 2, 3].into();
    socket.send(frame(&bad)).await.unwrap();
    let reply = next_reply(&mut socket).await;
    let error = reply.error_response.expect("an error response");
    assert_eq!(
        error.r#type,
        ampora_shared::pb::opamp::ServerErrorResponseType::BadRequest as i32
    );
    socket.send(frame(&agent_message(2))).await.unwrap();
    assert_eq!(next_reply(&mut socket).await.flags, 2);
}

#[tokio::test]
async fn shutdown_closes_websockets_with_going_away() {
    let gateway = start(GatewayConfig::for_test(), true).await;
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/opamp", gateway.addr))
            .await
            .unwrap();
    socket.send(frame(&agent_message(1))).await.unwrap();
    next_reply(&mut socket).await;
    gateway.shutdown.cancel();
    assert_eq!(close_code(&mut socket).await, Some(CloseCode::Away));
    tokio::time::timeout(Duration::from_secs(5), gateway.task)
        .await
        .expect("run returns after the drain")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(gateway.addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn idle_websocket_is_closed_after_the_heartbeat_timeout() {
    let gateway = start(
        GatewayConfig {
            ws_idle_timeout: Duration::from_millis(600),
            ..GatewayConfig::for_test()
        },
        true,
    )
    .await;
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/opamp", gateway.addr))
            .await
            .unwrap();
    socket.send(frame(&agent_message(1))).await.unwrap();
    next_reply(&mut socket).await;
    // Not reading means not answering pings: the server hears nothing and gives up. (Our pongs
    // to the queued pings may then hit a closed socket, so the close frame itself may be lost.)
    tokio::time::sleep(Duration::from_secs(2)).await;
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

// === TLS ===

struct Certificates {
    _dir: tempfile::TempDir,
    tls: TlsConfig,
    ca_pem: String,
}

fn certificates() -> Certificates {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    Certificates {
        _dir: dir,
        tls: TlsConfig {
            cert_path,
            key_path,
        },
        ca_pem: cert.pem(),
    }
}

#[tokio::test]
async fn tls_websocket_and_http() {
    let certs = certificates();
    let gateway = start(
        GatewayConfig {
            tls: Some(certs.tls.clone()),
            ..GatewayConfig::for_test()
        },
        true,
    )
    .await;

    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls::pki_types::CertificateDer::from_pem_slice(certs.ca_pem.as_bytes()).unwrap();
    roots.add(ca).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let (mut socket, _) = tokio_tungstenite::connect_async_tls_with_config(
        format!("wss://localhost:{}/v1/opamp", gateway.addr.port()),
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(Arc::new(client))),
    )
    .await
    .unwrap();
    socket.send(frame(&agent_message(11))).await.unwrap();
    assert_eq!(next_reply(&mut socket).await.flags, 11);

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
async fn tls_with_a_key_that_does_not_fit_fails_clearly() {
    let certs = certificates();
    let other = certificates();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = GatewayConfig {
        tls: Some(TlsConfig {
            cert_path: certs.tls.cert_path.clone(),
            key_path: other.tls.key_path.clone(),
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

#[tokio::test]
async fn health_endpoints() {
    let gateway = start(GatewayConfig::for_test(), true).await;
    for path in ["healthz", "readyz", "metrics"] {
        let response = reqwest::get(format!("http://{}/{path}", gateway.addr))
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}
