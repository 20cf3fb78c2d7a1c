//! Capability bitfields as the names the specification gives them.

use ampora_shared::pb::opamp::{AgentCapabilities, ServerCapabilities};

const AGENT_CAPABILITIES: &[(AgentCapabilities, &str)] = &[
    (AgentCapabilities::ReportsStatus, "ReportsStatus"),
    (
        AgentCapabilities::AcceptsRemoteConfig,
        "AcceptsRemoteConfig",
    ),
    (
        AgentCapabilities::ReportsEffectiveConfig,
        "ReportsEffectiveConfig",
    ),
    (AgentCapabilities::AcceptsPackages, "AcceptsPackages"),
    (
        AgentCapabilities::ReportsPackageStatuses,
        "ReportsPackageStatuses",
    ),
    (AgentCapabilities::ReportsOwnTraces, "ReportsOwnTraces"),
    (AgentCapabilities::ReportsOwnMetrics, "ReportsOwnMetrics"),
    (AgentCapabilities::ReportsOwnLogs, "ReportsOwnLogs"),
    (
        AgentCapabilities::AcceptsOpAmpConnectionSettings,
        "AcceptsOpAMPConnectionSettings",
    ),
    (
        AgentCapabilities::AcceptsOtherConnectionSettings,
        "AcceptsOtherConnectionSettings",
    ),
    (
        AgentCapabilities::AcceptsRestartCommand,
        "AcceptsRestartCommand",
    ),
    (AgentCapabilities::ReportsHealth, "ReportsHealth"),
    (
        AgentCapabilities::ReportsRemoteConfig,
        "ReportsRemoteConfig",
    ),
    (AgentCapabilities::ReportsHeartbeat, "ReportsHeartbeat"),
    (
        AgentCapabilities::ReportsAvailableComponents,
        "ReportsAvailableComponents",
    ),
    (
        AgentCapabilities::ReportsConnectionSettingsStatus,
        "ReportsConnectionSettingsStatus",
    ),
];

/// Names of the bits set in an agent's capabilities; bits the specification does not define
/// are ignored (the specification says agents must leave them unset).
pub fn agent_capability_names(bits: u64) -> Vec<&'static str> {
    AGENT_CAPABILITIES
        .iter()
        .filter(|(capability, _)| bits & (*capability as u64) != 0)
        .map(|(_, name)| *name)
        .collect()
}

/// What this server does: accept status and effective config. Claims nothing it does not do.
pub const SERVER_CAPABILITIES: u64 =
    ServerCapabilities::AcceptsStatus as u64 | ServerCapabilities::AcceptsEffectiveConfig as u64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_every_set_bit_in_order() {
        let bits = AgentCapabilities::ReportsStatus as u64
            | AgentCapabilities::ReportsHealth as u64
            | AgentCapabilities::AcceptsOpAmpConnectionSettings as u64;
        assert_eq!(
            agent_capability_names(bits),
            [
                "ReportsStatus",
                "AcceptsOpAMPConnectionSettings",
                "ReportsHealth"
            ]
        );
    }

    #[test]
    fn ignores_undefined_bits() {
        assert_eq!(agent_capability_names(1 << 40 | 1), ["ReportsStatus"]);
        assert!(agent_capability_names(0).is_empty());
    }

    #[test]
    fn knows_all_sixteen_defined_bits() {
        assert_eq!(agent_capability_names(0xFFFF).len(), 16);
    }
}
