//! Agent trust end to end through real clients (issue #20, point 7): `ampora serve` with TLS on
//! its OpAMP listener and `AMPORA_TLS_CLIENT_AUTH`; the opamp-go agent enrolling over OpAMP (with
//! a CSR, and with a key the server makes) and reconnecting over mTLS; the `opampsupervisor`
//! with its Collector, the Collector's `opampextension` and the PyPI `opentelemetry-opamp-client`
//! with certificates enrolled over the API; and the refusals (spent, expired and revoked
//! tokens, forged and self-signed certificates, a certificate claiming another agent, a
//! revocation while connected, two enrolments racing for one token).

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::collector::{collector_binaries, Supervisor};
use support::trust::{
    bootstrap_token, certificates, enrol_over_api, events, post, revoke, serve_tls, token_listed,
    wait_output, wait_value, write, ServerPki,
};
use support::{Ampora, ExternalAgent};
use uuid::Uuid;

/// The opamp-go agent over `wss://` trusting the server's CA, heartbeating every second, with
/// `extra` arguments (`-token`, `-csr`, `-cert`, `-key`, `-uid`).
fn go_agent(ampora: &Ampora, pki: &ServerPki, name: &str, extra: &[&str]) -> ExternalAgent {
    let url = ampora.ws_url();
    let ca = pki.ca();
    let mut args = vec![
        "-transport",
        "ws",
        "-url",
        &url,
        "-name",
        name,
        "-heartbeat",
        "1s",
        "-server-ca",
        ca.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ExternalAgent::go_with_args(name, &args)
}

async fn online(ampora: &Ampora, uid: Uuid) -> Value {
    ampora
        .wait_agent(uid, "online", |agent| agent["status"] == "online")
        .await
}

fn certificate_of<'a>(listed: &'a [Value], fingerprint: &str) -> &'a Value {
    listed
        .iter()
        .find(|certificate| certificate["fingerprint"] == fingerprint)
        .unwrap_or_else(|| panic!("certificate {fingerprint} not listed: {listed:#?}"))
}

/// Enrols over the OpAMP connection (`-token`, plus `extra`), checks the reconnect over mTLS and
/// what the API shows afterwards.
async fn enrol_over_opamp(extra: &[&str]) {
    let pki = ServerPki::new();
    let ampora = serve_tls(&pki, "optional").await;
    let (token_id, token) = bootstrap_token(&ampora, None).await;
    let mut args = vec!["-token", token.as_str()];
    args.extend_from_slice(extra);
    let agent = go_agent(&ampora, &pki, "enrolling", &args);

    let offered = wait_value(&agent, "certificate fingerprint=").await;
    let reconnected = wait_value(&agent, "reconnected fingerprint=").await;
    assert_eq!(offered, reconnected);
    // Without a client certificate the connection was enrolment-only: nothing of the agent is
    // stored until it comes back with its certificate, so being listed online shows that.
    let snapshot = online(&ampora, agent.uid).await;
    assert_eq!(
        snapshot["identifying_attributes"]["service.name"],
        "enrolling"
    );
    let listed = certificates(&ampora).await;
    let certificate = certificate_of(&listed, &offered);
    assert_eq!(certificate["instance_uid"], agent.uid.to_string());
    assert_eq!(certificate["bootstrap_token_id"], token_id);
    assert!(certificate["revoked_at"].is_null(), "{certificate}");
    let token = token_listed(&ampora, token_id).await;
    assert_eq!(token["state"], "used", "{token}");
    assert_eq!(token["used_by"], agent.uid.to_string(), "{token}");
    let history = events(&ampora, agent.uid).await;
    assert!(
        history.iter().any(|event| event["kind"] == "enrolled"),
        "no enrolled event: {history:#?}"
    );
    // Identified by the certificate: revoking it takes the agent off.
    revoke(&ampora, &offered).await;
    ampora
        .wait_agent(agent.uid, "offline", |agent| agent["status"] != "online")
        .await;
}

#[tokio::test]
async fn go_agent_enrols_with_a_csr_over_websocket_and_reconnects_with_mtls() {
    enrol_over_opamp(&["-csr"]).await;
}

/// Without `-csr` the agent has no key of its own: it reconnects only if the offer carried one.
#[tokio::test]
async fn go_agent_enrols_with_a_server_made_key_and_reconnects_with_mtls() {
    enrol_over_opamp(&[]).await;
}

/// Enrols over the API without a CSR and writes the agent's files into the PKI's directory:
/// (instance uid, certificate path, key path, fingerprint).
async fn enrolled_files(
    ampora: &Ampora,
    pki: &ServerPki,
    name: &str,
) -> (Uuid, String, String, String) {
    let (_, token) = bootstrap_token(ampora, None).await;
    let (status, enrolled) = enrol_over_api(ampora, &token, None).await;
    assert_eq!(status, 201, "POST /api/v1/certificates: {enrolled}");
    let uid = Uuid::parse_str(enrolled["instance_uid"].as_str().unwrap()).unwrap();
    let cert = write(
        pki.dir(),
        &format!("{name}.pem"),
        enrolled["certificate_pem"].as_str().unwrap(),
    );
    let key = write(
        pki.dir(),
        &format!("{name}-key.pem"),
        enrolled["private_key_pem"].as_str().unwrap(),
    );
    (
        uid,
        cert,
        key,
        enrolled["fingerprint"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn supervisor_connects_over_wss_with_an_issued_certificate() {
    let pki = ServerPki::new();
    let ampora = serve_tls(&pki, "required").await;
    let (uid, cert, key, _) = enrolled_files(&ampora, &pki, "supervisor").await;
    let _supervisor = Supervisor::start_with(
        &ampora.ws_url(),
        "supervised",
        uid,
        json!({
            "ca_file": pki.ca(),
            "cert_file": cert,
            "key_file": key,
        }),
    );
    let snapshot = online(&ampora, uid).await;
    assert_eq!(
        snapshot["identifying_attributes"]["service.name"],
        "supervised"
    );
}

/// `otelcol` with only the `opamp` extension connecting to `ws_url` as `uid` with `tls`; killed
/// on drop.
struct Extension {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Extension {
    fn start(ws_url: &str, uid: Uuid, tls: Value) -> Extension {
        let (otelcol, _) = collector_binaries();
        let dir = tempfile::tempdir().unwrap();
        // JSON is YAML. The Collector needs a pipeline; an OTLP receiver on a free port feeds a
        // debug exporter.
        let config = json!({
            "extensions": {"opamp": {
                "server": {"ws": {"endpoint": ws_url, "tls": tls}},
                "instance_uid": uid.to_string(),
            }},
            "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": "127.0.0.1:0"}}}},
            "exporters": {"debug": {}},
            "service": {
                "extensions": ["opamp"],
                "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["debug"]}},
                "telemetry": {"metrics": {"level": "none"}},
            },
        });
        let path = dir.path().join("collector.yaml");
        std::fs::write(&path, config.to_string()).unwrap();
        let child = Command::new(otelcol)
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start otelcol");
        Extension { child, _dir: dir }
    }
}

impl Drop for Extension {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn collector_opamp_extension_connects_over_wss_with_an_issued_certificate() {
    let pki = ServerPki::new();
    let ampora = serve_tls(&pki, "required").await;
    let (uid, cert, key, _) = enrolled_files(&ampora, &pki, "extension").await;
    let _collector = Extension::start(
        &ampora.ws_url(),
        uid,
        json!({"ca_file": pki.ca(), "cert_file": cert, "key_file": key}),
    );
    let snapshot = online(&ampora, uid).await;
    assert!(
        snapshot["identifying_attributes"]["service.name"]
            .as_str()
            .is_some_and(|name| name.contains("otelcol")),
        "{snapshot:#}"
    );
}

#[tokio::test]
async fn python_agent_polls_over_https_with_an_issued_certificate() {
    let pki = ServerPki::new();
    let ampora = serve_tls(&pki, "required").await;
    let (uid, cert, key, fingerprint) = enrolled_files(&ampora, &pki, "python").await;
    let url = ampora.http_opamp_url();
    assert!(url.starts_with("https://"), "{url}");
    let ca = pki.ca();
    let uid_text = uid.to_string();
    let agent = ExternalAgent::python_with_args(
        "python-mtls",
        &[
            "--url",
            &url,
            "--name",
            "python-mtls",
            "--poll-interval",
            "0.5",
            "--tls-ca",
            ca.to_str().unwrap(),
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--instance-uid",
            &uid_text,
        ],
    );
    assert_eq!(agent.uid, uid);
    let snapshot = online(&ampora, uid).await;
    assert_eq!(
        snapshot["identifying_attributes"]["service.name"],
        "python-mtls"
    );

    // Without a certificate an agent gets no further than the handshake.
    let refused = ExternalAgent::python_with_args(
        "python-no-certificate",
        &[
            "--url",
            &url,
            "--name",
            "python-no-certificate",
            "--poll-interval",
            "0.5",
            "--tls-ca",
            ca.to_str().unwrap(),
        ],
    );
    let line = wait_output(&refused, "request failed:", Duration::from_secs(20)).await;
    assert!(line.contains("SSLError"), "{line}");
    assert!(ampora.agent(refused.uid).await.is_none());

    // Revoked, its next request is refused at the handshake.
    revoke(&ampora, &fingerprint).await;
    let line = wait_output(&agent, "request failed:", Duration::from_secs(20)).await;
    assert!(line.contains("SSLError"), "{line}");
}

// === refusals ===

async fn refused_over_api(ampora: &Ampora, token: &str, reason: &str) {
    let (status, body) = enrol_over_api(ampora, token, None).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|error| error.contains(reason)),
        "expected {reason:?}: {body}"
    );
}

/// The Go agent enrolling with `token` and a CSR is told `reason`, and gets no certificate.
async fn refused_over_opamp(ampora: &Ampora, pki: &ServerPki, token: &str, reason: &str) {
    let agent = go_agent(ampora, pki, "refused", &["-token", token, "-csr"]);
    let line = wait_output(&agent, "server error:", Duration::from_secs(20)).await;
    assert!(
        line.contains(&format!("enrolment refused: {reason}")),
        "expected {reason:?}: {line}"
    );
    assert!(!agent.output().contains("certificate fingerprint="));
    assert!(ampora.agent(agent.uid).await.is_none());
}

#[tokio::test]
async fn spent_expired_and_revoked_tokens_are_refused() {
    let pki = ServerPki::new();
    let ampora = serve_tls(&pki, "optional").await;

    let (_, spent) = bootstrap_token(&ampora, None).await;
    let (status, first) = enrol_over_api(&ampora, &spent, None).await;
    assert_eq!(status, 201, "{first}");
    refused_over_api(&ampora, &spent, "bootstrap token already used").await;
    refused_over_opamp(&ampora, &pki, &spent, "bootstrap token already used").await;
    // The agent it enrolled keeps its one certificate.
    let listed = certificates(&ampora).await;
    let first_fingerprint = first["fingerprint"].as_str().unwrap();
    assert!(certificate_of(&listed, first_fingerprint)["revoked_at"].is_null());
    assert_eq!(listed.len(), 1, "{listed:#?}");

    let (expiring_id, expiring) = bootstrap_token(&ampora, Some(1)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while token_listed(&ampora, expiring_id).await["state"] != "expired" {
        assert!(Instant::now() < deadline, "the token never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    refused_over_api(&ampora, &expiring, "bootstrap token expired").await;

    let (revoked_id, revoked) = bootstrap_token(&ampora, None).await;
    let path = format!("{}/api/v1/bootstrap-tokens/{revoked_id}", ampora.api_base());
    let response = ampora.http().delete(&path).send().await.unwrap();
    assert_eq!(response.status(), 200);
    refused_over_api(&ampora, &revoked, "bootstrap token revoked").await;
    refused_over_opamp(&ampora, &pki, &revoked, "bootstrap token revoked").await;
    assert_eq!(certificates(&ampora).await.len(), 1);
}

#[tokio::test]
async fn two_enrolments_racing_for_one_token_make_one_certificate() {
    let pki = ServerPki::new();
    let ampora = serve_tls(&pki, "optional").await;
    let (token_id, token) = bootstrap_token(&ampora, None).await;
    let (a, b) = tokio::join!(
        enrol_over_api(&ampora, &token, None),
        enrol_over_api(&ampora, &token, None)
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [201, 403], "{a:?} {b:?}");
    let refused = if a.0 == 403 { &a.1 } else { &b.1 };
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|error| error.contains("bootstrap token already used")),
        "{refused}"
    );
    let listed = certificates(&ampora).await;
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["bootstrap_token_id"], token_id);
}

/// A certificate for `uid` with clientAuth, signed by a CA that is not Ampora's (`forged`), or
/// self-signed: (certificate PEM, key PEM).
fn foreign_certificate(uid: Uuid, forged: bool) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, uid.to_string());
    params.subject_alt_names = vec![rcgen::SanType::URI(
        format!("urn:uuid:{uid}").try_into().unwrap(),
    )];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let certificate = if forged {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "Ampora agent CA");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
        params.signed_by(&key, &ca).unwrap()
    } else {
        params.self_signed(&key).unwrap()
    };
    (certificate.pem(), key.serialize_pem())
}

/// The victim: an agent enrolled over the API and connected with its certificate.
async fn victim(ampora: &Ampora, pki: &ServerPki) -> (ExternalAgent, String) {
    let (uid, cert, key, fingerprint) = enrolled_files(ampora, pki, "victim").await;
    let uid_text = uid.to_string();
    let agent = go_agent(
        ampora,
        pki,
        "victim",
        &["-uid", &uid_text, "-cert", &cert, "-key", &key],
    );
    online(ampora, uid).await;
    (agent, fingerprint)
}

async fn victim_untouched(ampora: &Ampora, victim: Uuid) {
    let snapshot = ampora.agent(victim).await.unwrap();
    assert_eq!(snapshot["status"], "online", "{snapshot:#}");
    assert_eq!(snapshot["identifying_attributes"]["service.name"], "victim");
}

#[tokio::test]
async fn forged_and_self_signed_certificates_are_refused_at_the_handshake() {
    let pki = ServerPki::new();
    let ampora = serve_tls(&pki, "required").await;
    let (victim, _) = victim(&ampora, &pki).await;
    let uid_text = victim.uid.to_string();
    for (forged, name) in [(true, "forged"), (false, "self-signed")] {
        let (cert, key) = foreign_certificate(victim.uid, forged);
        let cert = write(pki.dir(), &format!("{name}.pem"), &cert);
        let key = write(pki.dir(), &format!("{name}-key.pem"), &key);
        let attacker = go_agent(
            &ampora,
            &pki,
            name,
            &["-uid", &uid_text, "-cert", &cert, "-key", &key],
        );
        let line = wait_output(&attacker, "failed:", Duration::from_secs(20)).await;
        assert!(
            line.contains("remote error: tls: unknown certificate authority"),
            "{name}: {line}"
        );
        victim_untouched(&ampora, victim.uid).await;
    }
    assert!(
        !events(&ampora, victim.uid)
            .await
            .iter()
            .any(|event| event["kind"] == "identity_refused"),
        "a refused handshake carries no message to record"
    );
}

#[tokio::test]
async fn a_certificate_claiming_another_agent_is_refused_and_recorded() {
    let pki = ServerPki::new();
    let ampora = serve_tls(&pki, "required").await;
    let (victim, _) = victim(&ampora, &pki).await;
    let (other_uid, cert, key, fingerprint) = enrolled_files(&ampora, &pki, "impostor").await;
    let uid_text = victim.uid.to_string();
    let impostor = go_agent(
        &ampora,
        &pki,
        "impostor",
        &["-uid", &uid_text, "-cert", &cert, "-key", &key],
    );
    let line = wait_output(&impostor, "server error:", Duration::from_secs(20)).await;
    assert!(
        line.contains(&format!(
            "this client certificate identifies agent {other_uid}, not {}",
            victim.uid
        )),
        "{line}"
    );
    let history = events(&ampora, victim.uid).await;
    let refused = history
        .iter()
        .find(|event| event["kind"] == "identity_refused")
        .unwrap_or_else(|| panic!("no identity_refused event: {history:#?}"));
    assert!(refused.to_string().contains(&fingerprint), "{refused}");
    victim_untouched(&ampora, victim.uid).await;
    assert!(ampora.agent(other_uid).await.is_none());
}

#[tokio::test]
async fn revocation_closes_the_live_connection_and_refuses_the_next_handshake() {
    let pki = ServerPki::new();
    let ampora = serve_tls(&pki, "required").await;
    let (victim, fingerprint) = victim(&ampora, &pki).await;
    let revoked_at = Instant::now();
    revoke(&ampora, &fingerprint).await;
    ampora
        .wait_agent(victim.uid, "offline", |agent| agent["status"] != "online")
        .await;
    assert!(
        revoked_at.elapsed() < Duration::from_secs(5),
        "the connection outlived its revocation by {:?}",
        revoked_at.elapsed()
    );
    let line = wait_output(&victim, "failed:", Duration::from_secs(30)).await;
    assert!(
        line.contains("remote error: tls: revoked certificate"),
        "{line}"
    );
}

/// Revoking a certificate the API does not know is a clear 404.
#[tokio::test]
async fn revoking_an_unknown_certificate_is_not_found() {
    let pki = ServerPki::new();
    let ampora = serve_tls(&pki, "required").await;
    let path = format!("/api/v1/certificates/{}/revoke", "0".repeat(64));
    let (status, body) = post(&ampora, &path, json!({})).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].is_string(), "{body}");
}
