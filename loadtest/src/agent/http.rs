//! An agent over plain HTTP: each message is one POST on a kept-alive connection, answered
//! within the request (so the round trip includes the server's commit); between messages the
//! agent polls at its heartbeat interval. A failed exchange is followed by the full state.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use ampora_shared::pb::opamp::{AgentDisconnect, AgentToServer, ServerToAgent};
use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use prost::Message as _;
use tokio::time::{sleep, sleep_until, Instant};

use super::{backoff, Agent, Context, Next};
use crate::net::{ConnectError, ConnectFailure, TlsClient};
use crate::stats::count;

type Connection = SendRequest<Full<Bytes>>;

pub async fn run(mut agent: Agent, mut endpoint: usize, context: Arc<Context>) {
    let stats = &context.stats;
    let tls = context.tls.as_ref().map(TlsClient::for_one_agent);
    let heartbeat = agent.behaviour().heartbeat;
    let mut connection: Option<Connection> = None;
    let mut pending = VecDeque::from([agent.full_state(stats)]);
    let mut ready = false;
    let mut failures = 0;
    let mut next_poll = Instant::now() + heartbeat;
    let mut next_status = agent.next_status_in().map(|d| Instant::now() + d);
    loop {
        if pending.is_empty() {
            let wake = next_status.map_or(next_poll, |at| at.min(next_poll));
            tokio::select! {
                _ = context.stop.cancelled() => {
                    let mut goodbye = agent.heartbeat(stats);
                    goodbye.agent_disconnect = Some(AgentDisconnect {});
                    if let Some(connection) = &mut connection {
                        let _ = exchange(connection, &context, endpoint, &goodbye).await;
                    }
                    break;
                }
                _ = sleep_until(wake) => {}
            }
            let now = Instant::now();
            pending.push_back(if next_status.is_some_and(|at| at <= now) {
                next_status = agent.next_status_in().map(|d| now + d);
                agent.status_change(stats)
            } else {
                agent.heartbeat(stats)
            });
        }
        let message = pending.pop_front().expect("a message is pending");
        let outcome = async {
            if connection.as_ref().is_none_or(SendRequest::is_closed) {
                if connection.take().is_some() {
                    stats.disconnected(false);
                }
                let started = Instant::now();
                let opened = open(&context, endpoint, tls.as_ref()).await;
                if let Err(error) = &opened {
                    stats.connect_failed(error.failure);
                    endpoint = context.failover(endpoint);
                }
                connection = Some(opened?);
                stats.connected(started.elapsed());
            }
            let connection = connection.as_mut().expect("just opened");
            let started = Instant::now();
            let reply = exchange(connection, &context, endpoint, &message).await?;
            stats.http_exchange(started.elapsed());
            if !ready && reply.error_response.is_none() {
                ready = true;
                stats.ready(started.elapsed());
            }
            anyhow::Ok(reply)
        };
        let pause = tokio::select! {
            _ = context.stop.cancelled() => break,
            outcome = outcome => match outcome {
                Ok(reply) => {
                    failures = 0;
                    next_poll = Instant::now() + heartbeat;
                    match agent.handle(reply, stats) {
                        Next::Carry => None,
                        Next::Send(messages) => {
                            pending.extend(messages);
                            None
                        }
                        Next::RetryAfter(delay) => Some(delay),
                    }
                }
                Err(error) => {
                    count(&stats.counters.http_errors);
                    tracing::debug!(%error, "HTTP exchange failed");
                    if connection.take().is_some() {
                        stats.disconnected(false);
                    }
                    failures += 1;
                    Some(backoff(failures, context.reconnect_jitter))
                }
            },
        };
        if let Some(pause) = pause {
            if ready {
                ready = false;
                stats.not_ready();
            }
            tokio::select! {
                _ = context.stop.cancelled() => break,
                _ = sleep(pause) => {}
            }
            pending = VecDeque::from([agent.full_state(stats)]);
        }
    }
    if connection.is_some() {
        stats.disconnected(false);
    }
    if ready {
        stats.not_ready();
    }
}

async fn open(
    context: &Context,
    endpoint: usize,
    tls: Option<&TlsClient>,
) -> Result<Connection, ConnectError> {
    let opened = context.endpoints[endpoint]
        .open(&context.sources, tls)
        .await?;
    context.stats.tls_handshake(opened.handshake);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(opened.io))
        .await
        .map_err(|error| ConnectError::new(ConnectFailure::Upgrade, error))?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn exchange(
    connection: &mut Connection,
    context: &Context,
    endpoint: usize,
    message: &AgentToServer,
) -> anyhow::Result<ServerToAgent> {
    count(&context.stats.counters.sent);
    connection.ready().await?;
    let endpoint = &context.endpoints[endpoint];
    let request = http::Request::post(endpoint.path.as_str())
        .header(http::header::HOST, endpoint.host.as_str())
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::from(message.encode_to_vec())))?;
    let response = tokio::time::timeout(Duration::from_secs(30), connection.send_request(request))
        .await
        .context("no answer within 30 s")??;
    let status = response.status();
    let body = Limited::new(response.into_body(), context.max_message_size)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
        .to_bytes();
    if !status.is_success() {
        bail!("HTTP {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(ServerToAgent::decode(body)?)
}
