//! Agent trust as stored: Ampora's CAs, bootstrap tokens and the certificates issued to agents.
//! The same statements on both backends, generic over the sqlx database; every state change
//! is one transaction, with its audit entry. Instance uids are hyphenated text in these tables on both backends.

use std::collections::BTreeMap;

use sqlx::{Database, Decode, Encode, Executor, FromRow, IntoArguments, Pool, Transaction, Type};
use time::OffsetDateTime;
use uuid::Uuid;

use super::audit::append;
use super::encoding::{from_micros, micros};
use super::{Result, StoreError};
use crate::audit::{AuditContext, Change};
use crate::remote_config::sha256_hex;

/// A CA as stored: the current one (`retired_at` empty) or one rotated out.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCa {
    pub id: i64,
    pub certificate_der: Vec<u8>,
    /// The private key, encrypted with the key-encryption key; `None` when it lives in a
    /// PKCS#11 token under `key_label`.
    pub key_sealed: Option<Vec<u8>>,
    pub key_label: String,
    pub not_after: OffsetDateTime,
    pub created_at: OffsetDateTime,
    pub retired_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone)]
pub struct NewCa {
    pub certificate_der: Vec<u8>,
    pub key_sealed: Option<Vec<u8>>,
    pub key_label: String,
    pub not_after: OffsetDateTime,
}

/// A bootstrap token as stored: never the token, only its hash.
#[derive(Debug, Clone, PartialEq)]
pub struct BootstrapToken {
    pub id: i64,
    pub labels: BTreeMap<String, String>,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub used_at: Option<OffsetDateTime>,
    pub used_by: Option<Uuid>,
    pub revoked_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone)]
pub struct NewBootstrapToken {
    /// SHA-256 of the token, lowercase hex.
    pub token_hash: String,
    pub labels: BTreeMap<String, String>,
    pub expires_at: OffsetDateTime,
}

/// Why a bootstrap token does not enrol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("unknown bootstrap token")]
    Unknown,
    #[error("bootstrap token already used")]
    Used,
    #[error("bootstrap token expired")]
    Expired,
    #[error("bootstrap token revoked")]
    Revoked,
}

/// Why an enrolment was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrolRefusal {
    #[error(transparent)]
    Token(#[from] TokenRefusal),
    /// The uid holds a valid certificate: only that certificate may renew it.
    #[error("instance uid {0} is already enrolled; renew with its certificate")]
    AlreadyEnrolled(Uuid),
}

/// A certificate issued to an agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentCertificate {
    /// Lowercase hex SHA-256 of the DER: the agent's identity.
    pub fingerprint: String,
    pub instance_uid: Uuid,
    pub ca_id: i64,
    /// The bootstrap token it was enrolled with; `None` for a renewal.
    pub token_id: Option<i64>,
    pub labels: BTreeMap<String, String>,
    pub issued_at: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
    pub revoked_reason: Option<String>,
}

impl AgentCertificate {
    /// Neither revoked nor expired at `now`.
    pub fn is_valid(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && self.not_after > now
    }
}

#[derive(Debug, Clone)]
pub struct NewCertificate {
    pub fingerprint: String,
    pub instance_uid: Uuid,
    pub certificate_der: Vec<u8>,
    pub ca_id: i64,
    /// Given to the certificate when it is a renewal; an enrolment takes its token's.
    pub labels: BTreeMap<String, String>,
    pub issued_at: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// What the database trusts now: for the trust state gateways enforce.
#[derive(Debug, Clone, PartialEq)]
pub struct TrustSnapshot {
    /// The current CA first, then those rotated out that still have unexpired certificates.
    pub cas: Vec<StoredCa>,
    /// Fingerprints of revoked certificates not yet expired.
    pub revoked: Vec<String>,
    /// Whether any agent holds a valid certificate: until one does, no uid is bound.
    pub any_valid: bool,
}

/// Ampora's CA, bootstrap tokens and agents' certificates.
#[async_trait::async_trait]
pub trait TrustStore: Send + Sync {
    /// The current CA, if one was created.
    async fn current_ca(&self) -> Result<Option<StoredCa>>;

    /// Stores `ca` as the current CA unless there is one already; returns the current CA
    /// either way (of two replicas starting at once, one creates it and both use it).
    async fn create_ca(
        &self,
        ca: &NewCa,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<StoredCa>;

    /// Retires the current CA, if it is still `current_id`, and makes `ca` current, in one
    /// transaction. `None` when another rotation came first.
    async fn rotate_ca(
        &self,
        current_id: i64,
        ca: &NewCa,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Option<StoredCa>>;

    async fn get_ca(&self, id: i64) -> Result<Option<StoredCa>>;

    /// The CAs and revocations in force at `now`.
    async fn trust_snapshot(&self, now: OffsetDateTime) -> Result<TrustSnapshot>;

    async fn create_bootstrap_token(
        &self,
        new: &NewBootstrapToken,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<BootstrapToken>;

    /// Tokens by id, after `after`, at most `limit`.
    async fn list_bootstrap_tokens(&self, after: i64, limit: u32) -> Result<Vec<BootstrapToken>>;

    /// Revokes an unused token; `None` when there is no such token, the token unchanged
    /// when it was used or revoked already.
    async fn revoke_bootstrap_token(
        &self,
        id: i64,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Option<BootstrapToken>>;

    /// The token whose hash this is, if it would enrol at `now`: read before signing, so a
    /// refused enrolment costs no signature. [`TrustStore::enrol`] decides for good.
    async fn check_bootstrap_token(
        &self,
        token_hash: &str,
        now: OffsetDateTime,
    ) -> Result<std::result::Result<BootstrapToken, TokenRefusal>>;

    /// Stores an issued certificate, in one transaction: with `token_hash`, consumes the token
    /// (exactly one of concurrent enrolments with one token wins, on any replica), refuses a uid
    /// that holds a valid certificate already, and gives the certificate the token's labels;
    /// without, a renewal, stores it as it is. A refused enrolment leaves no audit entry.
    async fn enrol(
        &self,
        token_hash: Option<&str>,
        certificate: &NewCertificate,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<std::result::Result<AgentCertificate, EnrolRefusal>>;

    /// Certificates by fingerprint, after `after`, at most `limit`.
    async fn list_certificates(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AgentCertificate>>;

    /// Revokes a certificate; `None` when there is no such certificate, the certificate
    /// unchanged when it was revoked already.
    async fn revoke_certificate(
        &self,
        fingerprint: &str,
        reason: &str,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Option<AgentCertificate>>;

    /// The certificates with these fingerprints, and the valid ones of these agents: what the
    /// identity check of a round of messages needs, in one query.
    async fn certificate_bindings(
        &self,
        fingerprints: &[String],
        uids: &[Uuid],
        now: OffsetDateTime,
    ) -> Result<Vec<AgentCertificate>>;

    /// An agent presented `fingerprint`: its other valid certificates issued before that one
    /// are revoked (`superseded`), one audit entry each. Returns their fingerprints.
    async fn retire_superseded(
        &self,
        uid: Uuid,
        fingerprint: &str,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Vec<String>>;
}

// === rows ===

const CA_COLUMNS: &str =
    "id, certificate_der, key_sealed, key_label, not_after, created_at, retired_at";

const TOKEN_COLUMNS: &str = "id, labels, created_at, expires_at, used_at, used_by, revoked_at";

const CERTIFICATE_COLUMNS: &str = "fingerprint, instance_uid, ca_id, token_id, labels, \
     issued_at, not_after, revoked_at, revoked_reason";

#[derive(FromRow)]
pub struct CaRow {
    id: i64,
    certificate_der: Vec<u8>,
    key_sealed: Option<Vec<u8>>,
    key_label: String,
    not_after: i64,
    created_at: i64,
    retired_at: Option<i64>,
}

impl TryFrom<CaRow> for StoredCa {
    type Error = StoreError;

    fn try_from(row: CaRow) -> Result<StoredCa> {
        Ok(StoredCa {
            id: row.id,
            certificate_der: row.certificate_der,
            key_sealed: row.key_sealed,
            key_label: row.key_label,
            not_after: from_micros(row.not_after)?,
            created_at: from_micros(row.created_at)?,
            retired_at: row.retired_at.map(from_micros).transpose()?,
        })
    }
}

#[derive(FromRow)]
pub struct TokenRow {
    id: i64,
    labels: String,
    created_at: i64,
    expires_at: i64,
    used_at: Option<i64>,
    used_by: Option<String>,
    revoked_at: Option<i64>,
}

impl TryFrom<TokenRow> for BootstrapToken {
    type Error = StoreError;

    fn try_from(row: TokenRow) -> Result<BootstrapToken> {
        Ok(BootstrapToken {
            id: row.id,
            labels: labels(&row.labels)?,
            created_at: from_micros(row.created_at)?,
            expires_at: from_micros(row.expires_at)?,
            used_at: row.used_at.map(from_micros).transpose()?,
            used_by: row.used_by.as_deref().map(uid).transpose()?,
            revoked_at: row.revoked_at.map(from_micros).transpose()?,
        })
    }
}

#[derive(FromRow)]
pub struct CertificateRow {
    fingerprint: String,
    instance_uid: String,
    ca_id: i64,
    token_id: Option<i64>,
    labels: String,
    issued_at: i64,
    not_after: i64,
    revoked_at: Option<i64>,
    revoked_reason: Option<String>,
}

impl TryFrom<CertificateRow> for AgentCertificate {
    type Error = StoreError;

    fn try_from(row: CertificateRow) -> Result<AgentCertificate> {
        Ok(AgentCertificate {
            fingerprint: row.fingerprint,
            instance_uid: uid(&row.instance_uid)?,
            ca_id: row.ca_id,
            token_id: row.token_id,
            labels: labels(&row.labels)?,
            issued_at: from_micros(row.issued_at)?,
            not_after: from_micros(row.not_after)?,
            revoked_at: row.revoked_at.map(from_micros).transpose()?,
            revoked_reason: row.revoked_reason,
        })
    }
}

fn labels(text: &str) -> Result<BTreeMap<String, String>> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("labels: {e}")))
}

fn uid(text: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|e| StoreError::Corrupt(format!("instance uid {text:?}: {e}")))
}

fn labels_json(labels: &BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).expect("labels serialize")
}

fn convert<R, T>(rows: Vec<R>) -> Result<Vec<T>>
where
    T: TryFrom<R, Error = StoreError>,
{
    rows.into_iter().map(T::try_from).collect()
}

// === statements ===

pub async fn current_ca<DB>(pool: &Pool<DB>) -> Result<Option<StoredCa>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'r> CaRow: FromRow<'r, DB::Row>,
{
    let row: Option<CaRow> = sqlx::query_as(&format!(
        "SELECT {CA_COLUMNS} FROM trust_cas WHERE retired_at IS NULL"
    ))
    .fetch_optional(pool)
    .await?;
    row.map(StoredCa::try_from).transpose()
}

pub async fn get_ca<DB>(pool: &Pool<DB>, id: i64) -> Result<Option<StoredCa>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> CaRow: FromRow<'r, DB::Row>,
{
    let row: Option<CaRow> =
        sqlx::query_as(&format!("SELECT {CA_COLUMNS} FROM trust_cas WHERE id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await?;
    row.map(StoredCa::try_from).transpose()
}

async fn insert_ca<DB>(
    connection: &mut DB::Connection,
    ca: &NewCa,
    now: OffsetDateTime,
) -> Result<StoredCa>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<Vec<u8>>: Encode<'q, DB> + Type<DB>,
    for<'r> CaRow: FromRow<'r, DB::Row>,
{
    let row: CaRow = sqlx::query_as(&format!(
        "INSERT INTO trust_cas (certificate_der, key_sealed, key_label, not_after, created_at) \
         VALUES ($1, $2, $3, $4, $5) RETURNING {CA_COLUMNS}"
    ))
    .bind(ca.certificate_der.clone())
    .bind(ca.key_sealed.clone())
    .bind(ca.key_label.clone())
    .bind(micros(ca.not_after))
    .bind(micros(now))
    .fetch_one(connection)
    .await?;
    row.try_into()
}

pub async fn create_ca<DB>(
    mut transaction: Transaction<'static, DB>,
    ca: &NewCa,
    now: OffsetDateTime,
    audit: &AuditContext,
) -> Result<Option<StoredCa>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'r> (i64, String): FromRow<'r, DB::Row>,
    for<'q> Vec<u8>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<Vec<u8>>: Encode<'q, DB> + Type<DB>,
    for<'r> CaRow: FromRow<'r, DB::Row>,
{
    // The unique index on the current CA refuses a second one: the caller reads the winner.
    match insert_ca(&mut transaction, ca, now).await {
        Ok(created) => {
            let change = Change::ca_created(
                created.id,
                &sha256_hex(&created.certificate_der),
                created.not_after,
            );
            append(&mut transaction, audit, change, now).await?;
            transaction.commit().await?;
            Ok(Some(created))
        }
        Err(StoreError::Duplicate(_)) => Ok(None),
        Err(error) => Err(error),
    }
}

pub async fn rotate_ca<DB>(
    mut transaction: Transaction<'static, DB>,
    current_id: i64,
    ca: &NewCa,
    now: OffsetDateTime,
    audit: &AuditContext,
) -> Result<Option<StoredCa>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'r> (i64, String): FromRow<'r, DB::Row>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<Vec<u8>>: Encode<'q, DB> + Type<DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'r> CaRow: FromRow<'r, DB::Row>,
{
    let retired: Option<i64> = sqlx::query_scalar(
        "UPDATE trust_cas SET retired_at = $1 WHERE id = $2 AND retired_at IS NULL RETURNING id",
    )
    .bind(micros(now))
    .bind(current_id)
    .fetch_optional(&mut *transaction)
    .await?;
    if retired.is_none() {
        return Ok(None);
    }
    let created = insert_ca(&mut transaction, ca, now).await?;
    let change = Change::ca_rotated(
        current_id,
        created.id,
        &sha256_hex(&created.certificate_der),
        created.not_after,
    );
    append(&mut transaction, audit, change, now).await?;
    transaction.commit().await?;
    Ok(Some(created))
}

pub async fn trust_snapshot<DB>(pool: &Pool<DB>, now: OffsetDateTime) -> Result<TrustSnapshot>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Decode<'q, DB> + Type<DB>,
    for<'r> (String,): FromRow<'r, DB::Row>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'r> CaRow: FromRow<'r, DB::Row>,
{
    let cas: Vec<CaRow> = sqlx::query_as(&format!(
        "SELECT {CA_COLUMNS} FROM trust_cas WHERE retired_at IS NULL OR EXISTS \
         (SELECT 1 FROM agent_certificates c WHERE c.ca_id = trust_cas.id AND c.not_after > $1) \
         ORDER BY retired_at IS NOT NULL, id DESC"
    ))
    .bind(micros(now))
    .fetch_all(pool)
    .await?;
    let revoked: Vec<String> = sqlx::query_scalar(
        "SELECT fingerprint FROM agent_certificates \
         WHERE revoked_at IS NOT NULL AND not_after > $1 ORDER BY fingerprint",
    )
    .bind(micros(now))
    .fetch_all(pool)
    .await?;
    let valid: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM agent_certificates \
         WHERE revoked_at IS NULL AND not_after > $1 LIMIT 1) AS any_valid",
    )
    .bind(micros(now))
    .fetch_one(pool)
    .await?;
    Ok(TrustSnapshot {
        cas: convert(cas)?,
        revoked,
        any_valid: valid > 0,
    })
}

pub async fn create_bootstrap_token<DB>(
    mut transaction: Transaction<'static, DB>,
    new: &NewBootstrapToken,
    now: OffsetDateTime,
    audit: &AuditContext,
) -> Result<BootstrapToken>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'r> (i64, String): FromRow<'r, DB::Row>,
    for<'r> TokenRow: FromRow<'r, DB::Row>,
{
    let row: TokenRow = sqlx::query_as(&format!(
        "INSERT INTO bootstrap_tokens (token_hash, labels, created_at, expires_at) \
         VALUES ($1, $2, $3, $4) RETURNING {TOKEN_COLUMNS}"
    ))
    .bind(new.token_hash.clone())
    .bind(labels_json(&new.labels))
    .bind(micros(now))
    .bind(micros(new.expires_at))
    .fetch_one(&mut *transaction)
    .await?;
    let token = BootstrapToken::try_from(row)?;
    let change = Change::bootstrap_token_created(token.id, &token.labels, token.expires_at);
    append(&mut transaction, audit, change, now).await?;
    transaction.commit().await?;
    Ok(token)
}

pub async fn list_bootstrap_tokens<DB>(
    pool: &Pool<DB>,
    after: i64,
    limit: u32,
) -> Result<Vec<BootstrapToken>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> TokenRow: FromRow<'r, DB::Row>,
{
    let rows: Vec<TokenRow> = sqlx::query_as(&format!(
        "SELECT {TOKEN_COLUMNS} FROM bootstrap_tokens WHERE id > $1 ORDER BY id LIMIT $2"
    ))
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    convert(rows)
}

pub async fn revoke_bootstrap_token<DB>(
    mut transaction: Transaction<'static, DB>,
    id: i64,
    now: OffsetDateTime,
    audit: &AuditContext,
) -> Result<Option<BootstrapToken>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'r> (i64, String): FromRow<'r, DB::Row>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'r> TokenRow: FromRow<'r, DB::Row>,
{
    let revoked: Option<i64> = sqlx::query_scalar(
        "UPDATE bootstrap_tokens SET revoked_at = $1 \
         WHERE id = $2 AND used_at IS NULL AND revoked_at IS NULL RETURNING id",
    )
    .bind(micros(now))
    .bind(id)
    .fetch_optional(&mut *transaction)
    .await?;
    if revoked.is_some() {
        append(
            &mut transaction,
            audit,
            Change::bootstrap_token_revoked(id),
            now,
        )
        .await?;
    }
    let row: Option<TokenRow> = sqlx::query_as(&format!(
        "SELECT {TOKEN_COLUMNS} FROM bootstrap_tokens WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *transaction)
    .await?;
    transaction.commit().await?;
    row.map(BootstrapToken::try_from).transpose()
}

/// Why the token with this hash would not enrol at `now`, if it would not.
fn refusal(token: Option<&BootstrapToken>, now: OffsetDateTime) -> Option<TokenRefusal> {
    let Some(token) = token else {
        return Some(TokenRefusal::Unknown);
    };
    if token.revoked_at.is_some() {
        Some(TokenRefusal::Revoked)
    } else if token.used_at.is_some() {
        Some(TokenRefusal::Used)
    } else if token.expires_at <= now {
        Some(TokenRefusal::Expired)
    } else {
        None
    }
}

async fn token_by_hash<DB>(
    connection: &mut DB::Connection,
    token_hash: &str,
) -> Result<Option<BootstrapToken>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'r> TokenRow: FromRow<'r, DB::Row>,
{
    let row: Option<TokenRow> = sqlx::query_as(&format!(
        "SELECT {TOKEN_COLUMNS} FROM bootstrap_tokens WHERE token_hash = $1"
    ))
    .bind(token_hash.to_owned())
    .fetch_optional(connection)
    .await?;
    row.map(BootstrapToken::try_from).transpose()
}

pub async fn check_bootstrap_token<DB>(
    pool: &Pool<DB>,
    token_hash: &str,
    now: OffsetDateTime,
) -> Result<std::result::Result<BootstrapToken, TokenRefusal>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'r> TokenRow: FromRow<'r, DB::Row>,
{
    let mut connection = pool.acquire().await?;
    let token = token_by_hash(&mut connection, token_hash).await?;
    Ok(match refusal(token.as_ref(), now) {
        Some(refusal) => Err(refusal),
        None => Ok(token.expect("a token without a refusal exists")),
    })
}

pub async fn enrol<DB>(
    mut transaction: Transaction<'static, DB>,
    token_hash: Option<&str>,
    certificate: &NewCertificate,
    now: OffsetDateTime,
    audit: &AuditContext,
) -> Result<std::result::Result<AgentCertificate, EnrolRefusal>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Type<DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'r> (i64, String): FromRow<'r, DB::Row>,
    for<'r> TokenRow: FromRow<'r, DB::Row>,
    for<'r> CertificateRow: FromRow<'r, DB::Row>,
{
    let uid = certificate.instance_uid.hyphenated().to_string();
    let mut labels = certificate.labels.clone();
    let mut token_id = None;
    if let Some(token_hash) = token_hash {
        // The guarded update is the decision: of concurrent enrolments with one token, the
        // first to update it wins; the others find it used (PostgreSQL re-checks the row
        // after the winner commits; SQLite writes one at a time).
        let consumed: Option<(i64, String)> = sqlx::query_as(
            "UPDATE bootstrap_tokens SET used_at = $1, used_by = $2 \
             WHERE token_hash = $3 AND used_at IS NULL AND revoked_at IS NULL \
             AND expires_at > $1 RETURNING id, labels",
        )
        .bind(micros(now))
        .bind(uid.clone())
        .bind(token_hash.to_owned())
        .fetch_optional(&mut *transaction)
        .await?;
        let Some((id, token_labels)) = consumed else {
            let token = token_by_hash(&mut transaction, token_hash).await?;
            let why = refusal(token.as_ref(), now).unwrap_or(TokenRefusal::Used);
            return Ok(Err(why.into()));
        };
        let enrolled: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM agent_certificates \
             WHERE instance_uid = $1 AND revoked_at IS NULL AND not_after > $2",
        )
        .bind(uid.clone())
        .bind(micros(now))
        .fetch_one(&mut *transaction)
        .await?;
        if enrolled > 0 {
            // Rolled back: the token stays unused.
            return Ok(Err(EnrolRefusal::AlreadyEnrolled(certificate.instance_uid)));
        }
        token_id = Some(id);
        labels = self::labels(&token_labels)?;
    }
    let row: CertificateRow = sqlx::query_as(&format!(
        "INSERT INTO agent_certificates (fingerprint, instance_uid, certificate_der, ca_id, \
         token_id, labels, issued_at, not_after) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         RETURNING {CERTIFICATE_COLUMNS}"
    ))
    .bind(certificate.fingerprint.clone())
    .bind(uid)
    .bind(certificate.certificate_der.clone())
    .bind(certificate.ca_id)
    .bind(token_id)
    .bind(labels_json(&labels))
    .bind(micros(certificate.issued_at))
    .bind(micros(certificate.not_after))
    .fetch_one(&mut *transaction)
    .await?;
    let stored = AgentCertificate::try_from(row)?;
    let change = Change::certificate_issued(
        &stored.fingerprint,
        stored.instance_uid,
        stored.ca_id,
        stored.token_id,
        &stored.labels,
        stored.not_after,
    );
    append(&mut transaction, audit, change, now).await?;
    transaction.commit().await?;
    Ok(Ok(stored))
}

pub async fn list_certificates<DB>(
    pool: &Pool<DB>,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<AgentCertificate>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> CertificateRow: FromRow<'r, DB::Row>,
{
    let rows: Vec<CertificateRow> = sqlx::query_as(&format!(
        "SELECT {CERTIFICATE_COLUMNS} FROM agent_certificates \
         WHERE fingerprint > $1 ORDER BY fingerprint LIMIT $2"
    ))
    .bind(after.unwrap_or_default().to_owned())
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    convert(rows)
}

pub async fn revoke_certificate<DB>(
    mut transaction: Transaction<'static, DB>,
    fingerprint: &str,
    reason: &str,
    now: OffsetDateTime,
    audit: &AuditContext,
) -> Result<Option<AgentCertificate>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'r> (i64, String): FromRow<'r, DB::Row>,
    for<'r> (String,): FromRow<'r, DB::Row>,
    for<'r> CertificateRow: FromRow<'r, DB::Row>,
{
    let revoked: Option<String> = sqlx::query_scalar(
        "UPDATE agent_certificates SET revoked_at = $1, revoked_reason = $2 \
         WHERE fingerprint = $3 AND revoked_at IS NULL RETURNING fingerprint",
    )
    .bind(micros(now))
    .bind(reason.to_owned())
    .bind(fingerprint.to_owned())
    .fetch_optional(&mut *transaction)
    .await?;
    let row: Option<CertificateRow> = sqlx::query_as(&format!(
        "SELECT {CERTIFICATE_COLUMNS} FROM agent_certificates WHERE fingerprint = $1"
    ))
    .bind(fingerprint.to_owned())
    .fetch_optional(&mut *transaction)
    .await?;
    let certificate = row.map(AgentCertificate::try_from).transpose()?;
    if let (Some(_), Some(certificate)) = (revoked, &certificate) {
        let change = Change::certificate_revoked(fingerprint, certificate.instance_uid, reason);
        append(&mut transaction, audit, change, now).await?;
    }
    transaction.commit().await?;
    Ok(certificate)
}

pub async fn certificate_bindings<DB>(
    pool: &Pool<DB>,
    fingerprints: &[String],
    uids: &[Uuid],
    now: OffsetDateTime,
) -> Result<Vec<AgentCertificate>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> CertificateRow: FromRow<'r, DB::Row>,
{
    if fingerprints.is_empty() && uids.is_empty() {
        return Ok(Vec::new());
    }
    let list = |from: usize, count: usize| -> String {
        if count == 0 {
            return "NULL".into();
        }
        (from..from + count)
            .map(|n| format!("${n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let statement = format!(
        "SELECT {CERTIFICATE_COLUMNS} FROM agent_certificates WHERE fingerprint IN ({}) \
         OR (instance_uid IN ({}) AND revoked_at IS NULL AND not_after > $1)",
        list(2, fingerprints.len()),
        list(2 + fingerprints.len(), uids.len()),
    );
    let mut query = sqlx::query_as::<DB, CertificateRow>(&statement).bind(micros(now));
    for fingerprint in fingerprints {
        query = query.bind(fingerprint.clone());
    }
    for uid in uids {
        query = query.bind(uid.hyphenated().to_string());
    }
    convert(query.fetch_all(pool).await?)
}

pub async fn retire_superseded<DB>(
    mut transaction: Transaction<'static, DB>,
    uid: Uuid,
    fingerprint: &str,
    now: OffsetDateTime,
    audit: &AuditContext,
) -> Result<Vec<String>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'r> (i64, String): FromRow<'r, DB::Row>,
    for<'r> (String,): FromRow<'r, DB::Row>,
{
    let retired: Vec<String> = sqlx::query_scalar(
        "UPDATE agent_certificates SET revoked_at = $1, revoked_reason = 'superseded' \
         WHERE instance_uid = $2 AND fingerprint <> $3 AND revoked_at IS NULL \
         AND issued_at <= (SELECT issued_at FROM agent_certificates WHERE fingerprint = $3) \
         RETURNING fingerprint",
    )
    .bind(micros(now))
    .bind(uid.hyphenated().to_string())
    .bind(fingerprint.to_owned())
    .fetch_all(&mut *transaction)
    .await?;
    for retired in &retired {
        let change = Change::certificate_revoked(retired, uid, "superseded");
        append(&mut transaction, audit, change, now).await?;
    }
    transaction.commit().await?;
    Ok(retired)
}
