//! The production shape under failure: 3 gateways and 2 control-planes over NATS and
//! PostgreSQL, behind HAProxy, with a few hundred agents (our simulated fleet and the opamp-go
//! agent, WebSocket and HTTP mixed). Each test breaks one thing and checks that every agent is
//! served again, current, and that no agent's history ever went backwards.

mod agent;
mod support;

use std::time::Duration;

use sqlx::Connection;

use agent::{full_state, heartbeat, WsAgent};
use ampora_shared::pb::opamp::ServerErrorResponseType;

use support::cluster::{BackendServer, Cluster, ClusterOptions};
use support::fleet::Fleet;
use support::ExternalAgent;

/// The cluster tests share two cores: run them one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WEBSOCKET_AGENTS: usize = 200;
const HTTP_AGENTS: usize = 100;

fn options() -> ClusterOptions {
    ClusterOptions {
        gateways: 3,
        control_planes: 2,
        nats_servers: 1,
        gateway_tls: false,
    }
}

/// One gateway, one control-plane, one NATS server.
fn one_of_each() -> ClusterOptions {
    ClusterOptions {
        gateways: 1,
        control_planes: 1,
        nats_servers: 1,
        gateway_tls: false,
    }
}

async fn steady(cluster: &mut Cluster) -> (Fleet, Vec<ExternalAgent>) {
    let fleet = Fleet::start(
        &cluster.ws_url(),
        &cluster.http_url(),
        WEBSOCKET_AGENTS,
        HTTP_AGENTS,
    );
    let go = vec![
        ExternalAgent::go("ws", &cluster.ws_url(), "go-ws-cluster", &[]),
        ExternalAgent::go("http", &cluster.http_url(), "go-http-cluster", &[]),
    ];
    // Current means the server shows each agent's latest status: hold still to check it.
    fleet.freeze();
    let api = cluster.api();
    let behind = fleet
        .wait_current(&cluster.http, &api, Duration::from_secs(60))
        .await;
    assert!(
        behind.is_empty(),
        "fleet never became current: {} behind, e.g. {:?}",
        behind.len(),
        &behind[..behind.len().min(5)]
    );
    fleet.thaw();
    (fleet, go)
}

async fn go_agents_online(cluster: &mut Cluster, agents: &[ExternalAgent]) {
    let api = cluster.api();
    for agent in agents {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let body: serde_json::Value = cluster
                .http
                .get(format!("{api}/api/v1/agents/{}", agent.uid))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if body["status"] == "online" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "opamp-go agent {} not online: {body}",
                agent.uid
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// After a disruption: agents keep changing for a while (every one reports ten more changes,
/// reconnecting if it must), then freeze; every one must end current and in order.
async fn recovers(cluster: &mut Cluster, fleet: Fleet, go: Vec<ExternalAgent>) {
    fleet.wait_progress(10, Duration::from_secs(60)).await;
    fleet.freeze();
    let api = cluster.api();
    let behind = fleet
        .wait_current(&cluster.http, &api, Duration::from_secs(60))
        .await;
    assert!(
        behind.is_empty(),
        "{} agents not current, e.g. {:#?}",
        behind.len(),
        &behind[..behind.len().min(5)]
    );
    let checked = fleet
        .history_in_order(&cluster.http, &api, 60)
        .await
        .unwrap();
    assert!(
        checked > 60,
        "history was checked ({checked} health events)"
    );
    go_agents_online(cluster, &go).await;
    fleet.stop().await;
}

async fn agent_status(cluster: &Cluster, api: &str, uid: uuid::Uuid) -> serde_json::Value {
    let body: serde_json::Value = cluster
        .http
        .get(format!("{api}/api/v1/agents/{uid}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["status"].clone()
}

#[tokio::test]
async fn killed_gateway_agents_reconnect_through_the_load_balancer() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(options()).await;
    let (fleet, go) = steady(&mut cluster).await;
    // An agent on the doomed gateway that will not come back: it must be marked offline.
    let mut stranded = WsAgent::connect(&cluster.gateways[0].address).await;
    stranded.exchange(full_state("stranded", "prod")).await;
    let api = cluster.api();
    assert_eq!(agent_status(&cluster, &api, stranded.uid).await, "online");

    cluster.gateways[0].kill9();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while agent_status(&cluster, &api, stranded.uid).await != "offline" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dead gateway's agent is still online"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    recovers(&mut cluster, fleet, go).await;
}

#[tokio::test]
async fn without_control_planes_agents_are_told_unavailable_at_once() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(one_of_each()).await;
    let mut agent = WsAgent::connect(&cluster.ws_url()).await;
    agent.exchange(full_state("patient", "prod")).await;
    cluster.control_planes[0].kill9();
    // Once the gateway no longer hears a control-plane, answers come from the gateway itself.
    gateways_hear_no_control_plane(&cluster).await;
    let reply = agent.exchange(heartbeat()).await;
    let error = reply.error_response.expect("an error response");
    assert_eq!(error.r#type, ServerErrorResponseType::Unavailable as i32);
    assert!(error.details.is_some(), "retry info is given");

    let mut message = full_state("http", "prod");
    message.instance_uid = uuid::Uuid::now_v7().as_bytes().to_vec().into();
    let started = std::time::Instant::now();
    let response = reqwest::Client::new()
        .post(cluster.http_url())
        .header("Content-Type", "application/x-protobuf")
        .body(prost::Message::encode_to_vec(&message))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once, not after the reply timeout"
    );

    // The connection was kept, and service resumes with a control-plane.
    cluster.control_planes[0].restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reply = agent.exchange(heartbeat()).await;
        if reply.error_response.is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "service did not resume"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The metrics page of the gateway whose OpAMP URL is `gateway`.
fn gateway_metrics_url(gateway: &str) -> String {
    gateway
        .replace("ws://", "http://")
        .replace("/v1/opamp", "/metrics")
}

async fn metrics_text(metrics_url: &str) -> String {
    reqwest::get(metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The gateway's own view: whether it hears a control-plane (its metrics gauge).
async fn hears_a_control_plane(gateway: &str) -> bool {
    metrics_text(&gateway_metrics_url(gateway))
        .await
        .lines()
        .any(|line| line == "ampora_gateway_control_plane_available 1")
}

/// Waits until every running gateway's metrics say it hears no control-plane.
async fn gateways_hear_no_control_plane(cluster: &Cluster) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for gateway in &cluster.gateways {
        while hears_a_control_plane(&gateway.address).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} still hears a control-plane",
                gateway.address
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[tokio::test]
async fn a_control_plane_waiting_on_its_database_is_still_heard() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(one_of_each()).await;
    let gateway = cluster.gateways[0].address.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !hears_a_control_plane(&gateway).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway never heard the control-plane"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Another session holds the lease rows, so the control-plane's lease renewal waits for
    // longer than the gateway's control-plane timeout (3 s here).
    let mut blocker = sqlx::PgConnection::connect(&cluster.database)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("SELECT * FROM partition_leases FOR UPDATE")
        .execute(&mut blocker)
        .await
        .unwrap();
    // Until the database itself reports a statement waiting on those rows for longer than the
    // gateway's control-plane timeout (and a heartbeat interval), the gateway hears it.
    let mut observer = sqlx::PgConnection::connect(&cluster.database)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let waited_long: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND now() - query_start > interval '4 seconds'",
        )
        .fetch_one(&mut observer)
        .await
        .unwrap();
        assert!(
            hears_a_control_plane(&gateway).await,
            "the gateway took a control-plane waiting on its database for a missing one"
        );
        if waited_long > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease renewal never waited on the held rows"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
}

#[tokio::test]
async fn killed_control_plane_loses_no_status_and_applies_none_twice() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(options()).await;
    let (fleet, go) = steady(&mut cluster).await;
    cluster.control_planes[0].kill9();
    recovers(&mut cluster, fleet, go).await;
}

#[tokio::test]
async fn restarted_nats_everyone_resyncs() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(options()).await;
    let (fleet, go) = steady(&mut cluster).await;
    cluster.nats[0].stop();
    // The outage lasts until every gateway has noticed it: evictions published meanwhile are
    // lost, and the agents must come back online from their own traffic.
    gateways_hear_no_control_plane(&cluster).await;
    cluster.nats[0].restart();
    recovers(&mut cluster, fleet, go).await;
}

#[tokio::test]
async fn postgres_down_for_ten_seconds_then_state_is_correct() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(options()).await;
    let (fleet, go) = steady(&mut cluster).await;
    cluster.postgres.kill();
    // The outage's length is the scenario, not a wait for anything.
    tokio::time::sleep(Duration::from_secs(10)).await;
    for role in cluster
        .control_planes
        .iter_mut()
        .chain(cluster.gateways.iter_mut())
    {
        assert!(
            role.is_running(),
            "a process crashed while PostgreSQL was down"
        );
    }
    cluster.postgres.restart();
    recovers(&mut cluster, fleet, go).await;
}

#[tokio::test]
async fn three_node_nats_cluster_killed_gateway() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(ClusterOptions {
        nats_servers: 3,
        ..options()
    })
    .await;
    let (fleet, go) = steady(&mut cluster).await;
    cluster.gateways[1].kill9();
    cluster.nats[0].stop();
    recovers(&mut cluster, fleet, go).await;
}

#[tokio::test]
async fn sigterm_drains_a_gateway() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(ClusterOptions {
        gateways: 2,
        ..one_of_each()
    })
    .await;
    let mut agent = WsAgent::connect(&cluster.gateways[0].address).await;
    agent.exchange(full_state("drained", "prod")).await;
    let gateway = std::thread::scope(|scope| {
        let gateway = &mut cluster.gateways[0];
        scope
            .spawn(move || gateway.terminate(Duration::from_secs(5)))
            .join()
            .unwrap()
    });
    let (code, reason) = agent
        .closed(Duration::from_secs(5))
        .await
        .expect("a close frame");
    assert_eq!(u16::from(code), 1001);
    assert!(reason.contains("shutting down"), "{reason}");
    assert!(
        gateway,
        "the gateway exited cleanly within its grace period"
    );

    // The agent comes back through the other gateway and is online exactly once.
    let mut again = WsAgent::connect_as(&cluster.gateways[1].address, agent.uid).await;
    again.next_seq = agent.next_seq;
    again.exchange(heartbeat()).await;
    let api = cluster.api();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while agent_status(&cluster, &api, agent.uid).await != "online" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent is not online after moving"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let body: serde_json::Value = cluster
        .http
        .get(format!("{api}/api/v1/agents?attr=service.name=drained"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["agents"].as_array().unwrap().len(), 1);
}

/// Waits until what HAProxy reports of the gateways satisfies `holds`.
async fn haproxy_reports(cluster: &Cluster, what: &str, holds: impl Fn(&[BackendServer]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let servers = cluster.backend_servers().await;
        if holds(&servers) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "HAProxy never reported {what}: {servers:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The state HAProxy reports for the gateway it calls `name`, if it lists it.
fn state_of<'a>(servers: &'a [BackendServer], name: &str) -> Option<(&'a str, &'a str)> {
    servers
        .iter()
        .find(|server| server.name == name)
        .map(|server| (server.status.as_str(), server.check.as_str()))
}

#[tokio::test]
async fn haproxy_checks_tls_gateways_over_tls() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(ClusterOptions {
        gateways: 2,
        gateway_tls: true,
        ..one_of_each()
    })
    .await;
    assert!(cluster.gateways[0].address.starts_with("wss://"));
    // Servers start UP before any check; a passed layer-7 check (`L7OK`) shows that /healthz
    // answered over TLS. (gateway3 repeats gateway2.)
    let passed = Some(("UP", "L7OK"));
    haproxy_reports(&cluster, "every check passed", |servers| {
        ["gateway1", "gateway2", "gateway3"]
            .iter()
            .all(|name| state_of(servers, name) == passed)
    })
    .await;

    cluster.gateways[0].kill9();
    haproxy_reports(&cluster, "gateway1 down, gateway2 up", |servers| {
        state_of(servers, "gateway1").is_some_and(|(status, _)| status == "DOWN")
            && state_of(servers, "gateway2") == passed
    })
    .await;
}

/// A test CA standing for Ampora's, and an agent certificate it issued (with clientAuth):
/// (CA DER, agent certificate DER, agent key PKCS#8 DER).
fn test_pki() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Ampora agents (test)");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
    let mut agent = rcgen::CertificateParams::new(vec!["agent.example".to_owned()]).unwrap();
    agent.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let certificate = agent.signed_by(&key, &ca).unwrap();
    (
        ca.der().to_vec(),
        certificate.der().to_vec(),
        key.serialize_der(),
    )
}

#[tokio::test]
async fn mtls_end_to_end_through_haproxy() {
    use ampora_shared::bus::{Bus, NatsBus, NatsOptions};
    use ampora_shared::pb::bus::{AgentEnvelope, TrustState};
    use ampora_shared::pb::opamp::AgentToServer;
    use ampora_shared::subjects::{Subjects, DEFAULT_PARTITIONS};
    use futures::{SinkExt, StreamExt};
    use prost::Message as _;
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    use std::sync::Arc;
    use tokio_tungstenite::tungstenite::Message;

    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start_with_env(
        ClusterOptions {
            gateways: 2,
            gateway_tls: true,
            ..one_of_each()
        },
        // HAProxy's TLS health checks carry no client certificate: `optional` lets them in.
        &[("AMPORA_TLS_CLIENT_AUTH", "optional")],
    )
    .await;
    let subjects = Subjects::new(cluster.prefix.clone(), DEFAULT_PARTITIONS);
    let bus = NatsBus::connect(&NatsOptions {
        url: cluster.nats[0].url(),
        name: "mtls-cluster-test".to_owned(),
        subscription_capacity: 1024,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut envelopes = bus.subscribe(&subjects.agent_inbound_all()).await.unwrap();

    // The trust state a control-plane would publish, with this test's CA. Its read time is
    // far ahead, so the gateways keep it over any state a control-plane of this cluster may
    // publish meanwhile (with its own CA).
    let (ca, certificate, key) = test_pki();
    let fingerprint: String = ring::digest::digest(&ring::digest::SHA256, &certificate)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let read_unix_nano = u64::MAX / 2;
    let trust = |revoked: Vec<String>, read: u64| TrustState {
        ca_certificates_der: vec![ca.clone().into()],
        revoked_certificate_sha256: revoked,
        read_unix_nano: read,
    };
    bus.publish(
        &subjects.trust_state(),
        trust(Vec::new(), read_unix_nano).encode_to_vec().into(),
    )
    .await
    .unwrap();
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    for gateway in &cluster.gateways {
        // Ready once it holds a trust state.
        let readyz = gateway
            .address
            .replacen("wss", "https", 1)
            .replace("/v1/opamp", "/readyz");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !http
            .get(&readyz)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(tokio::time::Instant::now() < deadline, "{readyz} not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let gateway_ca = std::fs::read(cluster.gateway_certificate.as_ref().unwrap()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(&gateway_ca).unwrap())
        .unwrap();
    let agent = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from(certificate)],
            PrivateKeyDer::try_from(key).unwrap(),
        )
        .unwrap(),
    );
    let tcp = tokio::net::TcpStream::connect(cluster.lb_addr())
        .await
        .unwrap();
    let agent_addr = tcp.local_addr().unwrap();
    let tls = tokio_rustls::TlsConnector::from(agent)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut socket, _) = tokio_tungstenite::client_async("wss://localhost/v1/opamp", tls)
        .await
        .unwrap();
    let hello = AgentToServer {
        instance_uid: uuid::Uuid::now_v7().as_bytes().to_vec().into(),
        ..full_state("mtls-through-haproxy", "prod")
    };
    let frame = ampora_shared::codec::ws_frame_from_encoded(&hello.encode_to_vec());
    socket.send(Message::Binary(frame.into())).await.unwrap();

    // The gateway verified the certificate itself (HAProxy passed TLS through) and learned the
    // agent's own address from HAProxy's PROXY header.
    let envelope = loop {
        let message = tokio::time::timeout(Duration::from_secs(10), envelopes.next())
            .await
            .expect("the agent's envelope within 10 s")
            .unwrap();
        let envelope = AgentEnvelope::decode(message.payload).unwrap();
        if envelope.instance_uid == hello.instance_uid {
            break envelope;
        }
    };
    assert_eq!(envelope.client_certificate_sha256, fingerprint);
    assert!(!envelope.enrolment_only);
    assert_eq!(envelope.remote_addr, agent_addr.to_string());

    // Revoked on the bus: the connection through HAProxy is closed within 5 s.
    bus.publish(
        &subjects.trust_state(),
        trust(vec![fingerprint.clone()], read_unix_nano + 1)
            .encode_to_vec()
            .into(),
    )
    .await
    .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("closed within 5 s of the revocation");
    assert_eq!(closed, Some(1008));
}
