//! Operators' accounts, sessions and API tokens on both backends, generic over the sqlx
//! database. Every write records its audit entry in its own transaction.

use sqlx::{Database, Decode, Encode, Executor, FromRow, IntoArguments, Pool, Transaction, Type};
use time::OffsetDateTime;

use super::audit::append;
use super::encoding::{from_micros, micros};
use super::{
    Account, AccountUpdate, ApiToken, Changed, NewAccount, NewApiToken, NewSession, Result,
    SessionAccount, StoreError,
};
use crate::audit::{AuditContext, Change};
use crate::operators::Role;

const ACCOUNT_COLUMNS: &str = "username, password_hash, role, created_at, updated_at";
const TOKEN_COLUMNS: &str = "id, name, role, created_by, created_at, expires_at";

fn role(text: &str) -> Result<Role> {
    Role::parse(text).ok_or_else(|| StoreError::Corrupt(format!("unknown role {text:?}")))
}

#[derive(FromRow)]
pub struct AccountRow {
    username: String,
    password_hash: String,
    role: String,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<AccountRow> for Account {
    type Error = StoreError;

    fn try_from(row: AccountRow) -> Result<Account> {
        Ok(Account {
            username: row.username,
            password_hash: row.password_hash,
            role: role(&row.role)?,
            created_at: from_micros(row.created_at)?,
            updated_at: from_micros(row.updated_at)?,
        })
    }
}

#[derive(FromRow)]
pub struct TokenRow {
    id: String,
    name: String,
    role: String,
    created_by: String,
    created_at: i64,
    expires_at: Option<i64>,
}

impl TryFrom<TokenRow> for ApiToken {
    type Error = StoreError;

    fn try_from(row: TokenRow) -> Result<ApiToken> {
        Ok(ApiToken {
            id: row.id,
            name: row.name,
            role: role(&row.role)?,
            created_by: row.created_by,
            created_at: from_micros(row.created_at)?,
            expires_at: row.expires_at.map(from_micros).transpose()?,
        })
    }
}

pub async fn count_accounts<DB>(pool: &Pool<DB>) -> Result<u64>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Decode<'q, DB> + Type<DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
{
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM operator_accounts")
        .fetch_one(pool)
        .await?;
    Ok(count.unsigned_abs())
}

async fn insert_account<DB>(
    connection: &mut DB::Connection,
    account: &NewAccount,
    now: OffsetDateTime,
) -> Result<()>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    sqlx::query(
        "INSERT INTO operator_accounts (username, password_hash, role, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $4)",
    )
    .bind(account.username.clone())
    .bind(account.password_hash.clone())
    .bind(account.role.as_str().to_owned())
    .bind(micros(now))
    .execute(connection)
    .await?;
    Ok(())
}

/// [`StoreError::Duplicate`] when the username is taken.
pub async fn create_account<DB>(
    mut transaction: Transaction<'static, DB>,
    account: &NewAccount,
    now: OffsetDateTime,
    audit: &AuditContext,
) -> Result<Account>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'r> (i64, String): FromRow<'r, DB::Row>,
{
    insert_account(&mut transaction, account, now).await?;
    let change = Change::account_created(&account.username, account.role);
    append(&mut transaction, audit, change, now).await?;
    transaction.commit().await?;
    Ok(Account {
        username: account.username.clone(),
        password_hash: account.password_hash.clone(),
        role: account.role,
        created_at: from_micros(micros(now))?,
        updated_at: from_micros(micros(now))?,
    })
}

/// Creates `account` only if there is none at all; false when there was one. Replicas racing
/// at first start create one `admin`: the loser's insert hits the taken name.
pub async fn create_first_account<DB>(
    mut transaction: Transaction<'static, DB>,
    account: &NewAccount,
    now: OffsetDateTime,
    audit: &AuditContext,
) -> Result<bool>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'r> (i64, String): FromRow<'r, DB::Row>,
{
    let existing: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM operator_accounts")
        .fetch_one(&mut *transaction)
        .await?;
    if existing > 0 {
        return Ok(false);
    }
    match insert_account(&mut transaction, account, now).await {
        Err(StoreError::Duplicate(_)) => return Ok(false),
        other => other?,
    }
    let change = Change::account_created(&account.username, account.role);
    append(&mut transaction, audit, change, now).await?;
    transaction.commit().await?;
    Ok(true)
}

pub async fn get_account<DB>(pool: &Pool<DB>, username: &str) -> Result<Option<Account>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'r> AccountRow: FromRow<'r, DB::Row>,
{
    let row: Option<AccountRow> = sqlx::query_as(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM operator_accounts WHERE username = $1"
    ))
    .bind(username.to_owned())
    .fetch_optional(pool)
    .await?;
    row.map(Account::try_from).transpose()
}

pub async fn list_accounts<DB>(pool: &Pool<DB>) -> Result<Vec<Account>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'r> AccountRow: FromRow<'r, DB::Row>,
{
    let rows: Vec<AccountRow> = sqlx::query_as(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM operator_accounts ORDER BY username"
    ))
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(Account::try_from).collect()
}

/// Whether an admin remains, inside the transaction that may have removed the last one.
async fn admin_remains<DB>(connection: &mut DB::Connection) -> Result<bool>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Decode<'q, DB> + Type<DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
{
    let admins: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM operator_accounts WHERE role = 'admin'")
            .fetch_one(connection)
            .await?;
    Ok(admins > 0)
}

/// Changes an account's role and/or password; a new password also ends its sessions. Refused
/// (and nothing changed) when it would leave no admin.
pub async fn update_account<DB>(
    mut transaction: Transaction<'static, DB>,
    username: &str,
    update: &AccountUpdate,
    now: OffsetDateTime,
    audit: &AuditContext,
) -> Result<Changed<Account>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'r> (i64, String): FromRow<'r, DB::Row>,
    for<'r> AccountRow: FromRow<'r, DB::Row>,
{
    // Touching the row first locks it: concurrent changes of one account go in turn.
    let old: Option<AccountRow> = sqlx::query_as(&format!(
        "UPDATE operator_accounts SET updated_at = updated_at WHERE username = $1 \
         RETURNING {ACCOUNT_COLUMNS}"
    ))
    .bind(username.to_owned())
    .fetch_optional(&mut *transaction)
    .await?;
    let Some(old) = old else {
        return Ok(Changed::NotFound);
    };
    let old = Account::try_from(old)?;
    let new_role = update.role.unwrap_or(old.role);
    let new_hash = update
        .password_hash
        .clone()
        .unwrap_or_else(|| old.password_hash.clone());
    let row: AccountRow = sqlx::query_as(&format!(
        "UPDATE operator_accounts SET role = $1, password_hash = $2, updated_at = $3 \
         WHERE username = $4 RETURNING {ACCOUNT_COLUMNS}"
    ))
    .bind(new_role.as_str().to_owned())
    .bind(new_hash)
    .bind(micros(now))
    .bind(username.to_owned())
    .fetch_one(&mut *transaction)
    .await?;
    let demoted = old.role == Role::Admin && new_role != Role::Admin;
    if demoted && !admin_remains(&mut transaction).await? {
        return Ok(Changed::LastAdmin);
    }
    if update.password_hash.is_some() {
        sqlx::query("DELETE FROM operator_sessions WHERE username = $1")
            .bind(username.to_owned())
            .execute(&mut *transaction)
            .await?;
    }
    let change =
        Change::account_updated(username, old.role, new_role, update.password_hash.is_some());
    append(&mut transaction, audit, change, now).await?;
    transaction.commit().await?;
    Ok(Changed::Done(Account::try_from(row)?))
}

/// Deletes an account and its sessions; refused when it is the last admin.
pub async fn delete_account<DB>(
    mut transaction: Transaction<'static, DB>,
    username: &str,
    now: OffsetDateTime,
    audit: &AuditContext,
) -> Result<Changed<()>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'r> (i64, String): FromRow<'r, DB::Row>,
    for<'r> AccountRow: FromRow<'r, DB::Row>,
{
    sqlx::query("DELETE FROM operator_sessions WHERE username = $1")
        .bind(username.to_owned())
        .execute(&mut *transaction)
        .await?;
    let old: Option<AccountRow> = sqlx::query_as(&format!(
        "DELETE FROM operator_accounts WHERE username = $1 RETURNING {ACCOUNT_COLUMNS}"
    ))
    .bind(username.to_owned())
    .fetch_optional(&mut *transaction)
    .await?;
    let Some(old) = old else {
        return Ok(Changed::NotFound);
    };
    let old = Account::try_from(old)?;
    if old.role == Role::Admin && !admin_remains(&mut transaction).await? {
        return Ok(Changed::LastAdmin);
    }
    append(
        &mut transaction,
        audit,
        Change::account_deleted(username, old.role),
        now,
    )
    .await?;
    transaction.commit().await?;
    Ok(Changed::Done(()))
}

/// Stores a session (and drops expired ones, so the table does not grow without bound).
pub async fn create_session<DB>(
    mut transaction: Transaction<'static, DB>,
    session: &NewSession,
    audit: &AuditContext,
) -> Result<()>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'r> (i64, String): FromRow<'r, DB::Row>,
{
    sqlx::query("DELETE FROM operator_sessions WHERE expires_at <= $1")
        .bind(micros(session.created_at))
        .execute(&mut *transaction)
        .await?;
    sqlx::query(
        "INSERT INTO operator_sessions (id_hash, username, created_at, expires_at) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(session.id_hash.clone())
    .bind(session.username.clone())
    .bind(micros(session.created_at))
    .bind(micros(session.expires_at))
    .execute(&mut *transaction)
    .await?;
    let change = Change::signed_in(&session.username);
    append(&mut transaction, audit, change, session.created_at).await?;
    transaction.commit().await?;
    Ok(())
}

/// The account of an unexpired session, with its current role.
pub async fn session<DB>(
    pool: &Pool<DB>,
    id_hash: &str,
    now: OffsetDateTime,
) -> Result<Option<SessionAccount>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> (String, String, i64): FromRow<'r, DB::Row>,
{
    let row: Option<(String, String, i64)> = sqlx::query_as(
        "SELECT a.username, a.role, s.expires_at FROM operator_sessions s \
         JOIN operator_accounts a ON a.username = s.username \
         WHERE s.id_hash = $1 AND s.expires_at > $2",
    )
    .bind(id_hash.to_owned())
    .bind(micros(now))
    .fetch_optional(pool)
    .await?;
    row.map(|(username, role_text, expires_at)| {
        Ok(SessionAccount {
            username,
            role: role(&role_text)?,
            expires_at: from_micros(expires_at)?,
        })
    })
    .transpose()
}

/// Ends a session; false when there was none.
pub async fn delete_session<DB>(
    mut transaction: Transaction<'static, DB>,
    id_hash: &str,
    now: OffsetDateTime,
    audit: &AuditContext,
) -> Result<bool>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'r> (String,): FromRow<'r, DB::Row>,
    for<'r> (i64, String): FromRow<'r, DB::Row>,
{
    let username: Option<String> =
        sqlx::query_scalar("DELETE FROM operator_sessions WHERE id_hash = $1 RETURNING username")
            .bind(id_hash.to_owned())
            .fetch_optional(&mut *transaction)
            .await?;
    let Some(username) = username else {
        return Ok(false);
    };
    append(&mut transaction, audit, Change::signed_out(&username), now).await?;
    transaction.commit().await?;
    Ok(true)
}

pub async fn create_api_token<DB>(
    mut transaction: Transaction<'static, DB>,
    token: &NewApiToken,
    audit: &AuditContext,
) -> Result<ApiToken>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'r> (i64, String): FromRow<'r, DB::Row>,
{
    let created_by = audit.actor.to_string();
    sqlx::query(
        "INSERT INTO api_tokens (id, name, role, token_hash, created_by, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(token.id.clone())
    .bind(token.name.clone())
    .bind(token.role.as_str().to_owned())
    .bind(token.token_hash.clone())
    .bind(created_by.clone())
    .bind(micros(token.created_at))
    .bind(token.expires_at.map(micros))
    .execute(&mut *transaction)
    .await?;
    let change = Change::api_token_created(&token.id, &token.name, token.role, token.expires_at);
    append(&mut transaction, audit, change, token.created_at).await?;
    transaction.commit().await?;
    Ok(ApiToken {
        id: token.id.clone(),
        name: token.name.clone(),
        role: token.role,
        created_by,
        created_at: from_micros(micros(token.created_at))?,
        expires_at: token.expires_at.map(micros).map(from_micros).transpose()?,
    })
}

/// The unexpired token whose hash is `token_hash`.
pub async fn api_token<DB>(
    pool: &Pool<DB>,
    token_hash: &str,
    now: OffsetDateTime,
) -> Result<Option<ApiToken>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> TokenRow: FromRow<'r, DB::Row>,
{
    let row: Option<TokenRow> = sqlx::query_as(&format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens \
         WHERE token_hash = $1 AND (expires_at IS NULL OR expires_at > $2)"
    ))
    .bind(token_hash.to_owned())
    .bind(micros(now))
    .fetch_optional(pool)
    .await?;
    row.map(ApiToken::try_from).transpose()
}

pub async fn list_api_tokens<DB>(pool: &Pool<DB>) -> Result<Vec<ApiToken>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'r> TokenRow: FromRow<'r, DB::Row>,
{
    let rows: Vec<TokenRow> = sqlx::query_as(&format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id"
    ))
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(ApiToken::try_from).collect()
}

/// Revokes a token; false when there was none.
pub async fn delete_api_token<DB>(
    mut transaction: Transaction<'static, DB>,
    id: &str,
    now: OffsetDateTime,
    audit: &AuditContext,
) -> Result<bool>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'r> (i64, String): FromRow<'r, DB::Row>,
    for<'r> TokenRow: FromRow<'r, DB::Row>,
{
    let old: Option<TokenRow> = sqlx::query_as(&format!(
        "DELETE FROM api_tokens WHERE id = $1 RETURNING {TOKEN_COLUMNS}"
    ))
    .bind(id.to_owned())
    .fetch_optional(&mut *transaction)
    .await?;
    let Some(old) = old else {
        return Ok(false);
    };
    let old = ApiToken::try_from(old)?;
    let change = Change::api_token_deleted(&old.id, &old.name, old.role);
    append(&mut transaction, audit, change, now).await?;
    transaction.commit().await?;
    Ok(true)
}
