//! Who is calling, and may they: the [`Principal`] of a request (a session cookie or an
//! `Authorization: Bearer` API token), the role each route wants ([`authorize`]), CSRF on
//! unsafe requests made with a cookie, and `/api/v1/auth/*` (sign in, sign out, who am I).
//!
//! HTML pages check for a session with [`page_session`], which sends a browser without one
//! to `/login`.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::extract::JsonBody;
use super::{ApiError, ApiState, REQUEST_ID};
use crate::audit::AuditContext;
use crate::operators::{secrets, Actor, Role};
use crate::storage::NewSession;

/// The session cookie: HttpOnly, SameSite=Strict, Secure when the request came over TLS.
pub const SESSION_COOKIE: &str = "ampora_session";

/// Unsafe requests authenticated by the session cookie carry the session's CSRF token here.
pub const CSRF_HEADER: HeaderName = HeaderName::from_static("x-csrf-token");

/// Who may call a group of routes (see `api/mod.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// At least this role, whatever the method.
    Role(Role),
    /// Reads (`GET`, `HEAD`) a viewer; anything else an operator.
    ReadOrChange,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub actor: Actor,
    pub role: Role,
    /// Signed in with a session cookie: its CSRF token (for pages to embed) and id hash.
    pub session: Option<SessionInfo>,
    /// Who and from where, for the audit log.
    pub audit: AuditContext,
}

#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub csrf_token: String,
    id_hash: String,
}

impl Principal {
    /// 403 unless the principal's role includes `needed`.
    pub fn require(&self, needed: Role) -> Result<(), ApiError> {
        if self.role.allows(needed) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this needs the {} role; {} has {}",
                needed.as_str(),
                self.actor,
                self.role.as_str()
            )))
        }
    }

    /// Whether `given` is this session's CSRF token (an HTML form's hidden field, say).
    /// Bearer tokens need none: a browser never sends them on its own.
    pub fn csrf_matches(&self, given: Option<&str>) -> bool {
        match &self.session {
            Some(session) => given.is_some_and(|given| secrets::same(given, &session.csrf_token)),
            None => true,
        }
    }
}

/// The client's IP address, as the audit log and the sign-in guard see it.
pub(crate) fn client_address(parts: &Parts) -> String {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip().to_string())
        .unwrap_or_default()
}

pub(crate) fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|id| id.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Authenticates a request from its headers: a Bearer token if there is an `Authorization`
/// header, else the session cookie. `None` when it carries neither; an error when what it
/// carries is not valid (401) or, with `csrf_header`, a cookie request is unsafe without its
/// CSRF token in `X-CSRF-Token` (403).
async fn authenticate(
    state: &ApiState,
    parts: &Parts,
    csrf_header: bool,
) -> Result<Option<Principal>, ApiError> {
    let now = OffsetDateTime::now_utc();
    let audit = |actor: &Actor| AuditContext {
        actor: actor.clone(),
        address: client_address(parts),
        request_id: request_id(&parts.headers),
    };
    if let Some(authorization) = parts.headers.get(header::AUTHORIZATION) {
        let token = authorization
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| ApiError::Unauthorized("Authorization must be Bearer TOKEN".into()))?;
        let token = state
            .store
            .api_token(&secrets::hash(token), now)
            .await?
            .ok_or_else(|| ApiError::Unauthorized("unknown or expired API token".into()))?;
        let actor = Actor::ApiToken(token.id);
        return Ok(Some(Principal {
            audit: audit(&actor),
            actor,
            role: token.role,
            session: None,
        }));
    }
    let Some(session_id) = cookie(&parts.headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let id_hash = secrets::hash(session_id);
    let account =
        state.store.session(&id_hash, now).await?.ok_or_else(|| {
            ApiError::Unauthorized("the session expired or ended: sign in".into())
        })?;
    let csrf_token = secrets::csrf_token(session_id);
    if csrf_header && !is_safe(&parts.method) {
        let given = parts
            .headers
            .get(CSRF_HEADER)
            .and_then(|value| value.to_str().ok());
        if !given.is_some_and(|given| secrets::same(given, &csrf_token)) {
            return Err(ApiError::Forbidden(
                "missing or wrong X-CSRF-Token for this session".into(),
            ));
        }
    }
    let actor = Actor::Account(account.username);
    Ok(Some(Principal {
        audit: audit(&actor),
        actor,
        role: account.role,
        session: Some(SessionInfo {
            csrf_token,
            id_hash,
        }),
    }))
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// A handler's caller: the one [`authorize`] found, or authenticated here (401 without one).
impl FromRequestParts<ApiState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        if let Some(principal) = parts.extensions.get::<Principal>() {
            return Ok(principal.clone());
        }
        authenticate(state, parts, true)
            .await?
            .ok_or_else(|| ApiError::Unauthorized("sign in, or send an API token".into()))
    }
}

/// Middleware for a group of routes: authenticates the request, checks its role against
/// `access`, and leaves the [`Principal`] in the request for the handler.
pub async fn authorize(
    State((state, access)): State<(ApiState, Access)>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let principal = match Principal::from_request_parts(&mut parts, &state).await {
        Ok(principal) => principal,
        Err(error) => return error.into_response(),
    };
    let needed = match access {
        Access::Role(role) => role,
        Access::ReadOrChange if is_safe(&parts.method) => Role::Viewer,
        Access::ReadOrChange => Role::Operator,
    };
    if let Err(error) = principal.require(needed) {
        return error.into_response();
    }
    parts.extensions.insert(principal);
    next.run(Request::from_parts(parts, body)).await
}

/// For HTML pages: the signed-in account, or a redirect to `/login?next=PATH` for a browser
/// without a valid session. A page taking an unsafe request (a form's POST) checks the form's
/// CSRF field itself with [`Principal::csrf_matches`]; the role with [`Principal::require`].
pub async fn page_session(state: &ApiState, parts: &Parts) -> Result<Principal, Response> {
    match authenticate(state, parts, false).await {
        Ok(Some(principal)) if principal.session.is_some() => Ok(principal),
        Err(ApiError::Unavailable(message)) => Err(ApiError::Unavailable(message).into_response()),
        _ => {
            let next = parts.uri.path_and_query().map_or("/", |path| path.as_str());
            let query: String = url_encode(next);
            Err(Redirect::to(&format!("/login?next={query}")).into_response())
        }
    }
}

/// Middleware for the web UI's pages: a browser without a session goes to `/login`; a signed-in
/// one's page learns who is looking (a [`crate::ui::Viewer`], with the CSRF token its scripts
/// send back).
pub async fn pages(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let principal = match page_session(&state, &parts).await {
        Ok(principal) => principal,
        Err(redirect) => return redirect,
    };
    parts.extensions.insert(crate::ui::Viewer {
        username: match &principal.actor {
            Actor::Account(name) => name.clone(),
            other => other.to_string(),
        },
        role: principal.role.as_str().to_owned(),
        csrf_token: principal
            .session
            .as_ref()
            .map(|session| session.csrf_token.clone())
            .unwrap_or_default(),
    });
    parts.extensions.insert(principal);
    next.run(Request::from_parts(parts, body)).await
}

/// Percent-encodes everything but unreserved characters.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

// === /api/v1/auth ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    username: String,
    password: String,
}

#[derive(Debug, Serialize)]
pub struct SessionView {
    pub username: String,
    pub role: Role,
    /// Send it as `X-CSRF-Token` with every unsafe request made with the session cookie.
    pub csrf_token: String,
}

/// Whether the request reached us over TLS (directly, or through a proxy that says so).
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .is_some_and(|proto| proto.as_bytes().eq_ignore_ascii_case(b"https"))
}

fn session_cookie(value: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .expect("a cookie of hex and fixed text")
}

/// A new session: what the client is told, and the cookie that carries it.
#[derive(Debug)]
pub struct SignedIn {
    pub session: SessionView,
    /// The `Set-Cookie` value.
    pub cookie: HeaderValue,
}

/// Checks `username`'s password (attempts limited per account and per address) and starts a
/// session. For `POST /api/v1/auth/login`, and for a sign-in page's form.
pub async fn sign_in(
    state: &ApiState,
    parts: &Parts,
    username: &str,
    password: &str,
) -> Result<SignedIn, ApiError> {
    let address = client_address(parts);
    let operators = &state.operators;
    if let Err(retry_after) = operators
        .limiter
        .attempt(username, &address, Instant::now())
    {
        metrics::counter!("ampora_api_logins_total", "outcome" => "limited").increment(1);
        tracing::warn!(%username, %address, "sign-in attempts limited");
        return Err(ApiError::TooManyRequests {
            message: "too many sign-in attempts: wait and try again".into(),
            retry_after,
        });
    }
    let account = state.store.get_account(username).await?;
    let stored = account
        .as_ref()
        .map(|account| account.password_hash.as_str());
    let (Some(account), true) = (
        account.clone(),
        operators.passwords.verify(password, stored).await,
    ) else {
        metrics::counter!("ampora_api_logins_total", "outcome" => "refused").increment(1);
        tracing::warn!(%username, %address, "sign-in refused");
        return Err(ApiError::Unauthorized("wrong username or password".into()));
    };
    operators.limiter.succeeded(&account.username);
    let session_id = secrets::new_session_id();
    let now = OffsetDateTime::now_utc();
    let session = NewSession {
        id_hash: secrets::hash(&session_id),
        username: account.username.clone(),
        created_at: now,
        expires_at: now + operators.session_ttl,
    };
    let audit = AuditContext {
        actor: Actor::Account(account.username.clone()),
        address,
        request_id: request_id(&parts.headers),
    };
    state.store.create_session(&session, &audit).await?;
    metrics::counter!("ampora_api_logins_total", "outcome" => "ok").increment(1);
    tracing::info!(username = %account.username, "signed in");
    Ok(SignedIn {
        cookie: session_cookie(
            &session_id,
            operators.session_ttl.as_secs(),
            over_tls(&parts.headers),
        ),
        session: SessionView {
            username: account.username,
            role: account.role,
            csrf_token: secrets::csrf_token(&session_id),
        },
    })
}

/// `POST /api/v1/auth/login`: [`sign_in`], the session as JSON and its cookie.
pub async fn login(
    State(state): State<ApiState>,
    parts: Parts,
    JsonBody(request): JsonBody<LoginRequest>,
) -> Result<Response, ApiError> {
    let signed_in = sign_in(&state, &parts, &request.username, &request.password).await?;
    Ok((
        [(header::SET_COOKIE, signed_in.cookie)],
        Json(signed_in.session),
    )
        .into_response())
}

/// Ends `principal`'s session: the `Set-Cookie` value that clears its cookie. For
/// `POST /api/v1/auth/logout`, and for a page's sign-out form.
pub async fn sign_out(
    state: &ApiState,
    principal: &Principal,
    headers: &HeaderMap,
) -> Result<HeaderValue, ApiError> {
    let Some(session) = &principal.session else {
        return Err(ApiError::Invalid(
            "API tokens do not sign out: revoke one with DELETE /api/v1/api-tokens/{id}".into(),
        ));
    };
    state
        .store
        .delete_session(
            &session.id_hash,
            OffsetDateTime::now_utc(),
            &principal.audit,
        )
        .await?;
    tracing::info!(actor = %principal.actor, "signed out");
    Ok(session_cookie("", 0, over_tls(headers)))
}

/// `POST /api/v1/auth/logout`: [`sign_out`].
pub async fn logout(
    State(state): State<ApiState>,
    principal: Principal,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let cookie = sign_out(&state, &principal, &headers).await?;
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response())
}

#[derive(Debug, Serialize)]
pub struct WhoAmI {
    actor: String,
    role: Role,
    /// Present for a session.
    #[serde(skip_serializing_if = "Option::is_none")]
    csrf_token: Option<String>,
}

/// `GET /api/v1/auth/session`: who the caller is (and a session's CSRF token, for pages).
pub async fn session_get(principal: Principal) -> Json<WhoAmI> {
    Json(WhoAmI {
        actor: principal.actor.to_string(),
        role: principal.role,
        csrf_token: principal.session.map(|session| session.csrf_token),
    })
}
