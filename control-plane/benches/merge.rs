//! Snapshot merge: what applying one OpAMP message to an agent's state costs, and writing the
//! summary it changes.
//! `cargo bench -p ampora-control-plane`.

use std::collections::HashMap;
use std::hint::black_box;

use ampora_control_plane::agents::merge::{apply_message, new_record, Origin};
use ampora_control_plane::agents::snapshot::Transport;
use ampora_shared::pb::opamp::{
    any_value, AgentConfigFile, AgentConfigMap, AgentDescription, AgentToServer, AnyValue,
    ComponentHealth, EffectiveConfig, KeyValue,
};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use time::OffsetDateTime;
use uuid::Uuid;

fn origin() -> Origin {
    Origin {
        gateway_id: "gw-1".into(),
        connection_id: 1,
        transport: Transport::Websocket,
        remote_addr: "127.0.0.1:40000".into(),
        received_at: OffsetDateTime::now_utc(),
    }
}

fn full_status(seq: u64, healthy: bool) -> AgentToServer {
    let text = |s: &str| {
        Some(AnyValue {
            value: Some(any_value::Value::StringValue(s.into())),
        })
    };
    let mut files = HashMap::new();
    let yaml: String = (0..120)
        .map(|i| format!("  receiver_{i}:\n    endpoint: 0.0.0.0:{}\n", 4000 + i))
        .collect();
    files.insert(
        "collector.yaml".to_owned(),
        AgentConfigFile {
            body: yaml.into_bytes().into(),
            content_type: "text/yaml".into(),
        },
    );
    AgentToServer {
        instance_uid: vec![7; 16].into(),
        sequence_num: seq,
        capabilities: 0x3807,
        agent_description: Some(AgentDescription {
            identifying_attributes: vec![KeyValue {
                key: "service.name".into(),
                value: text("collector"),
            }],
            non_identifying_attributes: (0..10)
                .map(|i| KeyValue {
                    key: format!("host.attr.{i}"),
                    value: text("value"),
                })
                .collect(),
        }),
        health: Some(ComponentHealth {
            healthy,
            status: "running".into(),
            ..Default::default()
        }),
        effective_config: Some(EffectiveConfig {
            config_map: Some(AgentConfigMap { config_map: files }),
        }),
        ..Default::default()
    }
}

fn merge(c: &mut Criterion) {
    let origin = origin();
    let mut known = new_record(Uuid::now_v7(), &origin);
    apply_message(&mut known, false, &full_status(0, true), &origin);

    let heartbeat = AgentToServer {
        instance_uid: vec![7; 16].into(),
        sequence_num: 1,
        capabilities: 0x3807,
        ..Default::default()
    };
    c.bench_function("merge/heartbeat", |b| {
        b.iter_batched_ref(
            || known.clone(),
            |record| apply_message(record, true, black_box(&heartbeat), &origin),
            BatchSize::SmallInput,
        )
    });
    let unchanged = full_status(1, true);
    c.bench_function("merge/full_status_unchanged", |b| {
        b.iter_batched_ref(
            || known.clone(),
            |record| apply_message(record, true, black_box(&unchanged), &origin),
            BatchSize::SmallInput,
        )
    });
    let changed = full_status(1, false);
    c.bench_function("merge/full_status_health_changed", |b| {
        b.iter_batched_ref(
            || known.clone(),
            |record| apply_message(record, true, black_box(&changed), &origin),
            BatchSize::SmallInput,
        )
    });
    // What a commit writes for every changed agent besides its history row.
    c.bench_function("merge/summary_json", |b| {
        b.iter(|| serde_json::to_string(black_box(&known.head.summary)))
    });
}

criterion_group!(benches, merge);
criterion_main!(benches);
