//! Sockets for many agents on one machine: connections spread over several loopback source
//! addresses (each address has its own ephemeral-port space), and the TLS client settings
//! (private CA, optional client certificate for mTLS, session resumption on or off, each agent
//! with sessions of its own).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use anyhow::{anyhow, bail, Context};
use rustls::client::{
    ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, NamedGroup};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};

/// Source addresses to connect from, used in turn. Written `127.0.0.1`, a comma-separated
/// list, or an inclusive IPv4 range `127.0.1.1-127.0.1.40`.
#[derive(Debug)]
pub struct SourceAddrs {
    addrs: Vec<IpAddr>,
    next: AtomicUsize,
}

impl Clone for SourceAddrs {
    fn clone(&self) -> Self {
        SourceAddrs {
            addrs: self.addrs.clone(),
            next: AtomicUsize::new(0),
        }
    }
}

impl FromStr for SourceAddrs {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        let mut addrs = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('-') {
                Some((first, last)) => {
                    let first: Ipv4Addr = first.parse().with_context(|| format!("{first:?}"))?;
                    let last: Ipv4Addr = last.parse().with_context(|| format!("{last:?}"))?;
                    let (first, last) = (u32::from(first), u32::from(last));
                    if last < first || last - first >= 4096 {
                        bail!("source range {part:?} must run upwards and hold at most 4096 addresses");
                    }
                    addrs.extend((first..=last).map(|a| IpAddr::V4(Ipv4Addr::from(a))));
                }
                None => addrs.push(part.parse().with_context(|| format!("{part:?}"))?),
            }
        }
        if addrs.is_empty() {
            bail!("no source address given");
        }
        Ok(SourceAddrs {
            addrs,
            next: AtomicUsize::new(0),
        })
    }
}

impl SourceAddrs {
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Every `stride`-th address from `offset`: the share of one worker process.
    pub fn share(&self, offset: usize, stride: usize) -> SourceAddrs {
        let addrs: Vec<IpAddr> = self
            .addrs
            .iter()
            .copied()
            .skip(offset)
            .step_by(stride)
            .collect();
        SourceAddrs {
            addrs: if addrs.is_empty() {
                self.addrs.clone()
            } else {
                addrs
            },
            next: AtomicUsize::new(0),
        }
    }

    pub fn to_arg(&self) -> String {
        self.addrs
            .iter()
            .map(IpAddr::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Connects to `target` from the next source address in turn.
    pub async fn connect(&self, target: SocketAddr) -> std::io::Result<TcpStream> {
        let source = self.addrs[self.next.fetch_add(1, Ordering::Relaxed) % self.addrs.len()];
        let socket = if target.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(source, 0))?;
        let stream = socket.connect(target).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// Anything an agent's connection runs over: a plain or a TLS socket.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One server address agents connect to, from a `ws://`, `wss://`, `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub url: String,
    pub addr: SocketAddr,
    pub host: String,
    /// The request target: path and query.
    pub path: String,
    pub websocket: bool,
    pub tls: bool,
}

impl FromStr for Endpoint {
    type Err = anyhow::Error;

    fn from_str(url: &str) -> anyhow::Result<Self> {
        let (scheme, rest) = url
            .split_once("://")
            .with_context(|| format!("{url:?} is not a URL"))?;
        let (websocket, tls) = match scheme {
            "ws" => (true, false),
            "wss" => (true, true),
            "http" => (false, false),
            "https" => (false, true),
            other => bail!("{url:?}: scheme {other:?} is none of ws, wss, http, https"),
        };
        let (authority, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, "/"),
        };
        let (host, port) = authority
            .rsplit_once(':')
            .with_context(|| format!("{url:?} needs an explicit port"))?;
        let port: u16 = port.parse().with_context(|| format!("{url:?}: port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip: IpAddr = match host {
            "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            other => other
                .parse()
                .with_context(|| format!("{url:?}: the host must be an IP address or localhost"))?,
        };
        Ok(Endpoint {
            url: url.to_owned(),
            addr: SocketAddr::new(ip, port),
            host: authority.to_owned(),
            path: path.to_owned(),
            websocket,
            tls,
        })
    }
}

/// The step at which a connection attempt failed, as the report counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// Nothing listens there: a dead gateway.
    Refused,
    /// Any other TCP failure: reset, timed out, no free source port.
    Tcp,
    Tls,
    /// The WebSocket upgrade, or the HTTP/1.1 handshake of a polling agent.
    Upgrade,
}

/// A failed connection attempt: the step that failed, and why.
#[derive(Debug)]
pub struct ConnectError {
    pub failure: ConnectFailure,
    error: anyhow::Error,
}

impl ConnectError {
    pub fn new(failure: ConnectFailure, error: impl Into<anyhow::Error>) -> Self {
        ConnectError {
            failure,
            error: error.into(),
        }
    }

    fn tcp(error: std::io::Error) -> Self {
        let failure = if error.kind() == std::io::ErrorKind::ConnectionRefused {
            ConnectFailure::Refused
        } else {
            ConnectFailure::Tcp
        };
        ConnectError::new(failure, error)
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {:#}", self.failure, self.error)
    }
}

impl std::error::Error for ConnectError {}

/// A connection just opened.
pub struct Opened {
    pub io: Box<dyn Io>,
    /// How its TLS handshake went; `None` without TLS.
    pub handshake: Option<rustls::HandshakeKind>,
}

impl Endpoint {
    /// Opens a socket to this endpoint from the next source address, with TLS when the URL
    /// asks for it.
    pub async fn open(
        &self,
        sources: &SourceAddrs,
        tls: Option<&TlsClient>,
    ) -> Result<Opened, ConnectError> {
        let stream = sources
            .connect(self.addr)
            .await
            .map_err(ConnectError::tcp)?;
        match (self.tls, tls) {
            (false, _) => Ok(Opened {
                io: Box::new(stream),
                handshake: None,
            }),
            (true, Some(tls)) => {
                let stream = tls
                    .connector
                    .connect(tls.server_name.clone(), stream)
                    .await
                    .map_err(|error| ConnectError::new(ConnectFailure::Tls, error))?;
                Ok(Opened {
                    handshake: stream.get_ref().1.handshake_kind(),
                    io: Box::new(stream),
                })
            }
            (true, None) => Err(ConnectError::new(
                ConnectFailure::Tls,
                anyhow!("{} needs TLS settings (--ca)", self.url),
            )),
        }
    }
}

/// TLS client settings: one process' (and its session cache), or one agent's
/// ([`TlsClient::for_one_agent`]).
pub struct TlsClient {
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: ServerName<'static>,
    resume: bool,
}

pub struct TlsClientOptions<'a> {
    pub ca: &'a Path,
    pub client_cert: Option<&'a Path>,
    pub client_key: Option<&'a Path>,
    pub server_name: &'a str,
    /// Offer session resumption (what reconnecting agents do); off makes every handshake full.
    pub resume: bool,
    pub alpn_http1: bool,
}

impl TlsClient {
    pub fn new(options: TlsClientOptions<'_>) -> anyhow::Result<TlsClient> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(options.ca)
            .with_context(|| format!("CA {}", options.ca.display()))?
        {
            roots.add(cert.with_context(|| format!("CA {}", options.ca.display()))?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let mut config = match (options.client_cert, options.client_key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .with_context(|| format!("client certificate {}", cert.display()))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .with_context(|| format!("client key {}", key.display()))?;
                builder.with_client_auth_cert(chain, key)?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => bail!("a client certificate needs its key, and the key its certificate"),
        };
        if options.alpn_http1 {
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
        }
        if !options.resume {
            config.resumption = Resumption::disabled();
        }
        Ok(TlsClient {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name: ServerName::try_from(options.server_name.to_owned())
                .with_context(|| format!("server name {:?}", options.server_name))?,
            resume: options.resume,
        })
    }

    /// The settings for one simulated agent, kept for its whole life. Real agents are separate
    /// processes, each resuming with tickets of its own; agents sharing the process' cache
    /// (rustls keeps 8 TLS 1.3 tickets per server name) would nearly all come back from a
    /// storm with none. So, when resuming, each agent gets a copy of the settings with a store
    /// holding its own newest ticket: ~0.7 KiB per agent, ~1.3 KiB while it holds a ticket
    /// (which carries a copy of the server's certificate). rustls' memory cache, even at its
    /// smallest, keeps up to 8 tickets: ~5 KiB per agent after three connections.
    pub fn for_one_agent(&self) -> TlsClient {
        let connector = if self.resume {
            let mut config = ClientConfig::clone(self.connector.config());
            config.resumption = Resumption::store(Arc::new(OneAgentSessions::default()));
            tokio_rustls::TlsConnector::from(Arc::new(config))
        } else {
            self.connector.clone()
        };
        TlsClient {
            connector,
            server_name: self.server_name.clone(),
            resume: self.resume,
        }
    }
}

/// One agent's TLS session store: it talks to one server name, so it keeps one TLS 1.3
/// ticket (the newest; the server sends new ones on every connection), one TLS 1.2 session
/// and the key exchange group the server chose.
#[derive(Default)]
struct OneAgentSessions(Mutex<Sessions>);

#[derive(Default)]
struct Sessions {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    tls13: Option<Tls13ClientSessionValue>,
}

impl OneAgentSessions {
    fn sessions(&self) -> MutexGuard<'_, Sessions> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ClientSessionStore for OneAgentSessions {
    fn set_kx_hint(&self, _: ServerName<'static>, group: NamedGroup) {
        self.sessions().kx_hint = Some(group);
    }

    fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
        self.sessions().kx_hint
    }

    fn set_tls12_session(&self, _: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.sessions().tls12 = Some(value);
    }

    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.sessions().tls12.clone()
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {
        self.sessions().tls12 = None;
    }

    fn insert_tls13_ticket(&self, _: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.sessions().tls13 = Some(value);
    }

    fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.sessions().tls13.take()
    }
}

impl std::fmt::Debug for OneAgentSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sessions = self.sessions();
        f.debug_struct("OneAgentSessions")
            .field("kx_hint", &sessions.kx_hint)
            .field("tls12", &sessions.tls12.is_some())
            .field("tls13", &sessions.tls13.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn source_ranges_and_lists_parse() {
        let sources: SourceAddrs = "127.0.0.1, 127.0.1.1-127.0.1.3".parse().unwrap();
        assert_eq!(sources.to_arg(), "127.0.0.1,127.0.1.1,127.0.1.2,127.0.1.3");
        assert_eq!(sources.share(1, 2).to_arg(), "127.0.1.1,127.0.1.3");
        assert!("127.0.1.3-127.0.1.1".parse::<SourceAddrs>().is_err());
        assert!("".parse::<SourceAddrs>().is_err());
        assert!("localhost".parse::<SourceAddrs>().is_err());
    }

    #[test]
    fn endpoints_parse_from_urls() {
        let endpoint: Endpoint = "wss://localhost:4320/v1/opamp".parse().unwrap();
        assert!(endpoint.websocket && endpoint.tls);
        assert_eq!(endpoint.addr, "127.0.0.1:4320".parse().unwrap());
        assert_eq!(endpoint.host, "localhost:4320");
        assert_eq!(endpoint.path, "/v1/opamp");
        let endpoint: Endpoint = "http://127.0.0.2:80/v1/opamp".parse().unwrap();
        assert!(!endpoint.websocket && !endpoint.tls);
        assert!("ftp://127.0.0.1:1/".parse::<Endpoint>().is_err());
        assert!("ws://127.0.0.1/v1/opamp".parse::<Endpoint>().is_err());
        assert!("ws://example.com:80/".parse::<Endpoint>().is_err());
    }

    /// A TLS server with the gateway's settings ([`echo_one_byte`]), and a client trusting it.
    async fn tls_server(dir: &Path, resume: bool) -> (Endpoint, TlsClient) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let acceptor = ampora_gateway::tls::acceptor(
            &ampora_gateway::TlsConfig::new(cert_path.clone(), key_path),
            None,
            tokio_util::sync::CancellationToken::new(),
        )
        .unwrap();
        let (endpoint, _) = echo_one_byte(acceptor).await;
        let client = TlsClient::new(TlsClientOptions {
            ca: &cert_path,
            client_cert: None,
            client_key: None,
            server_name: "localhost",
            resume,
            alpn_http1: true,
        })
        .unwrap();
        (endpoint, client)
    }

    async fn exchange(endpoint: &Endpoint, agent: &TlsClient) -> rustls::HandshakeKind {
        let sources: SourceAddrs = "127.0.0.1".parse().unwrap();
        let mut opened = endpoint.open(&sources, Some(agent)).await.unwrap();
        opened.io.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        opened.io.read_exact(&mut byte).await.unwrap();
        opened.handshake.unwrap()
    }

    #[tokio::test]
    async fn each_agent_resumes_its_own_sessions_only() {
        use rustls::HandshakeKind::{Full, Resumed};
        let dir = tempfile::tempdir().unwrap();
        let (endpoint, client) = tls_server(dir.path(), true).await;
        let (first, second) = (client.for_one_agent(), client.for_one_agent());
        assert_eq!(exchange(&endpoint, &first).await, Full);
        assert_eq!(exchange(&endpoint, &first).await, Resumed);
        assert_eq!(
            exchange(&endpoint, &first).await,
            Resumed,
            "new tickets each time"
        );
        assert_eq!(
            exchange(&endpoint, &second).await,
            Full,
            "the first agent's tickets are its own"
        );
        assert_eq!(exchange(&endpoint, &second).await, Resumed);

        let (endpoint, client) = tls_server(dir.path(), false).await;
        let agent = client.for_one_agent();
        assert_eq!(exchange(&endpoint, &agent).await, Full);
        assert_eq!(exchange(&endpoint, &agent).await, Full, "--no-resume");
    }

    /// A TLS server ([`echo_one_byte`]) that takes only clients with a certificate its CA
    /// signed. Writes `ca.pem` (signing the server's
    /// certificate too), `client.pem` and `client.key` into `dir`.
    async fn mtls_server(dir: &Path) -> (Endpoint, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let signed = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            (cert, key)
        };
        let (server_cert, server_key) = signed("localhost");
        let (client_cert, client_key) = signed("agent-1");
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("client.pem"), client_cert.pem()).unwrap();
        std::fs::write(dir.join("client.key"), client_key.serialize_pem()).unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.into(),
            provider.clone(),
        )
        .build()
        .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![server_cert.der().clone()],
                PrivateKeyDer::try_from(server_key.serialize_der()).unwrap(),
            )
            .unwrap();
        echo_one_byte(tokio_rustls::TlsAcceptor::from(Arc::new(config))).await
    }

    /// Serves `acceptor` on a free port: each client's one byte is answered with one byte (the
    /// answer also carries the TLS 1.3 tickets), and the certificate each client presented, if
    /// any, is reported.
    async fn echo_one_byte(
        acceptor: tokio_rustls::TlsAcceptor,
    ) -> (Endpoint, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (presented, reports) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (acceptor, presented) = (acceptor.clone(), presented.clone());
                tokio::spawn(async move {
                    let mut tls = acceptor.accept(stream).await?;
                    if let Some([leaf, ..]) = tls.get_ref().1.peer_certificates() {
                        let _ = presented.send(leaf.to_vec());
                    }
                    let mut byte = [0u8; 1];
                    tls.read_exact(&mut byte).await?;
                    tls.write_all(&byte).await?;
                    tls.shutdown().await
                });
            }
        });
        let endpoint = format!("wss://localhost:{port}/v1/opamp").parse().unwrap();
        (endpoint, reports)
    }

    #[tokio::test]
    async fn agents_given_a_client_certificate_present_it_for_mtls() {
        let dir = tempfile::tempdir().unwrap();
        let (endpoint, mut presented) = mtls_server(dir.path()).await;
        let (ca, cert, key) = (
            dir.path().join("ca.pem"),
            dir.path().join("client.pem"),
            dir.path().join("client.key"),
        );
        let client = |identity: Option<(&Path, &Path)>| {
            TlsClient::new(TlsClientOptions {
                ca: &ca,
                client_cert: identity.map(|(cert, _)| cert),
                client_key: identity.map(|(_, key)| key),
                server_name: "localhost",
                resume: true,
                alpn_http1: true,
            })
            .unwrap()
            .for_one_agent()
        };

        exchange(&endpoint, &client(Some((&cert, &key)))).await;
        let expected = CertificateDer::from_pem_file(&cert).unwrap();
        assert_eq!(presented.recv().await.unwrap(), expected.to_vec());

        // Without one, the server refuses it: at the handshake, or (TLS 1.3: the client is done
        // first) with an alert in place of the answer.
        let sources: SourceAddrs = "127.0.0.1".parse().unwrap();
        let refused = match endpoint.open(&sources, Some(&client(None))).await {
            Err(_) => true,
            Ok(mut opened) => {
                let _ = opened.io.write_all(b"x").await;
                let mut byte = [0u8; 1];
                opened.io.read_exact(&mut byte).await.is_err()
            }
        };
        assert!(refused, "a client without a certificate was answered");
        assert!(presented.try_recv().is_err());
    }

    #[tokio::test]
    async fn failed_connections_say_which_step_failed() {
        let dir = tempfile::tempdir().unwrap();
        let (endpoint, client) = tls_server(dir.path(), true).await;
        let sources: SourceAddrs = "127.0.0.1".parse().unwrap();
        let failure =
            |opened: Result<Opened, ConnectError>| opened.err().map(|error| error.failure);

        // A port nothing listens on: the dead gateway of a reconnect storm.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead: Endpoint = format!("wss://localhost:{}/", closed.local_addr().unwrap().port())
            .parse()
            .unwrap();
        drop(closed);
        let agent = client.for_one_agent();
        assert_eq!(
            failure(dead.open(&sources, Some(&agent)).await),
            Some(ConnectFailure::Refused)
        );

        // A listener that accepts and hangs up before the handshake.
        let hangs_up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let rude: Endpoint = format!("wss://localhost:{}/", hangs_up.local_addr().unwrap().port())
            .parse()
            .unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = hangs_up.accept().await {
                drop(stream);
            }
        });
        assert_eq!(
            failure(rude.open(&sources, Some(&agent)).await),
            Some(ConnectFailure::Tls)
        );
        assert!(failure(endpoint.open(&sources, Some(&agent)).await).is_none());
    }
}
