//! What the control-plane knows about one agent, in the shape it is stored and served.
//!
//! The snapshot is split in two so fleet listings stay cheap: [`AgentHead`] (identity, status,
//! attributes, health, config status — everything a list shows) and [`AgentDetails`] (effective
//! config, package statuses, components — possibly large, stored gzip'd above a threshold).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

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

/// Attribute values as JSON: strings, numbers, booleans, arrays and objects as OpAMP's AnyValue
/// carries them; bytes as base64 text.
pub type Attributes = BTreeMap<String, serde_json::Value>;

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
}
