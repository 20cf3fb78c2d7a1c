//! Drift: what an agent runs against what it was assigned, per agent and for the fleet.

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::ConfigTrack;
use crate::agents::snapshot::AgentRecord;
use crate::assignments::Assignment;

/// The four states, as the database derives them from an `agent_configs` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftState {
    /// The agent runs its assigned version.
    InSync,
    /// Assigned, not yet applied.
    Pending,
    /// The agent rejected its assigned version.
    Failed,
    /// The effective config changed without an assignment.
    OutOfBand,
}

impl DriftState {
    pub const ALL: [DriftState; 4] = [
        DriftState::InSync,
        DriftState::Pending,
        DriftState::Failed,
        DriftState::OutOfBand,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DriftState::InSync => "in_sync",
            DriftState::Pending => "pending",
            DriftState::Failed => "failed",
            DriftState::OutOfBand => "out_of_band",
        }
    }

    pub fn parse(text: &str) -> Option<DriftState> {
        DriftState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
    }
}

/// What is assigned to an agent: the newest assignment that names it or selects it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub assignment_id: i64,
    pub configuration_id: i64,
    pub version: i64,
    pub hash: String,
    pub at: OffsetDateTime,
}

/// One agent's config bookkeeping, as stored: the assigned side, the agent's last report, and
/// what the server keeps of its answers. The drift state follows from them, in the database.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub instance_uid: Uuid,
    pub assigned: Option<Assigned>,
    /// The agent's `last_remote_config_hash` (hex) and status, lowercase.
    pub remote_hash: Option<String>,
    pub remote_state: Option<String>,
    pub track: ConfigTrack,
}

impl AgentConfig {
    /// The row ingest writes for an agent: its report and track as `record` holds them, and
    /// `assignment` as the assigned side.
    pub fn of(record: &AgentRecord, assignment: Option<&Assignment>) -> AgentConfig {
        let status = record.head.summary.remote_config_status.as_ref();
        AgentConfig {
            instance_uid: record.head.instance_uid,
            assigned: assignment.map(|assignment| Assigned {
                assignment_id: assignment.id,
                configuration_id: assignment.configuration_id,
                version: assignment.version,
                hash: assignment.hash.clone(),
                at: assignment.created_at,
            }),
            remote_hash: status.map(|status| status.last_remote_config_hash.clone()),
            remote_state: status.map(|status| status.status.to_ascii_lowercase()),
            track: record.config.clone(),
        }
    }
}

/// An agent's drift as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Drift {
    pub state: DriftState,
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
}

impl AgentConfig {
    /// The drift in `state` (as the database derived it), with its reason and since when;
    /// `None` when nothing is assigned.
    pub fn drift(&self, state: DriftState) -> Option<Drift> {
        let assigned = self.assigned.as_ref()?;
        let track = &self.track;
        let (reason, since) = match state {
            DriftState::InSync => (
                format!(
                    "runs configuration {} version {}",
                    assigned.configuration_id, assigned.version
                ),
                track.applied.as_ref().map_or(assigned.at, |a| a.at),
            ),
            DriftState::Pending => {
                let reported = match (&self.remote_state, &self.remote_hash) {
                    (Some(state), Some(hash)) if !hash.is_empty() => {
                        format!("the agent reports {state} for {}", short(hash))
                    }
                    _ => "the agent has reported no remote config yet".to_owned(),
                };
                (
                    format!(
                        "assigned configuration {} version {} ({}); {reported}",
                        assigned.configuration_id,
                        assigned.version,
                        short(&assigned.hash)
                    ),
                    assigned.at,
                )
            }
            DriftState::Failed => match &track.rejected {
                Some(rejection) => (rejection.error.clone(), rejection.at),
                None => ("the agent rejected the config".to_owned(), assigned.at),
            },
            DriftState::OutOfBand => (
                "the effective config changed without an assignment".to_owned(),
                track.out_of_band_at.unwrap_or(assigned.at),
            ),
        };
        Some(Drift {
            state,
            reason,
            since,
        })
    }
}

/// The first 12 hex digits: enough to tell versions apart in a sentence.
fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// Agents per drift state, for the dashboard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DriftCounts {
    pub in_sync: u64,
    pub pending: u64,
    pub failed: u64,
    pub out_of_band: u64,
}

impl DriftCounts {
    pub fn add(&mut self, state: DriftState, count: u64) {
        match state {
            DriftState::InSync => self.in_sync += count,
            DriftState::Pending => self.pending += count,
            DriftState::Failed => self.failed += count,
            DriftState::OutOfBand => self.out_of_band += count,
        }
    }
}
