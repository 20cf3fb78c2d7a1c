//! Bare references measured in the same run as Ampora: the plainest server or client that does
//! the same work (a WebSocket echo of OpAMP replies, a TLS accept loop, raw NATS publishes, raw
//! PostgreSQL batch writes), so each Ampora figure can be read against what the machine, the
//! libraries and the backing services give with nothing of Ampora in the way.

mod handshakes;
mod nats_publish;
mod pg_insert;
mod tls_accept;
mod ws_server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Bare TLS WebSocket server answering each OpAMP message: the baseline for gateway memory
    /// per idle connection.
    WsServer(ws_server::Args),
    /// Bare TLS accept loop: the baseline for the gateway's handshake rate.
    TlsAccept(tls_accept::Args),
    /// TLS handshake load against a gateway or `tls-accept`.
    Handshakes(handshakes::Args),
    /// Raw NATS publish and receive rate.
    NatsPublish(nats_publish::Args),
    /// Raw PostgreSQL batched upsert + insert rate, shaped like Ampora's ingest commit.
    PgInsert(pg_insert::Args),
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::WsServer(args) => ws_server::run(args).await,
        Command::TlsAccept(args) => tls_accept::run(args).await,
        Command::Handshakes(args) => handshakes::run(args).await,
        Command::NatsPublish(args) => nats_publish::run(args).await,
        Command::PgInsert(args) => pg_insert::run(args).await,
    }
}

/// Where a reference server listens and the certificate it presents (the gateway's TLS setup).
#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    #[arg(long)]
    listen: SocketAddr,
    /// PEM certificate chain, leaf first.
    #[arg(long)]
    cert: PathBuf,
    /// PEM private key.
    #[arg(long)]
    key: PathBuf,
    /// PEM CA of the clients' certificates: require one from every client, verified by
    /// rustls' own WebPKI verifier (the bare counterpart of a gateway with
    /// `AMPORA_TLS_CLIENT_AUTH=required`).
    #[arg(long)]
    client_ca: Option<PathBuf>,
}

/// Loads the gateway's TLS acceptor (or, with `--client-ca`, a bare rustls one that requires
/// client certificates), binds, and announces the address on stdout (scenario scripts wait for
/// that line).
async fn listen_tls(args: &ServerArgs) -> anyhow::Result<(TcpListener, TlsAcceptor)> {
    let acceptor = match &args.client_ca {
        // Without a ticket key file the acceptor starts no task: there is nothing to stop.
        None => ampora_gateway::tls::acceptor(
            &ampora_gateway::TlsConfig::new(args.cert.clone(), args.key.clone()),
            None,
            CancellationToken::new(),
        )
        .context("TLS settings")?,
        Some(client_ca) => mtls_acceptor(args, client_ca).context("mTLS settings")?,
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    println!("listening on {}", listener.local_addr()?);
    Ok((listener, acceptor))
}

/// Plain rustls requiring a client certificate from `client_ca`: no swappable anchors, no
/// revocation list, no fingerprint; the gateway's ALPN and session cache.
fn mtls_acceptor(args: &ServerArgs, client_ca: &std::path::Path) -> anyhow::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&args.cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&args.key)?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(client_ca)? {
        roots.add(ca?)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(64 * 1024);
    Ok(TlsAcceptor::from(std::sync::Arc::new(config)))
}

/// Pause after a failed accept, so that running out of file descriptors does not spin a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The next accepted connection; failed accepts are reported and retried after a pause.
async fn next_connection(listener: &TcpListener) -> TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return stream,
            Err(error) => {
                eprintln!("accept failed: {error}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Prints `line()` to stderr every `period` until the returned handle is dropped.
fn spawn_progress(
    period: Duration,
    mut line: impl FnMut() -> String + Send + 'static,
) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            ticks.tick().await;
            eprintln!("{}", line());
        }
    }))
}

fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// Rounds for the report line: enough digits to compare, no float noise.
fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}
