//! Signing in to a test server's API: every server the harness starts has the account
//! `admin` with [`ADMIN_PASSWORD`], and tests call the API with an admin API token.

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use serde_json::{json, Value};

/// `AMPORA_ADMIN_PASSWORD` of every server the harness starts.
pub const ADMIN_PASSWORD: &str = "test-admin-password";

/// Signs in as `username` at `base` (`http://HOST:PORT`): the session cookie's value and the
/// CSRF token. Panics unless it works.
pub async fn sign_in(base: &str, username: &str, password: &str) -> (String, String) {
    let url = format!("{base}/api/v1/auth/login");
    let response = reqwest::Client::new()
        .post(&url)
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap_or_else(|error| panic!("POST {url}: {error}"));
    let status = response.status();
    let cookie = response
        .headers()
        .get("set-cookie")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(str::to_owned);
    let body: Value = response.json().await.unwrap_or_default();
    assert_eq!(
        status, 200,
        "signing in as {username} with {password:?}: {body}"
    );
    let csrf = body["csrf_token"]
        .as_str()
        .expect("a CSRF token")
        .to_owned();
    (cookie.expect("a session cookie"), csrf)
}

/// An API token of `role` made by `admin` signed in with `password`.
pub async fn api_token(base: &str, password: &str, role: &str) -> String {
    let (cookie, csrf) = sign_in(base, "admin", password).await;
    let url = format!("{base}/api/v1/api-tokens");
    let response = reqwest::Client::new()
        .post(&url)
        .header("cookie", cookie)
        .header("x-csrf-token", csrf)
        .json(&json!({"name": format!("tests ({role})"), "role": role}))
        .send()
        .await
        .unwrap_or_else(|error| panic!("POST {url}: {error}"));
    let status = response.status();
    let body: Value = response.json().await.unwrap_or_default();
    assert_eq!(status, 201, "POST {url}: {body}");
    body["token"].as_str().expect("a token").to_owned()
}

/// A client that sends `token` with every request.
pub fn client_with(token: &str) -> reqwest::Client {
    let mut headers = HeaderMap::new();
    let mut bearer = HeaderValue::from_str(&format!("Bearer {token}")).expect("a header value");
    bearer.set_sensitive(true);
    headers.insert(AUTHORIZATION, bearer);
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("an HTTP client")
}

/// A client with an admin API token for the API at `base`.
pub async fn admin_client(base: &str) -> reqwest::Client {
    client_with(&api_token(base, ADMIN_PASSWORD, "admin").await)
}
