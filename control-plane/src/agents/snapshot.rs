//! What the control-plane knows about one agent, in the shape it is stored and served.
//!
//! The snapshot is split in two so fleet listings stay cheap: [`AgentHead`] (identity, status,
//! attributes, health, config status — everything a list shows) and [`AgentDetails`] (effective
//! config, package statuses, components — possibly large, stored gzip'd above a threshold).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::remote_config::ConfigTrack;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    Online,
    Offline,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Online => "online",
            AgentStatus::Offline => "offline",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "online" => Some(AgentStatus::Online),
            "offline" => Some(AgentStatus::Offline),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Websocket,
    Http,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Websocket => "websocket",
            Transport::Http => "http",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "websocket" => Some(Transport::Websocket),
            "http" => Some(Transport::Http),
            _ => None,
        }
    }
}

/// An agent's attributes as one JSON object: values as OpAMP's AnyValue carries them (strings,
/// numbers, booleans, arrays, objects; bytes as base64 text), keys in order.
///
/// Held as that object's text, as it is written and compared. Attributes change only with the
/// agent's description, while the summary holding them is written again with every change of
/// health or config status; and a fleet's worth of them stays in memory, where the text takes a
/// fraction of the room of a map.
#[derive(Clone)]
pub struct Attributes(Box<RawValue>);

impl Attributes {
    /// The attributes as a map, parsed from the text.
    pub fn to_map(&self) -> BTreeMap<String, serde_json::Value> {
        serde_json::from_str(self.0.get()).expect("attributes are a JSON object")
    }
}

impl Default for Attributes {
    fn default() -> Attributes {
        BTreeMap::new().into()
    }
}

impl From<BTreeMap<String, serde_json::Value>> for Attributes {
    fn from(values: BTreeMap<String, serde_json::Value>) -> Attributes {
        Attributes(serde_json::value::to_raw_value(&values).expect("attributes serialize"))
    }
}

impl FromIterator<(String, serde_json::Value)> for Attributes {
    fn from_iter<I: IntoIterator<Item = (String, serde_json::Value)>>(pairs: I) -> Attributes {
        BTreeMap::from_iter(pairs).into()
    }
}

/// The text is always serde_json's of an ordered map, so equal attributes have equal text.
impl PartialEq for Attributes {
    fn eq(&self, other: &Attributes) -> bool {
        self.0.get() == other.0.get()
    }
}

impl fmt::Debug for Attributes {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.0.get())
    }
}

impl Serialize for Attributes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// Read as a map and written again, so that stored text of any layout compares as it should.
impl<'de> Deserialize<'de> for Attributes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Attributes, D::Error> {
        BTreeMap::deserialize(deserializer).map(Attributes::from)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub healthy: bool,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub start_time: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_error: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub status_time: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub components: BTreeMap<String, Health>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteConfigStatus {
    /// `UNSET`, `APPLIED`, `APPLYING` or `FAILED`, as the specification names them.
    pub status: String,
    /// Hex of the hash of the config the agent last received.
    #[serde(default)]
    pub last_remote_config_hash: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error_message: String,
}

/// The part of an agent every fleet listing shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct AgentSummary {
    #[serde(default)]
    pub identifying_attributes: Attributes,
    #[serde(default)]
    pub non_identifying_attributes: Attributes,
    #[serde(default)]
    pub health: Option<Health>,
    #[serde(default)]
    pub remote_config_status: Option<RemoteConfigStatus>,
    #[serde(default)]
    pub custom_capabilities: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFile {
    #[serde(default)]
    pub content_type: String,
    /// The file as text (invalid UTF-8 replaced, as configs are text by nature).
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageStatus {
    pub status: String,
    #[serde(default)]
    pub agent_has_version: String,
    #[serde(default)]
    pub agent_has_hash: String,
    #[serde(default)]
    pub server_offered_version: String,
    #[serde(default)]
    pub server_offered_hash: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error_message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PackageStatuses {
    #[serde(default)]
    pub packages: BTreeMap<String, PackageStatus>,
    #[serde(default)]
    pub server_provided_all_packages_hash: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error_message: String,
}

/// The possibly large part of an agent, read only when one agent is asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct AgentDetails {
    /// Config file name → file, as the agent reports it runs.
    #[serde(default)]
    pub effective_config: Option<BTreeMap<String, ConfigFile>>,
    #[serde(default)]
    pub package_statuses: Option<PackageStatuses>,
    /// The agent's AvailableComponents as JSON (component name → metadata and sub-components).
    #[serde(default)]
    pub available_components: Option<serde_json::Value>,
}

impl AgentSummary {
    /// Every (key, value) pair of both attribute maps, sorted, without duplicates: what the
    /// `attr=key=value` filter and assignment selectors compare with. Strings are compared as
    /// they are, other values as their JSON text.
    pub fn attribute_pairs(&self) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = self
            .identifying_attributes
            .to_map()
            .into_iter()
            .chain(self.non_identifying_attributes.to_map())
            .map(|(key, value)| match value {
                serde_json::Value::String(text) => (key, text),
                other => (key, other.to_string()),
            })
            .collect();
        pairs.sort();
        pairs.dedup();
        pairs
    }
}

/// Identity, liveness and summary of one agent: a row of the fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentHead {
    pub instance_uid: Uuid,
    pub status: AgentStatus,
    pub transport: Transport,
    /// The gateway and connection that last carried the agent's messages.
    pub gateway_id: String,
    pub connection_id: u64,
    pub remote_addr: String,
    /// The last applied `sequence_num`.
    pub sequence_num: u64,
    pub capabilities: u64,
    pub first_seen: OffsetDateTime,
    pub last_seen: OffsetDateTime,
    pub summary: AgentSummary,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AgentRecord {
    pub head: AgentHead,
    pub details: AgentDetails,
    /// What the server keeps of the agent's answers to the configs it was offered.
    pub config: ConfigTrack,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn attributes_held_as_text_are_written_and_read_as_json_objects() {
        let summary = AgentSummary {
            identifying_attributes: Attributes::from_iter([
                ("service.name".into(), json!("collector")),
                ("weight".into(), json!(1.5)),
            ]),
            non_identifying_attributes: Attributes::from_iter([(
                "labels".into(),
                json!({"team": "a\"b"}),
            )]),
            custom_capabilities: vec!["io.example.x".into()],
            ..AgentSummary::default()
        };
        let written = serde_json::to_string(&summary).unwrap();
        let written: serde_json::Value = serde_json::from_str(&written).unwrap();
        assert_eq!(
            written,
            json!({
                "identifying_attributes": {"service.name": "collector", "weight": 1.5},
                "non_identifying_attributes": {"labels": {"team": "a\"b"}},
                "health": null,
                "remote_config_status": null,
                "custom_capabilities": ["io.example.x"],
            })
        );
        let read: AgentSummary = serde_json::from_value(written).unwrap();
        let spaced: Attributes =
            serde_json::from_str(r#"{ "weight": 1.5, "service.name": "collector" }"#).unwrap();
        assert_eq!(spaced, summary.identifying_attributes);
        assert_eq!(read, summary);
        assert_eq!(
            read.identifying_attributes.to_map()["service.name"],
            "collector"
        );
    }

    #[test]
    fn attribute_pairs_are_text_and_unique() {
        let summary = AgentSummary {
            identifying_attributes: Attributes::from_iter([
                ("service.name".into(), json!("a")),
                ("n".into(), json!(3)),
            ]),
            non_identifying_attributes: Attributes::from_iter([
                ("service.name".into(), json!("a")),
                ("ok".into(), json!(true)),
            ]),
            ..AgentSummary::default()
        };
        assert_eq!(
            summary.attribute_pairs(),
            [
                ("n".into(), "3".into()),
                ("ok".into(), "true".into()),
                ("service.name".into(), "a".into())
            ]
        );
    }
}
