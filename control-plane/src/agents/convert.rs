//! OpAMP wire values read as the JSON-friendly snapshot types.

use std::collections::BTreeMap;

use ampora_shared::pb::opamp as pb;
use ampora_shared::pb::opamp::{
    any_value, AgentConfigMap, AnyValue, ComponentDetails, ComponentHealth, KeyValue,
    PackageStatusEnum, RemoteConfigStatuses,
};
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::snapshot::{ConfigFile, Health, PackageStatus, PackageStatuses, RemoteConfigStatus};

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn any_value_to_json(value: Option<&AnyValue>) -> Value {
    match value.and_then(|v| v.value.as_ref()) {
        None => Value::Null,
        Some(any_value::Value::StringValue(s)) => Value::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::IntValue(i)) => json!(i),
        Some(any_value::Value::DoubleValue(d)) => json!(d),
        Some(any_value::Value::BytesValue(b)) => Value::String(base64(b)),
        Some(any_value::Value::ArrayValue(array)) => Value::Array(
            array
                .values
                .iter()
                .map(|v| any_value_to_json(Some(v)))
                .collect(),
        ),
        Some(any_value::Value::KvlistValue(list)) => {
            Value::Object(key_values_to_json(&list.values).into_iter().collect())
        }
    }
}

pub fn key_values_to_json(pairs: &[KeyValue]) -> BTreeMap<String, Value> {
    pairs
        .iter()
        .map(|kv| (kv.key.clone(), any_value_to_json(kv.value.as_ref())))
        .collect()
}

fn unix_nanos(nanos: u64) -> Option<OffsetDateTime> {
    (nanos != 0)
        .then(|| OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos)).ok())
        .flatten()
}

pub fn health(health: &ComponentHealth) -> Health {
    Health {
        healthy: health.healthy,
        start_time: unix_nanos(health.start_time_unix_nano),
        last_error: health.last_error.clone(),
        status: health.status.clone(),
        status_time: unix_nanos(health.status_time_unix_nano),
        components: health
            .component_health_map
            .iter()
            .map(|(name, component)| (name.clone(), self::health(component)))
            .collect(),
    }
}

pub fn remote_config_status(status: &pb::RemoteConfigStatus) -> RemoteConfigStatus {
    let name = match RemoteConfigStatuses::try_from(status.status) {
        Ok(RemoteConfigStatuses::Unset) | Err(_) => "UNSET",
        Ok(RemoteConfigStatuses::Applied) => "APPLIED",
        Ok(RemoteConfigStatuses::Applying) => "APPLYING",
        Ok(RemoteConfigStatuses::Failed) => "FAILED",
    };
    RemoteConfigStatus {
        status: name.to_owned(),
        last_remote_config_hash: hex(&status.last_remote_config_hash),
        error_message: status.error_message.clone(),
    }
}

pub fn config_map(map: Option<&AgentConfigMap>) -> BTreeMap<String, ConfigFile> {
    map.map(|m| {
        m.config_map
            .iter()
            .map(|(name, file)| {
                let config = ConfigFile {
                    content_type: file.content_type.clone(),
                    body: String::from_utf8_lossy(&file.body).into_owned(),
                };
                (name.clone(), config)
            })
            .collect()
    })
    .unwrap_or_default()
}

pub fn package_statuses(statuses: &pb::PackageStatuses) -> PackageStatuses {
    let status_name = |status: i32| match PackageStatusEnum::try_from(status) {
        Ok(PackageStatusEnum::Installed) => "Installed",
        Ok(PackageStatusEnum::InstallPending) => "InstallPending",
        Ok(PackageStatusEnum::Installing) => "Installing",
        Ok(PackageStatusEnum::InstallFailed) => "InstallFailed",
        Ok(PackageStatusEnum::Downloading) => "Downloading",
        Err(_) => "Unknown",
    };
    PackageStatuses {
        packages: statuses
            .packages
            .iter()
            .map(|(name, p)| {
                let status = PackageStatus {
                    status: status_name(p.status).to_owned(),
                    agent_has_version: p.agent_has_version.clone(),
                    agent_has_hash: hex(&p.agent_has_hash),
                    server_offered_version: p.server_offered_version.clone(),
                    server_offered_hash: hex(&p.server_offered_hash),
                    error_message: p.error_message.clone(),
                };
                (name.clone(), status)
            })
            .collect(),
        server_provided_all_packages_hash: hex(&statuses.server_provided_all_packages_hash),
        error_message: statuses.error_message.clone(),
    }
}

fn component_details(details: &ComponentDetails) -> Value {
    json!({
        "metadata": key_values_to_json(&details.metadata),
        "sub_components": details
            .sub_component_map
            .iter()
            .map(|(name, sub)| (name.clone(), component_details(sub)))
            .collect::<serde_json::Map<_, _>>(),
    })
}

pub fn available_components(components: &pb::AvailableComponents) -> Value {
    json!({
        "hash": hex(&components.hash),
        "components": components
            .components
            .iter()
            .map(|(name, details)| (name.clone(), component_details(details)))
            .collect::<serde_json::Map<_, _>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ampora_shared::pb::opamp::{ArrayValue, KeyValueList};

    fn string(s: &str) -> AnyValue {
        AnyValue {
            value: Some(any_value::Value::StringValue(s.into())),
        }
    }

    #[test]
    fn any_values_become_json() {
        let pairs = vec![
            KeyValue {
                key: "s".into(),
                value: Some(string("x")),
            },
            KeyValue {
                key: "i".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::IntValue(-3)),
                }),
            },
            KeyValue {
                key: "b".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::BoolValue(true)),
                }),
            },
            KeyValue {
                key: "bytes".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::BytesValue(b"hi!".to_vec().into())),
                }),
            },
            KeyValue {
                key: "arr".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::ArrayValue(ArrayValue {
                        values: vec![string("a")],
                    })),
                }),
            },
            KeyValue {
                key: "kv".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::KvlistValue(KeyValueList {
                        values: vec![KeyValue {
                            key: "k".into(),
                            value: Some(string("v")),
                        }],
                    })),
                }),
            },
            KeyValue {
                key: "none".into(),
                value: None,
            },
        ];
        let json = serde_json::to_value(key_values_to_json(&pairs)).unwrap();
        assert_eq!(
            json,
            json!({"s": "x", "i": -3, "b": true, "bytes": "aGkh", "arr": ["a"], "kv": {"k": "v"}, "none": null})
        );
    }

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }

    #[test]
    fn health_tree_and_times() {
        let mut map = std::collections::HashMap::new();
        map.insert(
            "receiver".to_owned(),
            ComponentHealth {
                healthy: false,
                last_error: "port busy".into(),
                ..Default::default()
            },
        );
        let converted = health(&ComponentHealth {
            healthy: true,
            start_time_unix_nano: 1_700_000_000_000_000_000,
            component_health_map: map,
            ..Default::default()
        });
        assert!(converted.healthy);
        assert_eq!(
            converted.start_time.unwrap().unix_timestamp(),
            1_700_000_000
        );
        assert_eq!(converted.status_time, None);
        assert_eq!(converted.components["receiver"].last_error, "port busy");
    }

    #[test]
    fn remote_config_status_names() {
        let status = remote_config_status(&pb::RemoteConfigStatus {
            last_remote_config_hash: vec![0xab, 0x01].into(),
            status: RemoteConfigStatuses::Failed as i32,
            error_message: "bad".into(),
        });
        assert_eq!(status.status, "FAILED");
        assert_eq!(status.last_remote_config_hash, "ab01");
    }
}
