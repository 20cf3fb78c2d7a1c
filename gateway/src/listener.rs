//! The accept loop: bounded connections, TLS, HTTP/1.1 with upgrades, deadlines, drain.

use std::future::Future;
use std::sync::Arc;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::relay::Relay;
use crate::routes::{self, AppState, RemoteAddr};
use crate::GatewayConfig;

pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    config: Arc<GatewayConfig>,
    relay: Arc<Relay>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let cancel = CancellationToken::new();
    let connections = TaskTracker::new();
    let state = AppState {
        config: config.clone(),
        relay,
        shutdown: cancel.clone(),
        sessions: TaskTracker::new(),
    };
    let router = routes::app(state.clone());
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
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
        let service = TowerToHyperService::new(
            router
                .clone()
                .layer(axum::Extension(RemoteAddr(remote.to_string()))),
        );
        let tls = tls.clone();
        let config = config.clone();
        let cancel = cancel.clone();
        connections.spawn(async move {
            serve_connection(stream, tls, service, &config, cancel).await;
            drop(permit);
        });
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

async fn serve_connection<S>(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    service: S,
    config: &GatewayConfig,
    cancel: CancellationToken,
) where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // A peer that connects and never speaks holds a socket and a permit: give it the
    // first-message deadline to send its first byte (hyper's header timeout takes it from there).
    let mut first_byte = [0u8; 1];
    if !matches!(
        tokio::time::timeout(config.first_message_timeout, stream.peek(&mut first_byte)).await,
        Ok(Ok(1))
    ) {
        metrics::counter!("ampora_gateway_connections_rejected_total", "reason" => "silent")
            .increment(1);
        return;
    }
    match tls {
        None => http(TokioIo::new(stream), service, config, cancel).await,
        Some(acceptor) => {
            match tokio::time::timeout(config.first_message_timeout, acceptor.accept(stream)).await
            {
                Ok(Ok(tls_stream)) => http(TokioIo::new(tls_stream), service, config, cancel).await,
                Ok(Err(error)) => {
                    metrics::counter!("ampora_gateway_connections_rejected_total", "reason" => "tls_handshake").increment(1);
                    tracing::debug!(%error, "TLS handshake failed");
                }
                Err(_) => {
                    metrics::counter!("ampora_gateway_connections_rejected_total", "reason" => "tls_handshake_timeout").increment(1);
                }
            }
        }
    }
}

async fn http<I, S>(io: I, service: S, config: &GatewayConfig, cancel: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // HTTP/1.1 only: WebSocket upgrades need it, and OpAMP needs nothing newer.
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(config.first_message_timeout)
        .keep_alive(true)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
        }
        _ = cancel.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}
