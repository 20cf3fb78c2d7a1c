//! An agent on a WebSocket: connects (from the next source address, through TLS when asked,
//! resuming its own TLS session when it can), sends its full state, then heartbeats and health
//! changes until told to stop; reconnects after losing the connection, moving on to the next
//! endpoint when one refuses.

use std::sync::Arc;
use std::time::Duration;

use ampora_shared::codec;
use ampora_shared::pb::opamp::{AgentDisconnect, AgentToServer, ServerToAgent};
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{backoff, Agent, Context, Next};
use crate::net::{ConnectError, ConnectFailure, Endpoint, Io, TlsClient};
use crate::stats::{count, Stats};

type Socket = WebSocketStream<Box<dyn Io>>;

pub async fn run(mut agent: Agent, mut endpoint: usize, context: Arc<Context>) {
    let tls = context.tls.as_ref().map(TlsClient::for_one_agent);
    let mut failures = 0;
    loop {
        let started = Instant::now();
        let socket = tokio::select! {
            _ = context.stop.cancelled() => return,
            socket = connect(&context.endpoints[endpoint], tls.as_ref(), &context) => socket,
        };
        match socket {
            Ok(socket) => {
                failures = 0;
                context.stats.connected(started.elapsed());
                let ended = session(&mut agent, socket, &context).await;
                context.stats.disconnected(ended.was_ready);
                if ended.stopped {
                    return;
                }
            }
            Err(error) => {
                context.stats.connect_failed(error.failure);
                tracing::debug!(%error, endpoint = %context.endpoints[endpoint].url, "connect failed");
                endpoint = context.failover(endpoint);
                failures += 1;
            }
        }
        tokio::select! {
            _ = context.stop.cancelled() => return,
            _ = sleep(backoff(failures, context.reconnect_jitter)) => {}
        }
    }
}

async fn connect(
    endpoint: &Endpoint,
    tls: Option<&TlsClient>,
    context: &Context,
) -> Result<Socket, ConnectError> {
    let opened = endpoint.open(&context.sources, tls).await?;
    context.stats.tls_handshake(opened.handshake);
    // Small buffers: a worker holds ~19k of these.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(context.max_message_size))
        .max_frame_size(Some(context.max_message_size));
    let (socket, _) =
        tokio_tungstenite::client_async_with_config(endpoint.url.as_str(), opened.io, Some(config))
            .await
            .map_err(|error| ConnectError::new(ConnectFailure::Upgrade, error))?;
    Ok(socket)
}

struct Ended {
    was_ready: bool,
    stopped: bool,
}

async fn send(socket: &mut Socket, message: &AgentToServer, stats: &Stats) -> bool {
    count(&stats.counters.sent);
    let frame = codec::ws_frame_from_encoded(&message.encode_to_vec());
    socket.send(Message::Binary(frame.into())).await.is_ok()
}

async fn session(agent: &mut Agent, mut socket: Socket, context: &Context) -> Ended {
    let stats = &context.stats;
    let heartbeat = agent.behaviour().heartbeat;
    let mut ready = false;
    let mut awaiting_since = Instant::now();
    let mut next_heartbeat = Instant::now() + heartbeat;
    let mut next_status = agent.next_status_in().map(|d| Instant::now() + d);
    let mut resend_full_at: Option<Instant> = None;
    if !send(&mut socket, &agent.full_state(stats), stats).await {
        return Ended {
            was_ready: false,
            stopped: false,
        };
    }
    loop {
        let wake = [Some(next_heartbeat), next_status, resend_full_at]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(next_heartbeat);
        tokio::select! {
            _ = context.stop.cancelled() => {
                let mut goodbye = agent.heartbeat(stats);
                goodbye.agent_disconnect = Some(AgentDisconnect {});
                send(&mut socket, &goodbye, stats).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
                return Ended { was_ready: ready, stopped: true };
            }
            frame = socket.next() => {
                let data = match frame {
                    Some(Ok(Message::Binary(data))) => data,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                        return Ended { was_ready: ready, stopped: false };
                    }
                    Some(Ok(_)) => continue,
                };
                let Some(reply) = codec::ws_payload(&data)
                    .ok()
                    .and_then(|payload| ServerToAgent::decode(payload).ok())
                else {
                    count(&stats.counters.server_errors);
                    continue;
                };
                let failed = reply.error_response.is_some();
                if !ready && !failed {
                    ready = true;
                    stats.ready(awaiting_since.elapsed());
                }
                match agent.handle(reply, stats) {
                    Next::Carry => {}
                    Next::Send(messages) => {
                        for message in &messages {
                            if !send(&mut socket, message, stats).await {
                                return Ended { was_ready: ready, stopped: false };
                            }
                        }
                        next_heartbeat = Instant::now() + heartbeat;
                    }
                    Next::RetryAfter(delay) => {
                        if ready {
                            ready = false;
                            stats.not_ready();
                        }
                        resend_full_at = Some(Instant::now() + delay);
                    }
                }
            }
            _ = sleep_until(wake) => {
                let now = Instant::now();
                let message = if resend_full_at.is_some_and(|at| at <= now) {
                    resend_full_at = None;
                    awaiting_since = now;
                    agent.full_state(stats)
                } else if next_status.is_some_and(|at| at <= now) {
                    next_status = agent.next_status_in().map(|d| now + d);
                    agent.status_change(stats)
                } else {
                    agent.heartbeat(stats)
                };
                if !send(&mut socket, &message, stats).await {
                    return Ended { was_ready: ready, stopped: false };
                }
                next_heartbeat = now + heartbeat;
            }
        }
    }
}
