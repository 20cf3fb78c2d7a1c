//! An agent as it was at a past moment, rebuilt from its history.
//!
//! Every change is one history event holding the new value of what changed (state compression
//! on the wire does not reach the history: an event carries the whole new value). So the state
//! at a moment is, for each kind of change, the newest event of that kind at or before it, and
//! the status is the newest of `connected`, `disconnected` and `offline`. Reading history newest
//! first, a rebuild can stop as soon as every kind has been found.

use std::collections::BTreeMap;

use serde_json::Value;
use time::OffsetDateTime;

use super::history::EventKind;
use super::snapshot::{AgentStatus, Health};
use crate::storage::AgentEvent;

/// The kinds of change that hold part of an agent's state (the others are its status).
pub const STATE_KINDS: [EventKind; 9] = [
    EventKind::Description,
    EventKind::Capabilities,
    EventKind::Health,
    EventKind::RemoteConfigStatus,
    EventKind::CustomCapabilities,
    EventKind::EffectiveConfig,
    EventKind::PackageStatuses,
    EventKind::AvailableComponents,
    EventKind::ConfigOffered,
];

/// One part of the state: the value the newest event of its kind carried, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub since: OffsetDateTime,
    pub value: Value,
}

/// What was known of an agent at `at`.
#[derive(Debug, Clone, PartialEq)]
pub struct PastState {
    pub at: OffsetDateTime,
    /// `None` when no connection event precedes `at` in what was read.
    pub status: Option<AgentStatus>,
    pub status_since: Option<OffsetDateTime>,
    /// The payload of the `connected` event the agent was online by (transport, gateway, address).
    pub connection: Option<Value>,
    /// By kind ([`EventKind::as_str`]).
    pub parts: BTreeMap<&'static str, Part>,
    /// Events read, including those after `at`.
    pub events_read: usize,
}

impl PastState {
    pub fn part(&self, kind: EventKind) -> Option<&Part> {
        self.parts.get(kind.as_str())
    }

    /// The health the agent reported last before `at`.
    pub fn health(&self) -> Option<Health> {
        self.part(EventKind::Health)
            .and_then(|part| serde_json::from_value(part.value.clone()).ok())
    }
}

/// A rebuild in progress: feed it history newest first until it is [`Rebuild::done`].
#[derive(Debug)]
pub struct Rebuild {
    state: PastState,
    /// The status is settled, but a `connected` event may still tell the connection.
    status_settled: bool,
}

impl Rebuild {
    pub fn new(at: OffsetDateTime) -> Rebuild {
        Rebuild {
            state: PastState {
                at,
                status: None,
                status_since: None,
                connection: None,
                parts: BTreeMap::new(),
                events_read: 0,
            },
            status_settled: false,
        }
    }

    /// Takes the next older event.
    pub fn push(&mut self, event: &AgentEvent) {
        let state = &mut self.state;
        state.events_read += 1;
        if event.at > state.at {
            return;
        }
        match event.kind.as_str() {
            "connected" | "disconnected" | "offline" => {
                if !self.status_settled {
                    self.status_settled = true;
                    state.status_since = Some(event.at);
                    state.status = Some(if event.kind == "connected" {
                        AgentStatus::Online
                    } else {
                        AgentStatus::Offline
                    });
                }
                // The connection it was (or last was) online by.
                if event.kind == "connected" && state.connection.is_none() {
                    state.connection = Some(event.payload.clone());
                }
            }
            kind => {
                if let Some(kind) = STATE_KINDS.iter().find(|known| known.as_str() == kind) {
                    state.parts.entry(kind.as_str()).or_insert_with(|| Part {
                        since: event.at,
                        value: event.payload.clone(),
                    });
                }
            }
        }
    }

    /// Every part and the status are known: older events change nothing.
    pub fn done(&self) -> bool {
        self.status_settled
            && self.state.connection.is_some()
            && self.state.parts.len() == STATE_KINDS.len()
    }

    pub fn finish(self) -> PastState {
        self.state
    }
}

/// The state at `at` from history read newest first (all of it, or as much as was read).
pub fn state_at<'a>(
    events_newest_first: impl IntoIterator<Item = &'a AgentEvent>,
    at: OffsetDateTime,
) -> PastState {
    let mut rebuild = Rebuild::new(at);
    for event in events_newest_first {
        if rebuild.done() {
            break;
        }
        rebuild.push(event);
    }
    rebuild.finish()
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use uuid::Uuid;

    use super::*;

    fn at(seconds: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000 + seconds).unwrap()
    }

    fn history(uid: Uuid) -> Vec<AgentEvent> {
        let rows = [
            (
                1,
                "connected",
                json!({"transport": "websocket", "gateway_id": "gw-1"}),
            ),
            (
                1,
                "description",
                json!({"identifying_attributes": {"service.name": "a"}}),
            ),
            (1, "health", json!({"healthy": true})),
            (
                5,
                "health",
                json!({"healthy": false, "last_error": "disk full"}),
            ),
            (6, "disconnected", json!({"reason": "agent disconnect"})),
            (
                8,
                "connected",
                json!({"transport": "http", "gateway_id": "gw-2"}),
            ),
            (
                9,
                "description",
                json!({"identifying_attributes": {"service.name": "b"}}),
            ),
        ];
        let mut events: Vec<AgentEvent> = rows
            .into_iter()
            .enumerate()
            .map(|(id, (seconds, kind, payload))| AgentEvent {
                id: id as i64 + 1,
                instance_uid: uid,
                at: at(seconds),
                kind: kind.into(),
                payload,
            })
            .collect();
        events.reverse();
        events
    }

    #[test]
    fn each_part_is_the_newest_change_at_or_before_the_moment() {
        let events = history(Uuid::now_v7());
        let past = state_at(&events, at(5));
        assert_eq!(past.status, Some(AgentStatus::Online));
        assert_eq!(past.status_since, Some(at(1)));
        assert_eq!(past.connection.as_ref().unwrap()["gateway_id"], "gw-1");
        let health = past.health().unwrap();
        assert!(!health.healthy);
        assert_eq!(health.last_error, "disk full");
        let description = past.part(EventKind::Description).unwrap();
        assert_eq!(description.since, at(1));
        assert_eq!(
            description.value["identifying_attributes"]["service.name"],
            "a"
        );
        assert!(past.part(EventKind::EffectiveConfig).is_none());
    }

    #[test]
    fn status_follows_disconnects_and_returns() {
        let events = history(Uuid::now_v7());
        let gone = state_at(&events, at(7));
        assert_eq!(gone.status, Some(AgentStatus::Offline));
        assert_eq!(gone.status_since, Some(at(6)));
        // Offline, but the connection it had is still told.
        assert_eq!(gone.connection.as_ref().unwrap()["gateway_id"], "gw-1");

        let back = state_at(&events, at(100));
        assert_eq!(back.status, Some(AgentStatus::Online));
        assert_eq!(back.connection.as_ref().unwrap()["transport"], "http");
        assert_eq!(
            back.part(EventKind::Description).unwrap().value["identifying_attributes"]
                ["service.name"],
            "b"
        );
        // Health did not change since second 5: that value still holds.
        assert!(!back.health().unwrap().healthy);
    }

    #[test]
    fn before_the_first_event_nothing_is_known() {
        let events = history(Uuid::now_v7());
        let past = state_at(&events, at(0));
        assert_eq!(past.status, None);
        assert!(past.parts.is_empty());
        assert_eq!(past.events_read, events.len());
    }

    #[test]
    fn a_rebuild_stops_once_everything_is_known() {
        let uid = Uuid::now_v7();
        let mut events: Vec<AgentEvent> = STATE_KINDS
            .iter()
            .map(|kind| kind.as_str())
            .chain(["connected"])
            .enumerate()
            .map(|(id, kind)| AgentEvent {
                id: id as i64,
                instance_uid: uid,
                at: at(10),
                kind: kind.into(),
                payload: json!({}),
            })
            .collect();
        events.reverse();
        // Older history that must not be read.
        events.extend(history(uid));
        let past = state_at(&events, at(10));
        assert_eq!(past.events_read, STATE_KINDS.len() + 1);
        assert_eq!(past.status, Some(AgentStatus::Online));
    }
}
