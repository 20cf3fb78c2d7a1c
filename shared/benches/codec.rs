//! Hot paths of the wire: WebSocket frame decode/encode, the bus envelope, gzip of a typical
//! effective config. `cargo bench -p ampora-shared`.

use std::collections::HashMap;
use std::hint::black_box;

use ampora_shared::codec;
use ampora_shared::pb::bus::{agent_envelope::Event, AgentEnvelope, Transport};
use ampora_shared::pb::opamp::{
    any_value, AgentConfigFile, AgentConfigMap, AgentDescription, AgentToServer, AnyValue,
    ComponentHealth, EffectiveConfig, KeyValue, ServerToAgent,
};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use prost::Message;

/// A collector-sized effective config (~8 KiB of YAML).
fn config_yaml() -> String {
    (0..120)
        .map(|i| format!("  receiver_{i}:\n    endpoint: 0.0.0.0:{}\n", 4000 + i))
        .collect()
}

fn full_status() -> AgentToServer {
    let text = |s: &str| {
        Some(AnyValue {
            value: Some(any_value::Value::StringValue(s.into())),
        })
    };
    let mut files = HashMap::new();
    files.insert(
        "collector.yaml".to_owned(),
        AgentConfigFile {
            body: config_yaml().into_bytes().into(),
            content_type: "text/yaml".into(),
        },
    );
    AgentToServer {
        instance_uid: vec![7; 16].into(),
        sequence_num: 42,
        capabilities: 0x3807,
        agent_description: Some(AgentDescription {
            identifying_attributes: vec![KeyValue {
                key: "service.name".into(),
                value: text("io.opentelemetry.collector"),
            }],
            non_identifying_attributes: (0..10)
                .map(|i| KeyValue {
                    key: format!("host.attr.{i}"),
                    value: text("value"),
                })
                .collect(),
        }),
        health: Some(ComponentHealth {
            healthy: true,
            status: "running".into(),
            ..Default::default()
        }),
        effective_config: Some(EffectiveConfig {
            config_map: Some(AgentConfigMap { config_map: files }),
        }),
        ..Default::default()
    }
}

fn heartbeat() -> AgentToServer {
    AgentToServer {
        instance_uid: vec![7; 16].into(),
        sequence_num: 43,
        capabilities: 0x3807,
        ..Default::default()
    }
}

fn frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("ws_frame_decode");
    for (name, message) in [("heartbeat", heartbeat()), ("full_status", full_status())] {
        let frame = Bytes::from(codec::ws_frame_from_encoded(&message.encode_to_vec()));
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| codec::decode_ws_agent_message(black_box(&frame)).unwrap())
        });
    }
    group.finish();

    let reply = ServerToAgent {
        instance_uid: vec![7; 16].into(),
        flags: 1,
        capabilities: 5,
        ..Default::default()
    };
    c.bench_function("ws_frame_encode/server_to_agent", |b| {
        b.iter(|| codec::encode_ws_server_message(black_box(&reply)))
    });
}

fn envelope(c: &mut Criterion) {
    let payload = full_status().encode_to_vec();
    c.bench_function("envelope_encode/full_status", |b| {
        b.iter(|| {
            AgentEnvelope {
                instance_uid: vec![7; 16].into(),
                gateway_id: "gw-1".into(),
                connection_id: 12345,
                transport: Transport::Websocket as i32,
                received_unix_nano: 1_700_000_000_000_000_000,
                remote_addr: "127.0.0.1:40000".into(),
                event: Some(Event::AgentToServer(black_box(payload.clone()).into())),
                ..Default::default()
            }
            .encode_to_vec()
        })
    });
}

fn gzip(c: &mut Criterion) {
    let yaml = config_yaml().into_bytes();
    let compressed = codec::gzip(&yaml);
    let mut group = c.benchmark_group("gzip");
    group.throughput(Throughput::Bytes(yaml.len() as u64));
    group.bench_function("compress/effective_config", |b| {
        b.iter(|| codec::gzip(black_box(&yaml)))
    });
    group.bench_function("decompress_bounded/effective_config", |b| {
        b.iter(|| codec::gunzip_bounded(black_box(&compressed), 4 << 20).unwrap())
    });
    group.finish();
}

criterion_group!(benches, frames, envelope, gzip);
criterion_main!(benches);
