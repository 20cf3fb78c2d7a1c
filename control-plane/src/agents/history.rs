//! What an agent's history records: one event per change, of one of these kinds.

/// The kind of a history event. Stored (and served by the API) as [`EventKind::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Online again: a first message, or one after being offline.
    Connected,
    /// The agent said goodbye (`AgentDisconnect`), or its connection closed.
    Disconnected,
    /// A sweep found the agent silent (heartbeat timeout, lost gateway).
    Offline,
    Capabilities,
    Description,
    Health,
    RemoteConfigStatus,
    CustomCapabilities,
    EffectiveConfig,
    PackageStatuses,
    AvailableComponents,
    /// The server offered the agent a remote config (payload: hash, version, configuration_id).
    ConfigOffered,
    /// The agent was issued a client certificate (payload: fingerprint, not_after, labels).
    Enrolled,
    /// A message claiming this agent's uid came with another agent's certificate and was
    /// refused (payload: fingerprint, certificate_instance_uid, remote_addr, gateway_id).
    IdentityRefused,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Connected => "connected",
            EventKind::Disconnected => "disconnected",
            EventKind::Offline => "offline",
            EventKind::Capabilities => "capabilities",
            EventKind::Description => "description",
            EventKind::Health => "health",
            EventKind::RemoteConfigStatus => "remote_config_status",
            EventKind::CustomCapabilities => "custom_capabilities",
            EventKind::EffectiveConfig => "effective_config",
            EventKind::PackageStatuses => "package_statuses",
            EventKind::AvailableComponents => "available_components",
            EventKind::ConfigOffered => "config_offered",
            EventKind::Enrolled => "enrolled",
            EventKind::IdentityRefused => "identity_refused",
        }
    }

    /// Whether a change of this kind changes the agent's
    /// [`AgentDetails`](super::snapshot::AgentDetails), the large part of its snapshot.
    pub fn changes_details(self) -> bool {
        matches!(
            self,
            EventKind::EffectiveConfig
                | EventKind::PackageStatuses
                | EventKind::AvailableComponents
        )
    }
}
