//! TLS session tickets across gateways, over real sockets: with a ticket key file they share, a
//! session begun on one gateway resumes on another, through a key rotation; without one, it
//! does not. Each simulated agent keeps its own session cache across its connections, as a
//! real agent process does.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ampora_gateway::{GatewayConfig, TlsConfig};
use ampora_shared::bus::InProcessBus;
use rustls::HandshakeKind::{Full, Resumed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use support::{certificates, roots, tls_client, Certificates};

/// Starts a gateway (no control-plane needed: the exchanges are `/healthz`); it stops with the
/// test's runtime.
async fn gateway(tls: TlsConfig) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = GatewayConfig {
        tls: Some(tls),
        ..GatewayConfig::for_test()
    };
    tokio::spawn(ampora_gateway::run(
        listener,
        config,
        Arc::new(InProcessBus::default()),
        std::future::pending(),
    ));
    addr
}

fn random_key() -> String {
    rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes a ticket key file beside the certificates and returns its path.
fn key_file(certs: &Certificates, name: &str, keys: &[&str]) -> PathBuf {
    let path = certs.tls.cert_path.with_file_name(name);
    write_keys(&path, keys);
    path
}

fn write_keys(path: &Path, keys: &[&str]) {
    let mut content = String::from("# TLS session ticket keys; the first encrypts\n");
    for key in keys {
        content.push_str(key);
        content.push('\n');
    }
    std::fs::write(path, content).unwrap();
}

fn sharing(certs: &Certificates, key_file: &Path) -> TlsConfig {
    TlsConfig {
        ticket_key_file: Some(key_file.to_owned()),
        ticket_key_check_interval: Duration::from_millis(20),
        ..certs.tls.clone()
    }
}

/// One agent's TLS settings: its session cache lives as long as the agent.
fn agent(certs: &Certificates) -> Arc<rustls::ClientConfig> {
    Arc::new(tls_client(&certs.ca_pem))
}

/// Connects, says how the handshake went, and completes an HTTP exchange: TLS 1.3 tickets
/// arrive after the handshake, so the agent has them only once it has read from the socket.
async fn connect(agent: &Arc<rustls::ClientConfig>, gateway: SocketAddr) -> rustls::HandshakeKind {
    let tcp = TcpStream::connect(gateway).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(agent.clone())
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    // The gateway may close without close_notify; what matters is the answer read before.
    let _ = tls.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    kind
}

/// Waits until `check` holds (the gateways check their key files every 20 ms).
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_session_begun_on_one_gateway_resumes_on_another_sharing_the_key_file() {
    let metrics = ampora_shared::telemetry::prometheus();
    let certs = certificates();
    let keys = key_file(&certs, "ticket-keys", &[&random_key()]);
    let first = gateway(sharing(&certs, &keys)).await;
    let second = gateway(sharing(&certs, &keys)).await;

    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let agent = Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots(&certs.ca_pem))
            .with_no_client_auth(),
        );
        assert_eq!(connect(&agent, first).await, Full, "{version:?}");
        assert_eq!(connect(&agent, second).await, Resumed, "{version:?}");
    }

    let rendered = metrics.render();
    for kind in ["full", "resumed"] {
        let name = format!("ampora_gateway_tls_handshakes_total{{kind=\"{kind}\"}}");
        assert!(rendered.contains(&name), "{name} missing from\n{rendered}");
    }
}

#[tokio::test]
async fn without_a_shared_key_file_a_session_resumes_only_where_it_began() {
    let certs = certificates();
    let first = gateway(certs.tls.clone()).await;
    let second = gateway(certs.tls.clone()).await;
    let agent = agent(&certs);
    assert_eq!(connect(&agent, first).await, Full);
    assert_eq!(
        connect(&agent, first).await,
        Resumed,
        "the agent keeps tickets"
    );
    assert_eq!(connect(&agent, second).await, Full);
}

#[tokio::test]
async fn rotated_keys_keep_old_tickets_until_the_old_key_is_dropped() {
    let certs = certificates();
    let (old, new) = (random_key(), random_key());
    let rotating = key_file(&certs, "rotating", &[&old]);
    let rotated = gateway(sharing(&certs, &rotating)).await;
    let only_new = gateway(sharing(&certs, &key_file(&certs, "new", &[&new]))).await;
    let only_old = gateway(sharing(&certs, &key_file(&certs, "old", &[&old]))).await;

    let early = agent(&certs);
    assert_eq!(connect(&early, rotated).await, Full);

    write_keys(&rotating, &[&new, &old]);
    eventually("new tickets under the new key", || async {
        let agent = agent(&certs);
        connect(&agent, rotated).await;
        connect(&agent, only_new).await == Resumed
    })
    .await;
    assert_eq!(
        connect(&early, rotated).await,
        Resumed,
        "a ticket under the old key still resumes while the key is listed"
    );

    write_keys(&rotating, &[&new]);
    eventually("tickets under the dropped key refused", || async {
        let agent = agent(&certs);
        connect(&agent, only_old).await;
        connect(&agent, rotated).await == Full
    })
    .await;
}

#[tokio::test]
async fn a_bad_key_file_at_start_is_refused_naming_the_file_and_line() {
    let certs = certificates();
    let keys = key_file(&certs, "ticket-keys", &[&random_key(), "not-a-key"]);
    let config = GatewayConfig {
        tls: Some(sharing(&certs, &keys)),
        ..GatewayConfig::for_test()
    };
    let run = ampora_gateway::run(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        config,
        Arc::new(InProcessBus::default()),
        std::future::pending(),
    );
    let error = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("refused at start, not served")
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains(&keys.display().to_string()) && message.contains("line 3"),
        "{message}"
    );
}
