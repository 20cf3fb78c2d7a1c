//! One HTTP/1.1 connection, served the same way on every listener: request heads bounded in
//! size and in time, upgrades allowed, a graceful end on shutdown.

use std::future::Future;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::TokioTimer;

/// Largest HTTP/1 read buffer per connection (request head and body chunks); hyper's own
/// default is 400 KiB. Request heads above it are refused.
const MAX_BUFFER: usize = 64 << 10;

/// Serves `io` until the peer is done or `shutdown` resolves; then the request in progress
/// may finish. HTTP/1.1 only: WebSocket upgrades need it, and nothing here needs newer.
///
/// Each request head must arrive within `head_timeout`. The clock also runs between the
/// requests of a kept-alive connection, so an idle one is closed after as long. What comes
/// after the head (the body) is for the service to time.
pub async fn serve_connection<I, S>(
    io: I,
    service: S,
    head_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<hyper::Request<Incoming>, Response = axum::response::Response>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .max_buf_size(MAX_BUFFER)
        .keep_alive(true)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::pin!(shutdown);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
        }
        _ = &mut shutdown => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}
