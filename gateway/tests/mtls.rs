//! Agents' client certificates over real TLS sockets: a test CA (rcgen) stands for Ampora's,
//! its `TrustState` published on the bus as control-planes publish it, and the envelopes the
//! gateway relays watched on the bus.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ampora_gateway::{ClientAuth, Gateway, GatewayConfig};
use ampora_shared::bus::{Bus, InProcessBus, NatsBus, NatsOptions, Subscription};
use ampora_shared::codec;
use ampora_shared::pb::bus::{
    agent_envelope::Event, AgentEnvelope, ControlPlaneHeartbeat, TrustRequest, TrustState,
};
use ampora_shared::pb::opamp::AgentToServer;
use ampora_shared::subjects::Subjects;
use ampora_shared::testing::TestNats;
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use support::{certificates, roots, tls_client, Certificates};

// === test PKI ===

/// A CA named "Ampora agents" (the forger's has the same name, another key).
fn ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "Ampora agents");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// An agent's certificate and key.
struct Identity {
    certificate: CertificateDer<'static>,
    key: Vec<u8>,
    /// What the envelope should carry.
    sha256: String,
}

fn identity(certificate: CertificateDer<'static>, key: &KeyPair) -> Identity {
    let sha256 = sha2::Sha256::digest(&certificate)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Identity {
        certificate,
        key: key.serialize_der(),
        sha256,
    }
}

fn agent_params(usages: Vec<ExtendedKeyUsagePurpose>) -> CertificateParams {
    let mut params = CertificateParams::new(vec!["agent.example".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "agent");
    params.extended_key_usages = usages;
    params
}

fn issue(ca: &Issuer<'_, KeyPair>, usages: Vec<ExtendedKeyUsagePurpose>) -> Identity {
    let key = KeyPair::generate().unwrap();
    let certificate = agent_params(usages).signed_by(&key, ca).unwrap();
    identity(certificate.der().clone(), &key)
}

fn client_certificate(ca: &Issuer<'_, KeyPair>) -> Identity {
    issue(ca, vec![ExtendedKeyUsagePurpose::ClientAuth])
}

fn self_signed() -> Identity {
    let key = KeyPair::generate().unwrap();
    let certificate = agent_params(vec![ExtendedKeyUsagePurpose::ClientAuth])
        .self_signed(&key)
        .unwrap();
    identity(certificate.der().clone(), &key)
}

// === the gateway under test ===

struct Bed {
    addr: SocketAddr,
    bus: Arc<dyn Bus>,
    subjects: Subjects,
    server: Certificates,
    envelopes: Subscription,
    applied: watch::Receiver<Option<u64>>,
    _stop: tokio_util::sync::DropGuard,
}

fn config(client_auth: ClientAuth, server: &Certificates, subjects: &Subjects) -> GatewayConfig {
    let mut tls = server.tls.clone();
    tls.client_auth = client_auth;
    GatewayConfig {
        tls: Some(tls),
        subjects: subjects.clone(),
        http_reply_timeout: Duration::from_millis(300),
        ..GatewayConfig::for_test()
    }
}

async fn bed(client_auth: ClientAuth) -> Bed {
    bed_on(
        client_auth,
        Arc::new(InProcessBus::default()),
        Subjects::default(),
    )
    .await
}

async fn bed_on(client_auth: ClientAuth, bus: Arc<dyn Bus>, subjects: Subjects) -> Bed {
    let server = certificates();
    let config = config(client_auth, &server, &subjects);
    let envelopes = bus.subscribe(&subjects.agent_inbound_all()).await.unwrap();
    let stop = CancellationToken::new();
    // A control-plane is heard, so agents' messages are relayed.
    let beats = bus.clone();
    let beat_subject = subjects.control_plane_heartbeat();
    let beating = stop.clone();
    tokio::spawn(async move {
        let beat = ControlPlaneHeartbeat {
            replica_id: "stand-in".to_owned(),
        }
        .encode_to_vec();
        while !beating.is_cancelled() {
            let _ = beats.publish(&beat_subject, beat.clone().into()).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gateway = Gateway::start(listener, config, bus.clone()).await.unwrap();
    let applied = gateway
        .trust_applied()
        .expect("client authentication is on");
    tokio::spawn(gateway.serve(stop.clone().cancelled_owned()));
    Bed {
        addr,
        bus,
        subjects,
        server,
        envelopes,
        applied,
        _stop: stop.drop_guard(),
    }
}

fn state(cas: &[&CertificateDer<'_>], revoked: &[&str], read_unix_nano: u64) -> TrustState {
    TrustState {
        ca_certificates_der: cas.iter().map(|ca| ca.to_vec().into()).collect(),
        revoked_certificate_sha256: revoked.iter().map(|r| r.to_string()).collect(),
        read_unix_nano,
    }
}

impl Bed {
    /// Publishes a trust state as a control-plane does and waits until the gateway holds it.
    async fn trust(&mut self, state: TrustState) {
        let read = state.read_unix_nano;
        self.bus
            .publish(&self.subjects.trust_state(), state.encode_to_vec().into())
            .await
            .unwrap();
        applied(&mut self.applied, read).await;
    }

    fn agent(&self, identity: Option<&Identity>) -> Arc<rustls::ClientConfig> {
        agent(&self.server, identity)
    }

    async fn next_envelope(&mut self) -> AgentEnvelope {
        let message = tokio::time::timeout(Duration::from_secs(5), self.envelopes.next())
            .await
            .expect("an envelope within 5 s")
            .unwrap();
        AgentEnvelope::decode(message.payload).unwrap()
    }
}

async fn applied(applied: &mut watch::Receiver<Option<u64>>, read: u64) {
    tokio::time::timeout(
        Duration::from_secs(5),
        applied.wait_for(|held| held.is_some_and(|held| held >= read)),
    )
    .await
    .expect("the gateway applies the trust state within 5 s")
    .unwrap();
}

// === an agent ===

fn agent(server: &Certificates, identity: Option<&Identity>) -> Arc<rustls::ClientConfig> {
    let Some(identity) = identity else {
        return Arc::new(tls_client(&server.ca_pem));
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots(&server.ca_pem))
    .with_client_auth_cert(
        vec![identity.certificate.clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key.clone())),
    )
    .unwrap();
    Arc::new(config)
}

async fn tls(
    addr: SocketAddr,
    agent: &Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(agent.clone())
        .connect("localhost".try_into().unwrap(), tcp)
        .await
}

/// `GET /healthz` on a new connection: the answer's status line, or why there was none. With
/// TLS 1.3 the client finishes its handshake before the gateway has judged its certificate,
/// so a refusal shows on the first read.
async fn healthz(addr: SocketAddr, agent: &Arc<rustls::ClientConfig>) -> Result<String, String> {
    let mut stream = tls(addr, agent).await.map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer).await {
        Ok(_) => {}
        Err(error) if answer.is_empty() => return Err(error.to_string()),
        // The gateway may close without close_notify; what was read counts.
        Err(_) => {}
    }
    let answer = String::from_utf8_lossy(&answer);
    answer
        .lines()
        .next()
        .map(str::to_owned)
        .ok_or_else(|| "closed without an answer".to_owned())
}

type Socket = WebSocketStream<TlsStream<TcpStream>>;

async fn websocket(
    addr: SocketAddr,
    agent: &Arc<rustls::ClientConfig>,
    bearer: Option<&str>,
) -> Result<Socket, tungstenite::Error> {
    let stream = tls(addr, agent).await?;
    let mut request = "wss://localhost/v1/opamp".into_client_request().unwrap();
    if let Some(token) = bearer {
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
    }
    tokio_tungstenite::client_async(request, stream)
        .await
        .map(|(socket, _)| socket)
}

fn opamp_frame(seq: u64) -> Message {
    let message = AgentToServer {
        instance_uid: vec![7; 16].into(),
        sequence_num: seq,
        ..Default::default()
    };
    Message::Binary(codec::ws_frame_from_encoded(&message.encode_to_vec()).into())
}

/// The close frame the gateway ends `socket` with (frames before it are skipped).
async fn close_frame(socket: &mut Socket) -> Option<(CloseCode, String)> {
    loop {
        match socket.next().await? {
            Ok(Message::Close(frame)) => {
                return frame.map(|frame| (frame.code, frame.reason.to_string()))
            }
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

/// The metrics of every gateway in this test process.
fn metrics() -> String {
    ampora_shared::telemetry::prometheus().render()
}

fn refused_count(reason: &str) -> u64 {
    let series =
        format!("ampora_gateway_client_certificates_refused_total{{reason=\"{reason}\"}} ");
    metrics()
        .lines()
        .find_map(|line| {
            line.strip_prefix(&series)
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0)
}

/// The gateway counts a refusal after the client has already seen it: wait for the count.
async fn refused_soon(reason: &str, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while refused_count(reason) < at_least {
        assert!(
            Instant::now() < deadline,
            "no refusal counted as {reason:?}:\n{}",
            metrics()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// === the tests ===

#[tokio::test]
async fn forged_and_self_signed_certificates_are_refused_at_the_handshake() {
    metrics();
    let mut bed = bed(ClientAuth::Required).await;
    let ours = ca();
    bed.trust(state(&[ours.der()], &[], 1)).await;

    let good = client_certificate(&ours);
    assert_eq!(
        healthz(bed.addr, &bed.agent(Some(&good))).await.as_deref(),
        Ok("HTTP/1.1 200 OK")
    );

    let unknown_before = refused_count("unknown_issuer");
    let mine = self_signed();
    let answer = healthz(bed.addr, &bed.agent(Some(&mine))).await;
    assert!(
        answer.is_err(),
        "a self-signed certificate was let in: {answer:?}"
    );
    refused_soon("unknown_issuer", unknown_before + 1).await;

    // Same issuer name as ours, another key: its signature cannot verify.
    let forger = ca();
    let forged = client_certificate(&forger);
    let answer = healthz(bed.addr, &bed.agent(Some(&forged))).await;
    assert!(
        answer.is_err(),
        "a forged certificate was let in: {answer:?}"
    );
}

#[tokio::test]
async fn a_certificate_without_client_auth_usage_is_refused_with_a_clear_reason() {
    metrics();
    let mut bed = bed(ClientAuth::Required).await;
    let ours = ca();
    bed.trust(state(&[ours.der()], &[], 1)).await;
    let server_only = issue(&ours, vec![ExtendedKeyUsagePurpose::ServerAuth]);
    let answer = healthz(bed.addr, &bed.agent(Some(&server_only))).await;
    assert!(
        answer.is_err(),
        "a serverAuth-only certificate was let in: {answer:?}"
    );
    refused_soon("not_for_client_auth", 1).await;
}

#[tokio::test]
async fn required_refuses_a_connection_without_a_certificate() {
    metrics();
    let mut bed = bed(ClientAuth::Required).await;
    let ours = ca();
    bed.trust(state(&[ours.der()], &[], 1)).await;
    let before = refused_count("no_certificate");
    let answer = healthz(bed.addr, &bed.agent(None)).await;
    assert!(answer.is_err(), "no certificate, yet answered: {answer:?}");
    refused_soon("no_certificate", before + 1).await;
    let refused = websocket(bed.addr, &bed.agent(None), Some("a-token")).await;
    assert!(
        refused.is_err(),
        "a token does not stand in for a certificate"
    );
}

#[tokio::test]
async fn before_any_trust_state_certificates_cannot_be_verified_and_the_gateway_is_not_ready() {
    metrics();
    let bed = bed(ClientAuth::Optional).await;
    let good = client_certificate(&ca());
    let answer = healthz(bed.addr, &bed.agent(Some(&good))).await;
    assert!(answer.is_err(), "verified against nothing: {answer:?}");
    refused_soon("no_trust_state", 1).await;
    // Without a certificate the connection stands, but the gateway says it is not ready.
    let mut stream = tls(bed.addr, &bed.agent(None)).await.unwrap();
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
}

#[tokio::test]
async fn optional_admits_an_agent_without_a_certificate_only_with_a_token_and_for_enrolment() {
    let mut bed = bed(ClientAuth::Optional).await;
    let ours = ca();
    bed.trust(state(&[ours.der()], &[], 1)).await;

    match websocket(bed.addr, &bed.agent(None), None).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
        }
        other => panic!("expected 401, got {:?}", other.map(|_| "a WebSocket")),
    }

    let mut socket = websocket(bed.addr, &bed.agent(None), Some("bootstrap-1"))
        .await
        .unwrap();
    socket.send(opamp_frame(1)).await.unwrap();
    let envelope = bed.next_envelope().await;
    assert_eq!(envelope.bearer_token, "bootstrap-1");
    assert!(envelope.enrolment_only);
    assert_eq!(envelope.client_certificate_sha256, "");

    // With a certificate, the same gateway serves the agent fully.
    let enrolled = client_certificate(&ours);
    let mut socket = websocket(bed.addr, &bed.agent(Some(&enrolled)), None)
        .await
        .unwrap();
    socket.send(opamp_frame(1)).await.unwrap();
    let envelope = bed.next_envelope().await;
    assert_eq!(envelope.client_certificate_sha256, enrolled.sha256);
    assert!(!envelope.enrolment_only);
}

#[tokio::test]
async fn envelopes_carry_the_certificate_fingerprint_and_the_bearer_token() {
    let mut bed = bed(ClientAuth::Required).await;
    let ours = ca();
    bed.trust(state(&[ours.der()], &[], 1)).await;
    let agent_identity = client_certificate(&ours);
    let agent = bed.agent(Some(&agent_identity));

    let mut socket = websocket(bed.addr, &agent, Some("tok-ws")).await.unwrap();
    socket.send(opamp_frame(1)).await.unwrap();
    socket.send(opamp_frame(2)).await.unwrap();
    for seq in [1, 2] {
        let envelope = bed.next_envelope().await;
        assert!(matches!(envelope.event, Some(Event::AgentToServer(_))));
        assert_eq!(
            envelope.client_certificate_sha256, agent_identity.sha256,
            "message {seq}"
        );
        assert_eq!(envelope.bearer_token, "tok-ws");
        assert!(!envelope.enrolment_only);
    }

    // Two POSTs on one kept-alive connection: each envelope carries the connection's
    // fingerprint and its own request's token.
    let mut stream = tls(bed.addr, &agent).await.unwrap();
    let body = AgentToServer {
        instance_uid: vec![8; 16].into(),
        ..Default::default()
    }
    .encode_to_vec();
    for token in ["tok-a", "tok-b"] {
        let head = format!(
            "POST /v1/opamp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-protobuf\r\n\
             Authorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body).await.unwrap();
        let envelope = bed.next_envelope().await;
        assert_eq!(envelope.client_certificate_sha256, agent_identity.sha256);
        assert_eq!(envelope.bearer_token, token);
        // No control-plane answers here: the exchange ends in 503 after the reply timeout,
        // and the connection stays open for the next request.
        let mut answer = [0u8; 512];
        let n = stream.read(&mut answer).await.unwrap();
        assert!(answer[..n].starts_with(b"HTTP/1.1 503"));
    }
}

#[tokio::test]
async fn revocation_closes_the_live_connection_and_refuses_the_next_handshake() {
    metrics();
    let mut bed = bed(ClientAuth::Required).await;
    let ours = ca();
    bed.trust(state(&[ours.der()], &[], 1)).await;
    let doomed = client_certificate(&ours);
    let bystander = client_certificate(&ours);
    let mut socket = websocket(bed.addr, &bed.agent(Some(&doomed)), None)
        .await
        .unwrap();
    let mut other = websocket(bed.addr, &bed.agent(Some(&bystander)), None)
        .await
        .unwrap();
    socket.send(opamp_frame(1)).await.unwrap();
    bed.next_envelope().await;

    bed.trust(state(&[ours.der()], &[&doomed.sha256], 2)).await;
    let (code, reason) = tokio::time::timeout(Duration::from_secs(5), close_frame(&mut socket))
        .await
        .expect("closed within 5 s")
        .expect("a close frame");
    assert_eq!(code, CloseCode::Policy);
    assert_eq!(reason, "client certificate revoked");

    let before = refused_count("revoked");
    let answer = healthz(bed.addr, &bed.agent(Some(&doomed))).await;
    assert!(
        answer.is_err(),
        "a revoked certificate was let in: {answer:?}"
    );
    refused_soon("revoked", before + 1).await;

    // The other agent's connection is untouched.
    other.send(opamp_frame(1)).await.unwrap();
    let envelope = bed.next_envelope().await;
    assert_eq!(envelope.client_certificate_sha256, bystander.sha256);
}

/// A control-plane stand-in on NATS: answers every TrustRequest with its current state.
struct Publisher {
    bus: Arc<dyn Bus>,
    subjects: Subjects,
    state: Arc<Mutex<TrustState>>,
}

impl Publisher {
    async fn start(bus: Arc<dyn Bus>, subjects: Subjects, state: TrustState) -> Publisher {
        let state = Arc::new(Mutex::new(state));
        let mut requests = bus.subscribe(&subjects.trust_request()).await.unwrap();
        let (answers, answer_subject, current) =
            (bus.clone(), subjects.trust_state(), state.clone());
        tokio::spawn(async move {
            while let Some(message) = requests.next().await {
                TrustRequest::decode(message.payload).unwrap();
                let payload = current.lock().unwrap().encode_to_vec();
                let _ = answers.publish(&answer_subject, payload.into()).await;
            }
        });
        Publisher {
            bus,
            subjects,
            state,
        }
    }

    /// A change: kept for later requests and published at once.
    async fn change(&self, state: TrustState) {
        let payload = state.encode_to_vec();
        *self.state.lock().unwrap() = state;
        self.bus
            .publish(&self.subjects.trust_state(), payload.into())
            .await
            .unwrap();
    }
}

async fn nats(server: &TestNats) -> Arc<dyn Bus> {
    Arc::new(
        NatsBus::connect(&NatsOptions {
            url: server.url(),
            name: "mtls-test".to_owned(),
            subscription_capacity: 1024,
            ..Default::default()
        })
        .await
        .unwrap(),
    )
}

#[tokio::test]
async fn revocation_reaches_every_gateway_on_the_bus_and_a_new_one_loads_it_at_start() {
    let server = TestNats::start();
    let subjects = Subjects::new(
        format!("t{}", uuid::Uuid::new_v4().simple()),
        ampora_shared::subjects::DEFAULT_PARTITIONS,
    );
    let ours = ca();
    // The gateways start before the control-plane is there: they keep asking.
    let mut first = bed_on(ClientAuth::Required, nats(&server).await, subjects.clone()).await;
    let mut second = bed_on(ClientAuth::Required, nats(&server).await, subjects.clone()).await;
    let publisher = Publisher::start(
        nats(&server).await,
        subjects.clone(),
        state(&[ours.der()], &[], 10),
    )
    .await;
    applied(&mut first.applied, 10).await;
    applied(&mut second.applied, 10).await;

    let doomed = client_certificate(&ours);
    let mut sockets = Vec::new();
    for bed in [&first, &second] {
        sockets.push(
            websocket(bed.addr, &bed.agent(Some(&doomed)), None)
                .await
                .unwrap(),
        );
    }
    let revoked_at = Instant::now();
    publisher
        .change(state(&[ours.der()], &[&doomed.sha256], 11))
        .await;
    for socket in &mut sockets {
        let (code, _) = tokio::time::timeout(Duration::from_secs(5), close_frame(socket))
            .await
            .expect("closed within 5 s of the revocation")
            .expect("a close frame");
        assert_eq!(code, CloseCode::Policy);
    }
    assert!(revoked_at.elapsed() < Duration::from_secs(5));

    // A gateway started after the revocation has it before its first agent.
    let mut third = bed_on(ClientAuth::Required, nats(&server).await, subjects.clone()).await;
    applied(&mut third.applied, 11).await;
    let answer = healthz(third.addr, &third.agent(Some(&doomed))).await;
    assert!(
        answer.is_err(),
        "the new gateway let a revoked certificate in: {answer:?}"
    );
    let fine = client_certificate(&ours);
    assert_eq!(
        healthz(third.addr, &third.agent(Some(&fine)))
            .await
            .as_deref(),
        Ok("HTTP/1.1 200 OK")
    );
}
