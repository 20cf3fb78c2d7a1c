//! `/api/v1/users`: operators' accounts (admin only).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::auth::Principal;
use super::extract::{JsonBody, Path};
use super::{ApiError, ApiState};
use crate::operators::{accounts, password, Role};
use crate::storage::{Account, AccountUpdate, Changed, NewAccount, StoreError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    username: String,
    password: String,
    role: Role,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    role: Option<Role>,
}

/// An account without its password hash.
#[derive(Debug, Serialize)]
pub struct UserView {
    username: String,
    role: Role,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
}

impl From<Account> for UserView {
    fn from(account: Account) -> Self {
        UserView {
            username: account.username,
            role: account.role,
            created_at: account.created_at,
            updated_at: account.updated_at,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct UsersView {
    users: Vec<UserView>,
}

pub async fn users_list(State(state): State<ApiState>) -> Result<Json<UsersView>, ApiError> {
    let users = state.store.list_accounts().await?;
    Ok(Json(UsersView {
        users: users.into_iter().map(UserView::from).collect(),
    }))
}

pub async fn user_create(
    State(state): State<ApiState>,
    principal: Principal,
    JsonBody(request): JsonBody<CreateUser>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    accounts::check_username(&request.username)?;
    password::check(&request.password)?;
    let account = NewAccount {
        password_hash: state.operators.passwords.hash(&request.password).await?,
        username: request.username,
        role: request.role,
    };
    let created = state
        .store
        .create_account(&account, OffsetDateTime::now_utc(), &principal.audit)
        .await
        .map_err(|error| match error {
            StoreError::Duplicate(_) => {
                ApiError::Conflict(format!("user {:?} exists already", account.username))
            }
            other => other.into(),
        })?;
    tracing::info!(username = %created.username, role = created.role.as_str(), by = %principal.actor, "user created");
    Ok((StatusCode::CREATED, Json(created.into())))
}

fn changed<T>(username: &str, outcome: Changed<T>) -> Result<T, ApiError> {
    match outcome {
        Changed::Done(value) => Ok(value),
        Changed::NotFound => Err(ApiError::NotFound(format!("no user {username:?}"))),
        Changed::LastAdmin => Err(ApiError::Conflict("refused: no admin would remain".into())),
    }
}

pub async fn user_update(
    State(state): State<ApiState>,
    principal: Principal,
    Path(username): Path<String>,
    JsonBody(request): JsonBody<UpdateUser>,
) -> Result<Json<UserView>, ApiError> {
    if request.password.is_none() && request.role.is_none() {
        return Err(ApiError::Invalid("give a password, a role or both".into()));
    }
    let password_hash = match &request.password {
        Some(new) => {
            password::check(new)?;
            Some(state.operators.passwords.hash(new).await?)
        }
        None => None,
    };
    let update = AccountUpdate {
        role: request.role,
        password_hash,
    };
    let outcome = state
        .store
        .update_account(
            &username,
            &update,
            OffsetDateTime::now_utc(),
            &principal.audit,
        )
        .await?;
    let account = changed(&username, outcome)?;
    tracing::info!(%username, role = account.role.as_str(), by = %principal.actor, "user changed");
    Ok(Json(account.into()))
}

pub async fn user_delete(
    State(state): State<ApiState>,
    principal: Principal,
    Path(username): Path<String>,
) -> Result<StatusCode, ApiError> {
    let outcome = state
        .store
        .delete_account(&username, OffsetDateTime::now_utc(), &principal.audit)
        .await?;
    changed(&username, outcome)?;
    tracing::info!(%username, by = %principal.actor, "user deleted");
    Ok(StatusCode::NO_CONTENT)
}
