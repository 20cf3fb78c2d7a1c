//! One HTTP/1.1 connection, served the same way on every listener: request heads bounded in
//! size and in time, upgrades allowed, a graceful end on shutdown.

use std::future::Future;
use std::time::Duration;

use axum::http::Extensions;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioTimer;
use hyper_util::service::TowerToHyperService;
use tower::ServiceExt;

/// Largest HTTP/1 read buffer per connection (request head and body chunks); hyper's own
/// default is 400 KiB. Request heads above it are refused.
const MAX_BUFFER: usize = 64 << 10;

/// Serves `io` with `router` until the peer is done or `shutdown` resolves; then the request
/// in progress may finish. HTTP/1.1 only: WebSocket upgrades need it, and nothing here needs
/// newer. Every request carries a copy of `extensions`: what the listener knows of the
/// connection (the peer's address, its slot), as axum's `into_make_service_with_connect_info`
/// would attach.
///
/// Each request head must arrive within `head_timeout`. The clock also runs between the
/// requests of a kept-alive connection, so an idle one is closed after as long. What comes
/// after the head (the body) is for the service to time.
pub async fn serve_connection<I>(
    io: I,
    router: Router,
    extensions: Extensions,
    head_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router.map_request(
        move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().extend(extensions.clone());
            request
        },
    ));
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
