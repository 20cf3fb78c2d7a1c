//! The server side of the WebSocket opening handshake (RFC 6455 §4.2) over hyper's upgrades.
//!
//! Done here rather than by axum's extractor because the session needs the upgraded
//! connection itself, under its own [`AgentSocket`](super::socket::AgentSocket).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use hyper::upgrade::OnUpgrade;

/// The only WebSocket version there is (RFC 6455 §4.1).
const VERSION: &str = "13";

/// A valid upgrade request, not yet answered.
pub struct Upgrade {
    key: HeaderValue,
    pub on_upgrade: OnUpgrade,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("not a WebSocket upgrade: no `Upgrade` header")]
    NotAnUpgrade,
    #[error("`Connection` must include `upgrade`")]
    ConnectionHeader,
    #[error("`Upgrade` must be `websocket`")]
    UpgradeHeader,
    #[error("`Sec-WebSocket-Version` must be 13")]
    Version,
    #[error("`Sec-WebSocket-Key` is missing")]
    MissingKey,
    #[error("this connection cannot be upgraded (WebSocket needs HTTP/1.1)")]
    NotUpgradable,
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Version | Refusal::NotUpgradable => StatusCode::UPGRADE_REQUIRED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// Headers the answer must carry: the versions we speak, when the client asked for another.
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if *self == Refusal::Version {
            headers.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static(VERSION),
            );
        }
        headers
    }
}

impl Upgrade {
    /// Checks a `GET` request's upgrade headers and takes hyper's handle on the connection.
    pub fn from_request(request: &mut Request) -> Result<Self, Refusal> {
        let key = client_key(request.headers())?;
        let on_upgrade = request
            .extensions_mut()
            .remove::<OnUpgrade>()
            .ok_or(Refusal::NotUpgradable)?;
        Ok(Self { key, on_upgrade })
    }

    /// `101 Switching Protocols`; hyper hands the connection over once it is written.
    pub fn accept(&self) -> Response {
        switching_protocols(&self.key)
    }
}

/// The client's `Sec-WebSocket-Key`, once the other upgrade headers check out.
fn client_key(headers: &HeaderMap) -> Result<HeaderValue, Refusal> {
    if !headers.contains_key(header::UPGRADE) {
        return Err(Refusal::NotAnUpgrade);
    }
    if !lists_token(headers, header::CONNECTION, "upgrade") {
        return Err(Refusal::ConnectionHeader);
    }
    if !lists_token(headers, header::UPGRADE, "websocket") {
        return Err(Refusal::UpgradeHeader);
    }
    if !lists_token(headers, header::SEC_WEBSOCKET_VERSION, VERSION) {
        return Err(Refusal::Version);
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|key| !key.is_empty())
        .cloned()
        .ok_or(Refusal::MissingKey)
}

fn switching_protocols(key: &HeaderValue) -> Response {
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    response
}

/// Whether a comma-separated header lists `token` (case-insensitive), in any of its lines.
fn lists_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|&byte| byte == b',')
            .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: [(&str, &str); 4] = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "WebSocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    /// The good headers, with `name` replaced by `value` (or left out).
    fn headers(name: &str, value: Option<&'static str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (n, v) in GOOD {
            let v = if n == name { value } else { Some(v) };
            if let Some(v) = v {
                headers.insert(n, HeaderValue::from_static(v));
            }
        }
        headers
    }

    fn refusal(name: &str, value: Option<&'static str>) -> Refusal {
        client_key(&headers(name, value)).unwrap_err()
    }

    #[test]
    fn accepts_with_the_key_derived_as_the_rfc_shows() {
        let key = client_key(&headers("", None)).unwrap();
        let response = switching_protocols(&key);
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        // The worked example of RFC 6455 §1.3.
        assert_eq!(
            response.headers()[header::SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(response.headers()[header::UPGRADE], "websocket");
    }

    #[test]
    fn refuses_what_is_not_a_websocket_upgrade() {
        assert_eq!(refusal("upgrade", None), Refusal::NotAnUpgrade);
        assert_eq!(refusal("connection", None), Refusal::ConnectionHeader);
        assert_eq!(
            refusal("connection", Some("upgraded")),
            Refusal::ConnectionHeader
        );
        assert_eq!(refusal("upgrade", Some("h2c")), Refusal::UpgradeHeader);
        assert_eq!(refusal("sec-websocket-key", None), Refusal::MissingKey);
        assert_eq!(refusal("sec-websocket-key", Some("")), Refusal::MissingKey);
        let version = refusal("sec-websocket-version", Some("8"));
        assert_eq!(version, Refusal::Version);
        assert_eq!(version.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(version.headers()[header::SEC_WEBSOCKET_VERSION], "13");
    }

    #[test]
    fn refuses_a_connection_hyper_cannot_upgrade() {
        let mut request = Request::get("/v1/opamp").body(Body::empty()).unwrap();
        *request.headers_mut() = headers("", None);
        assert_eq!(
            Upgrade::from_request(&mut request).err(),
            Some(Refusal::NotUpgradable)
        );
    }
}
