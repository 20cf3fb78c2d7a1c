//! Presence against the real ingest path: a control-plane's workers, its sweeps and a real
//! in-process bus, on both backends.

use std::sync::Arc;
use std::time::Duration;

use ampora_control_plane::agents::snapshot::AgentStatus;
use ampora_control_plane::assignments::AssignmentWatch;
use ampora_control_plane::config::ControlPlaneConfig;
use ampora_control_plane::ingest::{self, Readiness};
use ampora_control_plane::storage::{self, EventQuery, Store, StoreOptions};
use ampora_control_plane::testing::TestPostgres;
use ampora_control_plane::trust::Trust;
use ampora_shared::bus::{Bus, InProcessBus, Subscription};
use ampora_shared::pb::bus::{agent_envelope::Event, AgentEnvelope, Transport as WireTransport};
use ampora_shared::pb::opamp::AgentToServer;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The real in-process bus, except that evictions are lost (as NATS, at most once, may lose
/// them); each one lost is reported.
struct LosesEvictions {
    bus: InProcessBus,
    evictions: String,
    lost: mpsc::UnboundedSender<()>,
}

#[async_trait]
impl Bus for LosesEvictions {
    async fn publish(&self, subject: &str, payload: Bytes) -> ampora_shared::bus::Result<()> {
        if subject == self.evictions {
            let _ = self.lost.send(());
            return Ok(());
        }
        self.bus.publish(subject, payload).await
    }

    async fn subscribe(&self, subject: &str) -> ampora_shared::bus::Result<Subscription> {
        self.bus.subscribe(subject).await
    }
}

const GATEWAY: &str = "gw-test";

/// An HTTP agent's message as its gateway relays it.
fn envelope(uid: Uuid, request: u64, message: AgentToServer) -> Bytes {
    AgentEnvelope {
        instance_uid: Bytes::copy_from_slice(uid.as_bytes()),
        gateway_id: GATEWAY.into(),
        connection_id: request,
        transport: WireTransport::Http as i32,
        received_unix_nano: OffsetDateTime::now_utc().unix_timestamp_nanos() as u64,
        remote_addr: "127.0.0.1:4000".into(),
        event: Some(Event::AgentToServer(message.encode_to_vec().into())),
        ..Default::default()
    }
    .encode_to_vec()
    .into()
}

/// Waits (up to a generous bound) until the agent's stored status is `status`.
async fn wait_for_status(store: &dyn Store, uid: Uuid, status: AgentStatus) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stored = store.get_agent(uid).await.unwrap();
        if stored.is_some_and(|agent| agent.head.status == status) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "agent never became {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP agent times out, the sweep's eviction is lost, so its worker still believes it
/// online and takes its next message for a plain heartbeat: the stored status follows the
/// heartbeat back online all the same.
async fn a_lost_eviction_does_not_keep_a_live_agent_offline(url: String) {
    let store = storage::connect(&url, StoreOptions::default())
        .await
        .unwrap();
    let config = ControlPlaneConfig::for_test();
    let subjects = config.subjects.clone();
    let (lost, mut evictions_lost) = mpsc::unbounded_channel();
    let bus = Arc::new(LosesEvictions {
        bus: InProcessBus::default(),
        evictions: subjects.evictions(),
        lost,
    });
    let mut replies = bus.subscribe(&subjects.gateway(GATEWAY)).await.unwrap();
    let readiness = Readiness::default();
    let shutdown = CancellationToken::new();
    let trust = Trust::start(store.clone(), config.trust.clone())
        .await
        .unwrap();
    let ingest = tokio::spawn(ingest::run(
        bus.clone(),
        store.clone(),
        config,
        AssignmentWatch::default(),
        trust,
        readiness.clone(),
        shutdown.clone(),
    ));
    while !readiness.is_ready() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let uid = Uuid::now_v7();
    let subject = subjects.agent_inbound(&uid);
    let hello = AgentToServer {
        instance_uid: Bytes::copy_from_slice(uid.as_bytes()),
        sequence_num: 0,
        capabilities: 1,
        ..AgentToServer::default()
    };
    bus.publish(&subject, envelope(uid, 1, hello))
        .await
        .unwrap();
    replies.next().await.expect("a reply to the first message");
    wait_for_status(store.as_ref(), uid, AgentStatus::Online).await;

    // Silent past the heartbeat timeout: the sweep takes it offline, and its eviction is lost.
    evictions_lost.recv().await.expect("an eviction");
    assert_eq!(
        store.get_agent(uid).await.unwrap().unwrap().head.status,
        AgentStatus::Offline
    );

    let heartbeat = AgentToServer {
        instance_uid: Bytes::copy_from_slice(uid.as_bytes()),
        sequence_num: 1,
        capabilities: 1,
        ..AgentToServer::default()
    };
    bus.publish(&subject, envelope(uid, 2, heartbeat))
        .await
        .unwrap();
    replies.next().await.expect("a reply to the heartbeat");
    wait_for_status(store.as_ref(), uid, AgentStatus::Online).await;
    let events = store
        .list_events(
            uid,
            &EventQuery {
                limit: 10,
                before: None,
            },
        )
        .await
        .unwrap();
    let kinds: Vec<&str> = events.iter().map(|event| event.kind.as_str()).collect();
    assert_eq!(kinds[..2], ["connected", "offline"], "{kinds:?}");
    assert_eq!(events[0].payload["reason"], "seen after the sweep");

    shutdown.cancel();
    ingest.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_lost_eviction_does_not_keep_a_live_agent_offline_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("ampora.db").display());
    a_lost_eviction_does_not_keep_a_live_agent_offline(url).await;
}

#[tokio::test]
async fn a_lost_eviction_does_not_keep_a_live_agent_offline_on_postgres() {
    let url = TestPostgres::shared().create_database().await;
    a_lost_eviction_does_not_keep_a_live_agent_offline(url).await;
}
