//! Agent trust on the real ingest path: envelopes as gateways relay them (with the client
//! certificate's fingerprint, a bearer token, or enrolment-only), through a control-plane's
//! workers on a real in-process bus and a real database: who is admitted, who is refused and
//! recorded, and the OpAMP enrolment flows (CSR, server-generated key, renewal).

use std::sync::Arc;
use std::time::Duration;

use ::time::OffsetDateTime;
use ampora_control_plane::agents::snapshot::AgentRecord;
use ampora_control_plane::assignments::AssignmentWatch;
use ampora_control_plane::audit::{AuditContext, AuditQuery};
use ampora_control_plane::config::ControlPlaneConfig;
use ampora_control_plane::ingest::{self, Readiness};
use ampora_control_plane::storage::{self, AgentEvent, EventQuery, Store, StoreOptions};
use ampora_control_plane::testing::TestPostgres;
use ampora_control_plane::trust::enrolment::Requester;
use ampora_control_plane::trust::{Trust, TrustConfig};
use ampora_shared::bus::{Bus, InProcessBus, Subscription};
use ampora_shared::pb::bus::{
    agent_envelope::Event, AgentEnvelope, GatewayDelivery, Transport as WireTransport,
};
use ampora_shared::pb::opamp::{
    AgentCapabilities, AgentToServer, CertificateRequest, ConnectionSettingsRequest,
    OpAmpConnectionSettingsRequest, ServerErrorResponseType, ServerToAgent, TlsCertificate,
};
use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use x509_parser::parse_x509_certificate;

const GATEWAY: &str = "gw-trust";
const WAIT: Duration = Duration::from_secs(30);
const ACCEPTS_SETTINGS: u64 = AgentCapabilities::ReportsStatus as u64
    | AgentCapabilities::AcceptsOpAmpConnectionSettings as u64;

/// What the gateway learnt about the connection a message came on.
#[derive(Default, Clone, Copy)]
struct Connection<'a> {
    fingerprint: &'a str,
    bearer_token: &'a str,
    enrolment_only: bool,
}

/// A control-plane's ingest and trust on a real bus and database, fed as a gateway would.
struct ControlPlane {
    store: Arc<dyn Store>,
    bus: Arc<InProcessBus>,
    config: ControlPlaneConfig,
    trust: Arc<Trust>,
    replies: Subscription,
    requests: u64,
    shutdown: CancellationToken,
    ingest: JoinHandle<anyhow::Result<()>>,
}

impl ControlPlane {
    async fn start(url: &str, trust: TrustConfig) -> Self {
        let store = storage::connect(url, StoreOptions::default())
            .await
            .unwrap();
        let config = ControlPlaneConfig {
            trust,
            ..ControlPlaneConfig::for_test()
        };
        let bus = Arc::new(InProcessBus::default());
        let replies = bus
            .subscribe(&config.subjects.gateway(GATEWAY))
            .await
            .unwrap();
        let trust = Trust::start(store.clone(), config.trust.clone())
            .await
            .unwrap();
        let readiness = Readiness::default();
        let shutdown = CancellationToken::new();
        let ingest = tokio::spawn(ingest::run(
            bus.clone(),
            store.clone(),
            config.clone(),
            AssignmentWatch::default(),
            trust.clone(),
            readiness.clone(),
            shutdown.clone(),
        ));
        tokio::time::timeout(WAIT, readiness.ready())
            .await
            .expect("ingest ready");
        Self {
            store,
            bus,
            config,
            trust,
            replies,
            requests: 0,
            shutdown,
            ingest,
        }
    }

    /// Relays one HTTP request of `uid`'s and returns the control-plane's answer.
    async fn send(
        &mut self,
        uid: Uuid,
        message: AgentToServer,
        connection: Connection<'_>,
    ) -> ServerToAgent {
        self.requests += 1;
        let envelope = AgentEnvelope {
            instance_uid: Bytes::copy_from_slice(uid.as_bytes()),
            gateway_id: GATEWAY.into(),
            connection_id: self.requests,
            transport: WireTransport::Http as i32,
            received_unix_nano: OffsetDateTime::now_utc().unix_timestamp_nanos() as u64,
            remote_addr: "127.0.0.1:4000".into(),
            client_certificate_sha256: connection.fingerprint.into(),
            bearer_token: connection.bearer_token.into(),
            enrolment_only: connection.enrolment_only,
            event: Some(Event::AgentToServer(message.encode_to_vec().into())),
        };
        self.bus
            .publish(
                &self.config.subjects.agent_inbound(&uid),
                envelope.encode_to_vec().into(),
            )
            .await
            .unwrap();
        let delivery = tokio::time::timeout(WAIT, self.replies.next())
            .await
            .expect("an answer")
            .expect("the bus is open");
        let delivery = GatewayDelivery::decode(delivery.payload).unwrap();
        assert_eq!(delivery.connection_id, self.requests);
        ServerToAgent::decode(delivery.server_to_agent).unwrap()
    }

    async fn agent(&self, uid: Uuid) -> Option<AgentRecord> {
        self.store.get_agent(uid).await.unwrap()
    }

    async fn events(&self, uid: Uuid) -> Vec<AgentEvent> {
        self.store
            .list_events(
                uid,
                &EventQuery {
                    limit: 50,
                    before: None,
                },
            )
            .await
            .unwrap()
    }

    async fn token(&self) -> String {
        self.trust
            .create_token(None, Default::default(), &AuditContext::system())
            .await
            .unwrap()
            .0
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.ingest.await.unwrap().unwrap();
    }
}

fn message(uid: Uuid, sequence_num: u64, capabilities: u64) -> AgentToServer {
    AgentToServer {
        instance_uid: Bytes::copy_from_slice(uid.as_bytes()),
        sequence_num,
        capabilities,
        ..AgentToServer::default()
    }
}

fn with_csr(mut message: AgentToServer, csr_pem: &str) -> AgentToServer {
    message.connection_settings_request = Some(ConnectionSettingsRequest {
        opamp: Some(OpAmpConnectionSettingsRequest {
            certificate_request: Some(CertificateRequest {
                csr: Bytes::from(csr_pem.as_bytes().to_vec()),
            }),
        }),
    });
    message
}

/// A CSR as an agent makes one, naming `common_name`; and its key.
fn csr(common_name: &str) -> (String, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    (params.serialize_request(&key).unwrap().pem().unwrap(), key)
}

fn error_of(reply: &ServerToAgent) -> Option<(ServerErrorResponseType, &str)> {
    reply.error_response.as_ref().map(|error| {
        (
            ServerErrorResponseType::try_from(error.r#type).unwrap(),
            error.error_message.as_str(),
        )
    })
}

fn refused_because(reply: &ServerToAgent, reason: &str) {
    let (kind, message) = error_of(reply).expect("an error response");
    assert_eq!(kind, ServerErrorResponseType::BadRequest, "{message}");
    assert!(message.contains(reason), "{message:?} lacks {reason:?}");
}

/// The certificate an answer offers.
fn offered(reply: &ServerToAgent) -> &TlsCertificate {
    assert_eq!(error_of(reply), None);
    let opamp = reply
        .connection_settings
        .as_ref()
        .and_then(|settings| settings.opamp.as_ref())
        .expect("connection settings offered");
    // Never 0 beside a certificate: opamp-go would take it for "no heartbeats".
    assert_eq!(opamp.heartbeat_interval_seconds, 30);
    opamp.certificate.as_ref().expect("a certificate offered")
}

/// Checks an offered certificate: signed by the offered CA, for `uid`, for client
/// authentication; returns its fingerprint.
fn check_offer(offer: &TlsCertificate, uid: Uuid) -> String {
    let der = ::pem::parse(&offer.cert).unwrap().into_contents();
    let ca = ::pem::parse(&offer.ca_cert).unwrap().into_contents();
    let (_, certificate) = parse_x509_certificate(&der).unwrap();
    let (_, ca) = parse_x509_certificate(&ca).unwrap();
    certificate
        .verify_signature(Some(ca.public_key()))
        .expect("signed by the offered CA");
    assert!(
        certificate
            .extended_key_usage()
            .unwrap()
            .unwrap()
            .value
            .client_auth
    );
    let cn = certificate.subject().iter_common_name().next().unwrap();
    assert_eq!(cn.as_str().unwrap(), uid.to_string());
    ampora_control_plane::trust::certificates::fingerprint(&der)
}

// === identity ===

/// A valid certificate claiming another agent's uid is refused, the attempt lands in the
/// victim's history, and nothing else of the victim changes. Unknown and revoked certificates
/// are refused; a uid bound to a certificate is refused without it; a plain agent goes on as
/// before; an enrolment-only connection that does not enrol is refused.
async fn identities_are_checked_on_every_message(url: String) {
    let mut control_plane = ControlPlane::start(&url, TrustConfig::for_test()).await;
    let (attacker, victim) = (Uuid::now_v7(), Uuid::now_v7());
    let token = control_plane.token().await;
    let attackers = control_plane
        .trust
        .enrol_with_token(&token, None, Some(attacker), &Requester::default())
        .await
        .unwrap()
        .issued
        .fingerprint;
    let token = control_plane.token().await;
    let victims = control_plane
        .trust
        .enrol_with_token(&token, None, Some(victim), &Requester::default())
        .await
        .unwrap()
        .issued
        .fingerprint;
    let certified = |fingerprint| Connection {
        fingerprint,
        ..Connection::default()
    };

    let reply = control_plane
        .send(victim, message(victim, 0, 1), certified(&victims))
        .await;
    assert_eq!(error_of(&reply), None);
    let before = control_plane
        .agent(victim)
        .await
        .expect("the victim stored");
    let history_before = control_plane.events(victim).await;

    // The attacker's valid certificate, the victim's uid.
    let reply = control_plane
        .send(victim, message(victim, 1, 0x7), certified(&attackers))
        .await;
    refused_because(
        &reply,
        &format!("identifies agent {attacker}, not {victim}"),
    );
    let after = control_plane.agent(victim).await.unwrap();
    assert_eq!(after.head, before.head, "nothing of the victim changed");
    let history = control_plane.events(victim).await;
    assert_eq!(history.len(), history_before.len() + 1);
    assert_eq!(history[0].kind, "identity_refused");
    assert_eq!(history[0].payload["fingerprint"], attackers);
    assert_eq!(
        history[0].payload["certificate_instance_uid"],
        attacker.to_string()
    );

    // The victim's uid without its certificate (claimed, not proven).
    let reply = control_plane
        .send(victim, message(victim, 1, 1), Connection::default())
        .await;
    refused_because(&reply, "enrolled with a client certificate");
    // A certificate this server never issued.
    let unknown = "ab".repeat(32);
    let reply = control_plane
        .send(victim, message(victim, 1, 1), certified(&unknown))
        .await;
    refused_because(&reply, "unknown client certificate");
    assert_eq!(control_plane.agent(victim).await.unwrap().head, before.head);

    // A revoked certificate.
    let reply = control_plane
        .send(attacker, message(attacker, 0, 1), certified(&attackers))
        .await;
    assert_eq!(error_of(&reply), None);
    control_plane
        .trust
        .revoke_certificate(&attackers, &AuditContext::system())
        .await
        .unwrap()
        .unwrap();
    let reply = control_plane
        .send(attacker, message(attacker, 1, 1), certified(&attackers))
        .await;
    refused_because(&reply, "client certificate revoked");

    // An agent that never enrolled goes on as before (loopback or plain mode).
    let plain = Uuid::now_v7();
    let reply = control_plane
        .send(plain, message(plain, 0, 1), Connection::default())
        .await;
    assert_eq!(error_of(&reply), None);
    assert!(control_plane.agent(plain).await.is_some());

    // On a connection that may only enrol, anything else is refused, and nothing stored.
    let newcomer = Uuid::now_v7();
    let enrolment_only = Connection {
        enrolment_only: true,
        ..Connection::default()
    };
    let reply = control_plane
        .send(newcomer, message(newcomer, 0, 1), enrolment_only)
        .await;
    refused_because(&reply, "only enrolment is accepted");
    assert!(control_plane.agent(newcomer).await.is_none());
    control_plane.stop().await;
}

#[tokio::test]
async fn identities_are_checked_on_every_message_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("ampora.db").display());
    identities_are_checked_on_every_message(url).await;
}

#[tokio::test]
async fn identities_are_checked_on_every_message_on_postgres() {
    let url = TestPostgres::shared().create_database().await;
    identities_are_checked_on_every_message(url).await;
}

// === enrolment over OpAMP ===

/// The specification's CSR flow: a token on the upgrade, a CSR in ConnectionSettingsRequest,
/// the certificate (and CA, no key) offered back; the agent reconnects with it. The token is
/// spent; a CSR for another uid, or without a token, is refused with its reason. Within the
/// renewal window the agent renews with its certificate alone, and the old one is retired once
/// it presents the new.
#[tokio::test]
async fn an_agent_enrols_with_a_csr_reconnects_with_its_certificate_and_renews() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("ampora.db").display());
    let trust = TrustConfig {
        // Every certificate is due for renewal at once.
        renewal_window: Duration::from_secs(365 * 24 * 3600),
        ..TrustConfig::for_test()
    };
    let mut control_plane = ControlPlane::start(&url, trust).await;
    let uid = Uuid::now_v7();
    let token = control_plane.token().await;
    let enrolling = Connection {
        bearer_token: &token,
        enrolment_only: true,
        ..Connection::default()
    };

    // A CSR naming another agent: refused, and the token not spent.
    let (other_csr, _) = csr(&Uuid::now_v7().to_string());
    let reply = control_plane
        .send(
            uid,
            with_csr(message(uid, 0, ACCEPTS_SETTINGS), &other_csr),
            enrolling,
        )
        .await;
    refused_because(&reply, "names instance uid");
    // No token.
    let (agent_csr, agent_key) = csr(&uid.to_string());
    let reply = control_plane
        .send(
            uid,
            with_csr(message(uid, 0, ACCEPTS_SETTINGS), &agent_csr),
            Connection {
                enrolment_only: true,
                ..Connection::default()
            },
        )
        .await;
    refused_because(&reply, "no bootstrap token");

    let reply = control_plane
        .send(
            uid,
            with_csr(message(uid, 0, ACCEPTS_SETTINGS), &agent_csr),
            enrolling,
        )
        .await;
    let offer = offered(&reply);
    assert!(offer.private_key.is_empty(), "the agent keeps its own key");
    let fingerprint = check_offer(offer, uid);
    let der = ::pem::parse(&offer.cert).unwrap().into_contents();
    let (_, certificate) = parse_x509_certificate(&der).unwrap();
    assert_eq!(
        certificate.public_key().subject_public_key.data.as_ref(),
        rcgen::PublicKeyData::der_bytes(&agent_key)
    );
    assert!(
        control_plane.agent(uid).await.is_none(),
        "enrolment stores no state"
    );

    // The token is spent.
    let again = Uuid::now_v7();
    let (again_csr, _) = csr(&again.to_string());
    let reply = control_plane
        .send(
            again,
            with_csr(message(again, 0, ACCEPTS_SETTINGS), &again_csr),
            enrolling,
        )
        .await;
    refused_because(&reply, "bootstrap token already used");

    // Reconnected over mTLS: identified by the certificate.
    let certified = Connection {
        fingerprint: &fingerprint,
        ..Connection::default()
    };
    let reply = control_plane
        .send(uid, message(uid, 0, ACCEPTS_SETTINGS), certified)
        .await;
    assert_eq!(error_of(&reply), None);
    assert!(control_plane.agent(uid).await.is_some());
    let events = control_plane.events(uid).await;
    let enrolled = events.iter().find(|e| e.kind == "enrolled").unwrap();
    assert_eq!(enrolled.payload["fingerprint"], fingerprint);
    assert_eq!(enrolled.payload["renewal"], false);

    // Renewal: a CSR from the agent identified by its valid certificate, no token.
    let (renewal_csr, _) = csr(&uid.to_string());
    let reply = control_plane
        .send(
            uid,
            with_csr(message(uid, 1, ACCEPTS_SETTINGS), &renewal_csr),
            certified,
        )
        .await;
    let renewed = check_offer(offered(&reply), uid);
    assert_ne!(renewed, fingerprint);
    let reply = control_plane
        .send(
            uid,
            message(uid, 2, ACCEPTS_SETTINGS),
            Connection {
                fingerprint: &renewed,
                ..Connection::default()
            },
        )
        .await;
    assert_eq!(error_of(&reply), None);
    // The old certificate is retired on this side too.
    let reply = control_plane
        .send(uid, message(uid, 3, ACCEPTS_SETTINGS), certified)
        .await;
    refused_because(&reply, "client certificate revoked");

    // The audit log: the enrolment by its token from the agent's address (refusals leave
    // nothing), the renewal by the agent, the old certificate retired by the server.
    let mut entries = control_plane
        .store
        .list_audit(&AuditQuery {
            object_type: Some("certificate".into()),
            limit: 100,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    entries.reverse();
    let seen: Vec<(&str, &str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e.actor.as_str(),
                e.action.as_str(),
                e.object_id.as_str(),
                e.address.as_str(),
            )
        })
        .collect();
    let agent = format!("agent:{uid}");
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen[0].0.starts_with("bootstrap-token:"), "{seen:?}");
    assert_eq!(
        (seen[0].1, seen[0].2, seen[0].3),
        ("certificate.enrol", fingerprint.as_str(), "127.0.0.1")
    );
    assert_eq!(
        seen[1..],
        [
            (
                agent.as_str(),
                "certificate.renew",
                renewed.as_str(),
                "127.0.0.1"
            ),
            ("system", "certificate.revoke", fingerprint.as_str(), ""),
        ]
    );
    control_plane.stop().await;
}

/// An agent that accepts connection settings but sends no CSR gets a key made by the server
/// with its certificate; over plain mode its state is stored as usual, and afterwards its uid
/// answers only with the certificate.
#[tokio::test]
async fn an_agent_without_a_csr_is_offered_a_server_generated_key() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("ampora.db").display());
    let mut control_plane = ControlPlane::start(&url, TrustConfig::for_test()).await;
    let uid = Uuid::now_v7();
    let token = control_plane.token().await;

    // An unrelated Authorization header is no enrolment.
    let reply = control_plane
        .send(
            uid,
            message(uid, 0, ACCEPTS_SETTINGS),
            Connection {
                bearer_token: "some-proxy-credential",
                ..Connection::default()
            },
        )
        .await;
    assert_eq!(error_of(&reply), None);
    assert!(reply.connection_settings.is_none());

    let reply = control_plane
        .send(
            uid,
            message(uid, 1, ACCEPTS_SETTINGS),
            Connection {
                bearer_token: &token,
                ..Connection::default()
            },
        )
        .await;
    let offer = offered(&reply);
    let fingerprint = check_offer(offer, uid);
    let key = rcgen::KeyPair::from_pem(std::str::from_utf8(&offer.private_key).unwrap()).unwrap();
    let der = ::pem::parse(&offer.cert).unwrap().into_contents();
    let (_, certificate) = parse_x509_certificate(&der).unwrap();
    assert_eq!(
        certificate.public_key().subject_public_key.data.as_ref(),
        rcgen::PublicKeyData::der_bytes(&key)
    );
    let events = control_plane.events(uid).await;
    let enrolled = events.iter().find(|e| e.kind == "enrolled").unwrap();
    assert_eq!(enrolled.payload["server_generated_key"], true);

    // From now on, the uid is its certificate's.
    let reply = control_plane
        .send(
            uid,
            message(uid, 2, ACCEPTS_SETTINGS),
            Connection::default(),
        )
        .await;
    refused_because(&reply, "enrolled with a client certificate");
    let reply = control_plane
        .send(
            uid,
            message(uid, 2, ACCEPTS_SETTINGS),
            Connection {
                fingerprint: &fingerprint,
                ..Connection::default()
            },
        )
        .await;
    assert_eq!(error_of(&reply), None);
    control_plane.stop().await;
}

// === the trust state ===

/// Gateways hear the trusted CAs and the revocations: when they ask, and after every change.
#[tokio::test]
async fn the_trust_state_goes_out_on_request_and_after_every_change() {
    let store = storage::connect("sqlite::memory:", StoreOptions::default())
        .await
        .unwrap();
    let trust = Trust::start(
        store.clone(),
        TrustConfig {
            // Only requests and changes publish during this test.
            publish_interval: Duration::from_secs(3600),
            ..TrustConfig::for_test()
        },
    )
    .await
    .unwrap();
    let bus = Arc::new(InProcessBus::default());
    let subjects = ampora_shared::subjects::Subjects::new("trust-state", 4);
    let mut states = bus.subscribe(&subjects.trust_state()).await.unwrap();
    let shutdown = CancellationToken::new();
    let publisher = tokio::spawn(ampora_control_plane::trust::publisher::run(
        trust.clone(),
        bus.clone(),
        subjects.clone(),
        shutdown.clone(),
    ));
    // The first interval tick publishes at start.
    let first = next_state(&mut states).await;
    assert_eq!(first.ca_certificates_der.len(), 1);
    assert_eq!(first.ca_certificates_der[0], trust.ca().certificate_der);
    assert!(first.revoked_certificate_sha256.is_empty());

    let request = ampora_shared::pb::bus::TrustRequest {
        gateway_id: "gw-new".into(),
    };
    bus.publish(&subjects.trust_request(), request.encode_to_vec().into())
        .await
        .unwrap();
    let answered = next_state(&mut states).await;
    assert!(answered.read_unix_nano >= first.read_unix_nano);

    let token = trust
        .create_token(None, Default::default(), &AuditContext::system())
        .await
        .unwrap()
        .0;
    let fingerprint = trust
        .enrol_with_token(&token, None, None, &Requester::default())
        .await
        .unwrap()
        .issued
        .fingerprint;
    trust
        .revoke_certificate(&fingerprint, &AuditContext::system())
        .await
        .unwrap()
        .unwrap();
    let revoked = next_state(&mut states).await;
    assert_eq!(revoked.revoked_certificate_sha256, [fingerprint]);

    let rotated = trust.rotate_ca(&AuditContext::system()).await.unwrap();
    let after_rotation = next_state(&mut states).await;
    // The new CA first; the old one still has a certificate that has not expired.
    assert_eq!(after_rotation.ca_certificates_der.len(), 2);
    assert_eq!(
        after_rotation.ca_certificates_der[0],
        rotated.certificate_der
    );
    shutdown.cancel();
    publisher.await.unwrap();
}

async fn next_state(states: &mut Subscription) -> ampora_shared::pb::bus::TrustState {
    let message = tokio::time::timeout(WAIT, states.next())
        .await
        .expect("a trust state")
        .unwrap();
    ampora_shared::pb::bus::TrustState::decode(message.payload).unwrap()
}

/// A fleet without certificates costs no look-ups, until an agent is enrolled, here or on
/// another replica: from this replica's next trust-state read on, its uid answers only with its
/// certificate.
#[tokio::test]
async fn an_enrolment_on_another_replica_binds_the_uid_here_too() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("ampora.db").display());
    let trust_config = TrustConfig::for_test();
    let mut here = ControlPlane::start(&url, trust_config.clone()).await;
    let uid = Uuid::now_v7();
    let reply = here
        .send(uid, message(uid, 0, 1), Connection::default())
        .await;
    assert_eq!(error_of(&reply), None);

    // Another replica's API enrols the agent.
    let other_store = storage::connect(&url, StoreOptions::default())
        .await
        .unwrap();
    let there = Trust::start(other_store, trust_config).await.unwrap();
    let (token, _) = there
        .create_token(None, Default::default(), &AuditContext::system())
        .await
        .unwrap();
    there
        .enrol_with_token(&token, None, Some(uid), &Requester::default())
        .await
        .unwrap();

    // This replica reads the trust state (as it does every few seconds).
    ampora_control_plane::trust::publisher::publish(
        &here.trust,
        here.bus.as_ref(),
        &here.config.subjects,
    )
    .await
    .unwrap();
    let reply = here
        .send(uid, message(uid, 1, 1), Connection::default())
        .await;
    refused_because(&reply, "enrolled with a client certificate");
    here.stop().await;
}
