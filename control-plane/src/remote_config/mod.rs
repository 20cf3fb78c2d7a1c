//! Remote configuration, per agent: when to offer an agent its assigned config, what the server
//! keeps of the agent's answers, and the drift that follows.
//!
//! Decisions go by hash alone, as the specification asks: an agent that reports the assigned
//! hash as its `last_remote_config_hash` has it. A hash an agent rejected is remembered with the
//! assignment it came with and not offered again until a newer assignment (opamp-spec #397: an
//! agent that falls back to its previous config reports APPLIED for that one, and a naive
//! comparison would offer the rejected config forever).

pub mod drift;
mod offers;

pub use offers::AgentOffers;

use std::collections::HashMap;

use ampora_shared::pb::opamp::{
    AgentCapabilities, AgentConfigFile, AgentConfigMap, AgentRemoteConfig,
};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::agents::convert::hex;
use crate::agents::snapshot::{ConfigFile, RemoteConfigStatus};
use crate::assignments::Assignment;

/// Status names as [`RemoteConfigStatus::status`] holds them.
pub const APPLIED: &str = "APPLIED";
pub const APPLYING: &str = "APPLYING";
pub const FAILED: &str = "FAILED";

/// What the server keeps of an agent's answers beyond its last reported status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigTrack {
    /// The last hash the agent reported APPLIED for, and since when.
    pub applied: Option<Applied>,
    /// The last hash the agent rejected.
    pub rejected: Option<Rejection>,
    /// When the effective config changed while the agent ran its assigned config unchanged.
    pub out_of_band_at: Option<OffsetDateTime>,
    /// The agent is applying a config and has not reported the effective config that follows:
    /// its next effective config is the new one, not drift.
    pub expects_effective: bool,
    /// The agent reported a new effective config since its last status change or offer: an
    /// APPLIED that follows needs no other (agents report the two in either order).
    pub effective_since_status: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub hash: String,
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub hash: String,
    /// The assignment that brought the hash (0: none this server knew of). A newer assignment of
    /// the same hash offers it again.
    pub assignment_id: i64,
    /// The agent's own words.
    pub error: String,
    pub at: OffsetDateTime,
}

/// What one message told of the agent's remote config.
pub struct Report<'a> {
    pub before: Option<&'a RemoteConfigStatus>,
    pub after: Option<&'a RemoteConfigStatus>,
    pub effective_changed: bool,
    /// The first message on a connection: an agent (re)started reports its config anew.
    pub new_connection: bool,
    pub at: OffsetDateTime,
}

impl ConfigTrack {
    /// Takes in what one message reported, given the agent's current assignment; returns whether
    /// anything kept changed.
    pub fn observe(&mut self, report: &Report<'_>, assigned: Option<&Assignment>) -> bool {
        let before = self.clone();
        let status_changed = report.before != report.after;
        if let (true, Some(status)) = (status_changed, report.after) {
            let hash = &status.last_remote_config_hash;
            match status.status.as_str() {
                APPLYING => {
                    self.out_of_band_at = None;
                    self.expects_effective = !report.effective_changed;
                }
                APPLIED if self.applied.as_ref().map(|a| &a.hash) != Some(hash) => {
                    let went_through_applying = report.before.is_some_and(|previous| {
                        previous.status == APPLYING && &previous.last_remote_config_hash == hash
                    });
                    self.applied = Some(Applied {
                        hash: hash.clone(),
                        at: report.at,
                    });
                    self.out_of_band_at = None;
                    if !went_through_applying {
                        self.expects_effective =
                            !(report.effective_changed || self.effective_since_status);
                    }
                }
                FAILED => {
                    self.rejected = Some(Rejection {
                        hash: hash.clone(),
                        assignment_id: assigned
                            .filter(|assignment| &assignment.hash == hash)
                            .map_or(0, |assignment| assignment.id),
                        error: status.error_message.clone(),
                        at: report.at,
                    });
                    self.expects_effective = false;
                }
                _ => {}
            }
            self.effective_since_status = report.effective_changed;
        } else if report.effective_changed {
            let expected = report.new_connection || self.expects_effective;
            let runs_assigned = match (assigned, report.after) {
                (Some(assignment), Some(status)) => {
                    status.status == APPLIED && status.last_remote_config_hash == assignment.hash
                }
                _ => false,
            };
            if !expected && runs_assigned && self.out_of_band_at.is_none() {
                self.out_of_band_at = Some(report.at);
            }
            self.expects_effective = false;
            self.effective_since_status = true;
        }
        *self != before
    }

    /// The agent is being offered a config: what it reports from now on answers the offer.
    /// Returns whether anything kept changed.
    pub fn offered(&mut self) -> bool {
        std::mem::replace(&mut self.effective_since_status, false)
    }

    /// Whether `assignment` is a hash the agent rejected under it (or a newer assignment).
    pub fn rejected(&self, assignment: &Assignment) -> bool {
        self.rejected.as_ref().is_some_and(|rejection| {
            rejection.hash == assignment.hash && rejection.assignment_id >= assignment.id
        })
    }
}

/// Whether an agent with these capabilities and this status should be offered `assignment`:
/// it accepts remote config, does not have it, and has not rejected it.
pub fn wants(
    capabilities: u64,
    status: Option<&RemoteConfigStatus>,
    track: &ConfigTrack,
    assignment: &Assignment,
) -> bool {
    let accepts = capabilities & AgentCapabilities::AcceptsRemoteConfig as u64 != 0;
    let has_it = status.is_some_and(|status| status.last_remote_config_hash == assignment.hash);
    accepts && !has_it && !track.rejected(assignment)
}

/// What an agent is sent for `assignment`: the version's bytes as the one unnamed YAML file,
/// and their hash.
pub fn offer(assignment: &Assignment) -> AgentRemoteConfig {
    let file = AgentConfigFile {
        body: Bytes::copy_from_slice(assignment.yaml.as_bytes()),
        content_type: "text/yaml".to_owned(),
    };
    AgentRemoteConfig {
        config: Some(AgentConfigMap {
            config_map: HashMap::from([(String::new(), file)]),
        }),
        config_hash: Bytes::from(hash_bytes(&assignment.hash)),
    }
}

/// The bytes of a lowercase hex hash (a published version's, always well-formed).
fn hash_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// SHA-256 of `bytes` in lowercase hex: a published version's hash.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The hash of an effective config as the agent reported it: of the one file's body, or, for
/// several files, of each name and body in name order.
pub fn effective_hash<'a>(
    files: impl IntoIterator<Item = (&'a String, &'a ConfigFile)>,
) -> Option<String> {
    let files: Vec<(&String, &ConfigFile)> = files.into_iter().collect();
    match files.as_slice() {
        [] => None,
        [(_, file)] => Some(sha256_hex(file.body.as_bytes())),
        several => {
            let mut hasher = Sha256::new();
            for (name, file) in several {
                hasher.update(name.as_bytes());
                hasher.update([0]);
                hasher.update(file.body.as_bytes());
                hasher.update([0]);
            }
            Some(hex(&hasher.finalize()))
        }
    }
}

#[cfg(test)]
mod tests;
