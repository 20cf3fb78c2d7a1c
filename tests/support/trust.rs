//! Agent trust through real processes: `ampora serve` with TLS on its OpAMP listener and
//! `AMPORA_TLS_CLIENT_AUTH`, the server's own certificate (a test CA of its own, not Ampora's
//! agent CA), and the API calls an operator makes to enrol agents.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use super::{Ampora, ExternalAgent};

/// The OpAMP listener's certificate for `127.0.0.1` and `localhost`, issued by a CA of its
/// own, as files in a temporary directory: what an operator gives `AMPORA_TLS_CERT` and
/// `AMPORA_TLS_KEY`, and agents as the server CA.
pub struct ServerPki {
    dir: tempfile::TempDir,
}

impl ServerPki {
    pub fn new() -> ServerPki {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "server CA (test)");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
        let mut server =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap();
        server.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = server.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.path().join("server-ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), certificate.pem()).unwrap();
        std::fs::write(dir.path().join("server-key.pem"), key.serialize_pem()).unwrap();
        ServerPki { dir }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("server-ca.pem")
    }

    pub fn certificate(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("server-key.pem")
    }

    /// A directory to keep agents' files in, removed with this.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// `ampora serve` with TLS on the OpAMP listener and `AMPORA_TLS_CLIENT_AUTH=client_auth`.
pub async fn serve_tls(pki: &ServerPki, client_auth: &str) -> Ampora {
    let cert = pki.certificate();
    let key = pki.key();
    let ampora = Ampora::start(&[
        ("AMPORA_TLS_CERT", cert.to_str().unwrap()),
        ("AMPORA_TLS_KEY", key.to_str().unwrap()),
        ("AMPORA_TLS_CLIENT_AUTH", client_auth),
    ])
    .await;
    assert!(ampora.ws_url().starts_with("wss://"), "{}", ampora.ws_url());
    ampora
}

/// `POST {api}{path}` with `body` as the admin: (status, JSON body).
pub async fn post(ampora: &Ampora, path: &str, body: Value) -> (u16, Value) {
    send(
        ampora
            .http()
            .post(format!("{}{path}", ampora.api_base()))
            .json(&body),
    )
    .await
}

/// `POST /api/v1/certificates {token, csr_pem?}` without operator credentials, as an agent's
/// installer does: (status, JSON body).
pub async fn enrol_over_api(ampora: &Ampora, token: &str, csr_pem: Option<&str>) -> (u16, Value) {
    let mut body = json!({ "token": token });
    if let Some(csr) = csr_pem {
        body["csr_pem"] = json!(csr);
    }
    let request = reqwest::Client::new()
        .post(format!("{}/api/v1/certificates", ampora.api_base()))
        .json(&body);
    send(request).await
}

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("API request");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A new bootstrap token (`ttl_seconds` if given): (id, token).
pub async fn bootstrap_token(ampora: &Ampora, ttl_seconds: Option<u64>) -> (i64, String) {
    let body = match ttl_seconds {
        Some(ttl) => json!({ "ttl_seconds": ttl }),
        None => json!({}),
    };
    let (status, created) = post(ampora, "/api/v1/bootstrap-tokens", body).await;
    assert_eq!(status, 201, "POST /api/v1/bootstrap-tokens: {created}");
    (
        created["id"].as_i64().unwrap(),
        created["token"].as_str().unwrap().to_owned(),
    )
}

/// The bootstrap token `id` as `GET /api/v1/bootstrap-tokens` lists it.
pub async fn token_listed(ampora: &Ampora, id: i64) -> Value {
    let (status, page) = ampora.get("/api/v1/bootstrap-tokens?limit=1000").await;
    assert_eq!(status, 200, "{page}");
    page["bootstrap_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|token| token["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("bootstrap token {id} not listed: {page:#}"))
}

/// Every certificate `GET /api/v1/certificates` lists.
pub async fn certificates(ampora: &Ampora) -> Vec<Value> {
    let (status, page) = ampora.get("/api/v1/certificates?limit=1000").await;
    assert_eq!(status, 200, "{page}");
    page["certificates"].as_array().unwrap().clone()
}

/// `POST /api/v1/certificates/{fingerprint}/revoke`; panics unless 200.
pub async fn revoke(ampora: &Ampora, fingerprint: &str) {
    let path = format!("/api/v1/certificates/{fingerprint}/revoke");
    let (status, body) = post(ampora, &path, json!({})).await;
    assert_eq!(status, 200, "POST {path}: {body}");
}

/// The agent's history, oldest first.
pub async fn events(ampora: &Ampora, uid: Uuid) -> Vec<Value> {
    let path = format!("/api/v1/agents/{uid}/events?limit=1000");
    let (status, page) = ampora.get(&path).await;
    assert_eq!(status, 200, "GET {path}: {page}");
    let mut events = page["events"].as_array().unwrap().clone();
    events.sort_by_key(|event| event["id"].as_i64());
    events
}

/// Waits up to `timeout` for a line of the agent's output containing `needle`, and returns it.
pub async fn wait_output(agent: &ExternalAgent, needle: &str, timeout: Duration) -> String {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let output = agent.output();
        if let Some(line) = output.lines().find(|line| line.contains(needle)) {
            return line.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {timeout:?} for {needle:?} from the agent\n{output}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What follows `prefix` on the agent's first stdout line starting with it (waits 30 s).
pub async fn wait_value(agent: &ExternalAgent, prefix: &str) -> String {
    let needle = format!("stdout| {prefix}");
    let line = wait_output(agent, &needle, Duration::from_secs(30)).await;
    line.split_once(&needle).unwrap().1.trim().to_owned()
}

/// Writes `pem` to `name` in `dir` and returns its path as text.
pub fn write(dir: &Path, name: &str, pem: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path.to_str().unwrap().to_owned()
}
