//! One storage suite, both backends: SQLite in a temp dir and a real PostgreSQL server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ampora_control_plane::agents::merge::event_payload;
use ampora_control_plane::agents::snapshot::{
    AgentDetails, AgentHead, AgentRecord, AgentStatus, AgentSummary, ConfigFile, Health,
    PackageStatus, PackageStatuses, RemoteConfigStatus, Transport,
};
use ampora_control_plane::assignments::{Assignment, NewAssignment, Selector, Target};
use ampora_control_plane::audit::retention::{self, RetentionPolicy};
use ampora_control_plane::audit::{AuditContext, AuditEntry, AuditQuery, Retained, Verification};
use ampora_control_plane::operators::{Actor, Role};
use ampora_control_plane::remote_config::drift::{AgentConfig, Assigned, DriftCounts, DriftState};
use ampora_control_plane::remote_config::{sha256_hex, Applied, ConfigTrack, Rejection};
use ampora_control_plane::storage::{
    self, AccountUpdate, AgentEvent, AgentQuery, BootstrapToken, Changed, Configuration,
    ConfigurationVersion, EnrolRefusal, EventQuery, Fence, FleetCounts, FleetQuery, Guarded, Lease,
    LintRuleSetting, NewAccount, NewApiToken, NewBootstrapToken, NewCa, NewCertificate,
    NewConfiguration, NewEvent, NewSession, Published, SeenUpdate, Store, StoreError, StoreOptions,
    TokenRefusal, TrustSnapshot, WriteBatch,
};
use ampora_control_plane::testing::TestPostgres;
use serde_json::json;
use sqlx::Connection;
use time::OffsetDateTime;
use uuid::Uuid;

/// Who the suite's writes are by, for their audit entries.
fn audit() -> AuditContext {
    AuditContext {
        actor: Actor::Account("tester".into()),
        address: "192.0.2.1".into(),
        request_id: "suite".into(),
    }
}

fn at(seconds: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_700_000_000 + seconds).unwrap()
}

fn record(uid: Uuid, environment: &str, seen: i64) -> AgentRecord {
    let mut identifying = BTreeMap::new();
    identifying.insert("service.name".to_owned(), json!("collector"));
    let mut non_identifying = BTreeMap::new();
    non_identifying.insert("deployment.environment".to_owned(), json!(environment));
    non_identifying.insert("cores".to_owned(), json!(8));
    non_identifying.insert("tags".to_owned(), json!(["a", "b"]));
    let mut components = BTreeMap::new();
    components.insert(
        "otlp".to_owned(),
        Health {
            healthy: false,
            start_time: None,
            last_error: "port in use".into(),
            status: "".into(),
            status_time: None,
            components: BTreeMap::new(),
        },
    );
    let mut files = BTreeMap::new();
    files.insert(
        "collector.yaml".to_owned(),
        ConfigFile {
            content_type: "text/yaml".into(),
            body: format!("receivers: {}\n", "x".repeat(20_000)),
        },
    );
    let mut packages = BTreeMap::new();
    packages.insert(
        "otelcol".to_owned(),
        PackageStatus {
            status: "Installed".into(),
            agent_has_version: "1.0".into(),
            agent_has_hash: "ab".into(),
            server_offered_version: String::new(),
            server_offered_hash: String::new(),
            error_message: String::new(),
        },
    );
    AgentRecord {
        head: AgentHead {
            instance_uid: uid,
            status: AgentStatus::Online,
            transport: Transport::Websocket,
            gateway_id: "gw-1".into(),
            connection_id: u64::MAX - 1,
            remote_addr: "127.0.0.1:5555".into(),
            sequence_num: 42,
            capabilities: 0x1807,
            first_seen: at(seen),
            last_seen: at(seen),
            summary: AgentSummary {
                identifying_attributes: identifying.into(),
                non_identifying_attributes: non_identifying.into(),
                health: Some(Health {
                    healthy: true,
                    start_time: Some(at(0)),
                    last_error: String::new(),
                    status: "ok".into(),
                    status_time: None,
                    components,
                }),
                remote_config_status: Some(RemoteConfigStatus {
                    status: "APPLIED".into(),
                    last_remote_config_hash: "abcd".into(),
                    error_message: String::new(),
                }),
                custom_capabilities: vec!["io.example.thing".into()],
            },
        },
        details: AgentDetails {
            effective_config: Some(files),
            package_statuses: Some(PackageStatuses {
                packages,
                server_provided_all_packages_hash: "ff".into(),
                error_message: String::new(),
            }),
            available_components: Some(json!({"hash": "01", "components": {}})),
        },
        config: ConfigTrack::default(),
    }
}

fn event(uid: Uuid, seconds: i64, kind: &'static str) -> NewEvent {
    NewEvent {
        instance_uid: uid,
        at: at(seconds),
        kind,
        payload: event_payload(
            &json!({"n": seconds, "big": "y".repeat(if seconds % 2 == 0 { 10 } else { 9_000 })}),
        ),
    }
}

async fn write(store: &dyn Store, agents: Vec<AgentRecord>, events: Vec<NewEvent>) {
    let batch = WriteBatch {
        agents: agents.iter().collect(),
        events,
        ..WriteBatch::default()
    };
    store.write(&batch).await.unwrap();
}

fn query(limit: u32) -> AgentQuery {
    AgentQuery {
        limit,
        ..AgentQuery::default()
    }
}

// === the suite ===

async fn round_trips_a_full_record(db: Db) {
    let store = db.open().await;
    let uid = Uuid::now_v7();
    let original = record(uid, "prod", 0);
    write(store.as_ref(), vec![original.clone()], vec![]).await;
    assert_eq!(store.get_agent(uid).await.unwrap(), Some(original.clone()));
    assert_eq!(store.get_agent(Uuid::now_v7()).await.unwrap(), None);
    let listed = store.list_agents(&query(10)).await.unwrap();
    assert_eq!(listed, vec![original.head]);
}

async fn upsert_keeps_first_seen_and_applies_seen(db: Db) {
    let store = db.open().await;
    let uid = Uuid::now_v7();
    write(store.as_ref(), vec![record(uid, "prod", 0)], vec![]).await;
    let mut later = record(uid, "dev", 100);
    later.head.status = AgentStatus::Offline;
    write(store.as_ref(), vec![later], vec![]).await;
    let stored = store.get_agent(uid).await.unwrap().unwrap();
    assert_eq!(stored.head.first_seen, at(0));
    assert_eq!(stored.head.last_seen, at(100));
    assert_eq!(stored.head.status, AgentStatus::Offline);
    assert_eq!(
        stored.head.summary.non_identifying_attributes.to_map()["deployment.environment"],
        "dev"
    );

    store
        .write(&WriteBatch {
            seen: vec![SeenUpdate {
                instance_uid: uid,
                last_seen: at(200),
                sequence_num: 77,
            }],
            ..WriteBatch::default()
        })
        .await
        .unwrap();
    let stored = store.get_agent(uid).await.unwrap().unwrap();
    assert_eq!(
        (stored.head.last_seen, stored.head.sequence_num),
        (at(200), 77)
    );
    assert_eq!(
        stored.head.summary.non_identifying_attributes.to_map()["deployment.environment"],
        "dev",
        "seen touches nothing else"
    );
}

async fn filters_by_attributes_and_status(db: Db) {
    let store = db.open().await;
    let prod = Uuid::now_v7();
    let dev = Uuid::now_v7();
    let mut offline = record(Uuid::now_v7(), "prod", 0);
    offline.head.status = AgentStatus::Offline;
    write(
        store.as_ref(),
        vec![
            record(prod, "prod", 0),
            record(dev, "dev", 0),
            offline.clone(),
        ],
        vec![],
    )
    .await;
    let uids = |heads: Vec<AgentHead>| {
        heads
            .into_iter()
            .map(|h| h.instance_uid)
            .collect::<Vec<_>>()
    };

    let attr = |pairs: &[(&str, &str)]| AgentQuery {
        attributes: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        limit: 10,
        ..AgentQuery::default()
    };
    assert_eq!(
        uids(
            store
                .list_agents(&attr(&[("deployment.environment", "dev")]))
                .await
                .unwrap()
        ),
        vec![dev]
    );
    assert_eq!(
        uids(
            store
                .list_agents(&attr(&[
                    ("deployment.environment", "prod"),
                    ("service.name", "collector")
                ]))
                .await
                .unwrap()
        ),
        vec![prod, offline.head.instance_uid]
    );
    assert!(store
        .list_agents(&attr(&[
            ("deployment.environment", "prod"),
            ("service.name", "other")
        ]))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        uids(
            store
                .list_agents(&attr(&[("cores", "8"), ("deployment.environment", "dev")]))
                .await
                .unwrap()
        ),
        vec![dev]
    );
    let offline_only = AgentQuery {
        status: Some(AgentStatus::Offline),
        limit: 10,
        ..AgentQuery::default()
    };
    assert_eq!(
        uids(store.list_agents(&offline_only).await.unwrap()),
        vec![offline.head.instance_uid]
    );

    // Attributes are rewritten, not accumulated.
    write(store.as_ref(), vec![record(dev, "staging", 5)], vec![]).await;
    assert!(store
        .list_agents(&attr(&[("deployment.environment", "dev")]))
        .await
        .unwrap()
        .is_empty());
}

async fn pages_agents_without_gaps_or_repeats(db: Db) {
    let store = db.open().await;
    let mut expected: Vec<Uuid> = (0..25).map(|_| Uuid::new_v4()).collect();
    write(
        store.as_ref(),
        expected.iter().map(|uid| record(*uid, "prod", 0)).collect(),
        vec![],
    )
    .await;
    expected.sort();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_agents(&AgentQuery {
                limit: 10,
                after,
                ..AgentQuery::default()
            })
            .await
            .unwrap();
        seen.extend(page.iter().map(|h| h.instance_uid));
        if page.len() < 10 {
            break;
        }
        after = page.last().map(|h| h.instance_uid);
    }
    assert_eq!(seen, expected);
}

async fn events_newest_first_with_paging(db: Db) {
    let store = db.open().await;
    let uid = Uuid::now_v7();
    let other = Uuid::now_v7();
    write(
        store.as_ref(),
        vec![record(uid, "prod", 0), record(other, "prod", 0)],
        (0..7)
            .map(|i| event(uid, i, "health"))
            .chain([event(other, 99, "noise")])
            .collect(),
    )
    .await;
    let first = store
        .list_events(
            uid,
            &EventQuery {
                limit: 4,
                before: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        first
            .iter()
            .map(|e| e.payload["n"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [6, 5, 4, 3]
    );
    assert_eq!(
        first[1].payload["big"].as_str().unwrap().len(),
        9_000,
        "gzip'd payloads come back whole"
    );
    assert_eq!(first[0].at, at(6));
    let rest = store
        .list_events(
            uid,
            &EventQuery {
                limit: 4,
                before: Some(first[3].id),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        rest.iter()
            .map(|e| e.payload["n"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [2, 1, 0]
    );
    assert!(rest
        .iter()
        .all(|e| e.instance_uid == uid && e.kind == "health"));
}

async fn marks_only_stale_online_agents_of_a_transport_offline(db: Db) {
    let store = db.open().await;
    let mut stale_http = record(Uuid::now_v7(), "prod", 0);
    stale_http.head.transport = Transport::Http;
    let mut fresh_http = record(Uuid::now_v7(), "prod", 100);
    fresh_http.head.transport = Transport::Http;
    let stale_ws = record(Uuid::now_v7(), "prod", 0);
    let mut offline_http = record(Uuid::now_v7(), "prod", 0);
    offline_http.head.transport = Transport::Http;
    offline_http.head.status = AgentStatus::Offline;
    write(
        store.as_ref(),
        vec![
            stale_http.clone(),
            fresh_http.clone(),
            stale_ws.clone(),
            offline_http.clone(),
        ],
        vec![],
    )
    .await;

    let marked = store
        .mark_stale_offline(Transport::Http, at(50), at(60), "heartbeat timeout")
        .await
        .unwrap();
    assert_eq!(marked, vec![stale_http.head.instance_uid]);
    let uid = stale_http.head.instance_uid;
    assert_eq!(
        store.get_agent(uid).await.unwrap().unwrap().head.status,
        AgentStatus::Offline
    );
    let events = latest_events(store.as_ref(), uid).await;
    assert_eq!(
        (
            events.len(),
            events[0].kind.as_str(),
            events[0].payload["reason"].as_str()
        ),
        (1, "offline", Some("heartbeat timeout"))
    );
    for untouched in [&fresh_http, &stale_ws] {
        assert_eq!(
            store
                .get_agent(untouched.head.instance_uid)
                .await
                .unwrap()
                .unwrap()
                .head
                .status,
            AgentStatus::Online
        );
    }
    assert!(store
        .mark_stale_offline(Transport::Http, at(50), at(61), "again")
        .await
        .unwrap()
        .is_empty());
}

async fn writes_large_batches_in_one_transaction(db: Db) {
    let store = db.open().await;
    let records: Vec<AgentRecord> = (0..5_000)
        .map(|_| record(Uuid::now_v7(), "bulk", 0))
        .collect();
    let events: Vec<NewEvent> = records
        .iter()
        .map(|r| event(r.head.instance_uid, 2, "connected"))
        .collect();
    write(store.as_ref(), records.clone(), events).await;
    let bulk = AgentQuery {
        attributes: vec![("deployment.environment".into(), "bulk".into())],
        limit: 1000,
        ..AgentQuery::default()
    };
    let mut listed = 0;
    let mut after = None;
    loop {
        let page = store
            .list_agents(&AgentQuery {
                after,
                ..bulk.clone()
            })
            .await
            .unwrap();
        listed += page.len();
        match page.last() {
            Some(last) => after = Some(last.instance_uid),
            None => break,
        }
    }
    assert_eq!(listed, 5_000);
    assert_eq!(
        raw_pairs(
            &db.url,
            "SELECT kind, CAST(COUNT(*) AS TEXT) FROM agent_events GROUP BY kind"
        )
        .await,
        [("connected".to_owned(), "5000".to_owned())]
    );
    let seen: Vec<SeenUpdate> = records
        .iter()
        .map(|r| SeenUpdate {
            instance_uid: r.head.instance_uid,
            last_seen: at(500),
            sequence_num: 9,
        })
        .collect();
    store
        .write(&WriteBatch {
            seen,
            ..WriteBatch::default()
        })
        .await
        .unwrap();
    let last = records.last().unwrap().head.instance_uid;
    assert_eq!(
        store
            .get_agent(last)
            .await
            .unwrap()
            .unwrap()
            .head
            .sequence_num,
        9
    );
}

async fn a_failed_batch_stores_nothing(db: Db) {
    let store = db.open().await;
    let kept = Uuid::now_v7();
    write(store.as_ref(), vec![record(kept, "prod", 0)], vec![]).await;
    // Make the batch's last statement fail: its agents, written before, must be rolled back.
    raw_execute(&db.url, "DROP TABLE agent_events").await;
    let fresh = Uuid::now_v7();
    let (fresh_record, changed) = (record(fresh, "x", 0), record(kept, "changed", 9));
    let failing = WriteBatch {
        agents: vec![&fresh_record, &changed],
        events: vec![event(fresh, 1, "connected")],
        ..WriteBatch::default()
    };
    assert!(matches!(
        store.write(&failing).await,
        Err(StoreError::Unavailable(_))
    ));
    assert_eq!(store.get_agent(fresh).await.unwrap(), None);
    let unchanged = store.get_agent(kept).await.unwrap().unwrap();
    assert_eq!(unchanged, record(kept, "prod", 0));
}

async fn the_last_snapshot_of_an_agent_in_a_batch_wins(db: Db) {
    let store = db.open().await;
    let uid = Uuid::now_v7();
    let mut last = record(uid, "second", 5);
    last.head.sequence_num = 2;
    store
        .write(&WriteBatch {
            agents: vec![&record(uid, "first", 0), &last],
            seen: vec![
                SeenUpdate {
                    instance_uid: uid,
                    last_seen: at(6),
                    sequence_num: 3,
                },
                SeenUpdate {
                    instance_uid: uid,
                    last_seen: at(7),
                    sequence_num: 4,
                },
            ],
            ..WriteBatch::default()
        })
        .await
        .unwrap();
    let stored = store.get_agent(uid).await.unwrap().unwrap();
    assert_eq!(
        stored.head.summary.non_identifying_attributes.to_map()["deployment.environment"],
        "second"
    );
    assert_eq!(
        (stored.head.last_seen, stored.head.sequence_num),
        (at(7), 4)
    );
    let first = AgentQuery {
        attributes: vec![("deployment.environment".into(), "first".into())],
        limit: 10,
        ..AgentQuery::default()
    };
    assert!(store.list_agents(&first).await.unwrap().is_empty());
}

async fn large_payloads_are_stored_gzipped(db: Db) {
    let store = db.open().await;
    let large = record(Uuid::now_v7(), "prod", 0);
    let mut small = record(Uuid::now_v7(), "prod", 0);
    small.details.effective_config = None;
    write(
        store.as_ref(),
        vec![large.clone(), small.clone()],
        vec![
            event(large.head.instance_uid, 1, "big"),
            event(large.head.instance_uid, 2, "small"),
        ],
    )
    .await;
    let mut encodings = raw_pairs(
        &db.url,
        "SELECT CAST(instance_uid AS TEXT), details_encoding FROM agents",
    )
    .await;
    encodings.sort();
    let mut expected = vec![
        (large.head.instance_uid.to_string(), "gzip+json".to_owned()),
        (small.head.instance_uid.to_string(), "json".to_owned()),
    ];
    expected.sort();
    assert_eq!(encodings, expected);
    assert_eq!(
        raw_pairs(
            &db.url,
            "SELECT kind, payload_encoding FROM agent_events ORDER BY id"
        )
        .await,
        [
            ("big".to_owned(), "gzip+json".to_owned()),
            ("small".to_owned(), "json".to_owned())
        ]
    );
    let (compressed, plain) = (
        raw_pairs(
            &db.url,
            "SELECT CAST(instance_uid AS TEXT), CAST(LENGTH(details) AS TEXT) FROM agents",
        )
        .await,
        serde_json::to_vec(&large.details).unwrap().len(),
    );
    let stored_len: usize = compressed
        .iter()
        .find(|(uid, _)| *uid == large.head.instance_uid.to_string())
        .unwrap()
        .1
        .parse()
        .unwrap();
    assert!(stored_len * 10 < plain, "{stored_len} of {plain} bytes");

    // Another threshold: new writes follow it, old rows read as they were written.
    let never = db
        .open_with(StoreOptions {
            gzip_threshold: usize::MAX,
            ..StoreOptions::default()
        })
        .await;
    let again = record(Uuid::now_v7(), "prod", 0);
    write(never.as_ref(), vec![again.clone()], vec![]).await;
    assert_eq!(
        raw_pairs(
            &db.url,
            &format!(
                "SELECT CAST(instance_uid AS TEXT), details_encoding FROM agents WHERE instance_uid = '{}'",
                again.head.instance_uid
            )
        )
        .await[0]
            .1,
        "json"
    );
    assert_eq!(
        never.get_agent(again.head.instance_uid).await.unwrap(),
        Some(again)
    );
    assert_eq!(
        never.get_agent(large.head.instance_uid).await.unwrap(),
        Some(large.clone())
    );
    let events = latest_events(never.as_ref(), large.head.instance_uid).await;
    assert_eq!(events[1].payload["big"].as_str().unwrap().len(), 9_000);
}

async fn leases_split_fairly_and_fence_writes(db: Db) {
    let store = db.open().await;
    let now = OffsetDateTime::now_utc();
    let later = now + Duration::from_secs(10);
    assert_eq!(store.heartbeat_replica("a", now, later).await.unwrap(), 1);
    let a = store.claim_partitions("a", 8, 8, now, later).await.unwrap();
    assert_eq!(
        a.iter().map(|l| l.partition).collect::<Vec<_>>(),
        (0..8).collect::<Vec<_>>()
    );
    assert!(a.iter().all(|l| l.epoch == 1));

    // A second replica joins: it gets nothing until the first gives its surplus up.
    assert_eq!(store.heartbeat_replica("b", now, later).await.unwrap(), 2);
    assert!(store
        .claim_partitions("b", 8, 4, now, later)
        .await
        .unwrap()
        .is_empty());
    let a = store.claim_partitions("a", 8, 4, now, later).await.unwrap();
    assert_eq!(a.len(), 4);
    let b = store.claim_partitions("b", 8, 4, now, later).await.unwrap();
    assert_eq!(
        b.iter().map(|l| l.partition).collect::<Vec<_>>(),
        [4, 5, 6, 7]
    );
    assert!(
        b.iter().all(|l| l.epoch == 2),
        "a new owner means a new epoch: {b:?}"
    );

    // A write fenced by a lease the writer no longer holds stores nothing.
    let uid = Uuid::now_v7();
    let stale = Fence {
        owner: "a".into(),
        leases: vec![Lease {
            partition: 5,
            epoch: 1,
        }],
    };
    let agent = record(uid, "prod", 0);
    let batch = WriteBatch {
        agents: vec![&agent],
        fence: Some(stale),
        ..WriteBatch::default()
    };
    assert!(matches!(store.write(&batch).await, Err(StoreError::Fenced)));
    assert_eq!(store.get_agent(uid).await.unwrap(), None);
    let current = Fence {
        owner: "b".into(),
        leases: vec![b[1]],
    };
    let batch = WriteBatch {
        agents: vec![&agent],
        fence: Some(current),
        ..WriteBatch::default()
    };
    store.write(&batch).await.unwrap();
    assert!(store.get_agent(uid).await.unwrap().is_some());

    // Also a round of an agent whose attribute rows and details are current, with an event (on
    // PostgreSQL one statement, which checks the fence and writes only while it holds).
    let mut changed = agent.clone();
    changed.head.sequence_num += 1;
    let batch = WriteBatch {
        agents: vec![&changed],
        events: vec![event(uid, 3, "health")],
        attributes_current: [uid].into(),
        details_current: [uid].into(),
        fence: Some(Fence {
            owner: "a".into(),
            leases: vec![Lease {
                partition: 5,
                epoch: 1,
            }],
        }),
        ..WriteBatch::default()
    };
    assert!(matches!(store.write(&batch).await, Err(StoreError::Fenced)));
    assert_eq!(store.get_agent(uid).await.unwrap(), Some(agent.clone()));
    assert!(latest_events(store.as_ref(), uid).await.is_empty());

    // Replica a dies: once its leases expire, b takes everything.
    let after_expiry = later + Duration::from_secs(1);
    assert_eq!(
        store
            .heartbeat_replica("b", after_expiry, after_expiry + Duration::from_secs(10))
            .await
            .unwrap(),
        1
    );
    let b = store
        .claim_partitions(
            "b",
            8,
            8,
            after_expiry,
            after_expiry + Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(b.len(), 8);

    // A clean shutdown hands leases over at once.
    store.release_replica("b").await.unwrap();
    let c = store
        .claim_partitions(
            "c",
            8,
            8,
            after_expiry,
            after_expiry + Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(c.len(), 8);
}

async fn dead_gateways_agents_go_offline(db: Db) {
    let store = db.open().await;
    let mut on_dead = record(Uuid::now_v7(), "prod", 0);
    on_dead.head.gateway_id = "dead".into();
    let mut on_live = record(Uuid::now_v7(), "prod", 0);
    on_live.head.gateway_id = "live".into();
    write(
        store.as_ref(),
        vec![on_dead.clone(), on_live.clone()],
        vec![],
    )
    .await;
    let mut gateways = store.gateways_with_online_agents().await.unwrap();
    gateways.sort();
    assert_eq!(gateways, ["dead", "live"]);
    let marked = store
        .mark_gateway_offline("dead", at(10), "gateway lost")
        .await
        .unwrap();
    assert_eq!(marked, vec![on_dead.head.instance_uid]);
    assert_eq!(
        store
            .get_agent(on_live.head.instance_uid)
            .await
            .unwrap()
            .unwrap()
            .head
            .status,
        AgentStatus::Online
    );
    assert_eq!(store.gateways_with_online_agents().await.unwrap(), ["live"]);
}

/// Liveness updates bring an agent a sweep took offline back online, with a `connected`
/// event, only if it was seen at or after the sweep's cutoff; online agents just move on.
async fn liveness_seen_after_a_sweep_brings_agents_back_online(db: Db) {
    let store = db.open().await;
    let mut http = record(Uuid::now_v7(), "prod", 0);
    http.head.transport = Transport::Http;
    let mut on_dead_gateway = record(Uuid::now_v7(), "prod", 0);
    on_dead_gateway.head.gateway_id = "dead".into();
    let online = record(Uuid::now_v7(), "prod", 0);
    write(
        store.as_ref(),
        vec![http.clone(), on_dead_gateway.clone(), online.clone()],
        vec![],
    )
    .await;
    let (http, on_dead_gateway, online) = (
        http.head.instance_uid,
        on_dead_gateway.head.instance_uid,
        online.head.instance_uid,
    );
    store
        .mark_stale_offline(Transport::Http, at(50), at(60), "heartbeat timeout")
        .await
        .unwrap();
    store
        .mark_gateway_offline("dead", at(70), "gateway lost")
        .await
        .unwrap();
    let seen = |uid: Uuid, seconds: i64| SeenUpdate {
        instance_uid: uid,
        last_seen: at(seconds),
        sequence_num: seconds as u64,
    };
    let status = |uid: Uuid| {
        let store = store.clone();
        async move { store.get_agent(uid).await.unwrap().unwrap().head }
    };

    // Seen before the sweeps' cutoffs: liveness the sweeps already judged, nothing changes.
    store
        .write(&WriteBatch {
            seen: vec![seen(http, 40), seen(on_dead_gateway, 65)],
            ..WriteBatch::default()
        })
        .await
        .unwrap();
    for uid in [http, on_dead_gateway] {
        assert_eq!(status(uid).await.status, AgentStatus::Offline);
        assert_eq!(latest_events(store.as_ref(), uid).await[0].kind, "offline");
    }

    store
        .write(&WriteBatch {
            seen: vec![seen(http, 50), seen(on_dead_gateway, 71), seen(online, 72)],
            ..WriteBatch::default()
        })
        .await
        .unwrap();
    for (uid, seconds) in [(http, 50), (on_dead_gateway, 71)] {
        let head = status(uid).await;
        assert_eq!(
            (head.status, head.last_seen, head.sequence_num),
            (AgentStatus::Online, at(seconds), seconds as u64)
        );
        let events = latest_events(store.as_ref(), uid).await;
        assert_eq!(
            (
                events[0].kind.as_str(),
                events[0].at,
                events[1].kind.as_str()
            ),
            ("connected", at(seconds), "offline")
        );
        assert_eq!(events[0].payload["reason"], "seen after the sweep");
    }
    let head = status(online).await;
    assert_eq!((head.status, head.last_seen), (AgentStatus::Online, at(72)));
    assert!(latest_events(store.as_ref(), online).await.is_empty());
}

async fn pings(db: Db) {
    let store = db.open().await;
    store.ping().await.unwrap();
}

// === backends ===

/// One test's own database: a SQLite file in a temp dir, or a fresh PostgreSQL database.
struct Db {
    url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Db {
    async fn sqlite() -> Db {
        let dir = tempfile::tempdir().unwrap();
        // In a directory that does not exist yet: connect creates both.
        let url = format!("sqlite:{}", dir.path().join("data/test.db").display());
        Db {
            url,
            _dir: Some(dir),
        }
    }

    async fn postgres() -> Db {
        Db {
            url: TestPostgres::shared().create_database().await,
            _dir: None,
        }
    }

    async fn open(&self) -> Arc<dyn Store> {
        self.open_with(StoreOptions::default()).await
    }

    async fn open_with(&self, options: StoreOptions) -> Arc<dyn Store> {
        storage::connect(&self.url, options).await.unwrap()
    }
}

/// An agent's last ten history events, newest first.
async fn latest_events(store: &dyn Store, uid: Uuid) -> Vec<AgentEvent> {
    store
        .list_events(
            uid,
            &EventQuery {
                limit: 10,
                before: None,
            },
        )
        .await
        .unwrap()
}

/// Runs a statement behind the store's back.
async fn raw_execute(url: &str, sql: &str) {
    if url.starts_with("sqlite:") {
        let mut connection = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query(sql).execute(&mut connection).await.unwrap();
    } else {
        let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query(sql).execute(&mut connection).await.unwrap();
    }
}

/// Reads two text columns behind the store's back.
async fn raw_pairs(url: &str, sql: &str) -> Vec<(String, String)> {
    if url.starts_with("sqlite:") {
        let mut connection = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query_as(sql)
            .fetch_all(&mut connection)
            .await
            .unwrap()
    } else {
        let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query_as(sql)
            .fetch_all(&mut connection)
            .await
            .unwrap()
    }
}

/// A writer that knows an agent's description did not change skips its attribute rows; any
/// other write replaces them.
async fn attribute_rows_are_rewritten_only_when_not_current(db: Db) {
    let store = db.open().await;
    let uid = Uuid::now_v7();
    write(store.as_ref(), vec![record(uid, "prod", 0)], vec![]).await;
    let in_environment = |environment: &str| AgentQuery {
        attributes: vec![("deployment.environment".into(), environment.into())],
        limit: 10,
        ..AgentQuery::default()
    };
    let dev = record(uid, "dev", 1);
    let skipped = WriteBatch {
        agents: vec![&dev],
        attributes_current: [uid].into(),
        ..WriteBatch::default()
    };
    store.write(&skipped).await.unwrap();
    assert_eq!(
        store
            .list_agents(&in_environment("prod"))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(store
        .list_agents(&in_environment("dev"))
        .await
        .unwrap()
        .is_empty());

    write(store.as_ref(), vec![record(uid, "dev", 2)], vec![]).await;
    assert!(store
        .list_agents(&in_environment("prod"))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .list_agents(&in_environment("dev"))
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn details_are_kept_when_current(db: Db) {
    let store = db.open().await;
    let uid = Uuid::now_v7();
    let first = record(uid, "prod", 0);
    write(store.as_ref(), vec![first.clone()], vec![]).await;

    let mut head_changed = record(uid, "prod", 0);
    head_changed.head.last_seen = at(1);
    head_changed.head.summary.health = None;
    head_changed.details = AgentDetails::default();
    store
        .write(&WriteBatch {
            agents: vec![&head_changed],
            details_current: [uid].into(),
            ..WriteBatch::default()
        })
        .await
        .unwrap();
    let stored = store.get_agent(uid).await.unwrap().unwrap();
    assert_eq!(stored.head, head_changed.head, "the head is written");
    assert_eq!(stored.details, first.details, "the stored details are kept");
    assert_eq!(
        raw_pairs(
            &db.url,
            "SELECT CAST(instance_uid AS TEXT), details_encoding FROM agents"
        )
        .await,
        [(uid.to_string(), "gzip+json".to_owned())]
    );

    store
        .write(&WriteBatch {
            agents: vec![&head_changed],
            ..WriteBatch::default()
        })
        .await
        .unwrap();
    let stored = store.get_agent(uid).await.unwrap().unwrap();
    assert_eq!(
        stored.details,
        AgentDetails::default(),
        "changed details are written"
    );

    // An agent whose row is missing after all is stored with empty details, not corrupt ones.
    let missing = record(Uuid::now_v7(), "prod", 2);
    store
        .write(&WriteBatch {
            agents: vec![&missing],
            details_current: [missing.head.instance_uid].into(),
            ..WriteBatch::default()
        })
        .await
        .unwrap();
    let stored = store
        .get_agent(missing.head.instance_uid)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.head, missing.head);
    assert_eq!(stored.details, AgentDetails::default());
}

async fn reads_many_agents_at_once(db: Db) {
    let store = db.open().await;
    assert!(store.get_agents(&[]).await.unwrap().is_empty());
    let records: Vec<AgentRecord> = (0..1_200)
        .map(|i| record(Uuid::now_v7(), "prod", i))
        .collect();
    write(store.as_ref(), records.clone(), vec![]).await;
    let mut wanted: Vec<Uuid> = records
        .iter()
        .step_by(2)
        .map(|record| record.head.instance_uid)
        .collect();
    let unknown = Uuid::now_v7();
    wanted.push(unknown);
    let mut found = store.get_agents(&wanted).await.unwrap();
    found.sort_by_key(|record| record.head.instance_uid);
    let expected: Vec<AgentRecord> = records.into_iter().step_by(2).collect();
    assert_eq!(found, expected);
}

// === configurations, assignments and drift ===

/// `seconds` after the suite's epoch, with microseconds: what the stores keep exactly.
fn at_micros(seconds: i64, micros: i64) -> OffsetDateTime {
    at(seconds) + time::Duration::microseconds(micros)
}

fn new_configuration(workspace: &str, name: &str, draft: &str) -> NewConfiguration {
    NewConfiguration {
        workspace: workspace.to_owned(),
        name: name.to_owned(),
        description: format!("{name} collectors"),
        labels: BTreeMap::from([("team".to_owned(), "a".to_owned())]),
        draft: draft.to_owned(),
    }
}

/// A configuration in the default workspace with `drafts` published one after the other, as
/// versions 1, 2, …; returns its id and the versions' hashes.
async fn published(store: &dyn Store, name: &str, drafts: &[&str]) -> (i64, Vec<String>) {
    let created = store
        .create_configuration(
            &new_configuration("default", name, drafts[0]),
            at(0),
            &audit(),
        )
        .await
        .unwrap();
    let mut row_version = created.row_version;
    let mut hashes = Vec::new();
    for (index, draft) in drafts.iter().enumerate() {
        if index > 0 {
            row_version = match store
                .update_draft(created.id, draft, row_version, at(0), &audit())
                .await
                .unwrap()
            {
                Guarded::Done(row_version) => row_version,
                other => panic!("draft not updated: {other:?}"),
            };
        }
        let hash = sha256_hex(draft.as_bytes());
        let outcome = store
            .publish(created.id, row_version, draft, &hash, at(1), &audit())
            .await
            .unwrap();
        assert_eq!(
            outcome,
            Guarded::Done(Published {
                version: index as i64 + 1,
                created: true
            })
        );
        hashes.push(hash);
    }
    (created.id, hashes)
}

/// An agent with these identifying and non-identifying attributes (and no others).
fn labelled(
    uid: Uuid,
    identifying: &[(&str, &str)],
    non_identifying: &[(&str, &str)],
) -> AgentRecord {
    let attributes = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), json!(value)))
            .collect()
    };
    let mut agent = record(uid, "prod", 0);
    agent.head.summary.identifying_attributes = attributes(identifying);
    agent.head.summary.non_identifying_attributes = attributes(non_identifying);
    agent
}

async fn assign(
    store: &dyn Store,
    configuration_id: i64,
    version: i64,
    target: Target,
    now: OffsetDateTime,
) -> Assignment {
    store
        .create_assignment(
            &NewAssignment {
                configuration_id,
                version,
                target,
            },
            now,
            &audit(),
        )
        .await
        .unwrap()
        .expect("the version exists")
}

fn assigned(assignment: &Assignment) -> Assigned {
    Assigned {
        assignment_id: assignment.id,
        configuration_id: assignment.configuration_id,
        version: assignment.version,
        hash: assignment.hash.clone(),
        at: assignment.created_at,
    }
}

/// What an agent reported, as ingest writes it.
fn reported(
    uid: Uuid,
    assigned: Option<Assigned>,
    hash: &str,
    state: &str,
    track: ConfigTrack,
) -> AgentConfig {
    AgentConfig {
        instance_uid: uid,
        assigned,
        remote_hash: Some(hash.to_owned()),
        remote_state: Some(state.to_owned()),
        track,
    }
}

async fn write_configs(store: &dyn Store, configs: Vec<AgentConfig>) {
    store
        .write(&WriteBatch {
            configs,
            ..WriteBatch::default()
        })
        .await
        .unwrap();
}

async fn drift_state(store: &dyn Store, uid: Uuid) -> Option<DriftState> {
    store
        .agent_config(uid)
        .await
        .unwrap()
        .expect("a config row")
        .1
}

async fn configurations_are_unique_per_workspace_and_page_by_id(db: Db) {
    let store = db.open().await;
    let created_at = at_micros(5, 123_457);
    let edge = store
        .create_configuration(
            &new_configuration("default", "edge", "receivers: {}\n"),
            created_at,
            &audit(),
        )
        .await
        .unwrap();
    assert_eq!(
        edge,
        Configuration {
            id: edge.id,
            workspace: "default".into(),
            name: "edge".into(),
            description: "edge collectors".into(),
            labels: BTreeMap::from([("team".to_owned(), "a".to_owned())]),
            draft: "receivers: {}\n".into(),
            row_version: 1,
            created_at,
            updated_at: created_at,
        }
    );
    assert_eq!(
        store.get_configuration(edge.id).await.unwrap(),
        Some(edge.clone())
    );
    assert_eq!(store.get_configuration(edge.id + 1000).await.unwrap(), None);

    let duplicate = store
        .create_configuration(
            &new_configuration("default", "edge", "other: 1\n"),
            at(6),
            &audit(),
        )
        .await;
    assert!(
        matches!(duplicate, Err(StoreError::Duplicate(_))),
        "{duplicate:?}"
    );
    assert_eq!(
        store.get_configuration(edge.id).await.unwrap(),
        Some(edge.clone()),
        "the refused duplicate changed nothing"
    );
    // The name is free in another workspace, and the store writes on after the refusal.
    let elsewhere = store
        .create_configuration(
            &new_configuration("other", "edge", "x: 1\n"),
            at(7),
            &audit(),
        )
        .await
        .unwrap();
    let gateway = store
        .create_configuration(
            &new_configuration("default", "gateway", "y: 1\n"),
            at(8),
            &audit(),
        )
        .await
        .unwrap();
    let agent = store
        .create_configuration(
            &new_configuration("default", "agent", "z: 1\n"),
            at(9),
            &audit(),
        )
        .await
        .unwrap();
    assert!(edge.id < gateway.id && gateway.id < agent.id);

    let ids = |listed: Vec<Configuration>| listed.iter().map(|c| c.id).collect::<Vec<_>>();
    let all = store.list_configurations("default", 0, 10).await.unwrap();
    assert_eq!(all, vec![edge.clone(), gateway.clone(), agent.clone()]);
    assert_eq!(
        ids(store.list_configurations("default", 0, 2).await.unwrap()),
        [edge.id, gateway.id]
    );
    assert_eq!(
        ids(store
            .list_configurations("default", gateway.id, 2)
            .await
            .unwrap()),
        [agent.id]
    );
    assert!(store
        .list_configurations("default", agent.id, 2)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        ids(store.list_configurations("other", 0, 10).await.unwrap()),
        [elsewhere.id]
    );
}

async fn concurrent_draft_edits_have_exactly_one_winner(db: Db) {
    let store = db.open().await;
    let created = store
        .create_configuration(
            &new_configuration("default", "edge", "v: 0\n"),
            at(0),
            &audit(),
        )
        .await
        .unwrap();
    let id = created.id;
    let editors: Vec<_> = (0..8)
        .map(|editor| {
            let store = store.clone();
            tokio::spawn(async move {
                let draft = format!("v: {editor}\n");
                let outcome = store
                    .update_draft(id, &draft, 1, at_micros(10, editor), &audit())
                    .await
                    .unwrap();
                (draft, outcome)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for editor in editors {
        let (draft, outcome) = editor.await.unwrap();
        match outcome {
            Guarded::Done(row_version) => winners.push((draft, row_version)),
            Guarded::Stale { current } => assert_eq!(current, 2, "{draft}"),
            Guarded::NotFound => panic!("{draft}: not found"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let (winner, row_version) = winners.pop().unwrap();
    assert_eq!(row_version, 2);
    let stored = store.get_configuration(id).await.unwrap().unwrap();
    assert_eq!(
        (stored.draft.as_str(), stored.row_version),
        (winner.as_str(), 2)
    );
    assert_eq!(stored.created_at, at(0));
    assert!(stored.updated_at >= at(10), "{}", stored.updated_at);

    assert_eq!(
        store
            .update_draft(id, "late: 1\n", 1, at(11), &audit())
            .await
            .unwrap(),
        Guarded::Stale { current: 2 }
    );
    assert_eq!(
        store
            .update_draft(id, "next: 1\n", 2, at_micros(12, 1), &audit())
            .await
            .unwrap(),
        Guarded::Done(3)
    );
    let stored = store.get_configuration(id).await.unwrap().unwrap();
    assert_eq!(
        (stored.draft.as_str(), stored.row_version, stored.updated_at),
        ("next: 1\n", 3, at_micros(12, 1))
    );
    assert_eq!(
        store
            .update_draft(id + 1000, "x: 1\n", 1, at(13), &audit())
            .await
            .unwrap(),
        Guarded::NotFound
    );
}

async fn published_versions_never_change(db: Db) {
    let store = db.open().await;
    let (first, second) = ("receivers: {a: 1}\n", "receivers: {a: 2}\n");
    let (first_hash, second_hash) = (sha256_hex(first.as_bytes()), sha256_hex(second.as_bytes()));
    let id = store
        .create_configuration(
            &new_configuration("default", "edge", first),
            at(0),
            &audit(),
        )
        .await
        .unwrap()
        .id;
    assert_eq!(
        store
            .publish(id, 1, first, &first_hash, at_micros(1, 11), &audit())
            .await
            .unwrap(),
        Guarded::Done(Published {
            version: 1,
            created: true
        })
    );
    assert_eq!(
        store
            .update_draft(id, second, 1, at(2), &audit())
            .await
            .unwrap(),
        Guarded::Done(2)
    );
    // A publish that read the draft before the edit publishes nothing.
    assert_eq!(
        store
            .publish(id, 1, first, &first_hash, at(3), &audit())
            .await
            .unwrap(),
        Guarded::Stale { current: 2 }
    );
    assert_eq!(
        store
            .publish(
                id,
                1,
                "other: 1\n",
                &sha256_hex(b"other: 1\n"),
                at(3),
                &audit()
            )
            .await
            .unwrap(),
        Guarded::Stale { current: 2 }
    );
    assert_eq!(store.list_versions(&[id]).await.unwrap().len(), 1);
    assert_eq!(
        store
            .publish(id, 2, second, &second_hash, at_micros(4, 22), &audit())
            .await
            .unwrap(),
        Guarded::Done(Published {
            version: 2,
            created: true
        })
    );

    assert_eq!(
        store.get_version(id, 1).await.unwrap(),
        Some(ConfigurationVersion {
            configuration_id: id,
            version: 1,
            yaml: first.into(),
            hash: first_hash.clone(),
            created_at: at_micros(1, 11),
        }),
        "version 1 kept its bytes and hash"
    );
    assert_eq!(
        store.get_version(id, 2).await.unwrap(),
        Some(ConfigurationVersion {
            configuration_id: id,
            version: 2,
            yaml: second.into(),
            hash: second_hash.clone(),
            created_at: at_micros(4, 22),
        })
    );
    assert_eq!(store.get_version(id, 3).await.unwrap(), None);
    let listed = store.list_versions(&[id]).await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|v| (v.version, v.hash.as_str(), v.created_at))
            .collect::<Vec<_>>(),
        [
            (1, first_hash.as_str(), at_micros(1, 11)),
            (2, second_hash.as_str(), at_micros(4, 22))
        ]
    );
    assert_eq!(
        store
            .publish(id + 1000, 1, first, &first_hash, at(5), &audit())
            .await
            .unwrap(),
        Guarded::NotFound
    );
    assert!(store.list_versions(&[id + 1000]).await.unwrap().is_empty());
}

async fn publishing_the_same_bytes_again_is_the_newest_version(db: Db) {
    let store = db.open().await;
    let (a, b) = ("a: 1\n", "b: 1\n");
    let id = store
        .create_configuration(&new_configuration("default", "edge", a), at(0), &audit())
        .await
        .unwrap()
        .id;
    let publish = |draft: &'static str, row_version: i64| {
        let store = store.clone();
        async move {
            store
                .publish(
                    id,
                    row_version,
                    draft,
                    &sha256_hex(draft.as_bytes()),
                    at(1),
                    &audit(),
                )
                .await
                .unwrap()
        }
    };
    let done = |version, created| Guarded::Done(Published { version, created });
    assert_eq!(publish(a, 1).await, done(1, true));
    assert_eq!(publish(a, 1).await, done(1, false));
    assert_eq!(store.list_versions(&[id]).await.unwrap().len(), 1);
    store.update_draft(id, b, 1, at(2), &audit()).await.unwrap();
    assert_eq!(publish(b, 2).await, done(2, true));
    // Only the newest version counts: going back to earlier bytes is a new version.
    store.update_draft(id, a, 2, at(3), &audit()).await.unwrap();
    assert_eq!(publish(a, 3).await, done(3, true));
    assert_eq!(publish(a, 3).await, done(3, false));

    // Concurrent publishes of one configuration take turns: distinct bytes get distinct
    // versions, the same bytes one version.
    let other = store
        .create_configuration(
            &new_configuration("default", "gateway", "x: 0\n"),
            at(0),
            &audit(),
        )
        .await
        .unwrap()
        .id;
    let publishes: Vec<_> = (0..8)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                let draft = format!("x: {n}\n");
                let hash = sha256_hex(draft.as_bytes());
                store
                    .publish(other, 1, &draft, &hash, at(4), &audit())
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut versions = Vec::new();
    for publish in publishes {
        match publish.await.unwrap() {
            Guarded::Done(Published {
                version,
                created: true,
            }) => versions.push(version),
            other => panic!("{other:?}"),
        }
    }
    versions.sort();
    assert_eq!(versions, (1..=8).collect::<Vec<_>>());

    let same: Vec<_> = (0..6)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .publish(
                        other,
                        1,
                        "same: 1\n",
                        &sha256_hex(b"same: 1\n"),
                        at(5),
                        &audit(),
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut created = 0;
    for publish in same {
        match publish.await.unwrap() {
            Guarded::Done(Published {
                version: 9,
                created: was_created,
            }) => created += usize::from(was_created),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(store.list_versions(&[other]).await.unwrap().len(), 9);
    let both: Vec<(i64, i64)> = store
        .list_versions(&[other, id])
        .await
        .unwrap()
        .iter()
        .map(|v| (v.configuration_id, v.version))
        .collect();
    let mut expected: Vec<(i64, i64)> = store
        .list_versions(&[id])
        .await
        .unwrap()
        .iter()
        .chain(store.list_versions(&[other]).await.unwrap().iter())
        .map(|v| (v.configuration_id, v.version))
        .collect();
    expected.sort();
    assert_eq!(both, expected, "by configuration, then version");
}

async fn lint_rule_settings_are_per_workspace(db: Db) {
    let store = db.open().await;
    assert!(store
        .lint_rule_settings("default")
        .await
        .unwrap()
        .is_empty());
    let setting = |rule: &str, enabled: bool, severity: &str, message: &str| LintRuleSetting {
        rule: rule.to_owned(),
        enabled,
        severity: severity.to_owned(),
        message: message.to_owned(),
        hint: format!("hint for {rule}"),
    };
    let batch = setting("batch-processor", true, "error", "batch, please");
    let unused = setting("unused-component", false, "warning", "unused");
    let elsewhere = setting("batch-processor", true, "warning", "elsewhere");
    store
        .put_lint_rule_setting("default", &unused, at(0), &audit())
        .await
        .unwrap();
    store
        .put_lint_rule_setting("default", &batch, at(0), &audit())
        .await
        .unwrap();
    store
        .put_lint_rule_setting("other", &elsewhere, at(0), &audit())
        .await
        .unwrap();
    assert_eq!(
        store.lint_rule_settings("default").await.unwrap(),
        [batch.clone(), unused.clone()],
        "by rule"
    );

    let overwritten = setting("batch-processor", false, "warning", "changed my mind");
    store
        .put_lint_rule_setting("default", &overwritten, at(1), &audit())
        .await
        .unwrap();
    assert_eq!(
        store.lint_rule_settings("default").await.unwrap(),
        [overwritten, unused]
    );
    assert_eq!(
        store.lint_rule_settings("other").await.unwrap(),
        [elsewhere]
    );
    assert!(store.lint_rule_settings("third").await.unwrap().is_empty());
}

async fn assignments_reach_named_and_selected_agents_newest_first(db: Db) {
    let store = db.open().await;
    let (configuration, hashes) = published(store.as_ref(), "edge", &["v: 1\n", "v: 2\n"]).await;
    let mut uids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    uids.sort();
    let [mixed, plain, other_team, no_env, direct] = uids[..] else {
        unreachable!()
    };
    write(
        store.as_ref(),
        vec![
            labelled(mixed, &[("env", "prod")], &[("team", "a")]),
            labelled(
                plain,
                &[],
                &[("env", "prod"), ("team", "a"), ("zone", "z1")],
            ),
            labelled(other_team, &[("env", "prod")], &[("team", "b")]),
            labelled(no_env, &[("team", "a")], &[("env", "dev")]),
            labelled(direct, &[("env", "dev")], &[]),
        ],
        vec![],
    )
    .await;

    let missing = NewAssignment {
        configuration_id: configuration,
        version: 3,
        target: Target::Agent(direct),
    };
    assert_eq!(
        store
            .create_assignment(&missing, at(2), &audit())
            .await
            .unwrap(),
        None
    );
    let no_configuration = NewAssignment {
        configuration_id: configuration + 1000,
        version: 1,
        target: Target::Selector(Selector::parse("env=prod").unwrap()),
    };
    assert_eq!(
        store
            .create_assignment(&no_configuration, at(2), &audit())
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.newest_assignment_id().await.unwrap(), 0);
    assert!(store.current_assignments().await.unwrap().is_empty());
    assert_eq!(store.agent_config(direct).await.unwrap(), None);
    assert_eq!(store.drift_counts().await.unwrap(), DriftCounts::default());

    // Directly to one agent.
    let to_direct = assign(
        store.as_ref(),
        configuration,
        1,
        Target::Agent(direct),
        at_micros(3, 1),
    )
    .await;
    assert_eq!(
        to_direct,
        Assignment {
            id: to_direct.id,
            configuration_id: configuration,
            version: 1,
            hash: hashes[0].clone(),
            yaml: "v: 1\n".into(),
            target: Target::Agent(direct),
            created_at: at_micros(3, 1),
        }
    );
    assert_eq!(
        store.agent_config(direct).await.unwrap(),
        Some((
            AgentConfig {
                instance_uid: direct,
                assigned: Some(assigned(&to_direct)),
                remote_hash: None,
                remote_state: None,
                track: ConfigTrack::default(),
            },
            Some(DriftState::Pending)
        ))
    );
    assert_eq!(store.newest_assignment_id().await.unwrap(), to_direct.id);

    // By selector: every pair must match, identifying or not.
    let selector = Selector::parse("env=prod,team=a").unwrap();
    let selected = assign(
        store.as_ref(),
        configuration,
        2,
        Target::Selector(selector.clone()),
        at_micros(4, 2),
    )
    .await;
    assert!(selected.id > to_direct.id);
    for uid in uids.iter().copied() {
        let config = store.agent_config(uid).await.unwrap();
        let assigned_id = config.and_then(|(config, _)| config.assigned.map(|a| a.assignment_id));
        let expected = if uid == mixed || uid == plain {
            Some(selected.id)
        } else if uid == direct {
            Some(to_direct.id)
        } else {
            None
        };
        assert_eq!(assigned_id, expected, "{uid}");
    }
    assert_eq!(
        store.agent_config(plain).await.unwrap().unwrap().0.assigned,
        Some(assigned(&selected))
    );

    // A newer assignment wins over the selector's.
    let newer = assign(
        store.as_ref(),
        configuration,
        1,
        Target::Agent(mixed),
        at_micros(5, 3),
    )
    .await;
    assert_eq!(
        store.agent_config(mixed).await.unwrap().unwrap().0.assigned,
        Some(assigned(&newer))
    );
    // A worker that still knew the selector's assignment writes its agent's report: the
    // reported side is written, the assigned side stays the newer one.
    let track = ConfigTrack {
        applied: Some(Applied {
            hash: hashes[1].clone(),
            at: at_micros(6, 4),
        }),
        ..ConfigTrack::default()
    };
    write_configs(
        store.as_ref(),
        vec![reported(
            mixed,
            Some(assigned(&selected)),
            &hashes[1],
            "applied",
            track.clone(),
        )],
    )
    .await;
    assert_eq!(
        store.agent_config(mixed).await.unwrap(),
        Some((
            AgentConfig {
                instance_uid: mixed,
                assigned: Some(assigned(&newer)),
                remote_hash: Some(hashes[1].clone()),
                remote_state: Some("applied".into()),
                track: track.clone(),
            },
            Some(DriftState::Pending)
        ))
    );
    // Assigning the selector again makes a newer assignment, which wins in turn.
    let older_again = assign(
        store.as_ref(),
        configuration,
        2,
        Target::Selector(selector.clone()),
        at(7),
    )
    .await;
    assert_eq!(
        store.agent_config(mixed).await.unwrap().unwrap().0.assigned,
        Some(assigned(&older_again)),
        "the selector assigned again wins"
    );

    // The newest assignment of every target, with the version's bytes.
    let again_direct = assign(
        store.as_ref(),
        configuration,
        2,
        Target::Agent(direct),
        at(8),
    )
    .await;
    let current = store.current_assignments().await.unwrap();
    assert_eq!(
        current,
        vec![newer.clone(), older_again.clone(), again_direct.clone()]
    );
    assert_eq!(&*current[2].yaml, "v: 2\n");
    assert_eq!(current[2].hash, hashes[1]);
    assert_eq!(&*current[0].yaml, "v: 1\n");
    assert_eq!(store.newest_assignment_id().await.unwrap(), again_direct.id);
}

async fn a_worker_with_an_older_assignment_keeps_the_newer_assigned_side(db: Db) {
    let store = db.open().await;
    let (configuration, hashes) = published(store.as_ref(), "edge", &["v: 1\n", "v: 2\n"]).await;
    let uid = Uuid::now_v7();
    write(store.as_ref(), vec![labelled(uid, &[], &[])], vec![]).await;
    let old = assign(store.as_ref(), configuration, 1, Target::Agent(uid), at(2)).await;
    let new = assign(store.as_ref(), configuration, 2, Target::Agent(uid), at(3)).await;
    write_configs(
        store.as_ref(),
        vec![reported(
            uid,
            Some(assigned(&old)),
            &hashes[0],
            "applied",
            ConfigTrack::default(),
        )],
    )
    .await;
    let (config, state) = store.agent_config(uid).await.unwrap().unwrap();
    assert_eq!(config.assigned, Some(assigned(&new)));
    assert_eq!(
        (config.remote_hash.as_deref(), state),
        (Some(hashes[0].as_str()), Some(DriftState::Pending))
    );
    // One without an assignment (a worker that knew none) leaves it too.
    write_configs(
        store.as_ref(),
        vec![reported(
            uid,
            None,
            &hashes[1],
            "applied",
            ConfigTrack::default(),
        )],
    )
    .await;
    let (config, state) = store.agent_config(uid).await.unwrap().unwrap();
    assert_eq!(config.assigned, Some(assigned(&new)));
    assert_eq!(state, Some(DriftState::InSync));
    // A worker that knows a newer one than the row writes it.
    let newest = Assigned {
        assignment_id: new.id + 1,
        ..assigned(&old)
    };
    write_configs(
        store.as_ref(),
        vec![reported(
            uid,
            Some(newest.clone()),
            &hashes[1],
            "applied",
            ConfigTrack::default(),
        )],
    )
    .await;
    let (config, state) = store.agent_config(uid).await.unwrap().unwrap();
    assert_eq!(config.assigned, Some(newest));
    assert_eq!(state, Some(DriftState::Pending));

    // An agent no assignment reached yet: its report is kept, it has no drift state.
    let unassigned = Uuid::now_v7();
    write_configs(
        store.as_ref(),
        vec![reported(
            unassigned,
            None,
            "abcd",
            "applied",
            ConfigTrack::default(),
        )],
    )
    .await;
    let (config, state) = store.agent_config(unassigned).await.unwrap().unwrap();
    assert_eq!((config.assigned, state), (None, None));
    assert_eq!(config.remote_hash.as_deref(), Some("abcd"));
}

async fn drift_states_are_derived_by_the_database(db: Db) {
    let store = db.open().await;
    let (configuration, hashes) = published(store.as_ref(), "edge", &["v: 1\n", "v: 2\n"]).await;
    let mut uids: Vec<Uuid> = (0..7).map(|_| Uuid::now_v7()).collect();
    uids.sort();
    let [in_sync, pending, silent, failed, failed_before, out_of_band, unassigned] = uids[..]
    else {
        unreachable!()
    };
    write(
        store.as_ref(),
        uids.iter()
            .map(|uid| labelled(*uid, &[("fleet", "x")], &[]))
            .collect(),
        vec![],
    )
    .await;
    // One assignment for all but `unassigned`, which reports without one.
    let mut assignments = BTreeMap::new();
    for uid in &uids[..6] {
        let assignment = assign(store.as_ref(), configuration, 2, Target::Agent(*uid), at(2)).await;
        assignments.insert(*uid, assignment);
    }
    let rejection = |assignment_id: i64| ConfigTrack {
        rejected: Some(Rejection {
            hash: hashes[1].clone(),
            assignment_id,
            error: "unknown receiver".into(),
            at: at_micros(4, 5),
        }),
        ..ConfigTrack::default()
    };
    let applied = ConfigTrack {
        applied: Some(Applied {
            hash: hashes[1].clone(),
            at: at_micros(3, 7),
        }),
        ..ConfigTrack::default()
    };
    let on = |uid: Uuid| Some(assigned(&assignments[&uid]));
    write_configs(
        store.as_ref(),
        vec![
            reported(in_sync, on(in_sync), &hashes[1], "applied", applied.clone()),
            reported(
                pending,
                on(pending),
                &hashes[0],
                "applied",
                ConfigTrack::default(),
            ),
            reported(
                failed,
                on(failed),
                &hashes[1],
                "failed",
                rejection(assignments[&failed].id),
            ),
            // Rejected under an older assignment: this one is offered again, so pending.
            reported(
                failed_before,
                on(failed_before),
                &hashes[1],
                "failed",
                rejection(assignments[&failed_before].id - 1),
            ),
            reported(
                out_of_band,
                on(out_of_band),
                &hashes[1],
                "applied",
                ConfigTrack {
                    out_of_band_at: Some(at_micros(5, 9)),
                    ..applied.clone()
                },
            ),
            reported(
                unassigned,
                None,
                &hashes[1],
                "applied",
                ConfigTrack::default(),
            ),
        ],
    )
    .await;

    let expected = [
        (in_sync, Some(DriftState::InSync)),
        (pending, Some(DriftState::Pending)),
        (silent, Some(DriftState::Pending)),
        (failed, Some(DriftState::Failed)),
        (failed_before, Some(DriftState::Pending)),
        (out_of_band, Some(DriftState::OutOfBand)),
        (unassigned, None),
    ];
    for (uid, state) in expected {
        assert_eq!(drift_state(store.as_ref(), uid).await, state, "{uid}");
    }
    assert_eq!(
        store.drift_counts().await.unwrap(),
        DriftCounts {
            in_sync: 1,
            pending: 3,
            failed: 1,
            out_of_band: 1,
        }
    );

    // Drifting agents by uid, page by page, without the ones in sync or unassigned.
    let everything = store.list_drifting(None, 100).await.unwrap();
    assert_eq!(
        everything
            .iter()
            .map(|(config, state)| (config.instance_uid, *state))
            .collect::<Vec<_>>(),
        [
            (pending, DriftState::Pending),
            (silent, DriftState::Pending),
            (failed, DriftState::Failed),
            (failed_before, DriftState::Pending),
            (out_of_band, DriftState::OutOfBand),
        ]
    );
    let (failed_config, _) = &everything[2];
    assert_eq!(failed_config.track, rejection(assignments[&failed].id));
    assert_eq!(failed_config.assigned, on(failed));
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_drifting(after, 2).await.unwrap();
        assert!(page.len() <= 2);
        let Some((last, _)) = page.last() else { break };
        after = Some(last.instance_uid);
        paged.extend(page);
    }
    assert_eq!(paged, everything);
    assert!(store
        .list_drifting(Some(out_of_band), 10)
        .await
        .unwrap()
        .is_empty());

    // The state follows the row: the pending agent applies, the failed one gets a new
    // assignment of the same version, which it has not rejected yet.
    write_configs(
        store.as_ref(),
        vec![reported(
            pending,
            on(pending),
            &hashes[1],
            "applied",
            applied.clone(),
        )],
    )
    .await;
    let again = assign(
        store.as_ref(),
        configuration,
        2,
        Target::Agent(failed),
        at(6),
    )
    .await;
    assert!(again.id > assignments[&failed].id);
    assert_eq!(
        drift_state(store.as_ref(), pending).await,
        Some(DriftState::InSync)
    );
    assert_eq!(
        drift_state(store.as_ref(), failed).await,
        Some(DriftState::Pending)
    );
    assert_eq!(
        store.drift_counts().await.unwrap(),
        DriftCounts {
            in_sync: 2,
            pending: 3,
            failed: 0,
            out_of_band: 1,
        }
    );
}

async fn agents_read_back_with_their_config_track(db: Db) {
    let store = db.open().await;
    let uid = Uuid::now_v7();
    let plain = Uuid::now_v7();
    let mut agent = record(uid, "prod", 0);
    agent.config = ConfigTrack {
        applied: Some(Applied {
            hash: "aa11".into(),
            at: at_micros(1, 1),
        }),
        rejected: Some(Rejection {
            hash: "bb22".into(),
            assignment_id: 42,
            error: "exporter \"x\" not found".into(),
            at: at_micros(2, 2),
        }),
        out_of_band_at: Some(at_micros(3, 3)),
        expects_effective: true,
        effective_since_status: true,
    };
    let without = record(plain, "dev", 0);
    store
        .write(&WriteBatch {
            agents: vec![&agent, &without],
            configs: vec![AgentConfig::of(&agent, None)],
            ..WriteBatch::default()
        })
        .await
        .unwrap();
    assert_eq!(store.get_agent(uid).await.unwrap(), Some(agent.clone()));
    assert_eq!(store.get_agent(plain).await.unwrap(), Some(without.clone()));
    let mut both = store.get_agents(&[uid, plain]).await.unwrap();
    both.sort_by_key(|record| record.head.instance_uid);
    let mut expected = vec![agent.clone(), without];
    expected.sort_by_key(|record| record.head.instance_uid);
    assert_eq!(both, expected);
    let (config, state) = store.agent_config(uid).await.unwrap().unwrap();
    assert_eq!(
        (
            config.remote_hash.as_deref(),
            config.remote_state.as_deref(),
            state
        ),
        (Some("abcd"), Some("applied"), None),
        "the report as record() holds it"
    );

    // A later answer replaces the track as a whole.
    agent.config = ConfigTrack {
        applied: Some(Applied {
            hash: "cc33".into(),
            at: at_micros(4, 4),
        }),
        ..ConfigTrack::default()
    };
    store
        .write(&WriteBatch {
            configs: vec![AgentConfig::of(&agent, None)],
            ..WriteBatch::default()
        })
        .await
        .unwrap();
    assert_eq!(
        store.get_agent(uid).await.unwrap().unwrap().config,
        agent.config
    );
    assert_eq!(
        store.get_agents(&[uid]).await.unwrap()[0].config,
        agent.config
    );
}

// === operators and the audit log ===

fn account(username: &str, role: Role) -> NewAccount {
    NewAccount {
        username: username.into(),
        password_hash: format!("$argon2id$hash-of-{username}"),
        role,
    }
}

fn day(days: i64) -> OffsetDateTime {
    at(days * 86_400)
}

async fn audit_entries(store: &dyn Store, query: AuditQuery) -> Vec<AuditEntry> {
    store
        .list_audit(&AuditQuery {
            limit: 1000,
            ..query
        })
        .await
        .unwrap()
}

async fn actions(store: &dyn Store) -> Vec<String> {
    let mut entries = audit_entries(store, AuditQuery::default()).await;
    entries.reverse();
    entries.into_iter().map(|entry| entry.action).collect()
}

async fn accounts_sessions_and_api_tokens(db: Db) {
    let store = db.open().await;
    let system = AuditContext::system();
    assert_eq!(store.count_accounts().await.unwrap(), 0);
    let admin = account("admin", Role::Admin);
    assert!(store
        .create_first_account(&admin, at(0), &system)
        .await
        .unwrap());
    assert!(!store
        .create_first_account(&account("other", Role::Admin), at(0), &system)
        .await
        .unwrap());
    let ada = store
        .create_account(&account("ada", Role::Viewer), at(1), &audit())
        .await
        .unwrap();
    assert_eq!((ada.role, ada.created_at), (Role::Viewer, at(1)));
    assert!(matches!(
        store
            .create_account(&account("ada", Role::Admin), at(1), &audit())
            .await,
        Err(StoreError::Duplicate(_))
    ));
    let names: Vec<String> = store
        .list_accounts()
        .await
        .unwrap()
        .into_iter()
        .map(|account| account.username)
        .collect();
    assert_eq!(names, ["ada", "admin"]);
    assert_eq!(
        store
            .get_account("admin")
            .await
            .unwrap()
            .unwrap()
            .password_hash,
        admin.password_hash
    );

    // Sessions carry the account's current role and end at their expiry.
    let session = NewSession {
        id_hash: "s1".into(),
        username: "ada".into(),
        created_at: at(10),
        expires_at: at(100),
    };
    store.create_session(&session, &audit()).await.unwrap();
    let found = store.session("s1", at(50)).await.unwrap().unwrap();
    assert_eq!((found.username.as_str(), found.role), ("ada", Role::Viewer));
    assert_eq!(store.session("s1", at(100)).await.unwrap(), None);
    assert_eq!(store.session("other", at(50)).await.unwrap(), None);
    let promote = AccountUpdate {
        role: Some(Role::Operator),
        password_hash: None,
    };
    let promoted = store
        .update_account("ada", &promote, at(20), &audit())
        .await
        .unwrap();
    assert!(matches!(promoted, Changed::Done(ref account) if account.role == Role::Operator));
    assert_eq!(
        store.session("s1", at(50)).await.unwrap().unwrap().role,
        Role::Operator
    );
    // A new password ends the account's sessions.
    let new_password = AccountUpdate {
        role: None,
        password_hash: Some("$argon2id$new".into()),
    };
    store
        .update_account("ada", &new_password, at(21), &audit())
        .await
        .unwrap();
    assert_eq!(store.session("s1", at(50)).await.unwrap(), None);
    store.create_session(&session, &audit()).await.unwrap();
    assert!(store.delete_session("s1", at(30), &audit()).await.unwrap());
    assert!(!store.delete_session("s1", at(30), &audit()).await.unwrap());

    // The last admin stays.
    let demote = AccountUpdate {
        role: Some(Role::Viewer),
        password_hash: None,
    };
    assert_eq!(
        store
            .update_account("admin", &demote, at(40), &audit())
            .await
            .unwrap(),
        Changed::LastAdmin
    );
    assert_eq!(
        store
            .delete_account("admin", at(40), &audit())
            .await
            .unwrap(),
        Changed::LastAdmin
    );
    assert_eq!(
        store.get_account("admin").await.unwrap().unwrap().role,
        Role::Admin
    );
    assert_eq!(
        store
            .update_account("nobody", &demote, at(40), &audit())
            .await
            .unwrap(),
        Changed::NotFound
    );
    assert_eq!(
        store.delete_account("ada", at(41), &audit()).await.unwrap(),
        Changed::Done(())
    );
    assert_eq!(
        store.delete_account("ada", at(41), &audit()).await.unwrap(),
        Changed::NotFound
    );

    // API tokens: found by hash until they expire or are deleted.
    let token = NewApiToken {
        id: "t1".into(),
        name: "ci".into(),
        role: Role::Operator,
        token_hash: "h1".into(),
        created_at: at(50),
        expires_at: Some(at(60)),
    };
    let created = store.create_api_token(&token, &audit()).await.unwrap();
    assert_eq!(created.created_by, "account:tester");
    assert_eq!(
        store.api_token("h1", at(59)).await.unwrap(),
        Some(created.clone())
    );
    assert_eq!(store.api_token("h1", at(60)).await.unwrap(), None);
    let forever = NewApiToken {
        id: "t2".into(),
        token_hash: "h2".into(),
        expires_at: None,
        ..token.clone()
    };
    store.create_api_token(&forever, &audit()).await.unwrap();
    assert!(store.api_token("h2", day(10_000)).await.unwrap().is_some());
    let ids: Vec<String> = store
        .list_api_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|token| token.id)
        .collect();
    assert_eq!(ids, ["t1", "t2"]);
    assert!(store
        .delete_api_token("t2", at(70), &audit())
        .await
        .unwrap());
    assert!(!store
        .delete_api_token("t2", at(70), &audit())
        .await
        .unwrap());
    assert_eq!(store.api_token("h2", at(70)).await.unwrap(), None);

    // Each change, and only changes, left an entry.
    assert_eq!(
        actions(store.as_ref()).await,
        [
            "account.create",
            "account.create",
            "session.login",
            "account.update",
            "account.update",
            "session.login",
            "session.logout",
            "account.delete",
            "api_token.create",
            "api_token.create",
            "api_token.delete",
        ]
    );
    let first = &audit_entries(
        store.as_ref(),
        AuditQuery {
            actor: Some("system".into()),
            ..AuditQuery::default()
        },
    )
    .await[0];
    assert_eq!(
        (
            first.object_id.as_str(),
            first.new_value.as_ref().unwrap()["role"].as_str()
        ),
        ("admin", Some("admin"))
    );
    // No secret is in any entry.
    let everything =
        serde_json::to_string(&audit_entries(store.as_ref(), AuditQuery::default()).await).unwrap();
    for secret in ["$argon2id", "h1", "h2"] {
        assert!(
            !everything.contains(&format!("\"{secret}")),
            "{secret} in {everything}"
        );
    }
    assert!(store.verify_audit().await.unwrap().ok);
}

async fn configuration_changes_are_audited_with_their_change(db: Db) {
    let store = db.open().await;
    let secret_yaml = "exporters:\n  otlp:\n    headers: {api-key: s3cret}\n";
    let created = store
        .create_configuration(
            &new_configuration("default", "edge", secret_yaml),
            at(0),
            &audit(),
        )
        .await
        .unwrap();
    let stale = store
        .update_draft(created.id, "x: 1\n", 7, at(1), &audit())
        .await
        .unwrap();
    assert_eq!(stale, Guarded::Stale { current: 1 });
    store
        .update_draft(created.id, "x: 1\n", 1, at(1), &audit())
        .await
        .unwrap();
    let hash = sha256_hex(b"x: 1\n");
    store
        .publish(created.id, 2, "x: 1\n", &hash, at(2), &audit())
        .await
        .unwrap();
    // The same bytes again publish nothing, and audit nothing.
    store
        .publish(created.id, 2, "x: 1\n", &hash, at(3), &audit())
        .await
        .unwrap();
    let setting = LintRuleSetting {
        rule: "batch-processor".into(),
        enabled: false,
        severity: "warning".into(),
        message: "m".into(),
        hint: "h".into(),
    };
    store
        .put_lint_rule_setting("default", &setting, at(4), &audit())
        .await
        .unwrap();
    store
        .put_lint_rule_setting(
            "default",
            &LintRuleSetting {
                enabled: true,
                ..setting.clone()
            },
            at(5),
            &audit(),
        )
        .await
        .unwrap();
    let assignment = assign(
        store.as_ref(),
        created.id,
        1,
        Target::Agent(Uuid::now_v7()),
        at(6),
    )
    .await;

    assert_eq!(
        actions(store.as_ref()).await,
        [
            "configuration.create",
            "configuration.draft_update",
            "configuration.publish",
            "lint_rule.update",
            "lint_rule.update",
            "assignment.create",
        ]
    );
    let entries = audit_entries(store.as_ref(), AuditQuery::default()).await;
    for entry in &entries {
        assert_eq!(
            (
                entry.actor.as_str(),
                entry.address.as_str(),
                entry.request_id.as_str()
            ),
            ("account:tester", "192.0.2.1", "suite")
        );
    }
    let text = serde_json::to_string(&entries).unwrap();
    assert!(
        !text.contains("s3cret"),
        "a draft's text is never audited: {text}"
    );
    let draft = entries
        .iter()
        .find(|entry| entry.action == "configuration.draft_update")
        .unwrap();
    assert_eq!(draft.object_id, created.id.to_string());
    assert_eq!(
        draft.old_value.as_ref().unwrap()["draft_sha256"],
        sha256_hex(secret_yaml.as_bytes())
    );
    assert_eq!(draft.new_value.as_ref().unwrap()["row_version"], 2);
    let lint = &entries[1];
    assert_eq!(lint.old_value.as_ref().unwrap()["enabled"], false);
    assert_eq!(lint.new_value.as_ref().unwrap()["enabled"], true);
    assert_eq!(entries[0].object_id, assignment.id.to_string());
    assert_eq!(entries[0].new_value.as_ref().unwrap()["hash"], hash);
}

async fn the_audit_chain_has_one_order_under_concurrent_writers(db: Db) {
    let store = db.open().await;
    let writers = (0..6).map(|writer| {
        let store = store.clone();
        tokio::spawn(async move {
            for n in 0..5 {
                let context = AuditContext {
                    actor: Actor::Account(format!("writer{writer}")),
                    address: "192.0.2.7".into(),
                    request_id: format!("{writer}-{n}"),
                };
                store
                    .create_account(
                        &account(&format!("user{writer}-{n}"), Role::Viewer),
                        at(writer * 10 + n),
                        &context,
                    )
                    .await
                    .unwrap();
            }
        })
    });
    for writer in writers.collect::<Vec<_>>() {
        writer.await.unwrap();
    }
    assert_eq!(
        store.verify_audit().await.unwrap(),
        Verification {
            ok: true,
            checked: 30,
            first_bad: None
        }
    );
    let entries = audit_entries(store.as_ref(), AuditQuery::default()).await;
    let ids: Vec<i64> = entries.iter().map(|entry| entry.id).collect();
    assert_eq!(
        ids,
        (1..=30).rev().collect::<Vec<_>>(),
        "newest first, no gaps"
    );
    for pair in entries.windows(2) {
        assert_eq!(
            pair[1].hash, pair[0].prev_hash,
            "each holds the previous hash"
        );
    }

    // Filters, and pages by the token.
    let by_writer = audit_entries(
        store.as_ref(),
        AuditQuery {
            actor: Some("account:writer2".into()),
            ..AuditQuery::default()
        },
    )
    .await;
    assert_eq!(by_writer.len(), 5);
    let one = audit_entries(
        store.as_ref(),
        AuditQuery {
            action: Some("account.create".into()),
            object_type: Some("account".into()),
            object_id: Some("user3-4".into()),
            ..AuditQuery::default()
        },
    )
    .await;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].request_id, "3-4");
    let window = audit_entries(
        store.as_ref(),
        AuditQuery {
            since: Some(at(10)),
            until: Some(at(20)),
            ..AuditQuery::default()
        },
    )
    .await;
    assert_eq!(window.len(), 5);
    assert!(window.iter().all(|entry| entry.actor == "account:writer1"));
    let page = store
        .list_audit(&AuditQuery {
            limit: 4,
            before: Some(10),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let ids: Vec<i64> = page.iter().map(|entry| entry.id).collect();
    assert_eq!(ids, [9, 8, 7, 6]);
}

async fn tampering_with_the_audit_log_is_found(db: Db) {
    let store = db.open().await;
    for n in 0..5 {
        store
            .create_account(&account(&format!("u{n}"), Role::Viewer), at(n), &audit())
            .await
            .unwrap();
    }
    assert!(store.verify_audit().await.unwrap().ok);
    let first_bad = || async { store.verify_audit().await.unwrap().first_bad };

    // Altered: a value, then put back.
    let original = raw_pairs(
        &db.url,
        "SELECT new_value, hash FROM audit_log WHERE id = 3",
    )
    .await;
    raw_execute(
        &db.url,
        r#"UPDATE audit_log SET new_value = '{"role":"admin"}' WHERE id = 3"#,
    )
    .await;
    assert_eq!(first_bad().await, Some(3));
    let verification = store.verify_audit().await.unwrap();
    assert_eq!((verification.ok, verification.checked), (false, 2));
    raw_execute(
        &db.url,
        &format!(
            "UPDATE audit_log SET new_value = '{}' WHERE id = 3",
            original[0].0
        ),
    )
    .await;
    assert_eq!(first_bad().await, None);

    // Inserted: a copy slipped in after the head, then removed.
    raw_execute(
        &db.url,
        "INSERT INTO audit_log SELECT id + 1, at, actor, action, object_type, object_id, \
         old_value, new_value, address, request_id, hash, hash FROM audit_log WHERE id = 5",
    )
    .await;
    assert_eq!(first_bad().await, Some(6));
    raw_execute(&db.url, "DELETE FROM audit_log WHERE id = 6").await;
    assert_eq!(first_bad().await, None);

    // Deleted: in the middle, and the newest.
    raw_execute(&db.url, "DELETE FROM audit_log WHERE id = 5").await;
    assert_eq!(first_bad().await, Some(5));
    raw_execute(&db.url, "DELETE FROM audit_log WHERE id = 2").await;
    assert_eq!(first_bad().await, Some(2));
}

async fn audit_retention_archives_and_purges_at_the_configured_ages(db: Db) {
    let store = db.open().await;
    for (n, written) in [0, 10, 100, 200].into_iter().enumerate() {
        store
            .create_account(
                &account(&format!("u{n}"), Role::Viewer),
                day(written),
                &audit(),
            )
            .await
            .unwrap();
    }
    let policy = RetentionPolicy {
        hot: Duration::from_secs(90 * 86_400),
        retain: Duration::from_secs(150 * 86_400),
    };
    // On day 110 only the entries of days 0 and 10 are past the hot period; none is old
    // enough to purge.
    let retained = retention::run_once(store.as_ref(), policy, day(110))
        .await
        .unwrap();
    assert_eq!(
        retained,
        Some(Retained {
            archived: 2,
            purged: 0
        })
    );
    let archived = raw_pairs(
        &db.url,
        "SELECT object_id, hash FROM audit_archive ORDER BY id",
    )
    .await;
    assert_eq!(archived.len(), 2);
    assert_eq!(
        store.verify_audit().await.unwrap(),
        Verification {
            ok: true,
            checked: 4,
            first_bad: None
        }
    );
    assert_eq!(
        audit_entries(store.as_ref(), AuditQuery::default())
            .await
            .len(),
        4,
        "listed from both tables"
    );

    // On day 211: day 100 moves; days 0 and 10 are past the retention and go.
    let retained = retention::run_once(store.as_ref(), policy, day(211))
        .await
        .unwrap();
    assert_eq!(
        retained,
        Some(Retained {
            archived: 1,
            purged: 2
        })
    );
    assert_eq!(
        store.verify_audit().await.unwrap(),
        Verification {
            ok: true,
            checked: 2,
            first_bad: None
        },
        "the chain verifies from the newest purged entry"
    );
    let left: Vec<String> = audit_entries(store.as_ref(), AuditQuery::default())
        .await
        .into_iter()
        .map(|entry| entry.object_id)
        .collect();
    assert_eq!(left, ["u3", "u2"]);
    // Nothing more to do the same day.
    assert_eq!(
        retention::run_once(store.as_ref(), policy, day(211))
            .await
            .unwrap(),
        Some(Retained::default())
    );
    // New entries chain on; an altered archived entry is found.
    store
        .create_account(&account("u4", Role::Viewer), day(212), &audit())
        .await
        .unwrap();
    assert!(store.verify_audit().await.unwrap().ok);
    raw_execute(
        &db.url,
        "UPDATE audit_archive SET actor = 'system' WHERE id = 3",
    )
    .await;
    assert_eq!(store.verify_audit().await.unwrap().first_bad, Some(3));
}

// === the fleet as the web UI reads it ===

async fn fleet_uids(store: &dyn Store, query: &FleetQuery) -> Vec<Uuid> {
    store
        .list_fleet(query)
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.head.instance_uid)
        .collect()
}

async fn fleet_filters_page_count_and_feed_changes(db: Db) {
    let store = db.open().await;
    assert_eq!(store.newest_change().await.unwrap(), 0);
    assert_eq!(store.fleet_counts().await.unwrap(), FleetCounts::default());
    let mut uids: Vec<Uuid> = (0..6).map(|_| Uuid::now_v7()).collect();
    uids.sort();
    let mut agents: Vec<AgentRecord> = uids
        .iter()
        .enumerate()
        .map(|(i, uid)| {
            let name = if i % 2 == 0 { "Edge_Gateway" } else { "core" };
            let zone = format!("zone-{}", i % 3);
            labelled(*uid, &[("service.name", name)], &[("zone", zone.as_str())])
        })
        .collect();
    agents[1].head.status = AgentStatus::Offline;
    agents[2].head.transport = Transport::Http;
    agents[3].head.transport = Transport::Http;
    agents[3].head.status = AgentStatus::Offline;
    write(
        store.as_ref(),
        agents,
        uids.iter().map(|uid| event(*uid, 1, "connected")).collect(),
    )
    .await;

    assert_eq!(
        store.fleet_counts().await.unwrap(),
        FleetCounts {
            total: 6,
            online: 4,
            offline: 2,
            websocket: 4,
            http: 2,
        }
    );
    let all = FleetQuery {
        limit: 100,
        ..FleetQuery::default()
    };
    assert_eq!(fleet_uids(store.as_ref(), &all).await, uids);
    let online_http = FleetQuery {
        status: Some(AgentStatus::Online),
        transport: Some(Transport::Http),
        ..all.clone()
    };
    assert_eq!(fleet_uids(store.as_ref(), &online_http).await, [uids[2]]);
    // Search: any attribute value containing the text, ignoring case, `_` taken literally.
    let search = |text: &str| FleetQuery {
        search: Some(text.to_owned()),
        ..all.clone()
    };
    assert_eq!(
        fleet_uids(store.as_ref(), &search("edge_g")).await,
        [uids[0], uids[2], uids[4]]
    );
    assert!(fleet_uids(store.as_ref(), &search("edge%g"))
        .await
        .is_empty());
    assert!(fleet_uids(store.as_ref(), &search("edgexgateway"))
        .await
        .is_empty());
    assert_eq!(
        fleet_uids(store.as_ref(), &search("ZONE-1")).await,
        [uids[1], uids[4]]
    );
    let zone_and_name = FleetQuery {
        attributes: vec![("zone".into(), "zone-1".into())],
        search: Some("edge".into()),
        ..all.clone()
    };
    assert_eq!(fleet_uids(store.as_ref(), &zone_and_name).await, [uids[4]]);
    // Pages follow the uid order without gaps.
    let first = FleetQuery {
        limit: 4,
        ..all.clone()
    };
    assert_eq!(fleet_uids(store.as_ref(), &first).await, uids[..4]);
    let second = FleetQuery {
        after: Some(uids[3]),
        ..first.clone()
    };
    assert_eq!(fleet_uids(store.as_ref(), &second).await, uids[4..]);
    // One agent, if it matches.
    let row = store
        .fleet_row(uids[2], &online_http)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.head.instance_uid, uids[2]);
    assert_eq!(row.drift, None);
    assert!(store
        .fleet_row(uids[0], &online_http)
        .await
        .unwrap()
        .is_none());

    // Drift state joins in: one agent assigned and applied, one assigned and pending.
    let (configuration, hashes) = published(store.as_ref(), "fleet", &["v: 1\n"]).await;
    let applied = assign(
        store.as_ref(),
        configuration,
        1,
        Target::Agent(uids[0]),
        at(2),
    )
    .await;
    assign(
        store.as_ref(),
        configuration,
        1,
        Target::Agent(uids[5]),
        at(2),
    )
    .await;
    write_configs(
        store.as_ref(),
        vec![reported(
            uids[0],
            Some(assigned(&applied)),
            &hashes[0],
            "applied",
            ConfigTrack::default(),
        )],
    )
    .await;
    let drifting = |state: DriftState| FleetQuery {
        drift: Some(state),
        ..all.clone()
    };
    assert_eq!(
        fleet_uids(store.as_ref(), &drifting(DriftState::InSync)).await,
        [uids[0]]
    );
    assert_eq!(
        fleet_uids(store.as_ref(), &drifting(DriftState::Pending)).await,
        [uids[5]]
    );
    let rows = store.list_fleet(&all).await.unwrap();
    assert_eq!(rows[0].drift, Some(DriftState::InSync));
    assert_eq!(rows[5].drift, Some(DriftState::Pending));
    assert_eq!(rows[1].drift, None);

    // The change feed: history rows after an id, oldest first, bounded.
    let newest = store.newest_change().await.unwrap();
    let all_changes = store.changes_since(0, 100).await.unwrap();
    assert_eq!(all_changes.len(), 6);
    assert_eq!(all_changes.last().unwrap().event_id, newest);
    assert!(all_changes
        .windows(2)
        .all(|w| w[0].event_id < w[1].event_id));
    let uids_changed: Vec<Uuid> = all_changes.iter().map(|c| c.instance_uid).collect();
    assert_eq!(uids_changed, uids);
    write(store.as_ref(), vec![], vec![event(uids[3], 5, "offline")]).await;
    let later = store.changes_since(newest, 100).await.unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].instance_uid, uids[3]);
    assert_eq!(later[0].kind, "offline");
    assert_eq!(store.changes_since(0, 2).await.unwrap().len(), 2);
}

macro_rules! storage_suite {
    ($($test:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Db::sqlite().await).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Db::postgres().await).await;
                }
            )*
        }
    };
}

storage_suite!(
    round_trips_a_full_record,
    upsert_keeps_first_seen_and_applies_seen,
    filters_by_attributes_and_status,
    attribute_rows_are_rewritten_only_when_not_current,
    details_are_kept_when_current,
    reads_many_agents_at_once,
    pages_agents_without_gaps_or_repeats,
    events_newest_first_with_paging,
    marks_only_stale_online_agents_of_a_transport_offline,
    writes_large_batches_in_one_transaction,
    a_failed_batch_stores_nothing,
    the_last_snapshot_of_an_agent_in_a_batch_wins,
    large_payloads_are_stored_gzipped,
    leases_split_fairly_and_fence_writes,
    dead_gateways_agents_go_offline,
    liveness_seen_after_a_sweep_brings_agents_back_online,
    pings,
    configurations_are_unique_per_workspace_and_page_by_id,
    concurrent_draft_edits_have_exactly_one_winner,
    published_versions_never_change,
    publishing_the_same_bytes_again_is_the_newest_version,
    lint_rule_settings_are_per_workspace,
    assignments_reach_named_and_selected_agents_newest_first,
    a_worker_with_an_older_assignment_keeps_the_newer_assigned_side,
    drift_states_are_derived_by_the_database,
    agents_read_back_with_their_config_track,
    the_ca_is_created_once_and_rotated_with_the_old_one_trusted_while_it_has_certificates,
    bootstrap_tokens_enrol_once_and_say_why_not,
    certificates_bind_uids_and_are_revoked_and_superseded,
    concurrent_enrolments_with_one_token_have_exactly_one_winner,
    trust_changes_are_audited_one_entry_each,
    accounts_sessions_and_api_tokens,
    configuration_changes_are_audited_with_their_change,
    the_audit_chain_has_one_order_under_concurrent_writers,
    tampering_with_the_audit_log_is_found,
    audit_retention_archives_and_purges_at_the_configured_ages,
    fleet_filters_page_count_and_feed_changes,
);

/// Replicas all run retention; while one holds the lock, the others skip their turn.
#[tokio::test]
async fn postgres_audit_retention_runs_on_one_replica_at_a_time() {
    let db = Db::postgres().await;
    let store = db.open().await;
    store
        .create_account(&account("u", Role::Viewer), day(0), &audit())
        .await
        .unwrap();
    let policy = RetentionPolicy {
        hot: Duration::from_secs(86_400),
        retain: Duration::from_secs(2 * 86_400),
    };
    let mut other_replica = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(0x616d_706f_7261_0001_i64)
        .execute(&mut other_replica)
        .await
        .unwrap();
    assert_eq!(
        retention::run_once(store.as_ref(), policy, day(10))
            .await
            .unwrap(),
        None
    );
    other_replica.close().await.unwrap();
    assert_eq!(
        retention::run_once(store.as_ref(), policy, day(10))
            .await
            .unwrap(),
        Some(Retained {
            archived: 1,
            purged: 1
        })
    );
}

/// Waits until `sessions` sessions of this database wait on a lock.
async fn sessions_waiting_on_locks(observer: &mut sqlx::PgConnection, sessions: i64, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut *observer)
        .await
        .unwrap();
        if waiting >= sessions {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never saw {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A write holds its leases until it commits: the owner may still renew them meanwhile, but a
/// takeover waits, and the write, once done, is stored.
#[tokio::test]
async fn postgres_renewal_passes_a_write_in_flight_and_a_takeover_waits_for_it() {
    let db = Db::postgres().await;
    let store = db.open().await;
    let now = OffsetDateTime::now_utc();
    let later = now + Duration::from_secs(10);
    store.heartbeat_replica("a", now, later).await.unwrap();
    let leases = store.claim_partitions("a", 1, 1, now, later).await.unwrap();

    // The agent exists; its row is locked behind the store's back. The write passes its fence,
    // then waits on that row lock (its fence comes first, so waiting on a lock means it holds
    // its lease).
    let uid = Uuid::now_v7();
    write(store.as_ref(), vec![record(uid, "prod", 0)], vec![]).await;
    let mut blocker = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("SELECT 1 FROM agents WHERE instance_uid = $1 FOR UPDATE")
        .bind(uid)
        .execute(&mut blocker)
        .await
        .unwrap();
    let fence = Fence {
        owner: "a".into(),
        leases: leases.clone(),
    };
    let write = tokio::spawn({
        let store = store.clone();
        async move {
            let agent = record(uid, "staging", 0);
            let batch = WriteBatch {
                agents: vec![&agent],
                fence: Some(fence),
                ..WriteBatch::default()
            };
            store.write(&batch).await
        }
    });
    let mut observer = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sessions_waiting_on_locks(&mut observer, 1, "the write waiting on the row lock").await;

    let renewed = tokio::time::timeout(
        Duration::from_secs(3),
        store.claim_partitions("a", 1, 1, now, later + Duration::from_secs(5)),
    )
    .await
    .expect("the renewal waited for the write in flight")
    .unwrap();
    assert_eq!(renewed, leases);

    let far = later + Duration::from_secs(60);
    let takeover = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .claim_partitions("b", 1, 1, far, far + Duration::from_secs(10))
                .await
        }
    });
    sessions_waiting_on_locks(&mut observer, 2, "the takeover waiting behind the write").await;
    assert!(
        !takeover.is_finished(),
        "a takeover must wait for the old owner's write in flight"
    );

    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    write.await.unwrap().expect("the fenced write commits");
    let stored = store.get_agent(uid).await.unwrap().unwrap();
    assert_eq!(stored, record(uid, "staging", 0));
    let taken = takeover.await.unwrap().unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].epoch, leases[0].epoch + 1);
}

/// On SQLite, while a write transaction holds the database, reads still answer, and writes
/// (ingest rounds, a lease renewal, a liveness flush) wait their turn and then succeed rather
/// than fail with "database is locked". The store's writers queue for its one writer
/// connection, not for the connections its reads use.
#[tokio::test]
async fn sqlite_reads_pass_a_held_write_and_writes_wait_their_turn() {
    let db = Db::sqlite().await;
    let store = db.open().await;
    let now = OffsetDateTime::now_utc();
    let later = now + Duration::from_secs(60);
    store.heartbeat_replica("a", now, later).await.unwrap();
    let leases = store.claim_partitions("a", 1, 1, now, later).await.unwrap();
    let uid = Uuid::now_v7();
    write(store.as_ref(), vec![record(uid, "prod", 0)], vec![]).await;

    // Another connection takes the write lock and changes something, as a long write would.
    let mut holder = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();
    sqlx::query("INSERT INTO control_plane_replicas VALUES ('elsewhere', 0)")
        .execute(&mut holder)
        .await
        .unwrap();

    let renewal = tokio::spawn({
        let store = store.clone();
        async move { store.claim_partitions("a", 1, 1, now, later).await }
    });
    let flush = tokio::spawn({
        let store = store.clone();
        let fence = Fence {
            owner: "a".into(),
            leases: leases.clone(),
        };
        async move {
            let batch = WriteBatch {
                seen: vec![SeenUpdate {
                    instance_uid: uid,
                    last_seen: at(5),
                    sequence_num: 43,
                }],
                fence: Some(fence),
                ..WriteBatch::default()
            };
            store.write(&batch).await
        }
    });
    // More ingest rounds than the store has connections.
    let rounds: Vec<_> = (0..6)
        .map(|round| {
            let store = store.clone();
            tokio::spawn(async move {
                let agents: Vec<AgentRecord> = (0..20)
                    .map(|i| record(Uuid::now_v7(), "load", round * 100 + i))
                    .collect();
                let batch = WriteBatch {
                    agents: agents.iter().collect(),
                    ..WriteBatch::default()
                };
                store.write(&batch).await
            })
        })
        .collect();

    for _ in 0..5 {
        assert!(store.get_agent(uid).await.unwrap().is_some());
        assert_eq!(store.get_agents(&[uid]).await.unwrap().len(), 1);
        assert!(!store.list_agents(&query(10)).await.unwrap().is_empty());
        latest_events(store.as_ref(), uid).await;
        store.ping().await.unwrap();
    }
    assert!(
        !renewal.is_finished() && !flush.is_finished(),
        "no write gets past a held write lock, nor gives up on it"
    );

    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    assert_eq!(renewal.await.unwrap().unwrap(), leases);
    flush.await.unwrap().unwrap();
    for round in rounds {
        round.await.unwrap().unwrap();
    }
    let stored = store.get_agent(uid).await.unwrap().unwrap();
    assert_eq!(stored.head.sequence_num, 43);
    assert_eq!(store.list_agents(&query(1000)).await.unwrap().len(), 121);
}

#[tokio::test]
async fn sqlite_in_memory_works() {
    let store = storage::connect("sqlite::memory:", StoreOptions::default())
        .await
        .unwrap();
    let uid = Uuid::now_v7();
    write(store.as_ref(), vec![record(uid, "prod", 0)], vec![]).await;
    // Sequential uses may go through different pooled connections: still one database.
    for _ in 0..3 {
        assert!(store.get_agent(uid).await.unwrap().is_some());
    }
}

#[tokio::test]
async fn refuses_unknown_database_urls() {
    let error = storage::connect("mysql://localhost/x", StoreOptions::default())
        .await
        .err()
        .unwrap();
    assert!(
        error
            .to_string()
            .contains("expected postgres:// or sqlite:"),
        "{error}"
    );
}

#[tokio::test]
async fn postgres_down_is_unavailable_not_a_crash() {
    let options = StoreOptions {
        acquire_timeout: Duration::from_secs(1),
        ..StoreOptions::default()
    };
    let error = storage::connect("postgres://postgres@127.0.0.1:1/none", options)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(error, storage::StoreError::Unavailable(_)),
        "{error}"
    );
}

/// A database written before instance uids became `uuid` (migration 0004) keeps its agents,
/// their attributes and their history through the upgrade.
#[tokio::test]
async fn postgres_agents_written_with_text_uids_survive_the_uuid_migration() {
    let db = Db::postgres().await;
    let mut connection = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let before_uuid = tempfile::tempdir().unwrap();
    let migrations =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations/postgres");
    for entry in std::fs::read_dir(&migrations).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.as_str() < "0004" {
            std::fs::copy(&path, before_uuid.path().join(name)).unwrap();
        }
    }
    sqlx::migrate::Migrator::new(before_uuid.path())
        .await
        .unwrap()
        .run(&mut connection)
        .await
        .unwrap();
    let uid = Uuid::now_v7();
    for statement in [
        format!(
            "INSERT INTO agents VALUES ('{uid}', 'online', 'websocket', 'gw-1', 7, '127.0.0.1:1', \
             3, 1, 1, 2, '{{}}', '\\x7b7d', 'json')"
        ),
        format!("INSERT INTO agent_attributes VALUES ('{uid}', 'service.name', 'checkout')"),
        format!(
            "INSERT INTO agent_events (instance_uid, at, kind, payload, payload_encoding) \
             VALUES ('{uid}', 1, 'connected', '\\x7b7d', 'json'), ('{uid}', 2, 'health', '\\x7b7d', 'json')"
        ),
    ] {
        sqlx::query(&statement).execute(&mut connection).await.unwrap();
    }

    let store = db.open().await;
    let agent = store
        .get_agent(uid)
        .await
        .unwrap()
        .expect("the agent is kept");
    assert_eq!(agent.head.gateway_id, "gw-1");
    assert_eq!(agent.head.sequence_num, 3);
    let by_attribute = store
        .list_agents(&AgentQuery {
            attributes: vec![("service.name".to_owned(), "checkout".to_owned())],
            ..query(10)
        })
        .await
        .unwrap();
    assert_eq!(
        by_attribute
            .iter()
            .map(|head| head.instance_uid)
            .collect::<Vec<_>>(),
        [uid]
    );
    let history = latest_events(store.as_ref(), uid).await;
    assert_eq!(
        history
            .iter()
            .map(|event| event.kind.as_str())
            .collect::<Vec<_>>(),
        ["health", "connected"]
    );
}

// === trust ===

fn new_ca(tag: u8) -> NewCa {
    NewCa {
        certificate_der: vec![tag; 32],
        key_sealed: Some(vec![tag; 48]),
        key_label: String::new(),
        not_after: at(10_000_000),
    }
}

fn new_certificate(
    uid: Uuid,
    ca_id: i64,
    tag: &str,
    issued: i64,
    not_after: i64,
) -> NewCertificate {
    NewCertificate {
        fingerprint: format!("{tag:0>64}"),
        instance_uid: uid,
        certificate_der: tag.as_bytes().to_vec(),
        ca_id,
        labels: BTreeMap::from([("renewed".to_owned(), "yes".to_owned())]),
        issued_at: at(issued),
        not_after: at(not_after),
    }
}

async fn token(store: &dyn Store, hash: &str, expires: i64) -> BootstrapToken {
    store
        .create_bootstrap_token(
            &NewBootstrapToken {
                token_hash: hash.to_owned(),
                labels: BTreeMap::from([("env".to_owned(), "prod".to_owned())]),
                expires_at: at(expires),
            },
            at(0),
            &audit(),
        )
        .await
        .unwrap()
}

async fn the_ca_is_created_once_and_rotated_with_the_old_one_trusted_while_it_has_certificates(
    db: Db,
) {
    let store = db.open().await;
    assert_eq!(store.current_ca().await.unwrap(), None);
    let first = store.create_ca(&new_ca(1), at(0), &audit()).await.unwrap();
    // A second replica starting at the same time gets the first one's CA.
    let again = store.create_ca(&new_ca(2), at(1), &audit()).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(first.key_sealed, Some(vec![1; 48]));
    assert_eq!(store.current_ca().await.unwrap(), Some(first.clone()));

    // A certificate of the first CA, valid until 500.
    let uid = Uuid::now_v7();
    let issued = store
        .enrol(
            None,
            &new_certificate(uid, first.id, "a1", 10, 500),
            at(10),
            &audit(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(issued.labels["renewed"], "yes");

    let second = store
        .rotate_ca(first.id, &new_ca(3), at(20), &audit())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(second.id, first.id);
    assert_eq!(store.current_ca().await.unwrap(), Some(second.clone()));
    assert_eq!(
        store.get_ca(first.id).await.unwrap().unwrap().retired_at,
        Some(at(20))
    );
    // A rotation from a stale view changes nothing.
    assert_eq!(
        store
            .rotate_ca(first.id, &new_ca(4), at(21), &audit())
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.current_ca().await.unwrap().unwrap().id, second.id);

    let trusted =
        |snapshot: TrustSnapshot| -> Vec<i64> { snapshot.cas.iter().map(|ca| ca.id).collect() };
    assert_eq!(
        trusted(store.trust_snapshot(at(100)).await.unwrap()),
        [second.id, first.id]
    );
    assert!(store.trust_snapshot(at(100)).await.unwrap().any_valid);
    assert!(!store.trust_snapshot(at(500)).await.unwrap().any_valid);
    // Once its last certificate expired, the old CA is no longer trusted.
    assert_eq!(
        trusted(store.trust_snapshot(at(500)).await.unwrap()),
        [second.id]
    );
}

async fn bootstrap_tokens_enrol_once_and_say_why_not(db: Db) {
    let store = db.open().await;
    let ca = store.create_ca(&new_ca(1), at(0), &audit()).await.unwrap();
    let created = token(store.as_ref(), "h1", 100).await;
    assert_eq!(created.labels["env"], "prod");
    assert_eq!(created.used_at, None);
    let expired = token(store.as_ref(), "h2", 5).await;
    let revoked = token(store.as_ref(), "h3", 100).await;
    let revoked = store
        .revoke_bootstrap_token(revoked.id, at(2), &audit())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(at(2)));
    assert_eq!(
        store
            .revoke_bootstrap_token(9999, at(2), &audit())
            .await
            .unwrap(),
        None
    );

    assert_eq!(
        store.check_bootstrap_token("h1", at(10)).await.unwrap(),
        Ok(created.clone())
    );
    for (hash, why) in [
        ("nope", TokenRefusal::Unknown),
        ("h2", TokenRefusal::Expired),
        ("h3", TokenRefusal::Revoked),
    ] {
        assert_eq!(
            store.check_bootstrap_token(hash, at(10)).await.unwrap(),
            Err(why)
        );
        let refused = store
            .enrol(
                Some(hash),
                &new_certificate(Uuid::now_v7(), ca.id, hash, 10, 1000),
                at(10),
                &audit(),
            )
            .await
            .unwrap();
        assert_eq!(refused, Err(EnrolRefusal::Token(why)));
    }
    assert_eq!(expired.expires_at, at(5));

    let uid = Uuid::now_v7();
    let enrolled = store
        .enrol(
            Some("h1"),
            &new_certificate(uid, ca.id, "c1", 10, 1000),
            at(10),
            &audit(),
        )
        .await
        .unwrap()
        .unwrap();
    // The token's labels, not the caller's, go to an enrolled agent.
    assert_eq!(enrolled.labels, created.labels);
    assert_eq!(enrolled.token_id, Some(created.id));
    let again = store
        .enrol(
            Some("h1"),
            &new_certificate(uid, ca.id, "c2", 11, 1000),
            at(11),
            &audit(),
        )
        .await
        .unwrap();
    assert_eq!(again, Err(EnrolRefusal::Token(TokenRefusal::Used)));
    assert_eq!(
        store.check_bootstrap_token("h1", at(11)).await.unwrap(),
        Err(TokenRefusal::Used)
    );
    let listed = store.list_bootstrap_tokens(0, 10).await.unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0].used_by, Some(uid));
    assert_eq!(listed[0].used_at, Some(at(10)));
    assert_eq!(
        store
            .list_bootstrap_tokens(listed[1].id, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    // A used token stays used when revoked.
    let used = store
        .revoke_bootstrap_token(created.id, at(12), &audit())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((used.used_at, used.revoked_at), (Some(at(10)), None));

    // A uid that holds a valid certificate is not enrolled again, and the token is not spent.
    token(store.as_ref(), "h4", 100).await;
    let refused = store
        .enrol(
            Some("h4"),
            &new_certificate(uid, ca.id, "c3", 12, 1000),
            at(12),
            &audit(),
        )
        .await
        .unwrap();
    assert_eq!(refused, Err(EnrolRefusal::AlreadyEnrolled(uid)));
    assert!(store
        .check_bootstrap_token("h4", at(12))
        .await
        .unwrap()
        .is_ok());
}

async fn certificates_bind_uids_and_are_revoked_and_superseded(db: Db) {
    let store = db.open().await;
    let ca = store.create_ca(&new_ca(1), at(0), &audit()).await.unwrap();
    let (one, two) = (Uuid::now_v7(), Uuid::now_v7());
    let old = store
        .enrol(
            None,
            &new_certificate(one, ca.id, "01", 10, 1000),
            at(10),
            &audit(),
        )
        .await
        .unwrap()
        .unwrap();
    let new = store
        .enrol(
            None,
            &new_certificate(one, ca.id, "02", 20, 1000),
            at(20),
            &audit(),
        )
        .await
        .unwrap()
        .unwrap();
    let other = store
        .enrol(
            None,
            &new_certificate(two, ca.id, "03", 20, 30),
            at(20),
            &audit(),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(new.is_valid(at(21)) && !other.is_valid(at(30)));

    // By fingerprint (valid or not), and the valid certificates of the uids asked about.
    let mut found = store
        .certificate_bindings(
            std::slice::from_ref(&other.fingerprint),
            &[one, Uuid::now_v7()],
            at(40),
        )
        .await
        .unwrap();
    found.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
    assert_eq!(found, [old.clone(), new.clone(), other.clone()]);
    assert!(store
        .certificate_bindings(&[], &[two], at(40))
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .certificate_bindings(&[], &[], at(40))
        .await
        .unwrap()
        .is_empty());

    // The agent presents its new certificate: the old one is retired, once.
    assert_eq!(
        store
            .retire_superseded(one, &new.fingerprint, at(25), &audit())
            .await
            .unwrap(),
        std::slice::from_ref(&old.fingerprint)
    );
    assert!(store
        .retire_superseded(one, &new.fingerprint, at(26), &audit())
        .await
        .unwrap()
        .is_empty());
    let revoked = store
        .revoke_certificate(&new.fingerprint, "compromised", at(27), &audit())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(at(27)));
    assert_eq!(revoked.revoked_reason.as_deref(), Some("compromised"));
    // Revoking again keeps the first revocation.
    let again = store
        .revoke_certificate(&new.fingerprint, "again", at(28), &audit())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, revoked);
    assert_eq!(
        store
            .revoke_certificate("ff", "x", at(28), &audit())
            .await
            .unwrap(),
        None
    );
    let snapshot = store.trust_snapshot(at(29)).await.unwrap();
    assert_eq!(
        snapshot.revoked,
        [old.fingerprint.clone(), new.fingerprint.clone()]
    );

    let page = store.list_certificates(None, 2).await.unwrap();
    assert_eq!(page.len(), 2);
    let rest = store
        .list_certificates(Some(&page[1].fingerprint), 2)
        .await
        .unwrap();
    assert_eq!(rest, [other]);
}

/// Every trust change leaves one audit entry, in its transaction; what changes nothing (a
/// lost race, a refused enrolment, a second revocation) leaves none.
async fn trust_changes_are_audited_one_entry_each(db: Db) {
    let store = db.open().await;
    let system = AuditContext::system();
    let ca = store.create_ca(&new_ca(1), at(0), &system).await.unwrap();
    store.create_ca(&new_ca(2), at(0), &system).await.unwrap();
    let created = token(store.as_ref(), "secret-hash", 100).await;
    let revoked = token(store.as_ref(), "other-hash", 100).await;
    store
        .revoke_bootstrap_token(revoked.id, at(1), &audit())
        .await
        .unwrap();
    store
        .revoke_bootstrap_token(revoked.id, at(2), &audit())
        .await
        .unwrap();
    let uid = Uuid::now_v7();
    let by_token = AuditContext {
        actor: Actor::BootstrapToken(created.id),
        address: "198.51.100.7".into(),
        request_id: String::new(),
    };
    let enrolled = store
        .enrol(
            Some("secret-hash"),
            &new_certificate(uid, ca.id, "e1", 10, 1000),
            at(10),
            &by_token,
        )
        .await
        .unwrap()
        .unwrap();
    let before_refusals = actions(store.as_ref()).await;
    // Refused: the token is used, and (with a fresh token) the uid is enrolled already.
    let used = store
        .enrol(
            Some("secret-hash"),
            &new_certificate(Uuid::now_v7(), ca.id, "e2", 11, 1000),
            at(11),
            &by_token,
        )
        .await
        .unwrap();
    assert_eq!(used, Err(EnrolRefusal::Token(TokenRefusal::Used)));
    let fresh = token(store.as_ref(), "fresh-hash", 100).await;
    let mut after_refusals = before_refusals.clone();
    after_refusals.push("bootstrap_token.create".into());
    let again = store
        .enrol(
            Some("fresh-hash"),
            &new_certificate(uid, ca.id, "e3", 12, 1000),
            at(12),
            &by_token,
        )
        .await
        .unwrap();
    assert_eq!(again, Err(EnrolRefusal::AlreadyEnrolled(uid)));
    assert_eq!(actions(store.as_ref()).await, after_refusals);
    assert!(fresh.id > created.id);

    let renewed = store
        .enrol(
            None,
            &new_certificate(uid, ca.id, "e4", 20, 2000),
            at(20),
            &AuditContext {
                actor: Actor::Agent(uid),
                ..AuditContext::system()
            },
        )
        .await
        .unwrap()
        .unwrap();
    store
        .retire_superseded(uid, &renewed.fingerprint, at(21), &system)
        .await
        .unwrap();
    store
        .revoke_certificate(&renewed.fingerprint, "compromised", at(22), &audit())
        .await
        .unwrap();
    store
        .revoke_certificate(&renewed.fingerprint, "again", at(23), &audit())
        .await
        .unwrap();
    let second = store
        .rotate_ca(ca.id, &new_ca(3), at(24), &audit())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store
            .rotate_ca(ca.id, &new_ca(4), at(25), &audit())
            .await
            .unwrap(),
        None
    );

    let mut entries = audit_entries(store.as_ref(), AuditQuery::default()).await;
    entries.reverse();
    let seen: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|e| (e.actor.as_str(), e.action.as_str(), e.object_id.as_str()))
        .collect();
    let (ca_id, second_id) = (ca.id.to_string(), second.id.to_string());
    let (created_id, revoked_id, fresh_id) = (
        created.id.to_string(),
        revoked.id.to_string(),
        fresh.id.to_string(),
    );
    let token_actor = format!("bootstrap-token:{}", created.id);
    let agent_actor = format!("agent:{uid}");
    assert_eq!(
        seen,
        [
            ("system", "ca.create", ca_id.as_str()),
            (
                "account:tester",
                "bootstrap_token.create",
                created_id.as_str()
            ),
            (
                "account:tester",
                "bootstrap_token.create",
                revoked_id.as_str()
            ),
            (
                "account:tester",
                "bootstrap_token.revoke",
                revoked_id.as_str()
            ),
            (
                token_actor.as_str(),
                "certificate.enrol",
                enrolled.fingerprint.as_str()
            ),
            (
                "account:tester",
                "bootstrap_token.create",
                fresh_id.as_str()
            ),
            (
                agent_actor.as_str(),
                "certificate.renew",
                renewed.fingerprint.as_str()
            ),
            (
                "system",
                "certificate.revoke",
                enrolled.fingerprint.as_str()
            ),
            (
                "account:tester",
                "certificate.revoke",
                renewed.fingerprint.as_str()
            ),
            ("account:tester", "ca.rotate", second_id.as_str()),
        ]
    );
    let enrol = &entries[4];
    assert_eq!(enrol.address, "198.51.100.7");
    let new = enrol.new_value.as_ref().unwrap();
    assert_eq!(new["bootstrap_token_id"], created.id);
    assert_eq!(new["labels"]["env"], "prod");
    assert_eq!(new["instance_uid"], uid.to_string());
    assert_eq!(
        entries[7].new_value.as_ref().unwrap()["reason"],
        "superseded"
    );
    assert_eq!(
        entries[1].new_value.as_ref().unwrap()["token"],
        "[redacted]"
    );
    // Neither a token's hash nor a CA's key in any entry.
    let text = serde_json::to_string(&entries).unwrap();
    assert!(!text.contains("secret-hash") && !text.contains("fresh-hash"));
    assert!(!text.contains("key") && !text.contains("\"token_hash\""));
    assert!(store.verify_audit().await.unwrap().ok);
}

/// Two enrolments with one token, through two stores on one database (two replicas): exactly
/// one wins, whatever the interleaving.
async fn concurrent_enrolments_with_one_token_have_exactly_one_winner(db: Db) {
    let (first, second) = (db.open().await, db.open().await);
    let ca = first.create_ca(&new_ca(1), at(0), &audit()).await.unwrap();
    for round in 0..10 {
        let hash = format!("race-{round}");
        token(first.as_ref(), &hash, 100).await;
        let (a, b) = (
            new_certificate(Uuid::now_v7(), ca.id, &format!("a{round}"), 10, 1000),
            new_certificate(Uuid::now_v7(), ca.id, &format!("b{round}"), 10, 1000),
        );
        let by = audit();
        let (one, two) = tokio::join!(
            first.enrol(Some(&hash), &a, at(10), &by),
            second.enrol(Some(&hash), &b, at(10), &by),
        );
        let outcomes = [one.unwrap(), two.unwrap()];
        let winners = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
        assert_eq!(winners, 1, "round {round}: {outcomes:?}");
        assert!(outcomes.contains(&Err(EnrolRefusal::Token(TokenRefusal::Used))));
    }
    assert_eq!(first.list_certificates(None, 100).await.unwrap().len(), 10);
}
