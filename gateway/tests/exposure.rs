//! Where a gateway listens decides what it demands: on loopback anything goes; elsewhere TLS and
//! a token or certificate on every connection, unless it is started insecure. And from a
//! configured load balancer, a PROXY protocol v2 header names the agent's address.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ampora_gateway::{Gateway, GatewayConfig, GatewayError};
use ampora_shared::bus::{Bus, InProcessBus, Subscription};
use ampora_shared::pb::bus::{AgentEnvelope, ControlPlaneHeartbeat};
use ampora_shared::pb::opamp::AgentToServer;
use futures::StreamExt;
use ppp::v2::{Builder, Command, Protocol, Version};
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use support::{certificates, tls_client};

struct Started {
    /// Where a local client reaches it (a wildcard bind is reached on 127.0.0.1).
    addr: SocketAddr,
    envelopes: Subscription,
    agents: String,
    _stop: tokio_util::sync::DropGuard,
}

async fn start(bind: &str, config: GatewayConfig) -> Result<Started, GatewayError> {
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::default());
    let envelopes = bus
        .subscribe(&config.subjects.agent_inbound_all())
        .await
        .unwrap();
    let beat = ControlPlaneHeartbeat {
        replica_id: "stand-in".to_owned(),
    };
    bus.publish(
        &config.subjects.control_plane_heartbeat(),
        beat.encode_to_vec().into(),
    )
    .await
    .unwrap();
    let listener = TcpListener::bind(bind).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let gateway = Gateway::start(listener, config, bus).await?;
    let agents = gateway.agent_authentication();
    let stop = CancellationToken::new();
    tokio::spawn(gateway.serve(stop.clone().cancelled_owned()));
    Ok(Started {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        envelopes,
        agents,
        _stop: stop.drop_guard(),
    })
}

impl Started {
    async fn envelope(&mut self) -> AgentEnvelope {
        let message = tokio::time::timeout(Duration::from_secs(5), self.envelopes.next())
            .await
            .expect("an envelope within 5 s")
            .unwrap();
        AgentEnvelope::decode(message.payload).unwrap()
    }
}

/// One OpAMP POST (with `authorization`, if given) on `stream`; the status line of the answer,
/// or what went wrong.
async fn post<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    authorization: Option<&str>,
) -> String {
    let body = AgentToServer {
        instance_uid: vec![4; 16].into(),
        ..Default::default()
    }
    .encode_to_vec();
    let authorization = authorization
        .map(|value| format!("Authorization: {value}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST /v1/opamp HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/x-protobuf\r\n\
         {authorization}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(&body);
    if let Err(error) = stream.write_all(&request).await {
        return format!("write failed: {error}");
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("closed without an answer")
        .to_owned()
}

fn config() -> GatewayConfig {
    GatewayConfig {
        // No control-plane answers: a relayed POST ends in 503 soon after.
        http_reply_timeout: Duration::from_millis(200),
        ..GatewayConfig::for_test()
    }
}

#[tokio::test]
async fn a_plain_gateway_on_a_public_address_needs_the_insecure_flag() {
    let error = start("0.0.0.0:0", config()).await.err().expect("refused");
    assert!(matches!(error, GatewayError::Insecure(_)), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("AMPORA_TLS_CERT") && message.contains("--insecure"),
        "{message}"
    );

    let insecure = GatewayConfig {
        insecure: true,
        ..config()
    };
    let mut started = start("0.0.0.0:0", insecure).await.unwrap();
    assert_eq!(
        started.agents,
        "plain (no TLS); agents are not authenticated"
    );
    let mut stream = TcpStream::connect(started.addr).await.unwrap();
    assert_eq!(
        post(&mut stream, None).await,
        "HTTP/1.1 503 Service Unavailable"
    );
    started.envelope().await;
}

#[tokio::test]
async fn on_loopback_plain_unauthenticated_agents_are_served() {
    let mut started = start("127.0.0.1:0", config()).await.unwrap();
    assert_eq!(
        started.agents,
        "plain (no TLS); agents are not authenticated"
    );
    let mut stream = TcpStream::connect(started.addr).await.unwrap();
    assert_eq!(
        post(&mut stream, None).await,
        "HTTP/1.1 503 Service Unavailable"
    );
    let envelope = started.envelope().await;
    assert_eq!(envelope.bearer_token, "");
    assert!(!envelope.enrolment_only);
}

#[tokio::test]
async fn a_tls_gateway_on_a_public_address_wants_a_credential_on_every_connection() {
    let certs = certificates();
    let config = GatewayConfig {
        tls: Some(certs.tls.clone()),
        ..config()
    };
    let mut started = start("0.0.0.0:0", config).await.unwrap();
    assert_eq!(
        started.agents,
        "TLS; a Bearer token required (no client certificates asked for)"
    );
    let agent = Arc::new(tls_client(&certs.ca_pem));
    let connect = || async {
        let tcp = TcpStream::connect(started.addr).await.unwrap();
        tokio_rustls::TlsConnector::from(agent.clone())
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap()
    };
    assert_eq!(
        post(&mut connect().await, None).await,
        "HTTP/1.1 401 Unauthorized"
    );
    assert_eq!(
        post(&mut connect().await, Some("Bearer t-1")).await,
        "HTTP/1.1 503 Service Unavailable"
    );
    assert_eq!(started.envelope().await.bearer_token, "t-1");
}

fn proxy_header(source: &str) -> Vec<u8> {
    let source: SocketAddr = source.parse().unwrap();
    let destination: SocketAddr = "192.0.2.1:4320".parse().unwrap();
    Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        (source, destination),
    )
    .build()
    .unwrap()
}

#[tokio::test]
async fn a_proxy_header_from_a_configured_balancer_names_the_agent() {
    let config = GatewayConfig {
        proxy_protocol_from: "10.9.0.0/16, 127.0.0.1".parse().unwrap(),
        ..config()
    };
    let mut started = start("127.0.0.1:0", config).await.unwrap();
    let mut stream = TcpStream::connect(started.addr).await.unwrap();
    stream
        .write_all(&proxy_header("203.0.113.7:4242"))
        .await
        .unwrap();
    assert_eq!(
        post(&mut stream, None).await,
        "HTTP/1.1 503 Service Unavailable"
    );
    assert_eq!(started.envelope().await.remote_addr, "203.0.113.7:4242");

    // From a configured address, a connection without a header is served as it comes.
    let mut direct = TcpStream::connect(started.addr).await.unwrap();
    let local = direct.local_addr().unwrap();
    assert_eq!(
        post(&mut direct, None).await,
        "HTTP/1.1 503 Service Unavailable"
    );
    assert_eq!(started.envelope().await.remote_addr, local.to_string());
}

#[tokio::test]
async fn a_proxy_header_from_anyone_else_is_not_believed() {
    let config = GatewayConfig {
        proxy_protocol_from: "10.9.0.0/16".parse().unwrap(),
        ..config()
    };
    let mut started = start("127.0.0.1:0", config).await.unwrap();
    let mut stream = TcpStream::connect(started.addr).await.unwrap();
    stream
        .write_all(&proxy_header("203.0.113.7:4242"))
        .await
        .unwrap();
    // Not read as a header, the bytes are a malformed request.
    assert_eq!(post(&mut stream, None).await, "HTTP/1.1 400 Bad Request");
    // The next agent's envelope is the first: nothing was relayed for the forged one.
    let mut honest = TcpStream::connect(started.addr).await.unwrap();
    let local = honest.local_addr().unwrap();
    post(&mut honest, None).await;
    assert_eq!(started.envelope().await.remote_addr, local.to_string());
}
