//! What an agent proves on its connection, and whether that is enough to be served.
//!
//! The listener verifies the client certificate (if any) at the handshake and attaches a
//! [`ClientCertificate`] to every request of the connection; the OpAMP handlers add the Bearer
//! token of the request (the WebSocket upgrade, or each HTTP POST) and ask [`Policy::admit`].
//! The gateway checks presence only: the control-plane binds a fingerprint to an agent and
//! checks a bootstrap token, from what the envelope carries.

use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;

use crate::config::ClientAuth;
use crate::http;
use crate::trust::LiveCertificate;

/// The verified client certificate of a connection, shared by its requests (and its WebSocket
/// session): its fingerprint is computed once per connection, and the registration that closes
/// the connection on revocation lasts as long as any of them.
#[derive(Clone)]
pub struct ClientCertificate(Arc<Presented>);

struct Presented {
    sha256: String,
    live: LiveCertificate,
}

impl ClientCertificate {
    pub fn new(sha256: String, live: LiveCertificate) -> Self {
        Self(Arc::new(Presented { sha256, live }))
    }

    pub fn sha256(&self) -> &str {
        &self.0.sha256
    }

    /// Cancelled when the certificate is revoked.
    pub fn revoked(&self) -> &tokio_util::sync::CancellationToken {
        self.0.live.revoked()
    }
}

/// What the envelope tells the control-plane about the agent's proof.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// Lowercase hex SHA-256 of the client certificate; empty without one.
    pub certificate_sha256: String,
    /// The `Authorization: Bearer` credential; empty without one.
    pub bearer_token: String,
    /// Only enrolment is allowed: no certificate where the gateway asks for one.
    pub enrolment_only: bool,
}

/// Who may be served, from the settings: set once at start.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// `None` on a plain listener.
    pub client_auth: ClientAuth,
    /// Every agent must present a certificate or a token (a non-loopback gateway without
    /// `insecure`).
    pub credential_required: bool,
}

/// Why an agent is turned away before its message is relayed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("without a client certificate, only enrolment is allowed: send the bootstrap token as `Authorization: Bearer …`")]
    EnrolmentNeedsToken,
    #[error("this gateway needs a client certificate or a token as `Authorization: Bearer …`")]
    CredentialRequired,
}

impl Refusal {
    /// 401 with `WWW-Authenticate: Bearer`, as for any missing credential.
    pub fn response(&self) -> Response {
        let mut response = http::reject(StatusCode::UNAUTHORIZED, &self.to_string());
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        response
    }
}

impl Policy {
    /// Whether a request with `headers` on a connection with `certificate` may go on, and
    /// what its envelopes then carry.
    pub fn admit(
        &self,
        headers: &HeaderMap,
        certificate: Option<&ClientCertificate>,
    ) -> Result<Credentials, Refusal> {
        let bearer_token = bearer_token(headers).unwrap_or_default().to_owned();
        let Some(certificate) = certificate else {
            let enrolment_only = self.client_auth != ClientAuth::None;
            if bearer_token.is_empty() {
                if enrolment_only {
                    return Err(Refusal::EnrolmentNeedsToken);
                }
                if self.credential_required {
                    return Err(Refusal::CredentialRequired);
                }
            }
            return Ok(Credentials {
                certificate_sha256: String::new(),
                bearer_token,
                enrolment_only,
            });
        };
        Ok(Credentials {
            certificate_sha256: certificate.sha256().to_owned(),
            bearer_token,
            enrolment_only: false,
        })
    }
}

/// The credential of `Authorization: Bearer <token>` (scheme case-insensitive), if any.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: Option<&'static str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
        }
        headers
    }

    const fn policy(client_auth: ClientAuth, credential_required: bool) -> Policy {
        Policy {
            client_auth,
            credential_required,
        }
    }

    #[test]
    fn bearer_tokens_are_read_whatever_the_scheme_case() {
        assert_eq!(bearer_token(&headers(Some("Bearer abc"))), Some("abc"));
        assert_eq!(bearer_token(&headers(Some("bearer  abc "))), Some("abc"));
        assert_eq!(bearer_token(&headers(Some("Basic abc"))), None);
        assert_eq!(bearer_token(&headers(Some("Bearer "))), None);
        assert_eq!(bearer_token(&headers(None)), None);
    }

    #[test]
    fn without_a_certificate_the_mode_decides() {
        let open = policy(ClientAuth::None, false);
        assert_eq!(open.admit(&headers(None), None), Ok(Credentials::default()));
        let token = open.admit(&headers(Some("Bearer t1")), None).unwrap();
        assert_eq!(token.bearer_token, "t1");
        assert!(!token.enrolment_only);

        let guarded = policy(ClientAuth::None, true);
        assert_eq!(
            guarded.admit(&headers(None), None),
            Err(Refusal::CredentialRequired)
        );
        assert!(guarded.admit(&headers(Some("Bearer t1")), None).is_ok());

        for credential_required in [false, true] {
            let optional = policy(ClientAuth::Optional, credential_required);
            assert_eq!(
                optional.admit(&headers(None), None),
                Err(Refusal::EnrolmentNeedsToken)
            );
            let enrolling = optional.admit(&headers(Some("Bearer t2")), None).unwrap();
            assert_eq!(
                enrolling,
                Credentials {
                    certificate_sha256: String::new(),
                    bearer_token: "t2".to_owned(),
                    enrolment_only: true,
                }
            );
        }
        let refusal = Refusal::EnrolmentNeedsToken.response();
        assert_eq!(refusal.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(refusal.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
