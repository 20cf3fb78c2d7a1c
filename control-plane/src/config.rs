//! Control-plane settings; the defaults are documented in the README.

use std::time::Duration;

use ampora_shared::subjects::Subjects;

#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    pub subjects: Subjects,
    /// Ingest workers; each owns the agents of some partitions, so one agent has one writer.
    pub workers: usize,
    /// Envelopes queued per worker before the bus consumer waits.
    pub worker_queue: usize,
    /// Most messages applied in one database transaction.
    pub batch_max: usize,
    /// How often heartbeat-only liveness is written (never one UPDATE per beat).
    pub seen_flush_interval: Duration,
    /// An HTTP agent unseen this long is offline.
    pub heartbeat_timeout: Duration,
    /// How often the heartbeat timeout is checked.
    pub sweep_interval: Duration,
    /// Told to agents when the server cannot take their message now.
    pub retry_after: Duration,
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        Self {
            subjects: Subjects::default(),
            workers: 4,
            worker_queue: 1024,
            batch_max: 512,
            seen_flush_interval: Duration::from_secs(2),
            heartbeat_timeout: Duration::from_secs(90),
            sweep_interval: Duration::from_secs(5),
            retry_after: Duration::from_secs(5),
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
            ..Self::default()
        }
    }
}
