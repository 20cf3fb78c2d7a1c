//! Command line and environment. Every setting is a flag and an `AMPORA_*` variable; a file of
//! `AMPORA_*=value` lines named by `AMPORA_CONFIG` fills in what neither sets.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use ampora_gateway::{ClientAuth, ProxyProtocolFrom};
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ampora",
    version,
    about = "Ampora: an OpAMP server for fleets of telemetry agents"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    // Boxed: a role's settings are large beside an operator command's.
    #[command(flatten)]
    Role(Box<Role>),
    /// Collector configurations: `validate FILE` checks one on this machine, no server needed.
    #[command(subcommand)]
    Configs(ConfigsCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigsCommand {
    /// Validates and lints a Collector configuration file (`-` for standard input) with the
    /// built-in rules; exits 1 when a problem of error severity stands.
    Validate(ValidateArgs),
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The YAML file, or `-` for standard input.
    pub file: PathBuf,
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: OutputFormat,
}

/// How a command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Lines for people (and editors: `FILE:LINE:COLUMN: …`).
    Table,
    Json,
}

/// The processes Ampora runs as.
#[derive(Debug, Subcommand)]
pub enum Role {
    /// Everything in one process: gateway + control-plane on SQLite and an in-process bus.
    Serve(ServeArgs),
    /// A gateway: terminates agent connections and relays them over the bus.
    Gateway(GatewayArgs),
    /// A control-plane replica: agent state, persistence and the API.
    ControlPlane(ControlPlaneArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where agents connect (WebSocket and HTTP on one port).
    #[arg(long, env = "AMPORA_OPAMP_LISTEN", default_value = "127.0.0.1:4320")]
    pub opamp_listen: SocketAddr,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub gateway: GatewayOptions,
    #[command(flatten)]
    pub control_plane: ControlPlaneOptions,
    /// Messages queued per subscriber of the in-process bus before publishers wait.
    #[arg(long, env = "AMPORA_BUS_QUEUE", default_value = "4096")]
    pub bus_queue: NonZeroUsize,
}

#[derive(Debug, Args)]
pub struct GatewayArgs {
    #[arg(long, env = "AMPORA_OPAMP_LISTEN", default_value = "0.0.0.0:4320")]
    pub opamp_listen: SocketAddr,
    #[command(flatten)]
    pub gateway: GatewayOptions,
    #[command(flatten)]
    pub bus: BusArgs,
}

#[derive(Debug, Args)]
pub struct ControlPlaneArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub control_plane: ControlPlaneOptions,
    #[command(flatten)]
    pub bus: BusArgs,
}

#[derive(Debug, Args)]
pub struct HttpArgs {
    /// The operator API, health and metrics.
    #[arg(long, env = "AMPORA_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,
    /// PEM certificate chain; with --http-tls-key, the API is served over HTTPS.
    #[arg(long, env = "AMPORA_HTTP_TLS_CERT", requires = "http_tls_key")]
    pub http_tls_cert: Option<PathBuf>,
    #[arg(long, env = "AMPORA_HTTP_TLS_KEY", requires = "http_tls_cert")]
    pub http_tls_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StorageArgs {
    /// Where the embedded SQLite database lives.
    #[arg(long, env = "AMPORA_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// `postgres://…` or `sqlite:…`; default: SQLite in the data dir.
    #[arg(long, env = "AMPORA_DATABASE_URL")]
    pub database_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct BusArgs {
    /// NATS server(s) the gateways and control-planes share (comma-separated).
    #[arg(long, env = "AMPORA_NATS_URL")]
    pub nats_url: String,
    /// CA bundle (PEM) to verify NATS with; setting it requires TLS.
    #[arg(long, env = "AMPORA_NATS_CA")]
    pub nats_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for NATS servers that verify clients.
    #[arg(long, env = "AMPORA_NATS_CERT", requires = "nats_key")]
    pub nats_cert: Option<PathBuf>,
    #[arg(long, env = "AMPORA_NATS_KEY", requires = "nats_cert")]
    pub nats_key: Option<PathBuf>,
    /// A NATS `.creds` file (JWT + nkey).
    #[arg(long, env = "AMPORA_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// An nkey seed for NATS.
    #[arg(long, env = "AMPORA_NATS_NKEY", hide_env_values = true)]
    pub nats_nkey: Option<String>,
    /// Subject prefix; deployments sharing one NATS use different prefixes.
    #[arg(long, env = "AMPORA_BUS_PREFIX", default_value = "ampora")]
    pub bus_prefix: String,
    /// Messages buffered per NATS subscription; beyond it NATS drops them for a slow consumer.
    #[arg(long, env = "AMPORA_BUS_QUEUE", default_value = "65536")]
    pub bus_queue: NonZeroUsize,
}

#[derive(Debug, Args)]
pub struct GatewayOptions {
    /// Unique per gateway process; default: a random id.
    #[arg(long, env = "AMPORA_GATEWAY_ID")]
    pub gateway_id: Option<String>,
    /// PEM certificate chain; with --tls-key, agents connect over TLS.
    #[arg(long, env = "AMPORA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, env = "AMPORA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// TLS session ticket keys shared by all gateways (64 hex characters per line, the first
    /// encrypts), so agents resume their sessions on any gateway; re-read when it changes.
    /// Default: a random key per process.
    #[arg(long, env = "AMPORA_TLS_TICKET_KEY_FILE", requires = "tls_cert")]
    pub tls_ticket_key_file: Option<PathBuf>,
    /// Client certificates from agents, verified against Ampora's CA: `none`, `optional` (an
    /// agent without one may only enrol, with a Bearer token) or `required`. Default: none.
    #[arg(long, env = "AMPORA_TLS_CLIENT_AUTH", requires = "tls_cert")]
    pub tls_client_auth: Option<ClientAuth>,
    /// Load balancers (addresses or CIDRs, comma-separated) whose PROXY protocol v2 header
    /// names the agent's address; from anyone else no header is read.
    #[arg(long, env = "AMPORA_PROXY_PROTOCOL_FROM")]
    pub proxy_protocol_from: Option<ProxyProtocolFrom>,
    /// Serve agents on a non-loopback address without TLS, or without a token or certificate
    /// on every connection. Announced loudly at start; never for production.
    #[arg(long, env = "AMPORA_INSECURE")]
    pub insecure: bool,
    /// Largest OpAMP message in bytes (after decompression).
    #[arg(long, env = "AMPORA_MAX_MESSAGE_SIZE", default_value_t = 4 << 20)]
    pub max_message_size: usize,
    #[arg(long, env = "AMPORA_WS_PING_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub ws_ping_interval: Duration,
    /// A WebSocket silent this long (not even a pong) is closed and its agent goes offline.
    #[arg(long, env = "AMPORA_WS_IDLE_TIMEOUT", default_value = "90s", value_parser = humantime::parse_duration)]
    pub ws_idle_timeout: Duration,
    /// A connection that sends no OpAMP message this long after connecting is dropped.
    #[arg(long, env = "AMPORA_FIRST_MESSAGE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub first_message_timeout: Duration,
    /// How long an HTTP request waits for the control-plane before 503.
    #[arg(long, env = "AMPORA_HTTP_REPLY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub http_reply_timeout: Duration,
    #[arg(long, env = "AMPORA_MAX_CONNECTIONS", default_value_t = 50_000)]
    pub max_connections: usize,
    /// TLS handshakes in progress at once; more connections wait (accepted) for their turn.
    #[arg(long, env = "AMPORA_MAX_TLS_HANDSHAKES", default_value_t = 1024)]
    pub max_tls_handshakes: usize,
    /// WebSocket read buffer per connection, bytes; grows for a larger message, then shrinks
    /// back once the connection is idle.
    #[arg(long, env = "AMPORA_WS_READ_BUFFER", default_value = "256")]
    pub ws_read_buffer: NonZeroUsize,
    /// Bytes gathered before a WebSocket write reaches the socket.
    #[arg(long, env = "AMPORA_WS_WRITE_BUFFER", default_value = "4096")]
    pub ws_write_buffer: NonZeroUsize,
    /// Most bytes waiting unsent per WebSocket; must hold the largest message the bus carries.
    #[arg(long, env = "AMPORA_WS_MAX_WRITE_BUFFER", default_value = "8454144")]
    pub ws_max_write_buffer: NonZeroUsize,
    /// Replies queued per WebSocket connection before new ones are dropped.
    #[arg(long, env = "AMPORA_CONNECTION_QUEUE", default_value = "16")]
    pub connection_queue: NonZeroUsize,
    /// Told to agents turned away: `Retry-After` (HTTP), `RetryInfo` (WebSocket).
    #[arg(long, env = "AMPORA_RETRY_AFTER", default_value = "5s", value_parser = humantime::parse_duration)]
    pub gateway_retry_after: Duration,
    /// How long draining may take on shutdown.
    #[arg(long, env = "AMPORA_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// With no control-plane heard this long, agents are told UNAVAILABLE at once.
    #[arg(long, env = "AMPORA_CONTROL_PLANE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub control_plane_timeout: Duration,
    /// How often gateways and control-planes announce they are alive.
    #[arg(long, env = "AMPORA_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub gateway_heartbeat_interval: Duration,
}

#[derive(Debug, Args)]
pub struct ControlPlaneOptions {
    /// An HTTP agent unseen this long is offline.
    #[arg(long, env = "AMPORA_HEARTBEAT_TIMEOUT", default_value = "90s", value_parser = humantime::parse_duration)]
    pub heartbeat_timeout: Duration,
    #[arg(long, env = "AMPORA_SWEEP_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub sweep_interval: Duration,
    #[arg(long, env = "AMPORA_INGEST_WORKERS", default_value_t = 4)]
    pub ingest_workers: usize,
    /// Most messages written in one database transaction.
    #[arg(long, env = "AMPORA_INGEST_BATCH", default_value_t = 2048)]
    pub ingest_batch: usize,
    /// Least time between the starts of one ingest worker's database transactions.
    #[arg(long, env = "AMPORA_INGEST_ROUND_INTERVAL", default_value = "20ms", value_parser = humantime::parse_duration)]
    pub ingest_round_interval: Duration,
    /// Messages queued per ingest worker before the bus consumer waits.
    #[arg(long, env = "AMPORA_INGEST_QUEUE", default_value = "1024")]
    pub ingest_queue: NonZeroUsize,
    /// Told to agents the control-plane cannot serve now (`RetryInfo`).
    #[arg(long, env = "AMPORA_RETRY_AFTER", default_value = "5s", value_parser = humantime::parse_duration)]
    pub control_plane_retry_after: Duration,
    /// Event payloads and details above this many bytes are stored gzip'd.
    #[arg(long, env = "AMPORA_GZIP_THRESHOLD", default_value_t = 4096)]
    pub gzip_threshold: usize,
    /// Unique per control-plane replica; default: a random id.
    #[arg(long, env = "AMPORA_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// A dead replica's agents move to the others within this.
    #[arg(long, env = "AMPORA_LEASE_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
    /// A gateway silent this long is dead: its WebSocket agents go offline.
    #[arg(long, env = "AMPORA_GATEWAY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub gateway_timeout: Duration,
    #[arg(long, env = "AMPORA_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub control_plane_heartbeat_interval: Duration,
    /// An API request (head, body and answer) not complete within this is cut.
    #[arg(long, env = "AMPORA_API_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub api_request_timeout: Duration,
    /// Offered to agents that report heartbeats (OpAMP connection settings), in whole
    /// seconds; unset leaves agents at their own interval.
    #[arg(long, env = "AMPORA_AGENT_HEARTBEAT_INTERVAL", value_parser = heartbeat_interval)]
    pub agent_heartbeat_interval: Option<Duration>,
    /// How often a replica checks it has the newest assignments, should an announcement be lost.
    #[arg(long, env = "AMPORA_ASSIGNMENT_CHECK_INTERVAL", default_value = "5s", value_parser = positive_duration)]
    pub assignment_check_interval: Duration,
    /// An agent that reports its remote config status and has not answered an offer this long
    /// is offered the config again.
    #[arg(long, env = "AMPORA_OFFER_RETRY_INTERVAL", default_value = "60s", value_parser = positive_duration)]
    pub offer_retry_interval: Duration,
    #[command(flatten)]
    pub trust: TrustOptions,
    /// The first account's (`admin`) password, used only when no account exists; unset: a
    /// random one, printed once and written to `$AMPORA_DATA_DIR/initial-admin-password`.
    #[arg(long, env = "AMPORA_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<Secret>,
    /// An operator's session lasts this long from sign-in.
    #[arg(long, env = "AMPORA_SESSION_TTL", default_value = "12h", value_parser = positive_duration)]
    pub session_ttl: Duration,
    /// Audit entries older than this many days move to the archive table.
    #[arg(long, env = "AMPORA_AUDIT_HOT_DAYS", default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..))]
    pub audit_hot_days: u32,
    /// Archived audit entries older than this many days are purged (at least the hot days).
    #[arg(long, env = "AMPORA_AUDIT_RETAIN_DAYS", default_value_t = 2555, value_parser = clap::value_parser!(u32).range(1..))]
    pub audit_retain_days: u32,
}

/// Ampora's CA and agent enrolment.
#[derive(Debug, Args)]
pub struct TrustOptions {
    /// A file holding the CA key-encryption key (base64 of 32 bytes). Default: `ca.kek` in the
    /// data dir, created (mode 0600) when missing; replicas must share one.
    #[arg(long, env = "AMPORA_CA_KEK_FILE")]
    pub ca_kek_file: Option<PathBuf>,
    /// The CA key-encryption key itself (base64 of 32 bytes).
    #[arg(
        long,
        env = "AMPORA_CA_KEK",
        hide_env_values = true,
        conflicts_with = "ca_kek_file"
    )]
    pub ca_kek: Option<String>,
    /// A PKCS#11 library: the CA key lives in its token instead of the database.
    #[arg(long, env = "AMPORA_CA_PKCS11_MODULE")]
    pub ca_pkcs11_module: Option<PathBuf>,
    /// The token holding the CA key, by label.
    #[arg(
        long,
        env = "AMPORA_CA_PKCS11_TOKEN_LABEL",
        requires = "ca_pkcs11_module"
    )]
    pub ca_pkcs11_token_label: Option<String>,
    /// The token holding the CA key, by slot id (when no token label is given).
    #[arg(long, env = "AMPORA_CA_PKCS11_SLOT", requires = "ca_pkcs11_module")]
    pub ca_pkcs11_slot: Option<u64>,
    /// The token's user PIN.
    #[arg(
        long,
        env = "AMPORA_CA_PKCS11_PIN",
        hide_env_values = true,
        requires = "ca_pkcs11_module"
    )]
    pub ca_pkcs11_pin: Option<String>,
    /// The CA key's label in the token (created there when missing).
    #[arg(long, env = "AMPORA_CA_PKCS11_KEY_LABEL", default_value = "ampora-ca")]
    pub ca_pkcs11_key_label: String,
    /// A bootstrap token created without a lifetime lasts this long.
    #[arg(long, env = "AMPORA_BOOTSTRAP_TOKEN_TTL", default_value = "24h", value_parser = positive_duration)]
    pub bootstrap_token_ttl: Duration,
    /// How long an agent certificate is valid.
    #[arg(long, env = "AMPORA_CERTIFICATE_LIFETIME", default_value = "90days", value_parser = positive_duration)]
    pub certificate_lifetime: Duration,
    /// An agent may renew its certificate once it expires within this.
    #[arg(long, env = "AMPORA_CERTIFICATE_RENEWAL_WINDOW", default_value = "30days", value_parser = humantime::parse_duration)]
    pub certificate_renewal_window: Duration,
    /// How often the trust state (CAs, revocations) is published to gateways besides after
    /// each change.
    #[arg(long, env = "AMPORA_TRUST_PUBLISH_INTERVAL", default_value = "5s", value_parser = positive_duration)]
    pub trust_publish_interval: Duration,
}

/// A setting that must not show up in logs or debug output.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Secret(text.to_owned()))
    }
}

/// A period that must pass between two checks or offers: zero would spin.
fn positive_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if duration.is_zero() {
        return Err("must be longer than 0s".into());
    }
    Ok(duration)
}

/// OpAMP carries heartbeat intervals in whole seconds, and 0 would turn heartbeats off.
fn heartbeat_interval(text: &str) -> Result<Duration, String> {
    let interval = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if interval.as_secs() == 0 || interval.subsec_nanos() != 0 {
        return Err("must be a whole number of seconds, at least 1s".into());
    }
    Ok(interval)
}

/// Reads `AMPORA_CONFIG` (a file of `KEY=value` lines) into the environment without overriding
/// anything already set, so flags > environment > file > defaults.
pub fn load_config_file() {
    if let Some(path) = std::env::var_os("AMPORA_CONFIG") {
        if let Err(error) = dotenvy::from_path(&path) {
            eprintln!(
                "ampora: cannot read config file {}: {error}",
                PathBuf::from(path).display()
            );
            std::process::exit(64);
        }
    }
}
