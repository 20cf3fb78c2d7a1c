//! Gateway settings. Defaults suit production; [`GatewayConfig::for_test`] shortens timers.

use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use ampora_shared::subjects::Subjects;
use ipnet::IpNet;

/// Whether agents present TLS client certificates (`AMPORA_TLS_CLIENT_AUTH`). Certificates are
/// verified against the CAs of the control-planes' latest `TrustState`, and refused once revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// No certificate is asked for.
    #[default]
    None,
    /// A certificate is asked for; an agent without one may only enrol: it must send a Bearer
    /// token, and its messages are marked `enrolment_only`.
    Optional,
    /// The handshake fails without a valid certificate.
    Required,
}

impl ClientAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::None => "none",
            ClientAuth::Optional => "optional",
            ClientAuth::Required => "required",
        }
    }
}

impl FromStr for ClientAuth {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(ClientAuth::None),
            "optional" => Ok(ClientAuth::Optional),
            "required" => Ok(ClientAuth::Required),
            _ => Err(format!(
                "{text:?}: expected `none`, `optional` or `required`"
            )),
        }
    }
}

/// The load balancers allowed to send a PROXY protocol v2 header (`AMPORA_PROXY_PROTOCOL_FROM`):
/// from these, a connection may begin with one and the agent's address is taken from it; from
/// anyone else, a header is not read and the connection fails as any garbled one does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyProtocolFrom(pub Vec<IpNet>);

impl ProxyProtocolFrom {
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for ProxyProtocolFrom {
    type Err = String;

    /// Comma-separated addresses or CIDRs: `10.0.0.5, 10.1.0.0/16, fd00::/8`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{item:?} is neither an IP address nor a CIDR"))
            })
            .collect::<Result<_, _>>()
            .map(ProxyProtocolFrom)
    }
}

/// Server TLS (rustls with the ring provider, TLS 1.2 and 1.3, session resumption by cache
/// and tickets). Prefer an ECDSA P-256 certificate: its handshakes cost a fraction of RSA's,
/// which matters in reconnect storms.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first).
    pub cert_path: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub key_path: PathBuf,
    /// Session ticket keys shared by every gateway (one key of 64 hex characters per line, the
    /// first encrypts; format in `tls/tickets.rs`), so an agent resumes its session on any of
    /// them after its own went away. `None`: a random key per process, and sessions resume only
    /// on the gateway that issued them.
    pub ticket_key_file: Option<PathBuf>,
    /// How often the ticket key file is checked for a new content.
    pub ticket_key_check_interval: Duration,
    pub client_auth: ClientAuth,
}

impl TlsConfig {
    /// A certificate and its key, with ticket keys of this process' own.
    pub fn new(cert_path: PathBuf, key_path: PathBuf) -> Self {
        Self {
            cert_path,
            key_path,
            ticket_key_file: None,
            ticket_key_check_interval: Duration::from_secs(10),
            client_auth: ClientAuth::None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Unique per gateway process: replies are addressed to it.
    pub gateway_id: String,
    pub tls: Option<TlsConfig>,
    /// Largest OpAMP message, after decompression (WebSocket close 1009, HTTP 413).
    pub max_message_size: usize,
    /// WebSocket read buffer per connection; tungstenite's default (128 KiB) costs ~1 GB per
    /// 10k idle agents. 256 bytes hold a heartbeat whole; bigger messages take more reads, but
    /// those copy from TLS' own buffer (which reads the socket 4 KiB at a time), not syscalls.
    /// After a message larger than this (either way) the connection's buffers are given back
    /// once it is at rest, so one large status does not cost an agent for its whole life.
    pub ws_read_buffer_size: usize,
    /// Bytes gathered before a WebSocket write reaches the socket.
    pub ws_write_buffer_size: usize,
    /// The most that may wait unsent per WebSocket connection. One whole frame must fit, so it
    /// must exceed the largest delivery the bus can carry (NATS' default is 1 MiB, the
    /// in-process bus' 8 MiB); it bounds memory, it is not allocated up front.
    pub ws_max_write_buffer_size: usize,
    /// How often the gateway pings each WebSocket agent.
    pub ws_ping_interval: Duration,
    /// No frame at all (not even a pong) for this long closes the connection.
    pub ws_idle_timeout: Duration,
    /// A connection that sends nothing useful this long after connecting is dropped: the TLS
    /// handshake, the HTTP request head, or the first OpAMP message on a WebSocket.
    pub first_message_timeout: Duration,
    /// How long an HTTP exchange waits for the control-plane (then 503 + Retry-After).
    pub http_reply_timeout: Duration,
    /// Told to HTTP agents in `Retry-After` and to WebSocket agents in `RetryInfo`.
    pub retry_after: Duration,
    /// How often this gateway tells control-planes it is alive.
    pub heartbeat_interval: Duration,
    /// With no control-plane heard for this long, agents are told UNAVAILABLE at once instead
    /// of waiting for replies that will not come.
    pub control_plane_timeout: Duration,
    /// Open connections (any transport) at most; sockets beyond it are closed at once.
    pub max_connections: usize,
    /// TLS handshakes in progress at most; further connections wait their turn, the time of
    /// each handshake counted from its start. Without it a reconnect storm starts thousands
    /// at once, each crawls, and the slowest time out after their work is done.
    pub max_tls_handshakes: usize,
    /// Deliveries queued per WebSocket connection before new ones are dropped.
    pub connection_queue: usize,
    /// How long `run` waits on shutdown for WebSockets to close and HTTP exchanges to finish.
    pub shutdown_grace: Duration,
    pub subjects: Subjects,
    /// Load balancers whose PROXY protocol v2 header is read; empty: none is.
    pub proxy_protocol_from: ProxyProtocolFrom,
    /// Serve a non-loopback address without TLS, or without asking agents for a token or a
    /// certificate. Off, such a gateway refuses to start (plain) or turns away agents that
    /// present neither (TLS).
    pub insecure: bool,
    /// How often the gateway asks control-planes for the trust state until it holds one.
    pub trust_request_interval: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            gateway_id: uuid::Uuid::new_v4().simple().to_string(),
            tls: None,
            max_message_size: 4 << 20,
            ws_read_buffer_size: 256,
            ws_write_buffer_size: 4 << 10,
            ws_max_write_buffer_size: (8 << 20) + (64 << 10),
            ws_ping_interval: Duration::from_secs(30),
            ws_idle_timeout: Duration::from_secs(90),
            first_message_timeout: Duration::from_secs(30),
            http_reply_timeout: Duration::from_secs(10),
            retry_after: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(1),
            control_plane_timeout: Duration::from_secs(5),
            max_connections: 50_000,
            max_tls_handshakes: 1024,
            connection_queue: 16,
            shutdown_grace: Duration::from_secs(10),
            subjects: Subjects::default(),
            proxy_protocol_from: ProxyProtocolFrom::default(),
            insecure: false,
            trust_request_interval: Duration::from_secs(1),
        }
    }
}

impl GatewayConfig {
    pub fn for_test() -> Self {
        Self {
            ws_ping_interval: Duration::from_millis(200),
            ws_idle_timeout: Duration::from_secs(2),
            first_message_timeout: Duration::from_secs(1),
            http_reply_timeout: Duration::from_secs(2),
            heartbeat_interval: Duration::from_millis(250),
            control_plane_timeout: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(2),
            trust_request_interval: Duration::from_millis(100),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_auth_modes_parse_and_others_are_refused() {
        assert_eq!("none".parse(), Ok(ClientAuth::None));
        assert_eq!(" Optional".parse(), Ok(ClientAuth::Optional));
        assert_eq!("REQUIRED".parse(), Ok(ClientAuth::Required));
        let error = "yes".parse::<ClientAuth>().unwrap_err();
        assert!(
            error.contains("`none`, `optional` or `required`"),
            "{error}"
        );
    }

    #[test]
    fn proxy_protocol_sources_take_addresses_and_cidrs() {
        let from: ProxyProtocolFrom = "10.0.0.5, 192.168.0.0/16,fd00::/8".parse().unwrap();
        assert!(from.allows("10.0.0.5".parse().unwrap()));
        assert!(!from.allows("10.0.0.6".parse().unwrap()));
        assert!(from.allows("192.168.44.1".parse().unwrap()));
        assert!(from.allows("fd00::1".parse().unwrap()));
        // An IPv4 peer on a dual-stack socket is seen as an IPv4-mapped IPv6 address.
        assert!(from.allows("::ffff:10.0.0.5".parse().unwrap()));
        assert!(ProxyProtocolFrom::default().is_empty());
        let error = "10.0.0.0/33".parse::<ProxyProtocolFrom>().unwrap_err();
        assert!(
            error.contains("neither an IP address nor a CIDR"),
            "{error}"
        );
    }
}
