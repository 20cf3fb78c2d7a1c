//! `/api/v1/api-tokens`: bearer tokens for automation (admin only). A token is shown once,
//! when made; only its SHA-256 is stored.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::auth::Principal;
use super::extract::{JsonBody, Path};
use super::{ApiError, ApiState};
use crate::operators::{secrets, Role};
use crate::storage::{ApiToken, NewApiToken};

/// The longest a token may be given: ten years.
const MAX_TTL_SECONDS: u64 = 10 * 366 * 24 * 3600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    name: String,
    role: Role,
    /// Absent: the token lasts until deleted.
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

/// The token, this once.
#[derive(Debug, Serialize)]
pub struct CreatedToken {
    id: String,
    token: String,
    name: String,
    role: Role,
    #[serde(with = "time::serde::rfc3339::option")]
    expires_at: Option<OffsetDateTime>,
}

#[derive(Debug, Serialize)]
pub struct TokenView {
    id: String,
    name: String,
    role: Role,
    created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    expires_at: Option<OffsetDateTime>,
}

impl From<ApiToken> for TokenView {
    fn from(token: ApiToken) -> Self {
        TokenView {
            id: token.id,
            name: token.name,
            role: token.role,
            created_by: token.created_by,
            created_at: token.created_at,
            expires_at: token.expires_at,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TokensView {
    api_tokens: Vec<TokenView>,
}

pub async fn api_token_create(
    State(state): State<ApiState>,
    principal: Principal,
    JsonBody(request): JsonBody<CreateToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let name = request.name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(ApiError::Invalid("name must be 1 to 200 characters".into()));
    }
    let now = OffsetDateTime::now_utc();
    let expires_at = match request.ttl_seconds {
        Some(seconds) if seconds == 0 || seconds > MAX_TTL_SECONDS => {
            return Err(ApiError::Invalid(format!(
                "ttl_seconds must be 1 to {MAX_TTL_SECONDS}"
            )))
        }
        Some(seconds) => Some(now + Duration::from_secs(seconds)),
        None => None,
    };
    let token = secrets::new_api_token();
    let new = NewApiToken {
        id: uuid::Uuid::now_v7().to_string(),
        name: name.to_owned(),
        role: request.role,
        token_hash: secrets::hash(&token),
        created_at: now,
        expires_at,
    };
    let created = state.store.create_api_token(&new, &principal.audit).await?;
    tracing::info!(id = %created.id, name = %created.name, role = created.role.as_str(), by = %principal.actor, "API token created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            id: created.id,
            token,
            name: created.name,
            role: created.role,
            expires_at: created.expires_at,
        }),
    ))
}

pub async fn api_tokens_list(State(state): State<ApiState>) -> Result<Json<TokensView>, ApiError> {
    let tokens = state.store.list_api_tokens().await?;
    Ok(Json(TokensView {
        api_tokens: tokens.into_iter().map(TokenView::from).collect(),
    }))
}

pub async fn api_token_delete(
    State(state): State<ApiState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let deleted = state
        .store
        .delete_api_token(&id, OffsetDateTime::now_utc(), &principal.audit)
        .await?;
    if !deleted {
        return Err(ApiError::NotFound(format!("no API token {id:?}")));
    }
    tracing::info!(%id, by = %principal.actor, "API token deleted");
    Ok(StatusCode::NO_CONTENT)
}
