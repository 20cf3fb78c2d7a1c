//! Authentication and roles through the whole router: every route refuses a caller without
//! credentials (401) or with too small a role (403), sessions need their CSRF token for
//! changes, sign-in attempts are limited, and the audit log records and verifies it all.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::tests::{call, json_body, state, ADMIN_TOKEN};
use super::ApiState;
use crate::audit::AuditContext;
use crate::operators::{secrets, Role};
use crate::storage::NewApiToken;

const PASSWORD: &str = "a long enough password";

/// A bearer token of `role`, stored behind the API's back.
async fn token(state: &ApiState, role: Role) -> String {
    let token = format!("ampora_test-{}", role.as_str());
    let new = NewApiToken {
        id: format!("test-{}", role.as_str()),
        name: role.as_str().into(),
        role,
        token_hash: secrets::hash(&token),
        created_at: OffsetDateTime::now_utc(),
        expires_at: None,
    };
    state
        .store
        .create_api_token(&new, &AuditContext::system())
        .await
        .unwrap();
    token
}

/// Credentials a request carries.
#[derive(Clone, Copy)]
enum As<'a> {
    Nobody,
    Bearer(&'a str),
    Session(&'a Session),
    /// The session cookie without its CSRF token.
    CookieOnly(&'a Session),
}

#[derive(Debug, Clone)]
struct Session {
    cookie: String,
    csrf_token: String,
}

fn request(method: Method, uri: &str, who: As<'_>, body: Option<&Value>) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    builder = match who {
        // An empty cookie header keeps `call` from adding its admin token.
        As::Nobody => builder.header(header::COOKIE, "other=1"),
        As::Bearer(token) => builder.header(header::AUTHORIZATION, format!("Bearer {token}")),
        As::Session(session) => builder
            .header(header::COOKIE, &session.cookie)
            .header("x-csrf-token", &session.csrf_token),
        As::CookieOnly(session) => builder.header(header::COOKIE, &session.cookie),
    };
    match body {
        Some(body) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap(),
        None => builder.body(Body::empty()).unwrap(),
    }
}

async fn send(
    state: &ApiState,
    method: Method,
    uri: &str,
    who: As<'_>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let response = call(state, request(method, uri, who, body.as_ref())).await;
    let status = response.status();
    let body = if status == StatusCode::NO_CONTENT {
        Value::Null
    } else {
        body_of(response).await
    };
    (status, body)
}

async fn body_of(response: Response) -> Value {
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value == "application/json");
    if json {
        json_body(response).await
    } else {
        Value::Null
    }
}

async fn login_response(state: &ApiState, username: &str, password: &str) -> Response {
    let body = json!({"username": username, "password": password});
    call(
        state,
        request(Method::POST, "/api/v1/auth/login", As::Nobody, Some(&body)),
    )
    .await
}

/// Signs in; panics unless it works.
async fn login(state: &ApiState, username: &str) -> Session {
    let response = login_response(state, username, PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
    let set_cookie = response.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    let body = json_body(response).await;
    assert_eq!(body["username"], username);
    Session {
        cookie: set_cookie.split(';').next().unwrap().to_owned(),
        csrf_token: body["csrf_token"].as_str().unwrap().to_owned(),
    }
}

/// Creates an account through the API, as the admin token.
async fn create_user(state: &ApiState, username: &str, role: &str) {
    let (status, body) = send(
        state,
        Method::POST,
        "/api/v1/users",
        As::Bearer(ADMIN_TOKEN),
        Some(json!({"username": username, "password": PASSWORD, "role": role})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// Every route with the least role it needs (`None`: open to all).
fn routes() -> Vec<(Method, &'static str, Option<Role>)> {
    use Method as M;
    let viewer = Some(Role::Viewer);
    let operator = Some(Role::Operator);
    let admin = Some(Role::Admin);
    let uid = "/api/v1/agents/0190f0a8-0000-7000-8000-000000000000";
    vec![
        (M::GET, "/healthz", None),
        (M::GET, "/readyz", None),
        (M::GET, "/metrics", None),
        (M::GET, "/api/v1/agents", viewer),
        (M::GET, uid, viewer),
        (
            M::GET,
            "/api/v1/agents/0190f0a8-0000-7000-8000-000000000000/events",
            viewer,
        ),
        (M::GET, "/api/v1/configurations", viewer),
        (M::POST, "/api/v1/configurations", operator),
        (M::GET, "/api/v1/configurations/1", viewer),
        (M::PUT, "/api/v1/configurations/1/draft", operator),
        (M::POST, "/api/v1/configurations/1/validate", viewer),
        (M::POST, "/api/v1/configurations/1/publish", operator),
        (M::GET, "/api/v1/configurations/1/versions/1", viewer),
        (
            M::GET,
            "/api/v1/configurations/1/versions/1/swimlane.svg",
            viewer,
        ),
        (M::GET, "/api/v1/configurations/1/diff?from=1&to=1", viewer),
        (M::POST, "/api/v1/validate", viewer),
        (M::GET, "/api/v1/lint-rules", viewer),
        (M::PUT, "/api/v1/lint-rules/batch-processor", operator),
        (M::POST, "/api/v1/assignments", operator),
        (M::GET, "/api/v1/drift", viewer),
        (M::GET, "/api/v1/auth/session", viewer),
        (M::POST, "/api/v1/auth/logout", viewer),
        (M::GET, "/api/v1/users", admin),
        (M::POST, "/api/v1/users", admin),
        (M::PATCH, "/api/v1/users/nobody", admin),
        (M::DELETE, "/api/v1/users/nobody", admin),
        (M::GET, "/api/v1/api-tokens", admin),
        (M::POST, "/api/v1/api-tokens", admin),
        (M::DELETE, "/api/v1/api-tokens/nothing", admin),
        (M::GET, "/api/v1/audit", admin),
        (M::GET, "/api/v1/audit/verify", admin),
        (M::GET, "/api/v1/bootstrap-tokens", operator),
        (M::POST, "/api/v1/bootstrap-tokens", operator),
        (M::DELETE, "/api/v1/bootstrap-tokens/9999", operator),
        (M::POST, "/api/v1/ca/rotate", admin),
        (M::GET, "/api/v1/certificates", admin),
        (M::POST, "/api/v1/certificates/00ff/revoke", admin),
        // Agents': the CA, and the exchange whose credential is the bootstrap token.
        (M::GET, "/api/v1/ca.pem", None),
        (M::POST, "/api/v1/certificates", None),
    ]
}

#[tokio::test]
async fn every_route_needs_credentials_and_enough_role() {
    let state = state().await;
    let viewer = token(&state, Role::Viewer).await;
    let operator = token(&state, Role::Operator).await;
    let tokens = [
        (Role::Viewer, viewer.as_str()),
        (Role::Operator, operator.as_str()),
        (Role::Admin, ADMIN_TOKEN),
    ];
    for (method, uri, needed) in routes() {
        let body = (method != Method::GET && method != Method::DELETE).then(|| json!({}));
        let (status, answer) = send(&state, method.clone(), uri, As::Nobody, body.clone()).await;
        match needed {
            None => assert!(
                status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                "{method} {uri} is open: {status} {answer}"
            ),
            Some(_) => {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri}: {answer}");
                assert!(answer["error"].is_string(), "{method} {uri}: {answer}");
            }
        }
        let (status, _) = send(
            &state,
            method.clone(),
            uri,
            As::Bearer("ampora_not-a-token"),
            body.clone(),
        )
        .await;
        if needed.is_some() {
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {uri} with a bad token"
            );
        }
        for (role, token) in tokens {
            let (status, answer) =
                send(&state, method.clone(), uri, As::Bearer(token), body.clone()).await;
            let allowed = needed.is_none_or(|needed| role.allows(needed));
            if allowed {
                assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{method} {uri} as {role:?}: {status} {answer}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{method} {uri} as {role:?}: {answer}"
                );
                assert!(
                    answer["error"].as_str().unwrap().contains("role"),
                    "{answer}"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_session_needs_its_csrf_token_for_changes() {
    let state = state().await;
    create_user(&state, "olga", "operator").await;
    let response = login_response(&state, "olga", PASSWORD).await;
    let cookie = response.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.starts_with("ampora_session="), "{cookie}");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let session = login(&state, "olga").await;

    let (status, _) = send(
        &state,
        Method::GET,
        "/api/v1/agents",
        As::CookieOnly(&session),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "reads need no CSRF token");
    let create = json!({"name": "edge", "yaml": "receivers: {}\n"});
    let (status, body) = send(
        &state,
        Method::POST,
        "/api/v1/configurations",
        As::CookieOnly(&session),
        Some(create.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("X-CSRF-Token"),
        "{body}"
    );
    let wrong = Session {
        csrf_token: secrets::csrf_token("another session"),
        ..session.clone()
    };
    let (status, _) = send(
        &state,
        Method::POST,
        "/api/v1/configurations",
        As::Session(&wrong),
        Some(create.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = send(
        &state,
        Method::POST,
        "/api/v1/configurations",
        As::Session(&session),
        Some(create),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, me) = send(
        &state,
        Method::GET,
        "/api/v1/auth/session",
        As::CookieOnly(&session),
        None,
    )
    .await;
    assert_eq!(
        me,
        json!({"actor": "account:olga", "role": "operator", "csrf_token": session.csrf_token})
    );

    // Signing out needs the token too, and ends the session.
    let (status, _) = send(
        &state,
        Method::POST,
        "/api/v1/auth/logout",
        As::CookieOnly(&session),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let response = call(
        &state,
        request(
            Method::POST,
            "/api/v1/auth/logout",
            As::Session(&session),
            None,
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let cleared = response.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    let (status, _) = send(
        &state,
        Method::GET,
        "/api/v1/agents",
        As::Session(&session),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn cookies_are_secure_behind_tls() {
    let state = state().await;
    create_user(&state, "tess", "viewer").await;
    let body = json!({"username": "tess", "password": PASSWORD});
    let mut request = request(Method::POST, "/api/v1/auth/login", As::Nobody, Some(&body));
    request
        .headers_mut()
        .insert("x-forwarded-proto", "https".parse().unwrap());
    let response = call(&state, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = response.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.ends_with("; Secure"), "{cookie}");
}

#[tokio::test]
async fn a_viewer_reads_and_validates_but_changes_nothing() {
    let state = state().await;
    create_user(&state, "vera", "viewer").await;
    let session = login(&state, "vera").await;
    let (status, _) = send(
        &state,
        Method::GET,
        "/api/v1/configurations",
        As::Session(&session),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = send(
        &state,
        Method::POST,
        "/api/v1/validate",
        As::Session(&session),
        Some(json!({"yaml": "receivers: {}\n"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = send(
        &state,
        Method::POST,
        "/api/v1/configurations",
        As::Session(&session),
        Some(json!({"name": "edge", "yaml": "receivers: {}\n"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        body["error"],
        "this needs the operator role; account:vera has viewer"
    );
    let (_, listed) = send(
        &state,
        Method::GET,
        "/api/v1/configurations",
        As::Session(&session),
        None,
    )
    .await;
    assert_eq!(listed["configurations"], json!([]), "nothing was made");
}

#[tokio::test]
async fn sign_in_is_refused_alike_and_limited_per_account() {
    let state = state().await;
    create_user(&state, "ada", "viewer").await;
    let wrong = login_response(&state, "ada", "not the password at all").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let unknown = login_response(&state, "nobody", PASSWORD).await;
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        json_body(wrong).await,
        json_body(unknown).await,
        "no hint which was wrong"
    );
    // Ten attempts per account in the window (two spent above, one on "nobody").
    for _ in 0..9 {
        let response = login_response(&state, "ada", "still not the password").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let limited = login_response(&state, "ada", PASSWORD).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = limited.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=300).contains(&retry_after), "{retry_after}");
    assert!(json_body(limited).await["error"].is_string());
    // Another account is not held up by it.
    create_user(&state, "bob", "viewer").await;
    login(&state, "bob").await;
}

#[tokio::test]
async fn role_changes_and_deleted_accounts_apply_at_once() {
    let state = state().await;
    create_user(&state, "otto", "operator").await;
    let session = login(&state, "otto").await;
    let create = |name: &str| json!({"name": name, "yaml": "receivers: {}\n"});
    let (status, _) = send(
        &state,
        Method::POST,
        "/api/v1/configurations",
        As::Session(&session),
        Some(create("a")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = send(
        &state,
        Method::PATCH,
        "/api/v1/users/otto",
        As::Bearer(ADMIN_TOKEN),
        Some(json!({"role": "viewer"})),
    )
    .await;
    assert_eq!((status, &body["role"]), (StatusCode::OK, &json!("viewer")));
    let (status, _) = send(
        &state,
        Method::POST,
        "/api/v1/configurations",
        As::Session(&session),
        Some(create("b")),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = send(
        &state,
        Method::DELETE,
        "/api/v1/users/otto",
        As::Bearer(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = send(
        &state,
        Method::GET,
        "/api/v1/agents",
        As::Session(&session),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn admins_manage_users_and_api_tokens_and_the_audit_shows_it() {
    let state = state().await;
    create_user(&state, "root", "admin").await;
    let admin = login(&state, "root").await;
    let users = |body: Value| (Method::POST, "/api/v1/users", body);
    for (method, uri, body) in [
        users(json!({"username": "x", "password": "short", "role": "viewer"})),
        users(json!({"username": "a b", "password": PASSWORD, "role": "viewer"})),
        users(json!({"username": "x", "password": PASSWORD, "role": "root"})),
    ] {
        let (status, answer) = send(&state, method, uri, As::Session(&admin), Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    }
    create_user(&state, "vic", "viewer").await;
    let (status, _) = send(
        &state,
        Method::POST,
        "/api/v1/users",
        As::Session(&admin),
        Some(json!({"username": "vic", "password": PASSWORD, "role": "viewer"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, listed) = send(
        &state,
        Method::GET,
        "/api/v1/users",
        As::Session(&admin),
        None,
    )
    .await;
    let names: Vec<&str> = listed["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|user| user["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["root", "vic"]);
    assert!(!listed.to_string().contains("argon2"), "{listed}");
    // The only admin account stays an admin.
    let (status, body) = send(
        &state,
        Method::PATCH,
        "/api/v1/users/root",
        As::Session(&admin),
        Some(json!({"role": "operator"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // An API token: shown once, works for its role, listed without its secret, revoked.
    let (status, created) = send(
        &state,
        Method::POST,
        "/api/v1/api-tokens",
        As::Session(&admin),
        Some(json!({"name": "ci", "role": "operator", "ttl_seconds": 3600})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (id, secret) = (
        created["id"].as_str().unwrap().to_owned(),
        created["token"].as_str().unwrap().to_owned(),
    );
    assert!(created["expires_at"].is_string());
    let (status, body) = send(
        &state,
        Method::POST,
        "/api/v1/configurations",
        As::Bearer(&secret),
        Some(json!({"name": "by-ci", "yaml": "receivers: {}\n"})),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "a Bearer request needs no CSRF token: {body}"
    );
    let (status, _) = send(
        &state,
        Method::GET,
        "/api/v1/users",
        As::Bearer(&secret),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, tokens) = send(
        &state,
        Method::GET,
        "/api/v1/api-tokens",
        As::Session(&admin),
        None,
    )
    .await;
    assert!(!tokens.to_string().contains(&secret), "{tokens}");
    assert!(tokens["api_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .any(|token| token["id"] == id.as_str() && token["created_by"] == "account:root"));
    let (status, _) = send(
        &state,
        Method::POST,
        "/api/v1/api-tokens",
        As::Session(&admin),
        Some(json!({"name": "ci", "role": "viewer", "ttl_seconds": 0})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let uri = format!("/api/v1/api-tokens/{id}");
    let (status, _) = send(&state, Method::DELETE, &uri, As::Session(&admin), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = send(
        &state,
        Method::GET,
        "/api/v1/agents",
        As::Bearer(&secret),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = send(&state, Method::DELETE, &uri, As::Session(&admin), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The audit log: the admin's actions, newest first, without secrets; and it verifies.
    let (status, audit) = send(
        &state,
        Method::GET,
        "/api/v1/audit?actor=account:root",
        As::Session(&admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["api_token.delete", "api_token.create", "session.login"]
    );
    let created_entry = &audit["entries"][1];
    assert_eq!(created_entry["object_id"], id.as_str());
    assert_eq!(created_entry["new_value"]["token"], "[redacted]");
    assert!(!created_entry["request_id"].as_str().unwrap().is_empty());
    let (_, by_token) = send(
        &state,
        Method::GET,
        &format!("/api/v1/audit?actor=api-token:{id}&action=configuration.create"),
        As::Session(&admin),
        None,
    )
    .await;
    assert_eq!(by_token["entries"].as_array().unwrap().len(), 1);
    let (_, page) = send(
        &state,
        Method::GET,
        "/api/v1/audit?limit=2",
        As::Session(&admin),
        None,
    )
    .await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 2);
    let token = page["next_page_token"].as_str().unwrap();
    let (_, next) = send(
        &state,
        Method::GET,
        &format!("/api/v1/audit?limit=2&page_token={token}"),
        As::Session(&admin),
        None,
    )
    .await;
    assert!(next["entries"][0]["id"].as_i64() < page["entries"][1]["id"].as_i64());
    let (status, body) = send(
        &state,
        Method::GET,
        "/api/v1/audit?since=yesterday",
        As::Session(&admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (_, verified) = send(
        &state,
        Method::GET,
        "/api/v1/audit/verify",
        As::Session(&admin),
        None,
    )
    .await;
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(verified["first_bad"], Value::Null);
    assert!(verified["checked"].as_u64().unwrap() >= 7, "{verified}");
    let full = send(
        &state,
        Method::GET,
        "/api/v1/audit",
        As::Session(&admin),
        None,
    )
    .await
    .1;
    assert!(
        !full.to_string().contains(PASSWORD),
        "no password in the audit log"
    );
    assert!(
        !full.to_string().contains(&secret),
        "no token in the audit log"
    );
}

#[tokio::test]
async fn pages_send_browsers_without_a_session_to_login() {
    let state = state().await;
    create_user(&state, "pia", "viewer").await;
    let session = login(&state, "pia").await;
    let parts = |cookie: Option<&str>| {
        let mut builder = Request::get("/configurations/7?tab=versions");
        if let Some(cookie) = cookie {
            builder = builder.header(header::COOKIE, cookie);
        }
        builder.body(()).unwrap().into_parts().0
    };
    let redirect = super::auth::page_session(&state, &parts(None))
        .await
        .unwrap_err();
    assert_eq!(redirect.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        redirect.headers()[header::LOCATION],
        "/login?next=/configurations/7%3Ftab%3Dversions"
    );
    let stale = super::auth::page_session(&state, &parts(Some("ampora_session=gone"))).await;
    assert!(stale.is_err());
    let principal = super::auth::page_session(&state, &parts(Some(&session.cookie)))
        .await
        .unwrap();
    assert_eq!(principal.role, Role::Viewer);
    assert!(principal.csrf_matches(Some(&session.csrf_token)));
    assert!(!principal.csrf_matches(Some("forged")));
    assert!(!principal.csrf_matches(None));

    // A form's POST: the page checks the form's CSRF field, not a header.
    let mut post = Request::post("/configurations/7")
        .header(header::COOKIE, &session.cookie)
        .body(())
        .unwrap()
        .into_parts()
        .0;
    post.method = Method::POST;
    let principal = super::auth::page_session(&state, &post).await.unwrap();
    assert!(principal.csrf_matches(Some(&session.csrf_token)));
    assert!(principal.require(Role::Operator).is_err());
}

/// One path, two callers (as `/api/v1/certificates`: admins list, agents enrol with their own
/// token): the guard is layered on the methods before it only.
#[tokio::test]
async fn a_path_can_mix_a_guarded_method_and_an_open_one() {
    use axum::middleware::from_fn_with_state;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::auth::{authorize, Access};

    let state = state().await;
    let viewer = token(&state, Role::Viewer).await;
    let router = axum::Router::new()
        .route(
            "/mixed",
            get(|| async { "listed" })
                .route_layer(from_fn_with_state(
                    (state.clone(), Access::Role(Role::Admin)),
                    authorize,
                ))
                .post(|| async { "enrolled" }),
        )
        .with_state(state.clone());
    let status = |method: Method, bearer: Option<&str>| {
        let router = router.clone();
        let mut request = Request::builder().method(method).uri("/mixed");
        if let Some(bearer) = bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {bearer}"));
        }
        async move {
            router
                .oneshot(request.body(Body::empty()).unwrap())
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(status(Method::GET, None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        status(Method::GET, Some(&viewer)).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(status(Method::GET, Some(ADMIN_TOKEN)).await, StatusCode::OK);
    assert_eq!(status(Method::POST, None).await, StatusCode::OK);
}

/// The audit entries a filter finds, newest first, as `(actor, action, object_id)`.
async fn audited(state: &ApiState, filter: &str) -> Vec<(String, String, String)> {
    let (status, body) = send(
        state,
        Method::GET,
        &format!("/api/v1/audit?{filter}"),
        As::Bearer(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let text = |entry: &Value, field: &str| entry[field].as_str().unwrap().to_owned();
    body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                text(entry, "actor"),
                text(entry, "action"),
                text(entry, "object_id"),
            )
        })
        .collect()
}

#[tokio::test]
async fn trust_changes_are_audited_by_who_made_them_without_secrets() {
    let state = state().await;
    let operator = token(&state, Role::Operator).await;
    // The first CA was the server's own doing.
    let created_ca = audited(&state, "action=ca.create").await;
    assert_eq!(created_ca.len(), 1);
    assert_eq!(created_ca[0].0, "system");

    let (status, created) = send(
        &state,
        Method::POST,
        "/api/v1/bootstrap-tokens",
        As::Bearer(&operator),
        Some(json!({"labels": {"site": "berlin"}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token_id = created["id"].as_i64().unwrap();
    let secret = created["token"].as_str().unwrap().to_owned();
    let (status, spare) = send(
        &state,
        Method::POST,
        "/api/v1/bootstrap-tokens",
        As::Bearer(&operator),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{spare}");
    let spare_id = spare["id"].as_i64().unwrap();
    let (status, body) = send(
        &state,
        Method::DELETE,
        &format!("/api/v1/bootstrap-tokens/{spare_id}"),
        As::Bearer(&operator),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The agent's exchange: no operator credential, the token is the credential.
    let (status, enrolled) = send(
        &state,
        Method::POST,
        "/api/v1/certificates",
        As::Nobody,
        Some(json!({"token": secret})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{enrolled}");
    let fingerprint = enrolled["fingerprint"].as_str().unwrap().to_owned();
    let private_key = enrolled["private_key_pem"].as_str().unwrap().to_owned();
    let (status, body) = send(
        &state,
        Method::POST,
        &format!("/api/v1/certificates/{fingerprint}/revoke"),
        As::Bearer(ADMIN_TOKEN),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, rotated) = send(
        &state,
        Method::POST,
        "/api/v1/ca/rotate",
        As::Bearer(ADMIN_TOKEN),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{rotated}");

    let operator_actor = "api-token:test-operator".to_owned();
    let admin_actor = "api-token:test-admin".to_owned();
    let entry =
        |actor: &str, action: &str, object: String| (actor.to_owned(), action.to_owned(), object);
    assert_eq!(
        audited(&state, "object_type=bootstrap_token").await,
        [
            entry(
                &operator_actor,
                "bootstrap_token.revoke",
                spare_id.to_string()
            ),
            entry(
                &operator_actor,
                "bootstrap_token.create",
                spare_id.to_string()
            ),
            entry(
                &operator_actor,
                "bootstrap_token.create",
                token_id.to_string()
            ),
        ]
    );
    // The enrolment names its token, and is found by it.
    assert_eq!(
        audited(&state, &format!("actor=bootstrap-token:{token_id}")).await,
        [entry(
            &format!("bootstrap-token:{token_id}"),
            "certificate.enrol",
            fingerprint.clone()
        )]
    );
    assert_eq!(
        audited(&state, "action=certificate.revoke").await,
        [entry(
            &admin_actor,
            "certificate.revoke",
            fingerprint.clone()
        )]
    );
    assert_eq!(
        audited(&state, "action=ca.rotate").await,
        [entry(
            &admin_actor,
            "ca.rotate",
            rotated["ca_id"].as_i64().unwrap().to_string()
        )]
    );

    let (_, full) = send(
        &state,
        Method::GET,
        "/api/v1/audit",
        As::Bearer(ADMIN_TOKEN),
        None,
    )
    .await;
    let text = full.to_string();
    assert!(
        !text.contains(&secret),
        "no bootstrap token in the audit log"
    );
    assert!(
        !text.contains("PRIVATE KEY"),
        "no private key in the audit log"
    );
    let key_body = private_key.lines().nth(1).unwrap();
    assert!(!text.contains(key_body), "no private key in the audit log");
    let enrol = full["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["action"] == "certificate.enrol")
        .unwrap();
    assert_eq!(enrol["new_value"]["labels"]["site"], "berlin");
    assert_eq!(enrol["new_value"]["bootstrap_token_id"], token_id);
    let (_, verified) = send(
        &state,
        Method::GET,
        "/api/v1/audit/verify",
        As::Bearer(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(verified["ok"], true, "{verified}");
}
