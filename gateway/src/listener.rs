//! The accept loop: bounded connections, TLS, HTTP/1.1 with upgrades, deadlines, drain.
//!
//! Each accepted socket takes a permit from a semaphore of `max_connections`; sockets beyond
//! it are closed at once. The permit travels with the connection's requests (an extension), so
//! a WebSocket session keeps holding it after hyper has handed the upgraded socket over.
//! Once a socket has spoken, its TLS handshake waits for one of `max_tls_handshakes` slots.
//! From a configured load balancer, a PROXY protocol v2 header comes first and names the
//! agent's address. A verified client certificate is fingerprinted once, after the handshake,
//! and watched for revocation for as long as the connection lasts.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use ampora_shared::http1;
use axum::extract::ConnectInfo;
use axum::http::Extensions;
use axum::Router;
use hyper_util::rt::TokioIo;
use metrics::Gauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::credentials::{ClientCertificate, Policy};
use crate::proxy_protocol;
use crate::relay::Relay;
use crate::routes::{self, AppState, ConnectionPermit};
use crate::tls::client_auth;
use crate::traffic::Counted;
use crate::trust::Trust;
use crate::GatewayConfig;

pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    config: Arc<GatewayConfig>,
    relay: Arc<Relay>,
    trust: Option<Arc<Trust>>,
    policy: Policy,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let cancel = CancellationToken::new();
    let connections = TaskTracker::new();
    let state = AppState {
        config: config.clone(),
        relay,
        shutdown: cancel.clone(),
        sessions: TaskTracker::new(),
        policy,
        trust: trust.clone(),
    };
    let router = routes::app(state.clone());
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let tls = tls.map(|acceptor| Handshakes {
        acceptor,
        slots: Arc::new(Semaphore::new(config.max_tls_handshakes.max(1))),
        waiting: state.relay.traffic().tls_handshakes_waiting.clone(),
        in_progress: state.relay.traffic().tls_handshakes_in_progress.clone(),
    });
    tokio::pin!(shutdown);

    loop {
        let (stream, remote) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("ampora_gateway_connections_rejected_total", "reason" => "max_connections").increment(1);
            drop(stream);
            continue;
        };
        metrics::counter!("ampora_gateway_connections_total").increment(1);
        let _ = stream.set_nodelay(true);
        connections.spawn(serve_connection(
            stream,
            remote,
            tls.clone(),
            Served {
                router: router.clone(),
                permit: ConnectionPermit(Arc::new(permit)),
                trust: trust.clone(),
            },
            config.clone(),
            cancel.clone(),
        ));
    }

    // Drain: no new connections; sessions close with 1001; HTTP exchanges finish in the grace.
    drop(listener);
    cancel.cancel();
    connections.close();
    state.sessions.close();
    let drained = async {
        connections.wait().await;
        state.sessions.wait().await;
    };
    if tokio::time::timeout(config.shutdown_grace, drained)
        .await
        .is_err()
    {
        tracing::warn!(grace = ?config.shutdown_grace, "shutdown grace elapsed with connections still open");
    }
}

/// What a connection is served with once it speaks HTTP.
struct Served {
    router: Router,
    permit: ConnectionPermit,
    /// Where client certificates are watched for revocation (with client authentication).
    trust: Option<Arc<Trust>>,
}

impl Served {
    /// The router, and what every request of the connection carries: the agent's address, the
    /// connection's permit and its client certificate.
    fn into_parts(
        self,
        remote: SocketAddr,
        certificate: Option<ClientCertificate>,
    ) -> (Router, Extensions) {
        let mut extensions = Extensions::new();
        extensions.insert(ConnectInfo(remote));
        extensions.insert(self.permit);
        if let Some(certificate) = certificate {
            extensions.insert(certificate);
        }
        (self.router, extensions)
    }
}

/// What a TLS connection goes through before HTTP: a handshake slot, then the handshake.
#[derive(Clone)]
struct Handshakes {
    acceptor: TlsAcceptor,
    slots: Arc<Semaphore>,
    waiting: Gauge,
    in_progress: Gauge,
}

async fn serve_connection(
    mut stream: TcpStream,
    mut remote: SocketAddr,
    tls: Option<Handshakes>,
    served: Served,
    config: Arc<GatewayConfig>,
    cancel: CancellationToken,
) {
    // A peer that connects and never speaks holds a socket and a permit. It has the
    // first-message timeout to send its first byte (and its PROXY header, if it is our load
    // balancer) and, from the moment its handshake starts, as long again to finish it; hyper's
    // header read timeout then bounds the request head.
    let deadline = Instant::now() + config.first_message_timeout;
    if config.proxy_protocol_from.allows(remote.ip()) {
        let header = tokio::select! {
            _ = cancel.cancelled() => return,
            header = proxy_protocol::read_header(&mut stream, deadline) => header,
        };
        match header {
            Ok(Some(agent)) => remote = agent,
            Ok(None) => {}
            Err(error) => {
                metrics::counter!("ampora_gateway_connections_rejected_total", "reason" => "proxy_protocol").increment(1);
                tracing::debug!(load_balancer = %remote, %error, "dropping a connection with a bad PROXY header");
                return;
            }
        }
    }
    let mut first_byte = [0u8; 1];
    let spoke = tokio::select! {
        _ = cancel.cancelled() => return,
        peeked = tokio::time::timeout_at(deadline, stream.peek(&mut first_byte)) => peeked,
    };
    match spoke {
        Ok(Ok(n)) if n > 0 => {}
        // Closed (or broken) before saying anything.
        Ok(_) => return,
        Err(_) => {
            metrics::counter!("ampora_gateway_connections_rejected_total", "reason" => "silent")
                .increment(1);
            tracing::debug!(remote_addr = %remote, "dropping a connection that sent nothing");
            return;
        }
    }
    let Some(handshakes) = tls else {
        let (router, extensions) = served.into_parts(remote, None);
        return http1::serve_connection(
            TokioIo::new(stream),
            router,
            extensions,
            config.first_message_timeout,
            cancel.cancelled(),
        )
        .await;
    };
    let waiting = Counted::new(&handshakes.waiting);
    let slot = tokio::select! {
        _ = cancel.cancelled() => return,
        slot = handshakes.slots.acquire() => slot.expect("the handshake slots are never closed"),
    };
    drop(waiting);
    let in_progress = Counted::new(&handshakes.in_progress);
    let timeout = config.first_message_timeout;
    let handshake = tokio::select! {
        _ = cancel.cancelled() => return,
        handshake = tokio::time::timeout(timeout, handshakes.acceptor.accept(stream)) => handshake,
    };
    drop((slot, in_progress));
    let tls_stream = match handshake {
        Ok(Ok(tls_stream)) => tls_stream,
        Ok(Err(error)) => return handshake_failed(remote, &error),
        Err(_) => {
            metrics::counter!("ampora_gateway_connections_rejected_total", "reason" => "tls_handshake_timeout").increment(1);
            tracing::debug!(remote_addr = %remote, "TLS handshake timed out");
            return;
        }
    };
    let session = tls_stream.get_ref().1;
    let resumed = matches!(
        session.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    metrics::counter!("ampora_gateway_tls_handshakes_total", "kind" => if resumed { "resumed" } else { "full" }).increment(1);
    let fingerprint = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| client_auth::fingerprint(leaf));
    let certificate = match (fingerprint, &served.trust) {
        (Some(fingerprint), Some(trust)) => {
            // A resumed session skips the verifier: its certificate may have been revoked
            // since the session began.
            if resumed && trust.is_revoked(&fingerprint) {
                certificate_refused(remote, "revoked", "the client certificate is revoked");
                return;
            }
            Some(ClientCertificate::new(
                client_auth::to_hex(&fingerprint),
                trust.watch(fingerprint),
            ))
        }
        _ => None,
    };
    let revoked = certificate.as_ref().map(|c| c.revoked().clone());
    let (router, extensions) = served.into_parts(remote, certificate);
    let connection = http1::serve_connection(
        TokioIo::new(tls_stream),
        router,
        extensions,
        config.first_message_timeout,
        cancel.cancelled(),
    );
    match revoked {
        // Revocation cuts the connection at once, an exchange in progress with it; a WebSocket
        // it upgraded to closes itself (1008).
        Some(revoked) => tokio::select! {
            () = connection => {}
            () = revoked.cancelled() => {
                tracing::info!(remote_addr = %remote, "closing a connection whose client certificate was revoked");
            }
        },
        None => connection.await,
    }
}

/// Counts and reports a failed handshake: loudly, with the reason, when it is about the
/// client's certificate (a set-up mistake an operator must see), quietly otherwise.
fn handshake_failed(remote: SocketAddr, error: &std::io::Error) {
    metrics::counter!("ampora_gateway_connections_rejected_total", "reason" => "tls_handshake")
        .increment(1);
    let refusal = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(client_auth::refusal);
    match refusal {
        Some((reason, explanation)) => certificate_refused(remote, reason, explanation),
        None => tracing::debug!(remote_addr = %remote, %error, "TLS handshake failed"),
    }
}

fn certificate_refused(remote: SocketAddr, reason: &'static str, explanation: &str) {
    metrics::counter!("ampora_gateway_client_certificates_refused_total", "reason" => reason)
        .increment(1);
    tracing::warn!(remote_addr = %remote, reason, "client certificate refused: {explanation}");
}
