//! Server TLS from PEM files, with session tickets from a key file shared by the gateways
//! (`tickets`) or, without one, a random key per process; client certificates verified by
//! `client_auth` when the settings ask for them.

pub mod client_auth;
mod tickets;

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::{GatewayError, TlsConfig};
use client_auth::ClientCertificates;

/// The gateway's TLS acceptor, verifying client certificates with `client_certificates` when
/// given. With a ticket key file, also starts the task that re-reads it, which ends with
/// `shutdown`; so call it within a tokio runtime.
pub fn acceptor(
    config: &TlsConfig,
    client_certificates: Option<Arc<ClientCertificates>>,
    shutdown: CancellationToken,
) -> Result<TlsAcceptor, GatewayError> {
    let certs = CertificateDer::pem_file_iter(&config.cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            GatewayError::Tls(format!("certificate {}: {e}", config.cert_path.display()))
        })?;
    if certs.is_empty() {
        return Err(GatewayError::Tls(format!(
            "certificate {}: no certificate in the file",
            config.cert_path.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&config.key_path).map_err(|e| {
        GatewayError::Tls(format!("private key {}: {e}", config.key_path.display()))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| GatewayError::Tls(e.to_string()))?;
    let builder = match client_certificates {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut server = builder
        .with_single_cert(certs, key)
        .map_err(|e| GatewayError::Tls(format!("certificate and key do not fit together: {e}")))?;
    // WebSocket upgrades need HTTP/1.1.
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Reconnect storms resume sessions instead of paying for full handshakes.
    server.session_storage = rustls::server::ServerSessionMemoryCache::new(64 * 1024);
    server.ticketer = match &config.ticket_key_file {
        Some(path) => tickets::from_file(path, config.ticket_key_check_interval, shutdown)
            .map_err(|e| GatewayError::Tls(format!("ticket key file {}: {e}", path.display())))?,
        None => {
            rustls::crypto::ring::Ticketer::new().map_err(|e| GatewayError::Tls(e.to_string()))?
        }
    };
    Ok(TlsAcceptor::from(Arc::new(server)))
}
