//! What one write adds or changes, encoded once and held column by column. PostgreSQL binds
//! each column as one array (`UNNEST`), so a batch of any size is one statement with one
//! prepared plan; SQLite walks the same columns row by row.

use std::collections::{BTreeMap, HashSet};

use time::OffsetDateTime;
use uuid::Uuid;

use super::encoding;
use super::{Fence, NewEvent, SeenUpdate, WriteBatch};
use crate::agents::history::EventKind;
use crate::agents::merge::event_payload;
use crate::agents::snapshot::AgentRecord;
use crate::remote_config::drift::AgentConfig;

/// Its payload.
pub fn revived_payload() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"reason": "seen after the sweep"}))
        .expect("a literal serializes")
}

/// A [`WriteBatch`] encoded as its dialect writes it, in one transaction: agents sorted by
/// uid (one lock order for every writer), the last snapshot of an agent winning if the batch
/// holds several; liveness updates likewise.
pub struct BatchColumns<'a> {
    /// The writes happen only while these leases are held (none: unfenced).
    pub fence: Option<&'a Fence>,
    pub agents: AgentColumns,
    pub attributes: AttributeColumns,
    pub events: EventColumns,
    pub seen: SeenColumns,
    pub configs: ConfigColumns,
}

impl<'a> BatchColumns<'a> {
    pub fn new(batch: &'a WriteBatch<'_>, gzip_threshold: usize) -> BatchColumns<'a> {
        let agents: Vec<&AgentRecord> = batch
            .agents
            .iter()
            .map(|record| (record.head.instance_uid, *record))
            .collect::<BTreeMap<_, _>>()
            .into_values()
            .collect();
        let seen: Vec<&SeenUpdate> = batch
            .seen
            .iter()
            .map(|seen| (seen.instance_uid, seen))
            .collect::<BTreeMap<_, _>>()
            .into_values()
            .collect();
        BatchColumns {
            fence: batch.fence.as_ref(),
            agents: AgentColumns::new(&agents, &batch.details_current, gzip_threshold),
            attributes: AttributeColumns::new(&agents, &batch.attributes_current),
            events: EventColumns::new(&batch.events, gzip_threshold),
            seen: SeenColumns::new(&seen),
            configs: ConfigColumns::new(&batch.configs),
        }
    }
}

/// Rows of `agents`, in the order of their columns in the table.
#[derive(Debug, Default)]
pub struct AgentColumns {
    pub instance_uid: Vec<Uuid>,
    pub status: Vec<&'static str>,
    pub transport: Vec<&'static str>,
    pub gateway_id: Vec<String>,
    pub connection_id: Vec<i64>,
    pub remote_addr: Vec<String>,
    pub sequence_num: Vec<i64>,
    pub capabilities: Vec<i64>,
    pub first_seen: Vec<i64>,
    pub last_seen: Vec<i64>,
    pub summary: Vec<String>,
    /// `None`: the stored details are current and stay as they are.
    pub details: Vec<Option<Vec<u8>>>,
    pub details_encoding: Vec<Option<&'static str>>,
}

impl AgentColumns {
    /// The rows of `records`; those in `details_current` carry no details, which spares
    /// encoding (and rewriting) large details whenever only the head changed.
    pub fn new(
        records: &[&AgentRecord],
        details_current: &HashSet<Uuid>,
        gzip_threshold: usize,
    ) -> AgentColumns {
        let mut columns = AgentColumns::default();
        for record in records {
            let head = &record.head;
            let (details, details_encoding) = if details_current.contains(&head.instance_uid) {
                (None, None)
            } else {
                let (details, details_encoding) = encoding::encode(&record.details, gzip_threshold);
                (Some(details), Some(details_encoding))
            };
            columns.instance_uid.push(head.instance_uid);
            columns.status.push(head.status.as_str());
            columns.transport.push(head.transport.as_str());
            columns.gateway_id.push(head.gateway_id.clone());
            columns.connection_id.push(head.connection_id as i64);
            columns.remote_addr.push(head.remote_addr.clone());
            columns.sequence_num.push(head.sequence_num as i64);
            columns.capabilities.push(head.capabilities as i64);
            columns.first_seen.push(encoding::micros(head.first_seen));
            columns.last_seen.push(encoding::micros(head.last_seen));
            columns
                .summary
                .push(serde_json::to_string(&head.summary).expect("summary serializes"));
            columns.details.push(details);
            columns.details_encoding.push(details_encoding);
        }
        columns
    }

    pub fn len(&self) -> usize {
        self.instance_uid.len()
    }
}

/// Rows of `agent_events`, in insertion (and so id) order.
#[derive(Debug, Default)]
pub struct EventColumns {
    pub instance_uid: Vec<Uuid>,
    pub at: Vec<i64>,
    pub kind: Vec<&'static str>,
    pub payload: Vec<Vec<u8>>,
    pub payload_encoding: Vec<&'static str>,
}

impl EventColumns {
    /// An `offline` event with payload `{"reason": reason}` for each of `uids`.
    pub fn offline(
        uids: &[Uuid],
        now: OffsetDateTime,
        reason: &str,
        gzip_threshold: usize,
    ) -> EventColumns {
        let events: Vec<NewEvent> = uids
            .iter()
            .map(|uid| NewEvent {
                instance_uid: *uid,
                at: now,
                kind: EventKind::Offline.as_str(),
                payload: event_payload(&serde_json::json!({ "reason": reason })),
            })
            .collect();
        EventColumns::new(&events, gzip_threshold)
    }

    /// A `connected` event for each agent of `revived` (uid, when seen in Unix
    /// microseconds), in uid order.
    pub fn revived(revived: &[(Uuid, i64)], gzip_threshold: usize) -> EventColumns {
        let mut revived = revived.to_vec();
        revived.sort();
        let mut columns = EventColumns::default();
        for (uid, at) in revived {
            let (payload, payload_encoding) = encoding::compress(revived_payload(), gzip_threshold);
            columns.instance_uid.push(uid);
            columns.at.push(at);
            columns.kind.push(EventKind::Connected.as_str());
            columns.payload.push(payload);
            columns.payload_encoding.push(payload_encoding);
        }
        columns
    }

    pub fn new(events: &[NewEvent], gzip_threshold: usize) -> EventColumns {
        let mut columns = EventColumns::default();
        for event in events {
            let (payload, payload_encoding) =
                encoding::compress(event.payload.get().as_bytes().to_vec(), gzip_threshold);
            columns.instance_uid.push(event.instance_uid);
            columns.at.push(encoding::micros(event.at));
            columns.kind.push(event.kind);
            columns.payload.push(payload);
            columns.payload_encoding.push(payload_encoding);
        }
        columns
    }

    pub fn len(&self) -> usize {
        self.instance_uid.len()
    }
}

/// New `last_seen` and `sequence_num` of agents whose snapshot did not change.
#[derive(Debug, Default)]
pub struct SeenColumns {
    pub instance_uid: Vec<Uuid>,
    pub last_seen: Vec<i64>,
    pub sequence_num: Vec<i64>,
}

impl SeenColumns {
    pub fn new(seen: &[&SeenUpdate]) -> SeenColumns {
        let mut columns = SeenColumns::default();
        for seen in seen {
            columns.instance_uid.push(seen.instance_uid);
            columns.last_seen.push(encoding::micros(seen.last_seen));
            columns.sequence_num.push(seen.sequence_num as i64);
        }
        columns
    }

    pub fn len(&self) -> usize {
        self.instance_uid.len()
    }
}

/// The attribute rows of agents whose description changed: `agents` lose every stored row
/// and get these.
#[derive(Debug, Default)]
pub struct AttributeColumns {
    pub agents: Vec<Uuid>,
    pub instance_uid: Vec<Uuid>,
    pub key: Vec<String>,
    pub value: Vec<String>,
}

impl AttributeColumns {
    /// The rows of those `records` not in `current` (agents whose stored rows are up to date).
    pub fn new(records: &[&AgentRecord], current: &HashSet<Uuid>) -> AttributeColumns {
        let mut columns = AttributeColumns::default();
        for record in records {
            let uid = record.head.instance_uid;
            if current.contains(&uid) {
                continue;
            }
            for (key, value) in record.head.summary.attribute_pairs() {
                columns.instance_uid.push(uid);
                columns.key.push(key);
                columns.value.push(value);
            }
            columns.agents.push(uid);
        }
        columns
    }

    pub fn len(&self) -> usize {
        self.instance_uid.len()
    }
}

/// Rows of `agent_configs` as ingest writes them, by uid (the last of an agent winning).
#[derive(Debug, Default)]
pub struct ConfigColumns {
    pub instance_uid: Vec<Uuid>,
    pub assignment_id: Vec<Option<i64>>,
    pub configuration_id: Vec<Option<i64>>,
    pub config_version: Vec<Option<i64>>,
    pub assigned_hash: Vec<Option<String>>,
    pub assigned_at: Vec<Option<i64>>,
    pub remote_hash: Vec<Option<String>>,
    pub remote_state: Vec<Option<String>>,
    pub applied_hash: Vec<Option<String>>,
    pub applied_at: Vec<Option<i64>>,
    pub failed_hash: Vec<Option<String>>,
    pub failed_assignment_id: Vec<Option<i64>>,
    pub failed_error: Vec<Option<String>>,
    pub failed_at: Vec<Option<i64>>,
    pub out_of_band_at: Vec<Option<i64>>,
    pub expects_effective: Vec<bool>,
    pub effective_since_status: Vec<bool>,
}

impl ConfigColumns {
    pub fn new(configs: &[AgentConfig]) -> ConfigColumns {
        let configs: BTreeMap<Uuid, &AgentConfig> = configs
            .iter()
            .map(|config| (config.instance_uid, config))
            .collect();
        let mut columns = ConfigColumns::default();
        for (uid, config) in configs {
            let assigned = config.assigned.as_ref();
            let track = &config.track;
            columns.instance_uid.push(uid);
            columns
                .assignment_id
                .push(assigned.map(|a| a.assignment_id));
            columns
                .configuration_id
                .push(assigned.map(|a| a.configuration_id));
            columns.config_version.push(assigned.map(|a| a.version));
            columns.assigned_hash.push(assigned.map(|a| a.hash.clone()));
            columns
                .assigned_at
                .push(assigned.map(|a| encoding::micros(a.at)));
            columns.remote_hash.push(config.remote_hash.clone());
            columns.remote_state.push(config.remote_state.clone());
            columns
                .applied_hash
                .push(track.applied.as_ref().map(|a| a.hash.clone()));
            columns
                .applied_at
                .push(track.applied.as_ref().map(|a| encoding::micros(a.at)));
            let rejected = track.rejected.as_ref();
            columns.failed_hash.push(rejected.map(|r| r.hash.clone()));
            columns
                .failed_assignment_id
                .push(rejected.map(|r| r.assignment_id));
            columns.failed_error.push(rejected.map(|r| r.error.clone()));
            columns
                .failed_at
                .push(rejected.map(|r| encoding::micros(r.at)));
            columns
                .out_of_band_at
                .push(track.out_of_band_at.map(encoding::micros));
            columns.expects_effective.push(track.expects_effective);
            columns
                .effective_since_status
                .push(track.effective_since_status);
        }
        columns
    }

    pub fn len(&self) -> usize {
        self.instance_uid.len()
    }
}
