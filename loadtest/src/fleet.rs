//! The `agents` command's settings, shared by the coordinator (which splits the fleet) and its
//! worker processes (which each run a share of it).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(clap::Args, Debug, Clone, Serialize, Deserialize)]
pub struct FleetArgs {
    /// Where agents connect: ws://, wss://, http:// or https:// URLs, comma-separated. Agent i
    /// starts on URL i mod n and moves to the next one whenever a connection attempt fails.
    #[arg(long = "url", required = true, value_delimiter = ',')]
    pub urls: Vec<String>,
    /// Where an agent goes when its URL fails: the agent on `--url` k moves to standby k mod m
    /// (and back). Without standbys it moves to the next `--url`.
    #[arg(long = "standby-url", value_delimiter = ',')]
    pub standby_urls: Vec<String>,
    /// How many agents to simulate.
    #[arg(long, default_value_t = 1000)]
    pub agents: u64,
    /// New agents per second, over the whole fleet.
    #[arg(long, default_value_t = 1000.0)]
    pub ramp: f64,
    /// Loopback source addresses to connect from (list or range 127.0.1.1-127.0.1.40); each
    /// has its own ~30k ephemeral ports.
    #[arg(long, default_value = "127.0.0.1")]
    pub sources: String,
    /// Worker processes; 0: as many as `--agents-per-worker` needs.
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Agents per worker process (each holds one socket per agent, and a process may open at
    /// most 20,000 files here).
    #[arg(long, default_value_t = 19_000)]
    pub agents_per_worker: u64,
    /// Interval between an idle agent's heartbeats (WebSocket) or polls (HTTP).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    #[serde(with = "millis")]
    pub heartbeat: Duration,
    /// Health changes per second over the whole fleet (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub status_rate: f64,
    /// Share of offered remote configs the agents report FAILED (the rest APPLIED).
    #[arg(long, default_value_t = 0.0)]
    pub failure_ratio: f64,
    /// Bytes of effective config (YAML) each agent reports from its first message on, as
    /// collectors do (0: none until a config is offered).
    #[arg(long, default_value_t = 0)]
    pub effective_config_bytes: usize,
    /// Upper bound of the random pause before reconnecting.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    #[serde(with = "millis")]
    pub reconnect_jitter: Duration,
    /// CA certificate (PEM) that signed the server's certificate; needed for wss:// and https://.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mTLS.
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Name the server certificate is checked against (default: the URL's host).
    #[arg(long)]
    pub server_name: Option<String>,
    /// Every TLS handshake is a full one (no session resumption).
    #[arg(long)]
    pub no_resume: bool,
    /// Largest ServerToAgent accepted.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_message_size: usize,
    /// Value of the agents' `loadtest.fleet` attribute.
    #[arg(long, default_value = "loadtest")]
    pub fleet: String,
}

/// Durations cross the process boundary as milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(value.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(deserializer)?))
    }
}

/// One worker's share, sent to it as a JSON line on its standard input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerPlan {
    pub fleet: FleetArgs,
    pub index: usize,
    pub agents: u64,
    pub ramp: f64,
    pub sources: String,
}
