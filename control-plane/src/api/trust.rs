//! Trust over the API: bootstrap tokens, the CA, and agents' certificates (the token →
//! certificate exchange for agents that cannot take certificates over OpAMP, listing and
//! revocation). Each change is one storage transaction, with its audit entry.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use super::extract::{JsonBody, Path, Query};
use super::paging::{next_page_token, page_token, Limit};
use super::{auth, ApiError, ApiState, Principal};
use crate::storage::{AgentCertificate, BootstrapToken};
use crate::trust::enrolment::{EnrolError, Requester};
use crate::trust::TrustError;

/// Longest lifetime a bootstrap token may be given: a year.
const MAX_TOKEN_TTL: u64 = 365 * 24 * 3600;

/// Most labels a token may carry, and their longest key or value.
const MAX_LABELS: usize = 64;
const MAX_LABEL_LENGTH: usize = 256;

impl From<TrustError> for ApiError {
    fn from(error: TrustError) -> Self {
        match error {
            TrustError::Store(error) => error.into(),
            TrustError::RotationRaced => ApiError::Conflict(error.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<EnrolError> for ApiError {
    fn from(error: EnrolError) -> Self {
        let message = error.to_string();
        match error {
            EnrolError::Store(error) => error.into(),
            EnrolError::NoToken | EnrolError::Token(_) => ApiError::Forbidden(message),
            EnrolError::Refused(_) => ApiError::Conflict(message),
            EnrolError::Issue(crate::trust::certificates::IssueError::Ca(_)) => {
                ApiError::Internal(message)
            }
            EnrolError::Issue(_) | EnrolError::NotPem | EnrolError::NotDue(_) => {
                ApiError::Invalid(message)
            }
        }
    }
}

fn unix(at: OffsetDateTime) -> i64 {
    at.unix_timestamp()
}

// === bootstrap tokens ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    /// Seconds; default `AMPORA_BOOTSTRAP_TOKEN_TTL`.
    #[serde(default)]
    ttl_seconds: Option<u64>,
    /// Given to the agent it enrols.
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct TokenCreated {
    id: i64,
    /// Shown only here: only its hash is stored.
    token: String,
    /// Unix seconds.
    expires_at: i64,
}

/// A token as listed: never the token itself.
#[derive(Debug, Serialize)]
pub struct TokenView {
    id: i64,
    labels: BTreeMap<String, String>,
    created_at: i64,
    expires_at: i64,
    used_at: Option<i64>,
    used_by: Option<Uuid>,
    revoked_at: Option<i64>,
    /// `active`, `used`, `revoked` or `expired`.
    state: &'static str,
}

impl From<BootstrapToken> for TokenView {
    fn from(token: BootstrapToken) -> Self {
        let state = if token.revoked_at.is_some() {
            "revoked"
        } else if token.used_at.is_some() {
            "used"
        } else if token.expires_at <= OffsetDateTime::now_utc() {
            "expired"
        } else {
            "active"
        };
        TokenView {
            id: token.id,
            labels: token.labels,
            created_at: unix(token.created_at),
            expires_at: unix(token.expires_at),
            used_at: token.used_at.map(unix),
            used_by: token.used_by,
            revoked_at: token.revoked_at.map(unix),
            state,
        }
    }
}

pub async fn bootstrap_token_create(
    State(state): State<ApiState>,
    principal: Principal,
    JsonBody(body): JsonBody<TokenCreate>,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    let ttl = match body.ttl_seconds {
        Some(0) => return Err(ApiError::Invalid("ttl_seconds must be at least 1".into())),
        Some(seconds) if seconds > MAX_TOKEN_TTL => {
            return Err(ApiError::Invalid(format!(
                "ttl_seconds must be at most {MAX_TOKEN_TTL} (a year)"
            )))
        }
        Some(seconds) => Some(Duration::from_secs(seconds)),
        None => None,
    };
    if body.labels.len() > MAX_LABELS {
        return Err(ApiError::Invalid(format!("at most {MAX_LABELS} labels")));
    }
    if let Some((key, _)) = body.labels.iter().find(|(key, value)| {
        key.is_empty() || key.len() > MAX_LABEL_LENGTH || value.len() > MAX_LABEL_LENGTH
    }) {
        return Err(ApiError::Invalid(format!(
            "label {key:?}: keys must be 1 to {MAX_LABEL_LENGTH} bytes, values at most {MAX_LABEL_LENGTH}"
        )));
    }
    let (token, record) = state
        .trust
        .create_token(ttl, body.labels, &principal.audit)
        .await?;
    tracing::info!(token_id = record.id, "bootstrap token created");
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            id: record.id,
            token,
            expires_at: unix(record.expires_at),
        }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenListQuery {
    #[serde(default)]
    limit: Limit,
    #[serde(default, deserialize_with = "page_token")]
    page_token: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct TokensPage {
    bootstrap_tokens: Vec<TokenView>,
    next_page_token: Option<String>,
}

pub async fn bootstrap_tokens_list(
    State(state): State<ApiState>,
    Query(query): Query<TokenListQuery>,
) -> Result<Json<TokensPage>, ApiError> {
    let limit = query.limit.get();
    let tokens = state
        .store
        .list_bootstrap_tokens(query.page_token.unwrap_or(0), limit)
        .await?;
    let next_page_token = next_page_token(&tokens, limit, |token| token.id);
    Ok(Json(TokensPage {
        bootstrap_tokens: tokens.into_iter().map(TokenView::from).collect(),
        next_page_token,
    }))
}

/// Revokes a token (kept, so the listing shows it revoked). A used token stays used: revoking
/// the certificate it brought is what takes the agent's access away.
pub async fn bootstrap_token_delete(
    State(state): State<ApiState>,
    principal: Principal,
    Path(id): Path<i64>,
) -> Result<Json<TokenView>, ApiError> {
    let token = state
        .store
        .revoke_bootstrap_token(id, OffsetDateTime::now_utc(), &principal.audit)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no bootstrap token {id}")))?;
    if token.used_at.is_some() {
        return Err(ApiError::Conflict(format!(
            "bootstrap token {id} was used already; revoke the certificate it brought instead"
        )));
    }
    tracing::info!(token_id = id, "bootstrap token revoked");
    Ok(Json(token.into()))
}

// === the CA ===

/// Every CA agents' certificates may chain to, the current one first.
pub async fn ca_pem_get(State(state): State<ApiState>) -> Result<impl IntoResponse, ApiError> {
    let bundle = state.trust.ca_bundle_pem().await?;
    Ok(([(header::CONTENT_TYPE, "application/x-pem-file")], bundle))
}

#[derive(Debug, Serialize)]
pub struct CaRotated {
    ca_id: i64,
    ca_pem: String,
}

pub async fn ca_rotate(
    State(state): State<ApiState>,
    principal: Principal,
) -> Result<(StatusCode, Json<CaRotated>), ApiError> {
    let ca = state.trust.rotate_ca(&principal.audit).await?;
    Ok((
        StatusCode::CREATED,
        Json(CaRotated {
            ca_id: ca.id,
            ca_pem: ca.certificate_pem.clone(),
        }),
    ))
}

// === certificates ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateCreate {
    token: String,
    /// A CSR; without one, a key is made here and returned with the certificate.
    #[serde(default)]
    csr_pem: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CertificateCreated {
    instance_uid: Uuid,
    certificate_pem: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    private_key_pem: Option<String>,
    ca_pem: String,
    fingerprint: String,
}

/// Open: the bootstrap token is the credential, and the audit entry names it as the actor.
pub async fn certificate_create(
    State(state): State<ApiState>,
    parts: Parts,
    JsonBody(body): JsonBody<CertificateCreate>,
) -> Result<(StatusCode, Json<CertificateCreated>), ApiError> {
    let from = Requester {
        address: auth::client_address(&parts),
        request_id: auth::request_id(&parts.headers),
    };
    let enrolled = state
        .trust
        .enrol_with_token(&body.token, body.csr_pem.as_deref(), None, &from)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CertificateCreated {
            instance_uid: enrolled.issued.instance_uid,
            certificate_pem: enrolled.issued.certificate_pem,
            private_key_pem: enrolled.issued.private_key_pem,
            ca_pem: enrolled.ca_pem,
            fingerprint: enrolled.issued.fingerprint,
        }),
    ))
}

#[derive(Debug, Serialize)]
pub struct CertificateView {
    fingerprint: String,
    instance_uid: Uuid,
    ca_id: i64,
    bootstrap_token_id: Option<i64>,
    labels: BTreeMap<String, String>,
    issued_at: i64,
    not_after: i64,
    revoked_at: Option<i64>,
    revoked_reason: Option<String>,
}

impl From<AgentCertificate> for CertificateView {
    fn from(certificate: AgentCertificate) -> Self {
        CertificateView {
            fingerprint: certificate.fingerprint,
            instance_uid: certificate.instance_uid,
            ca_id: certificate.ca_id,
            bootstrap_token_id: certificate.token_id,
            labels: certificate.labels,
            issued_at: unix(certificate.issued_at),
            not_after: unix(certificate.not_after),
            revoked_at: certificate.revoked_at.map(unix),
            revoked_reason: certificate.revoked_reason,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateListQuery {
    #[serde(default)]
    limit: Limit,
    #[serde(default)]
    page_token: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CertificatesPage {
    certificates: Vec<CertificateView>,
    next_page_token: Option<String>,
}

pub async fn certificates_list(
    State(state): State<ApiState>,
    Query(query): Query<CertificateListQuery>,
) -> Result<Json<CertificatesPage>, ApiError> {
    let limit = query.limit.get();
    let after = query.page_token.filter(|token| !token.is_empty());
    let certificates = state
        .store
        .list_certificates(after.as_deref(), limit)
        .await?;
    let next_page_token = next_page_token(&certificates, limit, |c| c.fingerprint.clone());
    Ok(Json(CertificatesPage {
        certificates: certificates
            .into_iter()
            .map(CertificateView::from)
            .collect(),
        next_page_token,
    }))
}

pub async fn certificate_revoke(
    State(state): State<ApiState>,
    principal: Principal,
    Path(fingerprint): Path<String>,
) -> Result<Json<CertificateView>, ApiError> {
    let fingerprint = fingerprint.to_ascii_lowercase();
    let certificate = state
        .trust
        .revoke_certificate(&fingerprint, &principal.audit)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no certificate {fingerprint}")))?;
    tracing::info!(%fingerprint, instance_uid = %certificate.instance_uid, "certificate revoked");
    Ok(Json(certificate.into()))
}
