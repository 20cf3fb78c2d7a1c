//! Capability bitfields: the names the specification gives them, and what a full state report
//! carries for them.

use ampora_shared::pb::opamp::{AgentCapabilities, AgentToServer, ServerCapabilities};

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

/// Whether a message carries one particular sub-message.
type Carries = fn(&AgentToServer) -> bool;

/// The sub-messages an agent may leave out while they are unchanged (the specification's
/// "agent status compression"), each with the capability that says the agent reports it.
/// Custom capabilities have no bit, so nothing says an agent has any to report.
const REPORTED_STATE: &[(AgentCapabilities, Carries)] = &[
    (AgentCapabilities::ReportsStatus, |m| {
        m.agent_description.is_some()
    }),
    (AgentCapabilities::ReportsHealth, |m| m.health.is_some()),
    (AgentCapabilities::ReportsEffectiveConfig, |m| {
        m.effective_config.is_some()
    }),
    (AgentCapabilities::ReportsRemoteConfig, |m| {
        m.remote_config_status.is_some()
    }),
    (AgentCapabilities::ReportsPackageStatuses, |m| {
        m.package_statuses.is_some()
    }),
    (AgentCapabilities::ReportsAvailableComponents, |m| {
        m.available_components.is_some()
    }),
    (AgentCapabilities::ReportsConnectionSettingsStatus, |m| {
        m.connection_settings_status.is_some()
    }),
];

/// Whether `message` carries every sub-message its capabilities say the agent reports: a full
/// state report, after which there is nothing to ask for.
pub fn is_full_state_report(message: &AgentToServer) -> bool {
    REPORTED_STATE.iter().all(|(capability, carries)| {
        message.capabilities & (*capability as u64) == 0 || carries(message)
    })
}

/// What this server does: accept status and effective config, offer connection settings (its
/// heartbeat interval, certificates) and accept certificate requests. Claims nothing it does not
/// do.
pub const SERVER_CAPABILITIES: u64 = ServerCapabilities::AcceptsStatus as u64
    | ServerCapabilities::AcceptsEffectiveConfig as u64
    | ServerCapabilities::OffersConnectionSettings as u64
    | ServerCapabilities::AcceptsConnectionSettingsRequest as u64;

#[cfg(test)]
mod tests {
    use super::*;
    use ampora_shared::pb::opamp::{
        AgentDescription, AvailableComponents, ComponentHealth, ConnectionSettingsStatus,
        EffectiveConfig, PackageStatuses, RemoteConfigStatus,
    };

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

    fn report(capabilities: u64) -> AgentToServer {
        AgentToServer {
            capabilities: capabilities | AgentCapabilities::ReportsStatus as u64,
            agent_description: Some(AgentDescription::default()),
            ..Default::default()
        }
    }

    #[test]
    fn a_report_is_full_when_it_carries_what_each_capability_promises() {
        type Fill = fn(&mut AgentToServer);
        let cases: [(AgentCapabilities, Fill); 7] = [
            (AgentCapabilities::ReportsStatus, |m| {
                m.agent_description = Some(AgentDescription::default())
            }),
            (AgentCapabilities::ReportsHealth, |m| {
                m.health = Some(ComponentHealth::default())
            }),
            (AgentCapabilities::ReportsEffectiveConfig, |m| {
                m.effective_config = Some(EffectiveConfig::default())
            }),
            (AgentCapabilities::ReportsRemoteConfig, |m| {
                m.remote_config_status = Some(RemoteConfigStatus::default())
            }),
            (AgentCapabilities::ReportsPackageStatuses, |m| {
                m.package_statuses = Some(PackageStatuses::default())
            }),
            (AgentCapabilities::ReportsAvailableComponents, |m| {
                // The hash alone is the report; the components come when asked for.
                m.available_components = Some(AvailableComponents {
                    hash: vec![1].into(),
                    ..Default::default()
                })
            }),
            (AgentCapabilities::ReportsConnectionSettingsStatus, |m| {
                m.connection_settings_status = Some(ConnectionSettingsStatus::default())
            }),
        ];
        for (capability, fill) in cases {
            let mut message = AgentToServer {
                capabilities: capability as u64,
                ..Default::default()
            };
            assert!(!is_full_state_report(&message), "{capability:?} unreported");
            fill(&mut message);
            assert!(is_full_state_report(&message), "{capability:?} reported");
        }
    }

    #[test]
    fn a_report_is_full_when_it_carries_everything_at_once() {
        let mut message = report(
            AgentCapabilities::ReportsHealth as u64
                | AgentCapabilities::ReportsEffectiveConfig as u64
                | AgentCapabilities::AcceptsRemoteConfig as u64,
        );
        message.health = Some(ComponentHealth::default());
        assert!(!is_full_state_report(&message));
        message.effective_config = Some(EffectiveConfig::default());
        assert!(is_full_state_report(&message));
        // Without the description, no capability makes up for it.
        message.agent_description = None;
        assert!(!is_full_state_report(&message));
    }

    #[test]
    fn capabilities_that_report_nothing_need_nothing() {
        let message = report(
            AgentCapabilities::AcceptsRemoteConfig as u64
                | AgentCapabilities::AcceptsPackages as u64
                | AgentCapabilities::ReportsOwnMetrics as u64
                | AgentCapabilities::AcceptsRestartCommand as u64
                | AgentCapabilities::ReportsHeartbeat as u64,
        );
        assert!(is_full_state_report(&message));
    }

    #[test]
    fn knows_all_sixteen_defined_bits() {
        assert_eq!(agent_capability_names(0xFFFF).len(), 16);
    }
}
