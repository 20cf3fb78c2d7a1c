use std::sync::Arc;

use time::{Duration, OffsetDateTime};

use super::*;
use crate::assignments::{Assignment, Target};

fn assignment(id: i64, hash: &str) -> Assignment {
    Assignment {
        id,
        configuration_id: 1,
        version: id,
        hash: hash.to_owned(),
        yaml: Arc::from("receivers: {}"),
        target: Target::Agent(uuid::Uuid::from_u128(1)),
        created_at: OffsetDateTime::UNIX_EPOCH,
    }
}

fn status(state: &str, hash: &str, error: &str) -> RemoteConfigStatus {
    RemoteConfigStatus {
        status: state.to_owned(),
        last_remote_config_hash: hash.to_owned(),
        error_message: error.to_owned(),
    }
}

/// Feeds the track one message: a new status (or none), and whether the effective config
/// changed with it.
struct Agent {
    track: ConfigTrack,
    status: Option<RemoteConfigStatus>,
    at: OffsetDateTime,
}

impl Agent {
    fn new() -> Agent {
        Agent {
            track: ConfigTrack::default(),
            status: None,
            at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn hear(
        &mut self,
        new_status: Option<RemoteConfigStatus>,
        effective_changed: bool,
        assigned: &Assignment,
    ) {
        self.at += Duration::seconds(1);
        let before = self.status.clone();
        if let Some(status) = new_status {
            self.status = Some(status);
        }
        let report = Report {
            before: before.as_ref(),
            after: self.status.as_ref(),
            effective_changed,
            new_connection: false,
            at: self.at,
        };
        self.track.observe(&report, Some(assigned));
    }

    fn wants(&self, assigned: &Assignment) -> bool {
        let accepts = AgentCapabilities::AcceptsRemoteConfig as u64;
        wants(accepts, self.status.as_ref(), &self.track, assigned)
    }
}

#[test]
fn an_agent_is_offered_what_it_does_not_have_and_accepts() {
    let assigned = assignment(1, "aa");
    let agent = Agent::new();
    assert!(agent.wants(&assigned));
    assert!(
        !wants(0, None, &agent.track, &assigned),
        "not AcceptsRemoteConfig"
    );
    let mut agent = Agent::new();
    agent.hear(Some(status(APPLIED, "aa", "")), true, &assigned);
    assert!(!agent.wants(&assigned), "already has it");
}

#[test]
fn a_rejected_hash_is_not_offered_again_after_the_agent_falls_back() {
    // opamp-spec #397: APPLIED(A) → FAILED(B) → APPLIED(A) must not offer B again.
    let old = assignment(1, "aa");
    let mut agent = Agent::new();
    agent.hear(Some(status(APPLIED, "aa", "")), true, &old);
    let new = assignment(2, "bb");
    assert!(agent.wants(&new));
    agent.hear(Some(status(FAILED, "bb", "bad processor")), false, &new);
    assert!(!agent.wants(&new));
    agent.hear(Some(status(APPLIED, "aa", "")), false, &new);
    assert!(!agent.wants(&new), "B stays rejected after the fallback");
    let rejection = agent.track.rejected.as_ref().unwrap();
    assert_eq!(
        (rejection.hash.as_str(), rejection.assignment_id),
        ("bb", 2)
    );
    assert_eq!(rejection.error, "bad processor");
    assert!(
        agent.wants(&assignment(3, "bb")),
        "assigning it again offers it again"
    );
}

#[test]
fn the_effective_config_that_comes_with_an_apply_is_not_drift() {
    let assigned = assignment(1, "aa");
    let mut agent = Agent::new();
    // The supervisor's order: APPLYING, the new effective config, then APPLIED alone.
    agent.hear(Some(status(APPLYING, "aa", "")), false, &assigned);
    agent.hear(None, true, &assigned);
    agent.hear(Some(status(APPLIED, "aa", "")), false, &assigned);
    assert_eq!(agent.track.out_of_band_at, None);
    assert_eq!(agent.track.applied.as_ref().unwrap().hash, "aa");
    // Then an edit nobody assigned.
    agent.hear(None, true, &assigned);
    assert_eq!(agent.track.out_of_band_at, Some(agent.at));

    // APPLIED first, its effective config in a later message: still no drift.
    let mut agent = Agent::new();
    agent.hear(Some(status(APPLIED, "aa", "")), false, &assigned);
    agent.hear(None, true, &assigned);
    assert_eq!(agent.track.out_of_band_at, None);
    agent.hear(None, true, &assigned);
    assert!(agent.track.out_of_band_at.is_some());

    // A new apply clears it.
    agent.hear(
        Some(status(APPLYING, "cc", "")),
        false,
        &assignment(2, "cc"),
    );
    assert_eq!(agent.track.out_of_band_at, None);
}

#[test]
fn effective_config_changes_on_a_new_connection_or_while_pending_are_not_drift() {
    let assigned = assignment(1, "aa");
    let mut agent = Agent::new();
    agent.hear(Some(status(APPLIED, "aa", "")), true, &assigned);
    let report = Report {
        before: agent.status.as_ref(),
        after: agent.status.as_ref(),
        effective_changed: true,
        new_connection: true,
        at: agent.at,
    };
    assert!(!agent.track.observe(&report, Some(&assigned)));
    let newer = assignment(2, "bb");
    agent.hear(None, true, &newer);
    assert_eq!(
        agent.track.out_of_band_at, None,
        "the agent does not run its assignment yet"
    );
}

#[test]
fn offers_carry_the_bytes_and_the_hash() {
    let yaml = "receivers: {}\n";
    let hash = sha256_hex(yaml.as_bytes());
    let mut assigned = assignment(1, &hash);
    assigned.yaml = Arc::from(yaml);
    let offer = offer(&assigned);
    assert_eq!(offer.config_hash.len(), 32);
    assert_eq!(hex(&offer.config_hash), hash);
    let file = &offer.config.unwrap().config_map[""];
    assert_eq!(file.body.as_ref(), yaml.as_bytes());
    assert_eq!(file.content_type, "text/yaml");
}

#[test]
fn an_effective_config_hashes_like_a_published_one() {
    let file = |body: &str| ConfigFile {
        content_type: String::new(),
        body: body.to_owned(),
    };
    let one = [("".to_owned(), file("a: 1\n"))];
    assert_eq!(
        effective_hash(one.iter().map(|(name, file)| (name, file))),
        Some(sha256_hex(b"a: 1\n"))
    );
    let two = [("a".to_owned(), file("x")), ("b".to_owned(), file("y"))];
    let hashed = effective_hash(two.iter().map(|(name, file)| (name, file))).unwrap();
    assert_eq!(hashed.len(), 64);
    assert_ne!(hashed, sha256_hex(b"xy"));
    assert_eq!(effective_hash(std::iter::empty()), None);
}

#[test]
fn an_effective_config_reported_before_applied_is_the_apply_s() {
    // The opamp-go agent's order: the new effective config, then APPLIED.
    let assigned = assignment(1, "aa");
    let mut agent = Agent::new();
    agent.hear(None, true, &assigned);
    agent.hear(Some(status(APPLIED, "aa", "")), false, &assigned);
    assert!(!agent.track.expects_effective);
    agent.hear(None, true, &assigned);
    assert_eq!(
        agent.track.out_of_band_at,
        Some(agent.at),
        "the next edit is drift"
    );
}

#[test]
fn an_edit_before_an_offer_does_not_excuse_one_after_it() {
    let first = assignment(1, "aa");
    let mut agent = Agent::new();
    agent.hear(Some(status(APPLIED, "aa", "")), true, &first);
    agent.hear(None, true, &first);
    assert!(agent.track.out_of_band_at.is_some());
    // A new version is offered; the agent reports APPLIED before its new effective config.
    let second = assignment(2, "bb");
    assert!(agent.track.offered());
    agent.hear(Some(status(APPLIED, "bb", "")), false, &second);
    assert_eq!(agent.track.out_of_band_at, None);
    agent.hear(None, true, &second);
    assert_eq!(agent.track.out_of_band_at, None, "the apply's own config");
    agent.hear(None, true, &second);
    assert!(agent.track.out_of_band_at.is_some());
}
