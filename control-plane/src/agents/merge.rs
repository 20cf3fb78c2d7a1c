//! How one OpAMP message changes what we know of an agent.
//!
//! Agents compress their state: a field they leave out has not changed, so it keeps its last
//! value here. Every field that does change becomes one history event; a message that changes
//! nothing but liveness is a heartbeat and makes no event.

use ampora_shared::pb::opamp::{AgentToServer, ServerToAgentFlags};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::remote_config::ConfigTrack;

use super::capabilities::{agent_capability_names, is_full_state_report};
use super::convert;
use super::history::EventKind;
use super::snapshot::{
    AgentDetails, AgentHead, AgentRecord, AgentStatus, AgentSummary, Attributes, Transport,
};

/// Where a message came from.
#[derive(Debug, Clone)]
pub struct Origin {
    pub gateway_id: String,
    pub connection_id: u64,
    pub transport: Transport,
    pub remote_addr: String,
    pub received_at: OffsetDateTime,
}

/// A history row's payload, serialized once, when the change is applied.
pub type EventPayload = Box<RawValue>;

pub fn event_payload<T: Serialize + ?Sized>(value: &T) -> EventPayload {
    serde_json::value::to_raw_value(value).expect("event payloads serialize")
}

/// What applying a message did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// History rows: (kind, payload).
    pub events: Vec<(EventKind, EventPayload)>,
    /// The stored snapshot must be rewritten (otherwise only liveness changed).
    pub snapshot_changed: bool,
    /// Ask the agent to report everything: we missed a message, or do not know the agent and
    /// it left something out.
    pub report_full_state: bool,
    /// The agent reported a components hash we have no components for.
    pub report_available_components: bool,
    /// This message arrived on a connection the agent had not used before.
    pub new_connection: bool,
}

impl Outcome {
    /// Whether the snapshot's details changed, or only its head.
    pub fn details_changed(&self) -> bool {
        self.events.iter().any(|(kind, _)| kind.changes_details())
    }

    /// ServerToAgent flags this outcome asks for.
    pub fn flags(&self) -> u64 {
        let mut flags = 0;
        if self.report_full_state {
            flags |= ServerToAgentFlags::ReportFullState as u64;
        }
        if self.report_available_components {
            flags |= ServerToAgentFlags::ReportAvailableComponents as u64;
        }
        flags
    }
}

/// A record for an agent we have never seen; offline until its first message is applied.
pub fn new_record(instance_uid: Uuid, origin: &Origin) -> AgentRecord {
    AgentRecord {
        head: AgentHead {
            instance_uid,
            status: AgentStatus::Offline,
            transport: origin.transport,
            gateway_id: origin.gateway_id.clone(),
            connection_id: 0,
            remote_addr: origin.remote_addr.clone(),
            sequence_num: 0,
            capabilities: 0,
            first_seen: origin.received_at,
            last_seen: origin.received_at,
            summary: AgentSummary::default(),
        },
        details: AgentDetails::default(),
        config: ConfigTrack::default(),
    }
}

/// Sets `slot` to `new` and records an event when they differ.
fn update<T: PartialEq>(
    slot: &mut T,
    new: T,
    kind: EventKind,
    payload: impl FnOnce(&T) -> EventPayload,
    outcome: &mut Outcome,
) {
    if *slot != new {
        outcome.events.push((kind, payload(&new)));
        *slot = new;
    }
}

/// Applies one AgentToServer. `known` says whether `record` came from storage (or cache) rather
/// than [`new_record`].
pub fn apply_message(
    record: &mut AgentRecord,
    known: bool,
    message: &AgentToServer,
    origin: &Origin,
) -> Outcome {
    // A known agent's message must follow the last one applied; an unknown agent's must tell
    // everything its capabilities promise, as it does on its first message.
    let missing_something = if known {
        message.sequence_num != record.head.sequence_num.wrapping_add(1)
    } else {
        !is_full_state_report(message)
    };
    let mut outcome = Outcome {
        report_full_state: missing_something,
        ..Outcome::default()
    };
    let head = &mut record.head;
    let summary = &mut head.summary;
    let details = &mut record.details;

    // A polling HTTP agent uses a new "connection" per request, on any gateway: only a change of
    // transport or a return from offline counts for it.
    let moved = head.transport != origin.transport
        || (origin.transport == Transport::Websocket
            && (head.gateway_id != origin.gateway_id
                || head.connection_id != origin.connection_id));
    outcome.new_connection = head.status == AgentStatus::Offline || moved;
    if head.status == AgentStatus::Offline {
        outcome.events.push((
            EventKind::Connected,
            event_payload(&json!({"transport": origin.transport.as_str(), "gateway_id": origin.gateway_id, "remote_addr": origin.remote_addr})),
        ));
    }

    update(
        &mut head.capabilities,
        message.capabilities,
        EventKind::Capabilities,
        |bits| event_payload(&json!({"bits": bits, "names": agent_capability_names(*bits)})),
        &mut outcome,
    );
    if let Some(description) = &message.agent_description {
        let identifying = Attributes::from(convert::key_values_to_json(
            &description.identifying_attributes,
        ));
        let non_identifying = Attributes::from(convert::key_values_to_json(
            &description.non_identifying_attributes,
        ));
        if summary.identifying_attributes != identifying
            || summary.non_identifying_attributes != non_identifying
        {
            outcome.events.push((
                EventKind::Description,
                event_payload(&json!({"identifying_attributes": identifying, "non_identifying_attributes": non_identifying})),
            ));
            summary.identifying_attributes = identifying;
            summary.non_identifying_attributes = non_identifying;
        }
    }
    if let Some(health) = &message.health {
        update(
            &mut summary.health,
            Some(convert::health(health)),
            EventKind::Health,
            event_payload,
            &mut outcome,
        );
    }
    if let Some(status) = &message.remote_config_status {
        update(
            &mut summary.remote_config_status,
            Some(convert::remote_config_status(status)),
            EventKind::RemoteConfigStatus,
            event_payload,
            &mut outcome,
        );
    }
    if let Some(custom) = &message.custom_capabilities {
        update(
            &mut summary.custom_capabilities,
            custom.capabilities.clone(),
            EventKind::CustomCapabilities,
            event_payload,
            &mut outcome,
        );
    }
    if let Some(config) = &message.effective_config {
        let files = convert::config_map(config.config_map.as_ref());
        update(
            &mut details.effective_config,
            Some(files),
            EventKind::EffectiveConfig,
            |f| event_payload(&json!({"files": f})),
            &mut outcome,
        );
    }
    if let Some(packages) = &message.package_statuses {
        update(
            &mut details.package_statuses,
            Some(convert::package_statuses(packages)),
            EventKind::PackageStatuses,
            event_payload,
            &mut outcome,
        );
    }
    if let Some(components) = &message.available_components {
        if components.components.is_empty() {
            let known_hash = details
                .available_components
                .as_ref()
                .and_then(|c| c.get("hash"))
                .and_then(Value::as_str);
            outcome.report_available_components =
                known_hash != Some(convert::hex(&components.hash).as_str());
        } else {
            update(
                &mut details.available_components,
                Some(convert::available_components(components)),
                EventKind::AvailableComponents,
                |c| event_payload(c.as_ref().unwrap_or(&Value::Null)),
                &mut outcome,
            );
        }
    }

    let disconnecting = message.agent_disconnect.is_some();
    let status = if disconnecting {
        AgentStatus::Offline
    } else {
        AgentStatus::Online
    };
    if disconnecting {
        outcome.events.push((
            EventKind::Disconnected,
            event_payload(&json!({"reason": "agent disconnect"})),
        ));
    }
    outcome.snapshot_changed =
        !outcome.events.is_empty() || moved || head.status != status || !known;
    head.status = status;
    head.gateway_id.clone_from(&origin.gateway_id);
    head.connection_id = origin.connection_id;
    head.transport = origin.transport;
    head.remote_addr.clone_from(&origin.remote_addr);
    head.sequence_num = message.sequence_num;
    head.last_seen = origin.received_at;
    outcome
}

/// The transport connection that last carried the agent closed. Returns the `disconnected` event,
/// or `None` when the agent has since moved to another connection (it stays online there).
pub fn apply_connection_closed(
    record: &mut AgentRecord,
    gateway_id: &str,
    connection_id: u64,
    reason: &str,
) -> Option<EventPayload> {
    let head = &mut record.head;
    let current = head.gateway_id == gateway_id && head.connection_id == connection_id;
    if !current || head.status == AgentStatus::Offline {
        return None;
    }
    head.status = AgentStatus::Offline;
    Some(event_payload(&json!({"reason": reason})))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ampora_shared::pb::opamp::{
        any_value, AgentCapabilities, AgentConfigFile, AgentConfigMap, AgentDescription,
        AgentDisconnect, AnyValue, AvailableComponents, ComponentDetails, ComponentHealth,
        EffectiveConfig, KeyValue, PackageStatuses,
    };

    fn origin(connection_id: u64) -> Origin {
        Origin {
            gateway_id: "g1".into(),
            connection_id,
            transport: Transport::Websocket,
            remote_addr: "127.0.0.1:5000".into(),
            received_at: OffsetDateTime::now_utc(),
        }
    }

    fn full_message(seq: u64) -> AgentToServer {
        let attr = |k: &str, v: &str| KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
        };
        let mut files = std::collections::HashMap::new();
        files.insert(
            "".to_owned(),
            AgentConfigFile {
                body: "receivers: {}".into(),
                content_type: "text/yaml".into(),
            },
        );
        AgentToServer {
            instance_uid: vec![1; 16].into(),
            sequence_num: seq,
            capabilities: 0b111,
            agent_description: Some(AgentDescription {
                identifying_attributes: vec![attr("service.name", "collector")],
                non_identifying_attributes: vec![attr("os.type", "linux")],
            }),
            health: Some(ComponentHealth {
                healthy: true,
                ..Default::default()
            }),
            effective_config: Some(EffectiveConfig {
                config_map: Some(AgentConfigMap { config_map: files }),
            }),
            ..Default::default()
        }
    }

    fn heartbeat(seq: u64) -> AgentToServer {
        AgentToServer {
            instance_uid: vec![1; 16].into(),
            sequence_num: seq,
            capabilities: 0b111,
            ..Default::default()
        }
    }

    fn kinds(outcome: &Outcome) -> Vec<&'static str> {
        outcome
            .events
            .iter()
            .map(|(kind, _)| kind.as_str())
            .collect()
    }

    /// Nothing to write, tell or ask: as a heartbeat on the agent's current connection.
    fn assert_quiet(outcome: &Outcome) {
        assert_eq!(format!("{outcome:?}"), format!("{:?}", Outcome::default()));
    }

    #[test]
    fn unknown_agent_is_asked_for_full_state() {
        let uid = Uuid::now_v7();
        let mut record = new_record(uid, &origin(1));
        // It says it reports its remote config status, and does not.
        let mut first = full_message(0);
        first.capabilities |= AgentCapabilities::ReportsRemoteConfig as u64;
        let outcome = apply_message(&mut record, false, &first, &origin(1));
        assert!(outcome.report_full_state);
        assert!(outcome.snapshot_changed && outcome.new_connection);
        assert_eq!(
            kinds(&outcome),
            [
                "connected",
                "capabilities",
                "description",
                "health",
                "effective_config"
            ]
        );
        assert_eq!(record.head.status, AgentStatus::Online);
        assert_eq!(
            record.details.effective_config.as_ref().unwrap()[""].body,
            "receivers: {}"
        );
    }

    #[test]
    fn an_unknown_agent_that_reports_everything_is_not_asked_again() {
        let mut record = new_record(Uuid::now_v7(), &origin(1));
        let outcome = apply_message(&mut record, false, &full_message(5), &origin(1));
        assert!(!outcome.report_full_state);
        assert_eq!(outcome.flags(), 0);
        assert!(outcome.new_connection);
        // Its next message continues from the first.
        assert_eq!(
            apply_message(&mut record, true, &heartbeat(6), &origin(1)).flags(),
            0
        );
        // A gap still asks, complete or not.
        assert!(apply_message(&mut record, true, &full_message(9), &origin(1)).report_full_state);
    }

    #[test]
    fn omitted_fields_keep_their_values_and_heartbeats_make_no_events() {
        let mut record = new_record(Uuid::now_v7(), &origin(1));
        apply_message(&mut record, false, &full_message(0), &origin(1));
        let outcome = apply_message(&mut record, true, &heartbeat(1), &origin(1));
        assert_quiet(&outcome);
        assert_eq!(
            record.head.summary.identifying_attributes.to_map()["service.name"],
            "collector"
        );
        assert!(record.head.summary.health.as_ref().unwrap().healthy);
        assert_eq!(record.head.sequence_num, 1);
    }

    #[test]
    fn sequence_gap_asks_for_full_state() {
        let mut record = new_record(Uuid::now_v7(), &origin(1));
        apply_message(&mut record, false, &full_message(0), &origin(1));
        assert!(apply_message(&mut record, true, &heartbeat(3), &origin(1)).report_full_state);
        assert!(!apply_message(&mut record, true, &heartbeat(4), &origin(1)).report_full_state);
        assert_eq!(
            apply_message(&mut record, true, &heartbeat(4), &origin(1)).flags(),
            ServerToAgentFlags::ReportFullState as u64
        );
    }

    #[test]
    fn a_changed_field_is_one_event() {
        let mut record = new_record(Uuid::now_v7(), &origin(1));
        apply_message(&mut record, false, &full_message(0), &origin(1));
        let mut message = heartbeat(1);
        message.health = Some(ComponentHealth {
            healthy: false,
            last_error: "boom".into(),
            ..Default::default()
        });
        let outcome = apply_message(&mut record, true, &message, &origin(1));
        assert_eq!(kinds(&outcome), ["health"]);
        assert!(outcome.snapshot_changed);
        // Reporting the same again changes nothing.
        message.sequence_num = 2;
        assert!(apply_message(&mut record, true, &message, &origin(1))
            .events
            .is_empty());
    }

    #[test]
    fn details_change_only_with_config_packages_or_components() {
        let mut record = new_record(Uuid::now_v7(), &origin(1));
        assert!(apply_message(&mut record, false, &full_message(0), &origin(1)).details_changed());

        let mut health = heartbeat(1);
        health.health = Some(ComponentHealth::default());
        let outcome = apply_message(&mut record, true, &health, &origin(1));
        assert!(outcome.snapshot_changed && !outcome.details_changed());

        let mut config = heartbeat(2);
        config.effective_config = Some(EffectiveConfig::default());
        assert!(apply_message(&mut record, true, &config, &origin(1)).details_changed());

        let mut packages = heartbeat(3);
        packages.package_statuses = Some(PackageStatuses {
            error_message: "no space left".into(),
            ..Default::default()
        });
        assert!(apply_message(&mut record, true, &packages, &origin(1)).details_changed());

        let mut components = heartbeat(4);
        components.available_components = Some(AvailableComponents {
            components: [("receivers".to_owned(), ComponentDetails::default())].into(),
            hash: vec![1].into(),
        });
        assert!(apply_message(&mut record, true, &components, &origin(1)).details_changed());
    }

    #[test]
    fn disconnect_and_close() {
        let mut record = new_record(Uuid::now_v7(), &origin(1));
        apply_message(&mut record, false, &full_message(0), &origin(1));
        let mut message = heartbeat(1);
        message.agent_disconnect = Some(AgentDisconnect {});
        let outcome = apply_message(&mut record, true, &message, &origin(1));
        assert_eq!(kinds(&outcome), ["disconnected"]);
        assert_eq!(record.head.status, AgentStatus::Offline);

        // Back on a new connection, then the old connection's close must not take it offline.
        let outcome = apply_message(&mut record, true, &heartbeat(2), &origin(2));
        assert!(outcome.new_connection);
        assert_eq!(kinds(&outcome), ["connected"]);
        assert!(apply_connection_closed(&mut record, "g1", 1, "closed").is_none());
        assert_eq!(record.head.status, AgentStatus::Online);
        assert!(apply_connection_closed(&mut record, "g1", 2, "closed").is_some());
        assert_eq!(record.head.status, AgentStatus::Offline);
    }

    #[test]
    fn http_polls_are_not_new_connections() {
        let http = |connection_id| Origin {
            transport: Transport::Http,
            ..origin(connection_id)
        };
        let mut record = new_record(Uuid::now_v7(), &http(1));
        apply_message(&mut record, false, &full_message(0), &http(1));
        let outcome = apply_message(&mut record, true, &heartbeat(1), &http(2));
        assert_quiet(&outcome);
    }
}
