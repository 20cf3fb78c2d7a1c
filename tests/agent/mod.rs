//! A minimal OpAMP agent written directly on the wire types, for end-to-end tests that need to
//! control every byte (sequence numbers, omitted fields, malformed frames).

#![allow(dead_code)]

use std::time::Duration;

use ampora_shared::codec;
use ampora_shared::pb::opamp::{
    any_value, AgentConfigFile, AgentConfigMap, AgentDescription, AgentToServer, AnyValue,
    ComponentHealth, EffectiveConfig, KeyValue, RemoteConfigStatus, RemoteConfigStatuses,
    ServerToAgent,
};
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

pub const CAPABILITIES: u64 = 0x1 | 0x2 | 0x4 | 0x800 | 0x1000; // ReportsStatus, AcceptsRemoteConfig, ReportsEffectiveConfig, ReportsHealth, ReportsRemoteConfig

fn string_attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
    }
}

/// An agent's full state, as it reports on its first message or when asked.
pub fn full_state(name: &str, environment: &str) -> AgentToServer {
    let mut files = std::collections::HashMap::new();
    files.insert(
        "collector.yaml".to_owned(),
        AgentConfigFile {
            body: format!("receivers:\n  otlp: {{}}\n# {name}\n")
                .into_bytes()
                .into(),
            content_type: "text/yaml".into(),
        },
    );
    AgentToServer {
        capabilities: CAPABILITIES,
        agent_description: Some(AgentDescription {
            identifying_attributes: vec![
                string_attr("service.name", name),
                string_attr("service.version", "1.2.3"),
            ],
            non_identifying_attributes: vec![
                string_attr("os.type", "linux"),
                string_attr("deployment.environment", environment),
            ],
        }),
        health: Some(ComponentHealth {
            healthy: true,
            status: "running".into(),
            ..Default::default()
        }),
        effective_config: Some(EffectiveConfig {
            config_map: Some(AgentConfigMap { config_map: files }),
        }),
        remote_config_status: Some(RemoteConfigStatus {
            last_remote_config_hash: vec![0xab, 0xcd].into(),
            status: RemoteConfigStatuses::Applied as i32,
            error_message: String::new(),
        }),
        ..Default::default()
    }
}

/// A message with nothing but liveness (state compression leaves everything else out).
pub fn heartbeat() -> AgentToServer {
    AgentToServer {
        capabilities: CAPABILITIES,
        ..Default::default()
    }
}

pub struct WsAgent {
    pub uid: Uuid,
    pub next_seq: u64,
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsAgent {
    pub async fn connect(url: &str) -> WsAgent {
        Self::connect_as(url, Uuid::now_v7()).await
    }

    pub async fn connect_as(url: &str, uid: Uuid) -> WsAgent {
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("WebSocket connect");
        WsAgent {
            uid,
            next_seq: 0,
            socket,
        }
    }

    /// Sends `message` with this agent's uid and the next sequence number.
    pub async fn send(&mut self, mut message: AgentToServer) {
        message.instance_uid = self.uid.as_bytes().to_vec().into();
        message.sequence_num = self.next_seq;
        self.next_seq += 1;
        self.send_raw(codec::ws_frame_from_encoded(&message.encode_to_vec()))
            .await;
    }

    pub async fn send_raw(&mut self, frame: Vec<u8>) {
        self.socket
            .send(Message::Binary(frame.into()))
            .await
            .expect("send");
    }

    pub async fn send_message(
        &mut self,
        message: Message,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.socket.send(message).await
    }

    /// The next ServerToAgent, or `None` if none arrives within `wait`.
    pub async fn recv(&mut self, wait: Duration) -> Option<ServerToAgent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Ok(Some(Ok(Message::Binary(frame)))) => {
                    return Some(
                        ServerToAgent::decode(codec::ws_payload(&frame).expect("OpAMP header"))
                            .expect("ServerToAgent"),
                    )
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                _ => return None,
            }
        }
    }

    pub async fn exchange(&mut self, message: AgentToServer) -> ServerToAgent {
        self.send(message).await;
        self.recv(Duration::from_secs(10)).await.expect("a reply")
    }

    /// Reads until the server closes; returns its close code and reason.
    pub async fn closed(&mut self, wait: Duration) -> Option<(CloseCode, String)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return frame.map(|f| (f.code, f.reason.to_string()));
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_)) | None) | Err(_) => return None,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
        // Drain until the server acknowledges.
        while let Ok(Some(Ok(_))) =
            tokio::time::timeout(Duration::from_secs(2), self.socket.next()).await
        {}
    }
}

/// One OpAMP-over-HTTP exchange; returns the status and, on 200, the decoded reply.
pub async fn http_exchange(url: &str, message: &AgentToServer) -> (u16, Option<ServerToAgent>) {
    let response = reqwest::Client::new()
        .post(url)
        .header("Content-Type", "application/x-protobuf")
        .body(message.encode_to_vec())
        .send()
        .await
        .expect("HTTP request");
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("body");
    (
        status,
        (status == 200).then(|| ServerToAgent::decode(body).expect("ServerToAgent")),
    )
}

/// An agent polling over plain HTTP.
pub struct HttpAgent {
    pub uid: Uuid,
    pub next_seq: u64,
    url: String,
}

impl HttpAgent {
    pub fn new(url: &str) -> HttpAgent {
        HttpAgent {
            uid: Uuid::now_v7(),
            next_seq: 0,
            url: url.to_owned(),
        }
    }

    pub async fn exchange(&mut self, mut message: AgentToServer) -> ServerToAgent {
        message.instance_uid = self.uid.as_bytes().to_vec().into();
        message.sequence_num = self.next_seq;
        self.next_seq += 1;
        let (status, reply) = http_exchange(&self.url, &message).await;
        assert_eq!(status, 200, "HTTP exchange failed");
        reply.expect("reply")
    }
}
