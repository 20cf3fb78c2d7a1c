//! One WebSocket agent: binary frames in (OpAMP header 0 + AgentToServer), deliveries out,
//! keepalive pings, and a clear close code whenever we end the connection.

use std::sync::Arc;
use std::time::Duration;

use ampora_shared::codec::{self, CodecError};
use ampora_shared::pb::opamp::{
    server_error_response::Details, RetryInfo, ServerErrorResponse, ServerErrorResponseType,
    ServerToAgent,
};
use ampora_shared::uid;
use axum::extract::ws::{CloseFrame, Message};
use bytes::Bytes;
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::relay::{Peer, Relay};
use crate::GatewayConfig;

pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const UNSUPPORTED: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
}

/// Why we end a connection: a close code and a reason for the agent's logs.
struct Ending {
    code: u16,
    reason: String,
}

impl Ending {
    fn new(code: u16, reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        // A close frame's reason must fit in 123 bytes.
        if reason.len() > 123 {
            let mut end = 120;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        Ending { code, reason }
    }
}

/// Runs one session until either side ends it. Generic over the socket so tests can drive it
/// with anything that is a stream and sink of messages.
pub async fn session<S>(
    socket: S,
    peer: Peer,
    relay: Arc<Relay>,
    config: Arc<GatewayConfig>,
    shutdown: CancellationToken,
) where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    let (queue, mut deliveries) = mpsc::channel(config.connection_queue.max(1));
    relay.register_websocket(peer.connection_id, queue);
    metrics::gauge!("ampora_gateway_connections", "transport" => "websocket").increment(1.0);
    let (mut sink, mut stream) = socket.split();
    let mut ping = tokio::time::interval_at(
        Instant::now() + config.ws_ping_interval,
        config.ws_ping_interval,
    );
    let first_message_deadline = Instant::now() + config.first_message_timeout;
    let mut idle_deadline = Instant::now() + config.ws_idle_timeout;
    let mut agent: Option<Uuid> = None;
    let mut said_goodbye = false;

    let ending: Option<Ending> = loop {
        let deadline = if agent.is_none() {
            first_message_deadline.min(idle_deadline)
        } else {
            idle_deadline
        };
        tokio::select! {
            _ = shutdown.cancelled() => break Some(Ending::new(close::GOING_AWAY, "server shutting down")),
            _ = tokio::time::sleep_until(deadline) => {
                break Some(if agent.is_none() {
                    Ending::new(close::POLICY, "no OpAMP message received")
                } else {
                    Ending::new(close::GOING_AWAY, "heartbeat timeout")
                });
            }
            _ = ping.tick() => {
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    break None;
                }
            }
            Some(delivery) = deliveries.recv() => {
                let frame = codec::ws_frame_from_encoded(&delivery.server_to_agent);
                if sink.send(Message::Binary(frame.into())).await.is_err() {
                    break None;
                }
                metrics::counter!("ampora_gateway_messages_out_total", "transport" => "websocket").increment(1);
                if delivery.close_after {
                    break Some(Ending::new(close::NORMAL, "closed by the server"));
                }
            }
            frame = stream.next() => {
                idle_deadline = Instant::now() + config.ws_idle_timeout;
                match frame {
                    None => break None,
                    Some(Err(error)) => break too_big(&error).then(|| Ending::new(close::TOO_BIG, format!("message exceeds {} bytes", config.max_message_size))),
                    Some(Ok(Message::Binary(data))) => {
                        metrics::counter!("ampora_gateway_messages_in_total", "transport" => "websocket").increment(1);
                        metrics::counter!("ampora_gateway_bytes_in_total").increment(data.len() as u64);
                        match on_frame(&data, &peer, &relay, &config).await {
                            Ok(Frame::Relayed { uid, goodbye }) => {
                                agent = Some(uid);
                                said_goodbye = goodbye;
                            }
                            Ok(Frame::Answer(answer)) => {
                                if sink.send(Message::Binary(codec::encode_ws_server_message(&answer).into())).await.is_err() {
                                    break None;
                                }
                            }
                            Err(ending) => break Some(ending),
                        }
                    }
                    Some(Ok(Message::Text(_))) => {
                        metrics::counter!("ampora_gateway_frame_errors_total", "reason" => "text_frame").increment(1);
                        break Some(Ending::new(close::UNSUPPORTED, "OpAMP uses binary frames"));
                    }
                    Some(Ok(Message::Close(_))) => break None,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                }
            }
        }
    };

    relay.deregister(peer.connection_id);
    metrics::gauge!("ampora_gateway_connections", "transport" => "websocket").decrement(1.0);
    let reason = match &ending {
        Some(ending) => {
            tracing::debug!(connection_id = peer.connection_id, code = ending.code, reason = %ending.reason, "closing WebSocket");
            let frame = CloseFrame {
                code: ending.code,
                reason: ending.reason.clone().into(),
            };
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                sink.send(Message::Close(Some(frame))),
            )
            .await;
            ending.reason.clone()
        }
        None => "connection closed".to_owned(),
    };
    if let (Some(uid), false) = (agent, said_goodbye) {
        if let Err(error) = relay.publish_closed(&peer, &uid, &reason).await {
            tracing::warn!(instance_uid = %uid, %error, "cannot report closed connection");
        }
    }
}

enum Frame {
    /// Published for the control-plane.
    Relayed { uid: Uuid, goodbye: bool },
    /// Answered here without the control-plane (the message could not be relayed).
    Answer(ServerToAgent),
}

async fn on_frame(
    data: &[u8],
    peer: &Peer,
    relay: &Relay,
    config: &GatewayConfig,
) -> Result<Frame, Ending> {
    let (message, payload) = codec::decode_ws_agent_message(data).map_err(|error| {
        let reason = match &error {
            CodecError::UnsupportedHeader(_) | CodecError::MalformedHeader | CodecError::Empty => {
                "bad_header"
            }
            _ => "undecodable",
        };
        metrics::counter!("ampora_gateway_frame_errors_total", "reason" => reason).increment(1);
        let code = if reason == "bad_header" {
            close::PROTOCOL
        } else {
            close::INVALID_PAYLOAD
        };
        Ending::new(code, error.to_string())
    })?;
    let Some(uid) = uid::from_wire(&message.instance_uid) else {
        metrics::counter!("ampora_gateway_frame_errors_total", "reason" => "bad_uid").increment(1);
        return Ok(Frame::Answer(error_answer(
            &message.instance_uid,
            ServerErrorResponseType::BadRequest,
            "instance_uid must be 16 bytes",
            None,
        )));
    };
    match relay.publish_message(peer, &uid, payload).await {
        Ok(()) => Ok(Frame::Relayed {
            uid,
            goodbye: message.agent_disconnect.is_some(),
        }),
        Err(error) => {
            tracing::warn!(instance_uid = %uid, %error, "cannot relay agent message");
            Ok(Frame::Answer(error_answer(
                &message.instance_uid,
                ServerErrorResponseType::Unavailable,
                "server temporarily unavailable",
                Some(config.retry_after),
            )))
        }
    }
}

pub fn error_answer(
    instance_uid: &Bytes,
    kind: ServerErrorResponseType,
    text: &str,
    retry_after: Option<Duration>,
) -> ServerToAgent {
    ServerToAgent {
        instance_uid: instance_uid.clone(),
        error_response: Some(ServerErrorResponse {
            r#type: kind as i32,
            error_message: text.to_owned(),
            details: retry_after.map(|after| {
                Details::RetryInfo(RetryInfo {
                    retry_after_nanoseconds: after.as_nanos() as u64,
                })
            }),
        }),
        ..Default::default()
    }
}

/// Whether a read failed because the message was over the size limit.
fn too_big(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(tungstenite::Error::Capacity(_)) = current.downcast_ref::<tungstenite::Error>()
        {
            return true;
        }
        source = current.source();
    }
    false
}
