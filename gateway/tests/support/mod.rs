//! TLS material shared by the gateway's test files: a self-signed certificate for `localhost`
//! and a client that trusts it.

use std::sync::Arc;

use ampora_gateway::TlsConfig;
use rustls::pki_types::pem::PemObject;

pub struct Certificates {
    /// Holds the files while the certificates are in use.
    pub _dir: tempfile::TempDir,
    pub tls: TlsConfig,
    pub ca_pem: String,
}

pub fn certificates() -> Certificates {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    Certificates {
        _dir: dir,
        tls: TlsConfig::new(cert_path, key_path),
        ca_pem: cert.pem(),
    }
}

pub fn tls_client(ca_pem: &str) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(ca_pem))
        .with_no_client_auth()
}

pub fn roots(ca_pem: &str) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap();
    roots.add(ca).unwrap();
    roots
}
