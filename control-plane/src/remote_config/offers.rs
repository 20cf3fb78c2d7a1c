//! Per agent, in the ingest worker that owns it: the assignment it resolves to and the offers
//! made to it, so that a config is offered once per connection and hash.

use std::sync::Arc;
use std::time::Duration;

use ampora_shared::pb::opamp::AgentCapabilities;
use time::OffsetDateTime;

use super::wants;
use crate::agents::snapshot::{AgentRecord, RemoteConfigStatus, Transport};
use crate::assignments::{Assignment, AssignmentSet};

/// What the ingest worker owning an agent knows of its remote config beyond its record: what
/// it should run, and what it was offered.
#[derive(Default)]
pub struct AgentOffers {
    /// The newest assignment id of the set the agent was last resolved against (`None`: not
    /// yet resolved since it entered the cache).
    resolved_against: Option<i64>,
    assignment: Option<Arc<Assignment>>,
    offered: Option<Offered>,
}

/// An offer made, and what the agent had reported when it was made: the same hash is not
/// offered again while the agent reports the same on the same connection.
struct Offered {
    hash: String,
    status: Option<RemoteConfigStatus>,
    gateway_id: String,
    connection_id: u64,
    at: OffsetDateTime,
}

impl AgentOffers {
    /// Resolves the agent against `set` unless it already was (and its description has not
    /// changed); returns whether its assignment changed.
    pub fn resolve(&mut self, set: &AssignmentSet, record: &AgentRecord, described: bool) -> bool {
        let first = self.resolved_against.is_none();
        if !first && !described && self.resolved_against == Some(set.newest_id()) {
            return false;
        }
        let resolved = set.resolve(
            &record.head.instance_uid,
            &record.head.summary.attribute_pairs(),
        );
        let id = |assignment: &Option<Arc<Assignment>>| assignment.as_ref().map(|a| a.id);
        let changed = id(&resolved) != id(&self.assignment) || (first && resolved.is_some());
        self.assignment = resolved;
        self.resolved_against = Some(set.newest_id());
        changed
    }

    /// The config to offer the agent now (`now`), if any: its assignment, when it wants it and
    /// has not been offered it already on this connection with nothing reported since. An agent
    /// that reports its remote config status and has said nothing of an offer `retry` after it
    /// was made is offered it again: the offer may have been lost on the way (the bus delivers
    /// at most once), and such an agent answers every offer it gets.
    pub fn offer(
        &mut self,
        record: &AgentRecord,
        now: OffsetDateTime,
        retry: Duration,
    ) -> Option<Arc<Assignment>> {
        let assignment = self.assignment.as_ref()?;
        let head = &record.head;
        let status = head.summary.remote_config_status.as_ref();
        if !wants(head.capabilities, status, &record.config, assignment) {
            return None;
        }
        let answers = head.capabilities & AgentCapabilities::ReportsRemoteConfig as u64 != 0;
        let repeated = self.offered.as_ref().is_some_and(|offered| {
            offered.hash == assignment.hash
                && offered.status.as_ref() == status
                && (head.transport == Transport::Http
                    || (offered.gateway_id == head.gateway_id
                        && offered.connection_id == head.connection_id))
                && !(answers && now - offered.at >= retry)
        });
        if repeated {
            return None;
        }
        self.offered = Some(Offered {
            hash: assignment.hash.clone(),
            status: status.cloned(),
            gateway_id: head.gateway_id.clone(),
            connection_id: head.connection_id,
            at: now,
        });
        Some(assignment.clone())
    }

    /// The agent is on a new connection: what it was offered on the last one counts no more.
    pub fn new_connection(&mut self) {
        self.offered = None;
    }

    /// What the agent should run, as last resolved.
    pub fn assignment(&self) -> Option<&Assignment> {
        self.assignment.as_deref()
    }
}
