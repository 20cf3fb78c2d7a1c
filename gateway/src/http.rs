//! OpAMP over plain HTTP: one AgentToServer per POST, its ServerToAgent in the response.

use std::net::SocketAddr;

use ampora_shared::codec::{self, CodecError};
use ampora_shared::pb::bus::Transport;
use ampora_shared::uid;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Extension, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::credentials::ClientCertificate;
use crate::relay::Peer;
use crate::routes::AppState;

pub const PROTOBUF: &str = "application/x-protobuf";

/// A short `text/plain` error: every refusal on the OpAMP path looks like this.
pub fn reject(status: StatusCode, reason: &str) -> Response {
    metrics::counter!("ampora_gateway_http_rejections_total", "status" => status.as_u16().to_string()).increment(1);
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{reason}\n"),
    )
        .into_response()
}

/// 503 with `Retry-After`, for anything that a retry later may fix.
pub fn unavailable(state: &AppState, reason: &str) -> Response {
    let mut response = reject(StatusCode::SERVICE_UNAVAILABLE, reason);
    let seconds = state.config.retry_after.as_secs().max(1).to_string();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_str(&seconds).expect("digits are a valid header"),
    );
    response
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> &str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// `POST /v1/opamp`
pub async fn opamp_post(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    certificate: Option<Extension<ClientCertificate>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let config = &state.config;
    if state.shutdown.is_cancelled() {
        return unavailable(&state, "gateway shutting down; reconnect");
    }
    let certificate = certificate.map(|Extension(certificate)| certificate);
    let credentials = match state.policy.admit(&headers, certificate.as_ref()) {
        Ok(credentials) => credentials,
        Err(refusal) => return refusal.response(),
    };
    let content_type = header_text(&headers, header::CONTENT_TYPE);
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    if !media_type.eq_ignore_ascii_case(PROTOBUF) {
        return reject(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/x-protobuf",
        );
    }
    let encoding = header_text(&headers, header::CONTENT_ENCODING)
        .trim()
        .to_ascii_lowercase();
    let gzipped = match encoding.as_str() {
        "" | "identity" => false,
        "gzip" | "x-gzip" => true,
        _ => {
            return reject(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Encoding must be gzip or absent",
            )
        }
    };
    // The body is part of the first message: a client that stalls half-way through it must not
    // keep its connection (and slot) longer than one that never sends its head.
    let read = tokio::time::timeout(
        config.first_message_timeout,
        read_bounded(body, config.max_message_size),
    );
    let raw = match read.await {
        Err(_) => {
            return reject(
                StatusCode::REQUEST_TIMEOUT,
                "request body not complete in time",
            )
        }
        Ok(Ok(raw)) => raw,
        Ok(Err(BodyError::TooLarge)) => {
            return reject(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("body exceeds {} bytes", config.max_message_size),
            )
        }
        Ok(Err(BodyError::Broken)) => {
            return reject(StatusCode::BAD_REQUEST, "request body could not be read")
        }
    };
    state.relay.traffic().bytes_in.increment(raw.len() as u64);
    let payload = if gzipped {
        match codec::gunzip_bounded(&raw, config.max_message_size) {
            Ok(inflated) => Bytes::from(inflated),
            Err(CodecError::TooLarge { limit }) => {
                return reject(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("decompressed body exceeds {limit} bytes"),
                )
            }
            Err(error) => return reject(StatusCode::BAD_REQUEST, &error.to_string()),
        }
    } else {
        raw
    };
    let message = match codec::decode_agent_to_server(&payload) {
        Ok(message) => message,
        Err(error) => return reject(StatusCode::BAD_REQUEST, &error.to_string()),
    };
    let Some(instance_uid) = uid::from_wire(&message.instance_uid) else {
        return reject(StatusCode::BAD_REQUEST, "instance_uid must be 16 bytes");
    };
    state.relay.traffic().http.messages_in.increment(1);

    let peer = state.new_peer(Transport::Http, remote, credentials);
    let span = tracing::info_span!(
        "http",
        gateway_id = %config.gateway_id,
        connection_id = peer.connection_id,
        remote_addr = %peer.remote_addr,
        instance_uid = %instance_uid,
    );
    let accepts_gzip = accepts_gzip(header_text(&headers, header::ACCEPT_ENCODING));
    exchange(&state, peer, instance_uid, payload, accepts_gzip)
        .instrument(span)
        .await
}

/// Relays one validated message and waits for the control-plane's answer.
async fn exchange(
    state: &AppState,
    peer: Peer,
    instance_uid: uuid::Uuid,
    payload: Bytes,
    accepts_gzip: bool,
) -> Response {
    let relay = &state.relay;
    let _open = relay.traffic().http.open_connection();
    let started = std::time::Instant::now();
    // Registered before publishing so a fast reply cannot miss us; dropped (deregistered) on
    // every way out, including the client going away mid-wait.
    let (_registration, reply) = relay.register_http(peer.connection_id);
    if let Err(error) = relay.publish_message(&peer, &instance_uid, payload).await {
        tracing::warn!(%error, "cannot relay agent message");
        return unavailable(state, "server temporarily unavailable");
    }
    let delivery = tokio::time::timeout(state.config.http_reply_timeout, reply).await;
    relay
        .traffic()
        .http_reply_seconds
        .record(started.elapsed().as_secs_f64());
    let Ok(Ok(delivery)) = delivery else {
        tracing::warn!("no reply from the control-plane in time");
        return unavailable(state, "no reply from the control-plane in time");
    };
    relay.traffic().http.messages_out.increment(1);
    respond(delivery.server_to_agent, accepts_gzip)
}

/// Whether `Accept-Encoding` allows gzip (`gzip`, `x-gzip` or `*`, unless given `q=0`).
fn accepts_gzip(accept_encoding: &str) -> bool {
    accept_encoding.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let coding = parts.next().unwrap_or_default();
        let refused = parts.any(|param| {
            param
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        !refused
            && (coding.eq_ignore_ascii_case("gzip")
                || coding.eq_ignore_ascii_case("x-gzip")
                || coding == "*")
    })
}

enum BodyError {
    TooLarge,
    Broken,
}

/// Reads at most `limit` bytes. Past the limit it keeps reading (without keeping) up to as much
/// again, so a client still sending its oversized body receives the 413 instead of a reset.
async fn read_bounded(body: Body, limit: usize) -> Result<Bytes, BodyError> {
    let mut body = body.into_data_stream();
    let mut kept = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = futures::StreamExt::next(&mut body).await {
        let chunk = chunk.map_err(|_| BodyError::Broken)?;
        total = total.saturating_add(chunk.len());
        if total <= limit {
            kept.extend_from_slice(&chunk);
        } else if total > limit.saturating_mul(2).max(limit + (1 << 20)) {
            break;
        }
    }
    if total > limit {
        Err(BodyError::TooLarge)
    } else {
        Ok(Bytes::from(kept))
    }
}

fn respond(server_to_agent: Bytes, gzip: bool) -> Response {
    let mut response = if gzip {
        let mut response = Body::from(codec::gzip(&server_to_agent)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        response
    } else {
        Body::from(server_to_agent).into_response()
    };
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
    response
}

/// Any method but POST (and GET for WebSocket upgrades) on the OpAMP path.
pub async fn method_not_allowed() -> Response {
    let mut response = reject(
        StatusCode::METHOD_NOT_ALLOWED,
        "use POST for OpAMP over HTTP or GET to upgrade to WebSocket",
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_accepted_unless_refused() {
        assert!(accepts_gzip("gzip"));
        assert!(accepts_gzip("deflate, gzip;q=0.5"));
        assert!(accepts_gzip("GZIP"));
        assert!(accepts_gzip("*"));
        assert!(!accepts_gzip(""));
        assert!(!accepts_gzip("identity"));
        assert!(!accepts_gzip("gzip;q=0"));
        assert!(!accepts_gzip("br, gzip; q=0.0"));
    }
}
