//! Verifying agents' client certificates against Ampora's CA, as the control-planes publish it.
//!
//! The trusted CAs and the revoked fingerprints change while the gateway runs (a `TrustState`
//! arrives on the bus), so the verifier holds them behind an [`ArcSwap`]: a handshake reads the
//! current set without a lock, and a new set replaces it whole. Chain, validity and the
//! clientAuth usage are checked by rustls' own WebPKI verifier; this one adds the revocation
//! list (by SHA-256 of the certificate) and the refusal while no trust state is held.

use std::collections::HashSet;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};

/// SHA-256 of a certificate's DER: how Ampora names an agent's certificate.
pub type Fingerprint = [u8; 32];

pub fn fingerprint(certificate: &[u8]) -> Fingerprint {
    Sha256::digest(certificate).into()
}

/// Lowercase hex, as the envelope and the trust state carry it.
pub fn to_hex(fingerprint: &Fingerprint) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(64);
    for byte in fingerprint {
        hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
        hex.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    hex
}

pub fn from_hex(text: &str) -> Option<Fingerprint> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut fingerprint = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        fingerprint[i] = (high * 16 + low) as u8;
    }
    Some(fingerprint)
}

/// The refusal while no trust state has arrived: there is nothing to verify against yet.
pub const NO_TRUST_STATE: &str = "no trust state from a control-plane yet";

/// What certificates are checked against, swapped whole when a trust state arrives.
struct Anchors {
    /// rustls' WebPKI verifier over the trusted CAs; `None` before the first trust state (or
    /// when it names no CA).
    webpki: Option<Arc<dyn ClientCertVerifier>>,
    revoked: HashSet<Fingerprint>,
}

#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    #[error("CA certificate {index}: {reason}")]
    BadCa { index: usize, reason: String },
}

/// The gateway's [`ClientCertVerifier`]; its anchors change with [`ClientCertificates::replace`].
pub struct ClientCertificates {
    mandatory: bool,
    anchors: ArcSwap<Anchors>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for ClientCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificates")
            .field("mandatory", &self.mandatory)
            .field("revoked", &self.anchors.load().revoked.len())
            .finish()
    }
}

impl ClientCertificates {
    /// With `mandatory`, a handshake without a certificate fails; otherwise it is allowed and the
    /// connection is left to prove itself another way (a Bearer token, for enrolment).
    pub fn new(mandatory: bool) -> Self {
        Self {
            mandatory,
            anchors: ArcSwap::from_pointee(Anchors {
                webpki: None,
                revoked: HashSet::new(),
            }),
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }

    /// Trusts `ca_certificates` (DER) from now on and refuses `revoked`. A CA that cannot be
    /// used leaves the previous anchors in place.
    pub fn replace(
        &self,
        ca_certificates: &[impl AsRef<[u8]>],
        revoked: HashSet<Fingerprint>,
    ) -> Result<(), AnchorError> {
        let webpki = if ca_certificates.is_empty() {
            None
        } else {
            let mut roots = rustls::RootCertStore::empty();
            for (index, der) in ca_certificates.iter().enumerate() {
                roots
                    .add(CertificateDer::from(der.as_ref().to_vec()))
                    .map_err(|e| AnchorError::BadCa {
                        index,
                        reason: e.to_string(),
                    })?;
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut builder = WebPkiClientVerifier::builder_with_provider(roots.into(), provider);
            if !self.mandatory {
                builder = builder.allow_unauthenticated();
            }
            Some(builder.build().map_err(|e| AnchorError::BadCa {
                index: 0,
                reason: e.to_string(),
            })?)
        };
        self.anchors.store(Arc::new(Anchors { webpki, revoked }));
        Ok(())
    }

    /// Refuses `revoked` from now on, keeping the trusted CAs.
    pub fn revoke(&self, revoked: HashSet<Fingerprint>) {
        self.anchors.rcu(|anchors| Anchors {
            webpki: anchors.webpki.clone(),
            revoked: revoked.clone(),
        });
    }

    pub fn is_revoked(&self, fingerprint: &Fingerprint) -> bool {
        self.anchors.load().revoked.contains(fingerprint)
    }
}

impl ClientCertVerifier for ClientCertificates {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    /// No hints: the subjects would have to outlive a swap of the anchors, and agents hold one
    /// certificate each, which they send whatever the hints say.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let anchors = self.anchors.load();
        if anchors.revoked.contains(&fingerprint(end_entity)) {
            return Err(CertificateError::Revoked.into());
        }
        match &anchors.webpki {
            Some(webpki) => webpki.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::General(NO_TRUST_STATE.to_owned())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Why a handshake failed, in words an operator can act on, and a short label for the
/// `ampora_gateway_client_certificates_refused_total{reason}` metric. `None`: not a matter of
/// the client's certificate.
pub fn refusal(error: &rustls::Error) -> Option<(&'static str, &'static str)> {
    use CertificateError as C;
    Some(match error {
        rustls::Error::NoCertificatesPresented => (
            "no_certificate",
            "the agent sent no client certificate, and AMPORA_TLS_CLIENT_AUTH=required asks for one",
        ),
        rustls::Error::General(message) if message == NO_TRUST_STATE => (
            "no_trust_state",
            "no trust state from a control-plane yet, so no client certificate can be verified; \
             is a control-plane running on this bus prefix?",
        ),
        rustls::Error::InvalidCertificate(error) => match error {
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => (
                "not_for_client_auth",
                "the client certificate lacks the clientAuth extended key usage \
                 (TLS Web Client Authentication): issue it for client authentication",
            ),
            C::UnknownIssuer => (
                "unknown_issuer",
                "the client certificate is not issued by a CA Ampora trusts (self-signed, or \
                 from another CA)",
            ),
            C::BadSignature => (
                "bad_signature",
                "the client certificate's signature does not verify against the CA named as its \
                 issuer (forged?)",
            ),
            C::Revoked => ("revoked", "the client certificate is revoked"),
            C::Expired | C::ExpiredContext { .. } => {
                ("expired", "the client certificate has expired")
            }
            C::NotValidYet | C::NotValidYetContext { .. } => (
                "not_valid_yet",
                "the client certificate is not valid yet (check the agent's clock)",
            ),
            C::BadEncoding => ("bad_encoding", "the client certificate is not valid DER"),
            _ => ("invalid", "the client certificate is invalid"),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_go_to_hex_and_back() {
        let fingerprint = fingerprint(b"a certificate");
        let hex = to_hex(&fingerprint);
        assert_eq!(hex.len(), 64);
        assert_eq!(hex, hex.to_ascii_lowercase());
        assert_eq!(from_hex(&hex), Some(fingerprint));
        assert_eq!(from_hex(&hex.to_ascii_uppercase()), Some(fingerprint));
        assert_eq!(from_hex(&hex[1..]), None);
        assert_eq!(from_hex(&format!("{}zz", &hex[2..])), None);
    }

    #[test]
    fn without_a_trust_state_every_certificate_is_refused() {
        let verifier = ClientCertificates::new(true);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["agent".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let error = verifier
            .verify_client_cert(cert.der(), &[], UnixTime::now())
            .unwrap_err();
        assert_eq!(refusal(&error).unwrap().0, "no_trust_state");
    }

    #[test]
    fn a_ca_that_is_not_a_certificate_keeps_the_previous_anchors() {
        let verifier = ClientCertificates::new(true);
        verifier
            .replace(&[b"not DER".as_slice()], HashSet::new())
            .unwrap_err();
        let revoked = fingerprint(b"x");
        verifier
            .replace(&[] as &[&[u8]], HashSet::from([revoked]))
            .unwrap();
        assert!(verifier.is_revoked(&revoked));
    }
}
