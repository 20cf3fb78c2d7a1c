//! The session loop driven through channels: an in-process bus behind, no sockets.

use super::*;
use crate::credentials::Credentials;
use ampora_shared::bus::{Bus, InProcessBus, Subscription};
use ampora_shared::pb::bus::{agent_envelope::Event, AgentEnvelope, GatewayDelivery, Transport};
use ampora_shared::pb::opamp::{AgentDisconnect, AgentToServer};
use futures::channel::mpsc;
use prost::Message as _;
use tokio::task::JoinHandle;

const UID: [u8; 16] = [5; 16];

struct Harness {
    /// What the agent sends; dropping it ends the stream as a closed socket would.
    to_server: Option<mpsc::Sender<Result<Message, tungstenite::Error>>>,
    from_server: mpsc::Receiver<Message>,
    envelopes: Subscription,
    bus: Arc<InProcessBus>,
    config: Arc<GatewayConfig>,
    connection_id: u64,
    shutdown: CancellationToken,
    /// Stands for the revocation of the agent's client certificate.
    revoked: CancellationToken,
    session: Option<JoinHandle<()>>,
    _relay_stop: tokio_util::sync::DropGuard,
}

impl Harness {
    async fn start(config: GatewayConfig) -> Harness {
        Self::with_outbox(config, 16).await
    }

    /// `outbox` bounds what the session may write before the test reads it.
    async fn with_outbox(config: GatewayConfig, outbox: usize) -> Harness {
        let bus = Arc::new(InProcessBus::default());
        let config = Arc::new(config);
        let envelopes = bus
            .subscribe(&config.subjects.agent_inbound_all())
            .await
            .unwrap();
        let stop = CancellationToken::new();
        let relay = Relay::start(bus.clone(), config.clone(), stop.clone())
            .await
            .unwrap();
        let (to_server, server_in) = mpsc::channel(16);
        let (server_out, from_server) = mpsc::channel(outbox);
        let peer = Peer {
            connection_id: relay.next_connection_id(),
            transport: Transport::Websocket,
            remote_addr: "192.0.2.7:4711".to_owned(),
            credentials: Credentials::default(),
        };
        let connection_id = peer.connection_id;
        let shutdown = CancellationToken::new();
        let revoked = CancellationToken::new();
        let session = tokio::spawn(session(
            server_out,
            server_in,
            peer,
            relay,
            config.clone(),
            shutdown.clone(),
            Some(revoked.clone()),
        ));
        Harness {
            to_server: Some(to_server),
            from_server,
            envelopes,
            bus,
            config,
            connection_id,
            shutdown,
            revoked,
            session: Some(session),
            _relay_stop: stop.drop_guard(),
        }
    }

    async fn send(&mut self, message: Message) {
        self.to_server
            .as_mut()
            .expect("still connected")
            .send(Ok(message))
            .await
            .unwrap();
    }

    async fn send_agent(&mut self, message: &AgentToServer) {
        let frame = codec::ws_frame_from_encoded(&message.encode_to_vec());
        self.send(Message::Binary(frame.into())).await;
    }

    /// The next message from the server that is not a ping.
    async fn next(&mut self) -> Message {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(3), self.from_server.next())
                .await
                .expect("the server wrote in time")
                .expect("the session is still writing");
            if !matches!(message, Message::Ping(_)) {
                return message;
            }
        }
    }

    async fn reply(&mut self) -> ServerToAgent {
        match self.next().await {
            Message::Binary(data) => {
                ServerToAgent::decode(codec::ws_payload(&data).unwrap()).unwrap()
            }
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }

    /// The close frame the server sends, as (code, reason).
    async fn close(&mut self) -> (u16, String) {
        match self.next().await {
            Message::Close(Some(frame)) => (u16::from(frame.code), frame.reason.to_string()),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    /// Plays the agent's side of the end: hangs up and waits for the session to finish.
    async fn hang_up(&mut self) {
        self.to_server = None;
        tokio::time::timeout(Duration::from_secs(3), self.session.take().unwrap())
            .await
            .expect("the session ends")
            .unwrap();
    }

    async fn envelope(&mut self) -> Option<AgentEnvelope> {
        tokio::time::timeout(Duration::from_millis(500), self.envelopes.next())
            .await
            .ok()
            .flatten()
            .map(|message| AgentEnvelope::decode(message.payload).unwrap())
    }

    async fn deliver(&self, reply: ServerToAgent, close_after: bool) {
        let delivery = GatewayDelivery {
            instance_uid: reply.instance_uid.clone(),
            connection_id: self.connection_id,
            server_to_agent: reply.encode_to_vec().into(),
            close_after,
        };
        self.bus
            .publish(
                &self.config.subjects.gateway(&self.config.gateway_id),
                delivery.encode_to_vec().into(),
            )
            .await
            .unwrap();
    }
}

fn agent(seq: u64) -> AgentToServer {
    AgentToServer {
        instance_uid: Bytes::from_static(&UID),
        sequence_num: seq,
        ..Default::default()
    }
}

fn closed_reason(envelope: &AgentEnvelope) -> &str {
    match &envelope.event {
        Some(Event::ConnectionClosed(closed)) => &closed.reason,
        other => panic!("expected ConnectionClosed, got {other:?}"),
    }
}

#[tokio::test]
async fn relays_messages_and_writes_deliveries() {
    let mut h = Harness::start(GatewayConfig::for_test()).await;
    h.send_agent(&agent(5)).await;
    let envelope = h.envelope().await.expect("an envelope");
    assert_eq!(&envelope.instance_uid[..], &UID);
    assert_eq!(envelope.gateway_id, h.config.gateway_id);
    assert_eq!(envelope.connection_id, h.connection_id);
    assert_eq!(envelope.transport, Transport::Websocket as i32);
    assert_eq!(envelope.remote_addr, "192.0.2.7:4711");
    assert!(envelope.received_unix_nano > 0);
    let Some(Event::AgentToServer(payload)) = envelope.event else {
        panic!("expected the agent's message");
    };
    assert_eq!(AgentToServer::decode(payload).unwrap(), agent(5));

    let reply = ServerToAgent {
        instance_uid: Bytes::from_static(&UID),
        flags: 1,
        ..Default::default()
    };
    h.deliver(reply.clone(), false).await;
    assert_eq!(h.reply().await, reply);

    // close_after: the message, then a normal close, then the control-plane hears of it.
    h.deliver(reply.clone(), true).await;
    assert_eq!(h.reply().await, reply);
    assert_eq!(
        h.close().await,
        (close::NORMAL, "closed by the server".to_owned())
    );
    h.hang_up().await;
    let closed = h.envelope().await.expect("a ConnectionClosed envelope");
    assert_eq!(closed_reason(&closed), "closed by the server");
    assert_eq!(closed.connection_id, h.connection_id);
}

#[tokio::test]
async fn wrong_header_is_a_protocol_error() {
    let mut h = Harness::start(GatewayConfig::for_test()).await;
    let mut frame = vec![1u8];
    agent(1).encode(&mut frame).unwrap();
    h.send(Message::Binary(frame.into())).await;
    assert_eq!(
        h.close().await,
        (close::PROTOCOL, "unsupported OpAMP header 1".to_owned())
    );
    h.hang_up().await;
    assert!(
        h.envelope().await.is_none(),
        "no agent was seen: nothing to report"
    );
}

#[tokio::test]
async fn truncated_protobuf_is_invalid_payload() {
    let mut h = Harness::start(GatewayConfig::for_test()).await;
    let mut frame = codec::ws_frame_from_encoded(&agent(1).encode_to_vec());
    frame.truncate(frame.len() - 3);
    h.send(Message::Binary(frame.into())).await;
    let (code, reason) = h.close().await;
    assert_eq!(code, close::INVALID_PAYLOAD);
    assert!(reason.starts_with("bad AgentToServer"), "{reason}");
    assert!(reason.len() <= MAX_CLOSE_REASON);
}

#[tokio::test]
async fn empty_message_is_a_protocol_error() {
    let mut h = Harness::start(GatewayConfig::for_test()).await;
    h.send(Message::Binary(Bytes::new())).await;
    assert_eq!(h.close().await.0, close::PROTOCOL);
}

#[tokio::test]
async fn oversize_message_is_too_big() {
    let mut h = Harness::start(GatewayConfig::for_test()).await;
    let error = tungstenite::Error::Capacity(tungstenite::error::CapacityError::MessageTooLong {
        size: 10 << 20,
        max_size: 4 << 20,
    });
    h.to_server
        .as_mut()
        .unwrap()
        .send(Err(error))
        .await
        .unwrap();
    assert_eq!(
        h.close().await,
        (close::TOO_BIG, format!("message exceeds {} bytes", 4 << 20))
    );
}

#[tokio::test]
async fn text_is_unsupported() {
    let mut h = Harness::start(GatewayConfig::for_test()).await;
    h.send(Message::Text("hello".into())).await;
    assert_eq!(h.close().await.0, close::UNSUPPORTED);
}

#[tokio::test]
async fn bad_uid_is_answered_and_the_session_goes_on() {
    let mut h = Harness::start(GatewayConfig::for_test()).await;
    let mut bad = agent(1);
    bad.instance_uid = Bytes::from_static(&[1, 2, 3]);
    h.send_agent(&bad).await;
    let error = h.reply().await.error_response.expect("an error response");
    assert_eq!(error.r#type, ServerErrorResponseType::BadRequest as i32);
    assert_eq!(error.error_message, "instance_uid must be 16 bytes");
    assert!(h.envelope().await.is_none(), "nothing relayed");
    h.send_agent(&agent(2)).await;
    assert!(h.envelope().await.is_some());
}

#[tokio::test]
async fn silent_session_is_closed_after_the_first_message_timeout() {
    let mut h = Harness::start(GatewayConfig {
        first_message_timeout: Duration::from_millis(200),
        ..GatewayConfig::for_test()
    })
    .await;
    // Pings and pongs are not OpAMP messages.
    h.send(Message::Pong(Bytes::new())).await;
    assert_eq!(
        h.close().await,
        (close::POLICY, "no OpAMP message received".to_owned())
    );
}

#[tokio::test]
async fn idle_session_is_closed_and_reported() {
    let mut h = Harness::start(GatewayConfig {
        ws_idle_timeout: Duration::from_millis(300),
        ws_ping_interval: Duration::from_secs(3600),
        ..GatewayConfig::for_test()
    })
    .await;
    h.send_agent(&agent(1)).await;
    h.envelope().await.expect("the message");
    assert_eq!(
        h.close().await,
        (close::GOING_AWAY, "heartbeat timeout".to_owned())
    );
    h.hang_up().await;
    let closed = h.envelope().await.expect("a ConnectionClosed envelope");
    assert_eq!(closed_reason(&closed), "heartbeat timeout");
}

#[tokio::test]
async fn agent_close_is_reported_unless_it_said_goodbye() {
    let mut h = Harness::start(GatewayConfig::for_test()).await;
    h.send_agent(&agent(1)).await;
    h.envelope().await.expect("the message");
    h.send(Message::Close(None)).await;
    h.hang_up().await;
    let closed = h.envelope().await.expect("a ConnectionClosed envelope");
    assert_eq!(closed_reason(&closed), "closed by the agent");

    let mut h = Harness::start(GatewayConfig::for_test()).await;
    let mut goodbye = agent(1);
    goodbye.agent_disconnect = Some(AgentDisconnect {});
    h.send_agent(&goodbye).await;
    h.envelope().await.expect("the goodbye");
    h.hang_up().await;
    assert!(
        h.envelope().await.is_none(),
        "no ConnectionClosed after AgentDisconnect"
    );
}

#[tokio::test]
async fn shutdown_says_going_away() {
    let mut h = Harness::start(GatewayConfig::for_test()).await;
    h.send_agent(&agent(1)).await;
    h.envelope().await.expect("the message");
    h.shutdown.cancel();
    assert_eq!(
        h.close().await,
        (close::GOING_AWAY, "server shutting down".to_owned())
    );
    h.hang_up().await;
    assert_eq!(
        closed_reason(&h.envelope().await.unwrap()),
        "server shutting down"
    );
}

#[tokio::test]
async fn a_revoked_certificate_ends_the_session_as_a_policy_violation() {
    let mut h = Harness::start(GatewayConfig::for_test()).await;
    h.send_agent(&agent(1)).await;
    h.envelope().await.expect("the message");
    h.revoked.cancel();
    assert_eq!(
        h.close().await,
        (close::POLICY, "client certificate revoked".to_owned())
    );
    h.hang_up().await;
    assert_eq!(
        closed_reason(&h.envelope().await.unwrap()),
        "client certificate revoked"
    );
}

#[tokio::test]
async fn a_full_queue_drops_deliveries_instead_of_growing() {
    // The agent reads nothing: one frame fits the outbox, one is being written, one queued.
    let mut h = Harness::with_outbox(
        GatewayConfig {
            connection_queue: 1,
            ws_ping_interval: Duration::from_secs(3600),
            ..GatewayConfig::for_test()
        },
        0,
    )
    .await;
    // The control-plane knows a connection only once it sent something: registered by then.
    h.send_agent(&agent(1)).await;
    h.envelope().await.expect("the message");
    for flags in 0..20 {
        let reply = ServerToAgent {
            instance_uid: Bytes::from_static(&UID),
            flags,
            ..Default::default()
        };
        h.deliver(reply, false).await;
    }
    // The relay has taken every delivery (queued or dropped it) before the agent reads.
    h.bus.flushed().await;
    let mut received = 0;
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_millis(200), h.from_server.next()).await
    {
        received += 1;
    }

    assert!((1..=3).contains(&received), "received {received}");
}

#[test]
fn close_reasons_fit_a_close_frame() {
    let end = End::close(close::INVALID_PAYLOAD, "é".repeat(100));
    assert!(end.reason().len() <= MAX_CLOSE_REASON);
    assert!(end.reason().chars().all(|c| c == 'é'));
}
