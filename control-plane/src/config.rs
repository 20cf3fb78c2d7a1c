//! Control-plane settings; the defaults are documented in the README.

use std::sync::Arc;
use std::time::Duration;

use ampora_shared::subjects::Subjects;

use crate::audit::retention::RetentionPolicy;
use crate::trust::TrustConfig;

const DAY: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// Unique per replica; owns partition leases under this name.
    pub replica_id: String,
    pub subjects: Subjects,
    /// Ingest workers; each owns the agents of some partitions, so one agent has one writer.
    pub workers: usize,
    /// Envelopes queued per worker before the bus consumer waits.
    pub worker_queue: usize,
    /// Most messages applied in one database transaction.
    pub batch_max: usize,
    /// Least time between the starts of one worker's rounds: under load, messages arriving
    /// meanwhile join the next round, so the database sees fewer, larger transactions. A
    /// message after a quiet spell starts its round at once.
    pub round_interval: Duration,
    /// How often heartbeat-only liveness is written (never one UPDATE per beat).
    pub seen_flush_interval: Duration,
    /// An HTTP agent unseen this long is offline.
    pub heartbeat_timeout: Duration,
    /// How often the heartbeat timeout is checked.
    pub sweep_interval: Duration,
    /// Told to agents when the server cannot take their message now.
    pub retry_after: Duration,
    /// A partition lease lasts this long unless renewed; a replica that dies without a word
    /// gives its agents up after at most this.
    pub lease_ttl: Duration,
    /// How often leases are renewed and rebalanced between replicas.
    pub lease_renew_interval: Duration,
    /// How often this replica tells gateways it is alive.
    pub heartbeat_interval: Duration,
    /// A gateway silent this long is dead: its WebSocket agents go offline.
    pub gateway_timeout: Duration,
    /// An API request (head, body and answer) not complete within this is cut.
    pub api_request_timeout: Duration,
    /// Offered to agents that report heartbeats, in OpAMP connection settings; `None` leaves
    /// them at their own (the specification's default is 30 s).
    pub agent_heartbeat_interval: Option<Duration>,
    /// How often a replica checks that it has the newest assignments, should an announcement
    /// be lost.
    pub assignment_check_interval: Duration,
    /// An agent that reports its remote config status and has not answered an offer this long
    /// after it was made is offered the config again, on its next message.
    pub offer_retry_interval: Duration,
    /// The CA, bootstrap tokens and agent certificates.
    pub trust: TrustConfig,
    /// Serves the API over HTTPS ([`crate::api::tls::server_config`]).
    pub http_tls: Option<Arc<rustls::ServerConfig>>,
    /// An operator's session lasts this long from sign-in.
    pub session_ttl: Duration,
    /// How long audit entries stay in the hot table, and in all.
    pub audit_retention: RetentionPolicy,
    /// How often each replica tries to run audit retention (one at a time does).
    pub audit_retention_interval: Duration,
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        Self {
            replica_id: uuid::Uuid::new_v4().simple().to_string(),
            subjects: Subjects::default(),
            workers: 4,
            worker_queue: 1024,
            batch_max: 2048,
            round_interval: Duration::from_millis(20),
            seen_flush_interval: Duration::from_secs(2),
            heartbeat_timeout: Duration::from_secs(90),
            sweep_interval: Duration::from_secs(5),
            retry_after: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(10),
            lease_renew_interval: Duration::from_secs(2),
            heartbeat_interval: Duration::from_secs(1),
            gateway_timeout: Duration::from_secs(10),
            api_request_timeout: Duration::from_secs(30),
            agent_heartbeat_interval: None,
            assignment_check_interval: Duration::from_secs(5),
            offer_retry_interval: Duration::from_secs(60),
            trust: TrustConfig::default(),
            http_tls: None,
            session_ttl: Duration::from_secs(12 * 3600),
            audit_retention: RetentionPolicy {
                hot: 90 * DAY,
                retain: 2555 * DAY,
            },
            audit_retention_interval: Duration::from_secs(3600),
        }
    }
}

impl ControlPlaneConfig {
    /// Short intervals so tests see timeouts quickly.
    pub fn for_test() -> Self {
        Self {
            seen_flush_interval: Duration::from_millis(100),
            heartbeat_timeout: Duration::from_secs(2),
            sweep_interval: Duration::from_millis(200),
            lease_ttl: Duration::from_secs(3),
            lease_renew_interval: Duration::from_millis(500),
            heartbeat_interval: Duration::from_millis(250),
            gateway_timeout: Duration::from_secs(2),
            assignment_check_interval: Duration::from_millis(500),
            trust: TrustConfig::for_test(),
            ..Self::default()
        }
    }
}
