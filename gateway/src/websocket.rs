//! One WebSocket agent: binary frames in (OpAMP header 0 + AgentToServer), deliveries out,
//! keepalive pings, and a clear close code whenever we end the connection.
//!
//! The session is written over any `Sink<Message>` and `Stream<Item = Result<Message, _>>`, so
//! unit tests below drive it with channels and the integration tests with real sockets.
//! `handshake` answers the upgrade request; `socket` is the WebSocket on the upgraded
//! connection, and `boundaries` tells it when no frame is half-read.

use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use ampora_shared::codec::{self, CodecError};
use ampora_shared::pb::opamp::{ServerErrorResponseType, ServerToAgent};
use ampora_shared::server_error;
use ampora_shared::uid;
use bytes::Bytes;
use futures::{Sink, SinkExt, Stream, StreamExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tungstenite::protocol::{frame::coding::CloseCode, CloseFrame, WebSocketConfig};
use tungstenite::Message;
use uuid::Uuid;

use crate::relay::{Peer, Relay};
use crate::GatewayConfig;
use socket::AgentSocket;

mod boundaries;
pub mod handshake;
pub mod socket;

/// WebSocket close codes (RFC 6455 §7.4.1) the gateway uses.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const UNSUPPORTED: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
}

/// How long we wait for the agent's half of the closing handshake (and for our close frame to
/// be written) before dropping the socket.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// A close frame's reason must fit in 123 bytes.
const MAX_CLOSE_REASON: usize = 123;
/// How many instance uids one connection may speak for. An agent speaks for one, and for a
/// second after asking for a new uid; a proxy multiplexing agents would need more.
const MAX_UIDS_PER_CONNECTION: usize = 8;

/// Why a session ended.
#[derive(Debug, PartialEq)]
enum End {
    /// We end it: a close frame with this code and reason goes to the agent.
    Close { code: u16, reason: String },
    /// The agent or the socket ended it; nothing more to say.
    Gone(String),
}

impl End {
    fn close(code: u16, reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        if reason.len() > MAX_CLOSE_REASON {
            let mut end = MAX_CLOSE_REASON;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        End::Close { code, reason }
    }

    fn reason(&self) -> &str {
        match self {
            End::Close { reason, .. } | End::Gone(reason) => reason,
        }
    }
}

/// The agent's socket, once hyper has written our `101` and hands the connection over.
pub async fn upgraded(
    on_upgrade: OnUpgrade,
    config: &GatewayConfig,
) -> Option<AgentSocket<TokioIo<Upgraded>>> {
    match on_upgrade.await {
        Ok(connection) => Some(AgentSocket::new(
            TokioIo::new(connection),
            socket_config(config),
        )),
        Err(error) => {
            tracing::debug!(%error, "WebSocket upgrade failed");
            None
        }
    }
}

fn socket_config(config: &GatewayConfig) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(config.ws_read_buffer_size)
        .write_buffer_size(config.ws_write_buffer_size)
        // tungstenite panics unless the bound exceeds the write buffer.
        .max_write_buffer_size(
            config
                .ws_max_write_buffer_size
                .max(config.ws_write_buffer_size + 1),
        )
        .max_message_size(Some(config.max_message_size))
        .max_frame_size(Some(config.max_message_size))
}

/// The instance uids that spoke on a connection and did not say goodbye (`agent_disconnect`)
/// since: the control-plane holds each online on this connection until told it closed.
#[derive(Default)]
struct Speakers(Vec<Uuid>);

impl Speakers {
    /// Whether a message from `uid` may be relayed: it spoke here before, or there is room.
    fn admits(&self, uid: &Uuid) -> bool {
        self.0.contains(uid) || self.0.len() < MAX_UIDS_PER_CONNECTION
    }

    /// `uid` spoke here; after a goodbye the control-plane has it offline already.
    fn spoke(&mut self, uid: Uuid, goodbye: bool) {
        let known = self.0.iter().position(|speaker| *speaker == uid);
        match (known, goodbye) {
            (None, false) => {
                tracing::Span::current().record("instance_uid", tracing::field::display(uid));
                self.0.push(uid);
            }
            (Some(index), true) => {
                self.0.remove(index);
            }
            _ => {}
        }
    }
}

/// Runs one session until either side ends it (or `revoked`, the agent's certificate, is
/// cancelled); then tells the control-plane the connection closed for every uid that spoke on
/// it and did not say goodbye.
pub async fn session<W, R>(
    mut sink: W,
    mut stream: R,
    peer: Peer,
    relay: Arc<Relay>,
    config: Arc<GatewayConfig>,
    shutdown: CancellationToken,
    revoked: Option<CancellationToken>,
) where
    W: Sink<Message> + Unpin,
    W::Error: Display,
    R: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let (registration, mut deliveries) =
        relay.register_websocket(peer.connection_id, config.connection_queue);
    let open = relay.traffic().websocket.open_connection();
    // A peer that does not read stalls our writes; it gets as long as a silent peer would.
    let write_timeout = config.ws_idle_timeout;
    let mut ping = tokio::time::interval_at(
        Instant::now() + config.ws_ping_interval,
        config.ws_ping_interval,
    );
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let first_message_deadline = Instant::now() + config.first_message_timeout;
    let mut idle_deadline = Instant::now() + config.ws_idle_timeout;
    let mut heard_opamp = false;
    let mut speakers = Speakers::default();

    // The awaits below that are not the idle wait are boxed: a future is as big as its largest
    // await point, and an idle connection should pay only for the select it sits in.
    let end = loop {
        let deadline = if heard_opamp {
            idle_deadline
        } else {
            first_message_deadline.min(idle_deadline)
        };
        let sent = tokio::select! {
            _ = shutdown.cancelled() => break End::close(close::GOING_AWAY, "server shutting down"),
            _ = cancelled(revoked.as_ref()) => break End::close(close::POLICY, "client certificate revoked"),
            _ = tokio::time::sleep_until(deadline) => {
                break if !heard_opamp && Instant::now() >= first_message_deadline {
                    End::close(close::POLICY, "no OpAMP message received")
                } else {
                    End::close(close::GOING_AWAY, "heartbeat timeout")
                };
            }
            _ = ping.tick() => {
                Box::pin(send_or_stop(&mut sink, Message::Ping(Bytes::new()), write_timeout, &shutdown)).await
            }
            Some(delivery) = deliveries.next() => {
                let frame = codec::ws_frame_from_encoded(&delivery.server_to_agent);
                let sent = Box::pin(send_or_stop(&mut sink, Message::Binary(frame.into()), write_timeout, &shutdown)).await;
                if sent.is_ok() {
                    relay.traffic().websocket.messages_out.increment(1);
                    if delivery.close_after {
                        break End::close(close::NORMAL, "closed by the server");
                    }
                }
                sent
            }
            frame = stream.next() => {
                idle_deadline = Instant::now() + config.ws_idle_timeout;
                match frame {
                    None => break End::Gone("connection lost".to_owned()),
                    Some(Err(tungstenite::Error::Capacity(_))) => {
                        metrics::counter!("ampora_gateway_frame_errors_total", "reason" => "too_big").increment(1);
                        break End::close(close::TOO_BIG, format!("message exceeds {} bytes", config.max_message_size));
                    }
                    Some(Err(error)) => break End::Gone(format!("read failed: {error}")),
                    Some(Ok(Message::Binary(data))) => {
                        relay.traffic().bytes_in.increment(data.len() as u64);
                        match Box::pin(inbound(&data, &peer, &speakers, &relay, &config)).await {
                            Inbound::Relayed { uid, goodbye } => {
                                heard_opamp = true;
                                speakers.spoke(uid, goodbye);
                                Ok(())
                            }
                            Inbound::Answer { uid, answer } => {
                                heard_opamp = true;
                                if let Some(uid) = uid {
                                    // Not relayed, so the control-plane heard no goodbye either.
                                    speakers.spoke(uid, false);
                                }
                                let frame = codec::encode_ws_server_message(&answer);
                                Box::pin(send_or_stop(&mut sink, Message::Binary(frame.into()), write_timeout, &shutdown)).await
                            }
                            Inbound::Invalid(end) => break end,
                        }
                    }
                    Some(Ok(Message::Text(_))) => {
                        metrics::counter!("ampora_gateway_frame_errors_total", "reason" => "text_frame").increment(1);
                        break End::close(close::UNSUPPORTED, "OpAMP uses binary frames, not text");
                    }
                    Some(Ok(Message::Close(frame))) => {
                        break End::Gone(match frame {
                            Some(frame) => format!("closed by the agent ({})", u16::from(frame.code)),
                            None => "closed by the agent".to_owned(),
                        });
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(()),
                }
            }
        };
        if let Err(reason) = sent {
            break End::Gone(reason);
        }
    };

    // No more deliveries for this connection from here on.
    drop(registration);
    match &end {
        End::Close { code, reason } => {
            tracing::debug!(code, reason, "closing WebSocket");
            let frame = CloseFrame {
                code: CloseCode::from(*code),
                reason: reason.as_str().into(),
            };
            if Box::pin(send(&mut sink, Message::Close(Some(frame)), CLOSE_LINGER))
                .await
                .is_ok()
            {
                Box::pin(linger(&mut stream)).await;
            }
        }
        End::Gone(reason) => {
            tracing::debug!(reason, "WebSocket ended");
            // Lets the transport flush its reply to an agent's close frame.
            Box::pin(linger(&mut stream)).await;
        }
    }
    drop(open);
    for uid in speakers.0 {
        if let Err(error) = Box::pin(relay.publish_closed(&peer, &uid, end.reason())).await {
            tracing::warn!(
                connection_id = peer.connection_id,
                remote_addr = %peer.remote_addr,
                instance_uid = %uid,
                %error,
                "cannot report the closed connection"
            );
        }
    }
}

/// Resolves when `token` is cancelled; never without one.
async fn cancelled(token: Option<&CancellationToken>) {
    match token {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}

async fn send<W>(sink: &mut W, message: Message, within: Duration) -> Result<(), String>
where
    W: Sink<Message> + Unpin,
    W::Error: Display,
{
    match tokio::time::timeout(within, sink.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(format!("write failed: {error}")),
        Err(_) => Err("write timeout: the agent is not reading".to_owned()),
    }
}

/// A write that also gives way to shutdown, so a peer that never reads cannot hold up the drain.
async fn send_or_stop<W>(
    sink: &mut W,
    message: Message,
    within: Duration,
    shutdown: &CancellationToken,
) -> Result<(), String>
where
    W: Sink<Message> + Unpin,
    W::Error: Display,
{
    tokio::select! {
        sent = send(sink, message, within) => sent,
        _ = shutdown.cancelled() => Err("server shutting down".to_owned()),
    }
}

/// Reads (and drops) until the agent completes the closing handshake or the socket ends.
async fn linger<R>(stream: &mut R)
where
    R: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
}

/// What became of one binary message.
enum Inbound {
    /// Published for the control-plane.
    Relayed { uid: Uuid, goodbye: bool },
    /// Answered here without the control-plane: a bad uid, or the bus is unavailable.
    Answer {
        uid: Option<Uuid>,
        answer: Box<ServerToAgent>,
    },
    /// Not OpAMP: the connection ends.
    Invalid(End),
}

async fn inbound(
    data: &Bytes,
    peer: &Peer,
    speakers: &Speakers,
    relay: &Relay,
    config: &GatewayConfig,
) -> Inbound {
    let (message, payload) = match codec::decode_ws_agent_message(data) {
        Ok(decoded) => decoded,
        Err(error) => {
            let (reason, end) = match error {
                CodecError::UnsupportedHeader(header) => (
                    "bad_header",
                    End::close(
                        close::PROTOCOL,
                        format!("unsupported OpAMP header {header}"),
                    ),
                ),
                CodecError::MalformedHeader => (
                    "bad_header",
                    End::close(close::PROTOCOL, "malformed OpAMP header"),
                ),
                CodecError::Empty => (
                    "bad_header",
                    End::close(close::PROTOCOL, "empty message: no OpAMP header"),
                ),
                other => (
                    "undecodable",
                    End::close(
                        close::INVALID_PAYLOAD,
                        format!("bad AgentToServer: {other}"),
                    ),
                ),
            };
            metrics::counter!("ampora_gateway_frame_errors_total", "reason" => reason).increment(1);
            return Inbound::Invalid(end);
        }
    };
    relay.traffic().websocket.messages_in.increment(1);
    let Some(uid) = uid::from_wire(&message.instance_uid) else {
        metrics::counter!("ampora_gateway_frame_errors_total", "reason" => "bad_uid").increment(1);
        return Inbound::Answer {
            uid: None,
            answer: Box::new(server_error::reply(
                message.instance_uid.clone(),
                ServerErrorResponseType::BadRequest,
                "instance_uid must be 16 bytes",
                None,
            )),
        };
    };
    if !speakers.admits(&uid) {
        metrics::counter!("ampora_gateway_frame_errors_total", "reason" => "too_many_uids")
            .increment(1);
        return Inbound::Invalid(End::close(
            close::POLICY,
            format!("one connection may speak for at most {MAX_UIDS_PER_CONNECTION} instance uids"),
        ));
    }
    match relay.publish_message(peer, &uid, payload).await {
        Ok(()) => Inbound::Relayed {
            uid,
            goodbye: message.agent_disconnect.is_some(),
        },
        Err(error) => {
            tracing::warn!(
                connection_id = peer.connection_id,
                remote_addr = %peer.remote_addr,
                instance_uid = %uid,
                %error,
                "cannot relay agent message"
            );
            Inbound::Answer {
                uid: Some(uid),
                answer: Box::new(server_error::reply(
                    message.instance_uid.clone(),
                    ServerErrorResponseType::Unavailable,
                    "server temporarily unavailable",
                    Some(config.retry_after),
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests;
