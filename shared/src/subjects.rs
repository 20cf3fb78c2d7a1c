//! Bus subject names. Every deployment (and every test) has its own prefix, so several can share
//! one broker without hearing each other.
//!
//! - `{prefix}.agent.{partition}`: agent → control-plane envelopes. The partition is a hash of the
//!   instance uid, so one agent's messages always travel on one subject and keep their order there.
//!   The control-plane replica holding a partition's lease subscribes to it.
//! - `{prefix}.gateway.{gateway_id}`: control-plane → the one gateway holding a connection.
//! - `{prefix}.heartbeat.gateway` / `{prefix}.heartbeat.control-plane`: liveness, every second.
//! - `{prefix}.evictions`: control-plane → control-planes, agents changed by a sweep.
//! - `{prefix}.assignments`: control-plane → control-planes, a new assignment was made.
//! - `{prefix}.trust.state`: control-plane → gateways, the trusted CAs and revoked certificates.
//! - `{prefix}.trust.request`: gateway → control-planes, "publish the trust state now".

use uuid::Uuid;

use crate::uid;

pub const DEFAULT_PREFIX: &str = "ampora";
pub const DEFAULT_PARTITIONS: u16 = 64;

#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
    partitions: u16,
}

impl Subjects {
    pub fn new(prefix: impl Into<String>, partitions: u16) -> Self {
        Self {
            prefix: prefix.into(),
            partitions: partitions.max(1),
        }
    }

    pub fn partitions(&self) -> u16 {
        self.partitions
    }

    /// Which partition an agent's messages travel on.
    pub fn partition_of(&self, uid: &Uuid) -> u16 {
        // FNV-1a: stable across processes and releases, unlike std's randomized hasher.
        let hash = uid
            .as_bytes()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
            });
        (hash % u64::from(self.partitions)) as u16
    }

    /// A fresh instance uid (for an agent that asked for one) whose messages travel on the same
    /// partition as `uid`'s, so the agent stays with the worker, and the lease, that assigned
    /// it. One candidate in `partitions` fits, so this takes `partitions` tries on average.
    pub fn new_instance_uid_beside(&self, uid: &Uuid) -> Uuid {
        let partition = self.partition_of(uid);
        loop {
            let candidate = uid::new_instance_uid();
            if self.partition_of(&candidate) == partition {
                return candidate;
            }
        }
    }

    pub fn agent_inbound(&self, uid: &Uuid) -> String {
        format!("{}.agent.{}", self.prefix, self.partition_of(uid))
    }

    /// Matches every partition of agent traffic: tests watch what gateways relay.
    #[cfg(any(test, feature = "testing"))]
    pub fn agent_inbound_all(&self) -> String {
        format!("{}.agent.*", self.prefix)
    }

    pub fn gateway(&self, gateway_id: &str) -> String {
        format!("{}.gateway.{}", self.prefix, gateway_id)
    }

    /// One partition's agent traffic, for the control-plane replica that owns it.
    pub fn agent_partition(&self, partition: u16) -> String {
        format!("{}.agent.{}", self.prefix, partition)
    }

    pub fn gateway_heartbeat(&self) -> String {
        format!("{}.heartbeat.gateway", self.prefix)
    }

    pub fn control_plane_heartbeat(&self) -> String {
        format!("{}.heartbeat.control-plane", self.prefix)
    }

    pub fn assignments(&self) -> String {
        format!("{}.assignments", self.prefix)
    }

    pub fn evictions(&self) -> String {
        format!("{}.evictions", self.prefix)
    }

    pub fn trust_state(&self) -> String {
        format!("{}.trust.state", self.prefix)
    }

    pub fn trust_request(&self) -> String {
        format!("{}.trust.request", self.prefix)
    }
}

impl Default for Subjects {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX, DEFAULT_PARTITIONS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_agent_one_partition() {
        let subjects = Subjects::new("t", 8);
        let uid = Uuid::now_v7();
        assert_eq!(subjects.agent_inbound(&uid), subjects.agent_inbound(&uid));
        assert!(subjects.partition_of(&uid) < 8);
        assert_eq!(subjects.gateway("g1"), "t.gateway.g1");
        assert_eq!(subjects.agent_inbound_all(), "t.agent.*");
        assert_eq!(
            subjects.agent_partition(subjects.partition_of(&uid)),
            subjects.agent_inbound(&uid)
        );
    }

    #[test]
    fn a_new_uid_stays_in_its_predecessors_partition() {
        let subjects = Subjects::default();
        for _ in 0..100 {
            let old = Uuid::new_v4();
            let new = subjects.new_instance_uid_beside(&old);
            assert_ne!(new, old);
            assert_eq!(new.get_version_num(), 7);
            assert_eq!(subjects.partition_of(&new), subjects.partition_of(&old));
        }
    }

    #[test]
    fn partitions_spread() {
        let subjects = Subjects::new("t", 8);
        let used: std::collections::HashSet<_> = (0..200)
            .map(|_| subjects.partition_of(&Uuid::new_v4()))
            .collect();
        assert_eq!(used.len(), 8);
    }
}
