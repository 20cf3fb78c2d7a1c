//! Agents' client certificates: issued from a CSR (its signature checked, any instance uid it
//! names checked against the agent's) or with a key generated here. Each carries the clientAuth
//! extended key usage and the agent's instance uid (as the common name and as a
//! `urn:uuid:<uid>` URI SAN); its identity is the SHA-256 fingerprint of its DER.

use std::time::Duration;

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DnType, DnValue, ExtendedKeyUsagePurpose,
    KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use super::ca::{random_serial, Ca, CaError};

/// Certificates start this long before they are issued: clocks disagree.
const BACKDATE: time::Duration = time::Duration::minutes(5);

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("invalid certificate signing request: {0}")]
    Csr(String),
    #[error(
        "the certificate signing request names instance uid {claimed}, not the agent's {agent}"
    )]
    UidMismatch { claimed: String, agent: Uuid },
    #[error(transparent)]
    Ca(#[from] CaError),
}

/// A certificate ready to hand out.
#[derive(Debug, Clone)]
pub struct Issued {
    pub instance_uid: Uuid,
    pub certificate_der: Vec<u8>,
    pub certificate_pem: String,
    /// Only for a key generated here.
    pub private_key_pem: Option<String>,
    pub fingerprint: String,
    pub issued_at: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// Lowercase hex SHA-256 of a certificate's DER: the identity gateways put in the envelope.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Issues a certificate for the key in `csr_pem`. With `agent`, any instance uid the CSR names
/// must be that one; without (the API), the CSR's uid is taken, or a new one made.
pub fn from_csr(
    ca: &Ca,
    csr_pem: &str,
    agent: Option<Uuid>,
    lifetime: Duration,
    now: OffsetDateTime,
) -> Result<Issued, IssueError> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| IssueError::Csr(e.to_string()))?;
    let claimed = claimed_uids(&csr.params);
    let uid = match agent {
        Some(agent) => {
            if let Some(other) = claimed.iter().find(|claim| parse_uid(claim) != Some(agent)) {
                return Err(IssueError::UidMismatch {
                    claimed: other.clone(),
                    agent,
                });
            }
            agent
        }
        None => {
            let mut uids = claimed.iter().map(|claim| parse_uid(claim));
            match uids.next() {
                None => Uuid::now_v7(),
                Some(Some(first)) if uids.all(|uid| uid == Some(first)) => first,
                Some(_) => {
                    return Err(IssueError::Csr(format!(
                        "it names more than one instance uid, or one that is not a UUID: {}",
                        claimed.join(", ")
                    )))
                }
            }
        }
    };
    let signed = CertificateSigningRequestParams {
        params: params(uid, lifetime, now),
        public_key: csr.public_key,
    };
    let certificate = signed
        .signed_by(&ca.issuer()?)
        .map_err(|e| IssueError::Ca(CaError::Certificate(e.to_string())))?;
    Ok(issued(uid, certificate.der().to_vec(), None, lifetime, now))
}

/// Issues a certificate with a new ECDSA P-256 key made here; the key is handed out once.
pub fn generated(
    ca: &Ca,
    uid: Uuid,
    lifetime: Duration,
    now: OffsetDateTime,
) -> Result<Issued, IssueError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| IssueError::Ca(CaError::Certificate(e.to_string())))?;
    let certificate = params(uid, lifetime, now)
        .signed_by(&key, &ca.issuer()?)
        .map_err(|e| IssueError::Ca(CaError::Certificate(e.to_string())))?;
    Ok(issued(
        uid,
        certificate.der().to_vec(),
        Some(key.serialize_pem()),
        lifetime,
        now,
    ))
}

fn issued(
    uid: Uuid,
    certificate_der: Vec<u8>,
    private_key_pem: Option<String>,
    lifetime: Duration,
    now: OffsetDateTime,
) -> Issued {
    Issued {
        instance_uid: uid,
        certificate_pem: super::ca::pem_encode("CERTIFICATE", &certificate_der),
        fingerprint: fingerprint(&certificate_der),
        certificate_der,
        private_key_pem,
        issued_at: now,
        not_after: now + lifetime,
    }
}

/// What every agent certificate says, whatever the CSR asked for.
fn params(uid: Uuid, lifetime: Duration, now: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, uid.hyphenated().to_string());
    params.subject_alt_names = vec![SanType::URI(
        format!("urn:uuid:{}", uid.hyphenated())
            .try_into()
            .expect("a urn:uuid is ASCII"),
    )];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(random_serial());
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
    params.use_authority_key_identifier_extension = true;
    params
}

/// The instance uids a CSR names: a common name that is a UUID, and `urn:uuid:` URI SANs.
fn claimed_uids(params: &CertificateParams) -> Vec<String> {
    let mut claimed = Vec::new();
    if let Some(cn) = params.distinguished_name.get(&DnType::CommonName) {
        let cn = match cn {
            DnValue::Utf8String(text) => text.clone(),
            DnValue::PrintableString(text) => text.to_string(),
            DnValue::Ia5String(text) => text.to_string(),
            DnValue::TeletexString(text) => text.to_string(),
            _ => String::new(),
        };
        if Uuid::parse_str(&cn).is_ok() {
            claimed.push(cn);
        }
    }
    for san in &params.subject_alt_names {
        if let SanType::URI(uri) = san {
            let uri = uri.to_string();
            if uri.to_ascii_lowercase().starts_with("urn:uuid:") {
                claimed.push(uri);
            }
        }
    }
    claimed
}

fn parse_uid(claim: &str) -> Option<Uuid> {
    let text = claim
        .get(..9)
        .filter(|prefix| prefix.eq_ignore_ascii_case("urn:uuid:"))
        .map_or(claim, |_| &claim[9..]);
    Uuid::parse_str(text).ok()
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use x509_parser::prelude::*;

    use super::*;
    use crate::trust::ca::{self, CaKeys, Kek};

    fn ca() -> Ca {
        let keys = CaKeys {
            kek: Some(std::sync::Arc::new(
                Kek::from_base64(&base64::engine::general_purpose::STANDARD.encode([1u8; 32]))
                    .unwrap(),
            )),
            token: None,
        };
        ca::create(&keys, true, OffsetDateTime::now_utc())
            .unwrap()
            .1
    }

    pub fn csr(common_name: &str, uris: &[&str]) -> (String, KeyPair) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = uris
            .iter()
            .map(|uri| SanType::URI((*uri).try_into().unwrap()))
            .collect();
        (params.serialize_request(&key).unwrap().pem().unwrap(), key)
    }

    fn check(issued: &Issued, ca: &Ca, uid: Uuid) {
        let (_, certificate) = parse_x509_certificate(&issued.certificate_der).unwrap();
        let (_, issuer) = parse_x509_certificate(&ca.certificate_der).unwrap();
        certificate
            .verify_signature(Some(issuer.public_key()))
            .expect("signed by the CA");
        let eku = certificate.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        let sans = certificate.subject_alternative_name().unwrap().unwrap();
        let uri = format!("urn:uuid:{uid}");
        assert!(sans
            .value
            .general_names
            .iter()
            .any(|name| matches!(name, GeneralName::URI(u) if *u == uri)));
        let cn = certificate.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), uid.to_string());
        assert_eq!(issued.fingerprint, fingerprint(&issued.certificate_der));
        assert_eq!(issued.fingerprint.len(), 64);
    }

    #[test]
    fn a_csr_naming_the_agent_is_signed_for_it() {
        let ca = ca();
        let uid = Uuid::now_v7();
        let (pem, key) = csr(&uid.to_string(), &[&format!("urn:uuid:{uid}")]);
        let issued = from_csr(
            &ca,
            &pem,
            Some(uid),
            Duration::from_secs(3600),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        check(&issued, &ca, uid);
        assert!(issued.private_key_pem.is_none());
        let (_, certificate) = parse_x509_certificate(&issued.certificate_der).unwrap();
        assert_eq!(
            certificate.public_key().subject_public_key.data.as_ref(),
            rcgen::PublicKeyData::der_bytes(&key)
        );
    }

    #[test]
    fn a_csr_naming_another_uid_is_refused() {
        let ca = ca();
        let agent = Uuid::now_v7();
        let other = Uuid::now_v7();
        let (pem, _) = csr("collector", &[&format!("urn:uuid:{other}")]);
        let error = from_csr(
            &ca,
            &pem,
            Some(agent),
            Duration::from_secs(60),
            OffsetDateTime::now_utc(),
        )
        .unwrap_err();
        assert!(matches!(error, IssueError::UidMismatch { .. }), "{error}");
        assert!(error.to_string().contains(&other.to_string()));
    }

    #[test]
    fn a_csr_without_a_uid_gets_the_agents_or_a_new_one() {
        let ca = ca();
        let (pem, _) = csr("collector", &[]);
        let agent = Uuid::now_v7();
        let issued = from_csr(
            &ca,
            &pem,
            Some(agent),
            Duration::from_secs(60),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        check(&issued, &ca, agent);
        let issued = from_csr(
            &ca,
            &pem,
            None,
            Duration::from_secs(60),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        check(&issued, &ca, issued.instance_uid);
    }

    #[test]
    fn a_damaged_csr_is_refused() {
        let ca = ca();
        let (pem, _) = csr("collector", &[]);
        let der = ::pem::parse(&pem).unwrap().into_contents();
        let mut damaged = der.clone();
        let last = damaged.len() - 3;
        damaged[last] ^= 0x55;
        let damaged = ca::pem_encode("CERTIFICATE REQUEST", &damaged);
        let error = from_csr(
            &ca,
            &damaged,
            None,
            Duration::from_secs(60),
            OffsetDateTime::now_utc(),
        )
        .unwrap_err();
        assert!(matches!(error, IssueError::Csr(_)), "{error}");
        assert!(matches!(
            from_csr(
                &ca,
                "not a csr",
                None,
                Duration::from_secs(60),
                OffsetDateTime::now_utc()
            ),
            Err(IssueError::Csr(_))
        ));
    }

    #[test]
    fn a_generated_key_comes_with_its_certificate() {
        let ca = ca();
        let uid = Uuid::now_v7();
        let issued =
            generated(&ca, uid, Duration::from_secs(60), OffsetDateTime::now_utc()).unwrap();
        check(&issued, &ca, uid);
        let key = KeyPair::from_pem(issued.private_key_pem.as_deref().unwrap()).unwrap();
        let (_, certificate) = parse_x509_certificate(&issued.certificate_der).unwrap();
        assert_eq!(
            certificate.public_key().subject_public_key.data.as_ref(),
            rcgen::PublicKeyData::der_bytes(&key)
        );
    }
}
