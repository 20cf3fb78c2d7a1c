//! Ampora's CA: created on first start (ECDSA P-256), its key sealed with the key-encryption
//! key (AES-256-GCM) or kept in a PKCS#11 token, and rotated on request (the CA rotated out
//! stays trusted while a certificate it issued has not expired).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose, SerialNumber};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;

use super::signer::{FileSigner, Pkcs11Token, RcgenKey, Signer, SignerError};
use crate::storage::{NewCa, StoredCa};

/// How long a CA certificate is valid.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Binds a sealed key to what it is, so a ciphertext cannot be passed off as another.
const SEALED_KEY_AAD: &[u8] = b"ampora ca key v1";

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("key-encryption key: {0}")]
    Kek(String),
    #[error("the CA key is sealed, but no key-encryption key is set (AMPORA_CA_KEK_FILE or AMPORA_CA_KEK)")]
    NoKek,
    #[error("the CA key {0:?} lives in a PKCS#11 token, but none is configured (AMPORA_CA_PKCS11_MODULE)")]
    NoToken(String),
    #[error("cannot decrypt the CA key: wrong key-encryption key, or the sealed key is damaged")]
    Unseal,
    #[error("the CA key does not match the CA certificate")]
    KeyMismatch,
    #[error(transparent)]
    Signer(#[from] SignerError),
    #[error("CA certificate: {0}")]
    Certificate(String),
}

/// The key-encryption key: 32 bytes that seal the CA's private key at rest.
pub struct Kek(LessSafeKey);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

impl Kek {
    /// From base64 of 32 bytes (standard alphabet, padded or not; whitespace ignored).
    pub fn from_base64(text: &str) -> Result<Self, CaError> {
        let text: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim_end_matches('='))
            .or_else(|_| {
                base64::engine::general_purpose::STANDARD_NO_PAD.decode(text.trim_end_matches('='))
            })
            .map_err(|e| CaError::Kek(format!("not base64: {e}")))?;
        Self::from_bytes(&bytes)
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, CaError> {
        if bytes.len() != 32 {
            return Err(CaError::Kek(format!(
                "must be 32 bytes, got {}",
                bytes.len()
            )));
        }
        let key =
            UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| CaError::Kek("rejected".into()))?;
        Ok(Kek(LessSafeKey::new(key)))
    }

    /// From a file holding the base64 key.
    pub fn from_file(path: &Path) -> Result<Self, CaError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CaError::Kek(format!("cannot read {}: {e}", path.display())))?;
        Self::from_base64(&text)
    }

    /// Reads the key file, or creates it (mode 0600) with a new random key when missing.
    /// Returns whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), CaError> {
        if path.exists() {
            return Ok((Self::from_file(path)?, false));
        }
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| CaError::Kek("no randomness".into()))?;
        let text = base64::engine::general_purpose::STANDARD.encode(bytes);
        match write_private(path, format!("{text}\n").as_bytes()) {
            Ok(()) => Ok((Self::from_bytes(&bytes)?, true)),
            // Another process sharing the data dir made it first: use that one.
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok((Self::from_file(path)?, false))
            }
            Err(error) => Err(CaError::Kek(format!(
                "cannot write {}: {error}",
                path.display()
            ))),
        }
    }

    /// nonce || ciphertext || tag.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system's randomness");
        let mut sealed = plaintext.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(SEALED_KEY_AAD),
                &mut sealed,
            )
            .expect("AES-GCM seals any length the CA key has");
        [nonce.as_slice(), &sealed].concat()
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, CaError> {
        if sealed.len() < NONCE_LEN {
            return Err(CaError::Unseal);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CaError::Unseal)?;
        let mut buffer = ciphertext.to_vec();
        let plaintext = self
            .0
            .open_in_place(nonce, Aad::from(SEALED_KEY_AAD), &mut buffer)
            .map_err(|_| CaError::Unseal)?;
        Ok(plaintext.to_vec())
    }
}

/// Creates `path` readable by its owner only, with `contents`, whole or not at all: written
/// beside it first, then linked into place, which fails if `path` exists meanwhile.
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let staging = dir.join(format!(
        ".{}.{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&staging)?;
    file.write_all(contents)?;
    file.sync_all()?;
    let linked = std::fs::hard_link(&staging, path);
    std::fs::remove_file(&staging)?;
    linked
}

/// Where CA keys are kept: sealed with the KEK, or in a PKCS#11 token. New CAs go to the token
/// when one is configured.
#[derive(Debug, Default)]
pub struct CaKeys {
    pub kek: Option<Arc<Kek>>,
    pub token: Option<Arc<Pkcs11Token>>,
}

/// A CA ready to sign: its certificate and its key.
pub struct Ca {
    pub id: i64,
    pub certificate_der: Vec<u8>,
    pub certificate_pem: String,
    signer: Box<dyn Signer>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("id", &self.id)
            .field("signer", &self.signer.describe())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads a stored CA's key and checks that it matches the certificate.
    pub fn load(keys: &CaKeys, stored: &StoredCa) -> Result<Self, CaError> {
        let signer: Box<dyn Signer> = match &stored.key_sealed {
            Some(sealed) => {
                let kek = keys.kek.as_ref().ok_or(CaError::NoKek)?;
                Box::new(FileSigner::from_pkcs8(&kek.open(sealed)?)?)
            }
            None => {
                let token = keys
                    .token
                    .as_ref()
                    .ok_or_else(|| CaError::NoToken(stored.key_label.clone()))?;
                Box::new(token.signer(&stored.key_label)?)
            }
        };
        let (_, certificate) = x509_parser::parse_x509_certificate(&stored.certificate_der)
            .map_err(|e| CaError::Certificate(e.to_string()))?;
        if certificate.public_key().subject_public_key.data.as_ref() != signer.public_key() {
            return Err(CaError::KeyMismatch);
        }
        Ok(Self::new(stored.id, stored.certificate_der.clone(), signer))
    }

    fn new(id: i64, certificate_der: Vec<u8>, signer: Box<dyn Signer>) -> Self {
        let certificate_pem = pem_encode("CERTIFICATE", &certificate_der);
        Self {
            id,
            certificate_der,
            certificate_pem,
            signer,
        }
    }

    /// Signs certificates as this CA (rcgen's view of it).
    pub fn issuer(&self) -> Result<rcgen::Issuer<'static, RcgenKey<'_>>, CaError> {
        rcgen::Issuer::from_ca_cert_der(
            &self.certificate_der.clone().into(),
            RcgenKey(self.signer.as_ref()),
        )
        .map_err(|e| CaError::Certificate(e.to_string()))
    }

    pub fn describe(&self) -> String {
        self.signer.describe()
    }
}

/// A new CA: a new key (in the token when one is configured, else sealed with the KEK) and
/// its self-signed certificate. `first` names the token key by the configured label itself,
/// so an operator may create that key in the HSM beforehand; later ones get a suffix.
pub fn create(keys: &CaKeys, first: bool, now: OffsetDateTime) -> Result<(NewCa, Ca), CaError> {
    let (signer, key_sealed, key_label): (Box<dyn Signer>, _, _) = match &keys.token {
        Some(token) => {
            let label = if first {
                token.key_label().to_owned()
            } else {
                format!("{}-{}", token.key_label(), now.unix_timestamp())
            };
            (Box::new(token.signer(&label)?), None, label)
        }
        None => {
            let kek = keys.kek.as_ref().ok_or(CaError::NoKek)?;
            let signer = FileSigner::generate()?;
            let sealed = kek.seal(&signer.pkcs8());
            (Box::new(signer), Some(sealed), String::new())
        }
    };
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Ampora");
    params.distinguished_name.push(
        DnType::CommonName,
        format!("Ampora agent CA {}", now.unix_timestamp()),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    params.not_before = now - time::Duration::hours(1);
    let not_after = now + CA_LIFETIME;
    params.not_after = not_after;
    let certificate = params
        .self_signed(&RcgenKey(signer.as_ref()))
        .map_err(|e| CaError::Certificate(e.to_string()))?;
    let certificate_der = certificate.der().to_vec();
    let new = NewCa {
        certificate_der: certificate_der.clone(),
        key_sealed,
        key_label,
        not_after,
    };
    Ok((new, Ca::new(0, certificate_der, signer)))
}

impl Ca {
    /// The same CA once stored under `id`.
    pub fn stored_as(self, id: i64) -> Self {
        Self { id, ..self }
    }
}

/// A positive 16-byte serial number.
pub fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's randomness");
    bytes[0] &= 0x7f;
    SerialNumber::from(bytes.to_vec())
}

pub fn pem_encode(tag: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(tag, der))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek() -> Kek {
        Kek::from_base64(&base64::engine::general_purpose::STANDARD.encode([7u8; 32])).unwrap()
    }

    #[test]
    fn a_sealed_key_opens_only_with_its_kek() {
        let sealed = kek().seal(b"secret key");
        assert_ne!(&sealed[NONCE_LEN..NONCE_LEN + 10], b"secret key");
        assert_eq!(kek().open(&sealed).unwrap(), b"secret key");
        let other = Kek::from_bytes(&[8u8; 32]).unwrap();
        assert!(matches!(other.open(&sealed), Err(CaError::Unseal)));
        let mut damaged = sealed.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert!(matches!(kek().open(&damaged), Err(CaError::Unseal)));
    }

    #[test]
    fn a_kek_must_be_32_bytes_of_base64() {
        assert!(Kek::from_base64("not base64!").is_err());
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 16]);
        let error = Kek::from_base64(&short).unwrap_err().to_string();
        assert!(error.contains("32 bytes"), "{error}");
    }

    #[test]
    fn a_created_kek_file_is_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/ca.kek");
        let (created, fresh) = Kek::load_or_create(&path).unwrap();
        assert!(fresh);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (read, fresh) = Kek::load_or_create(&path).unwrap();
        assert!(!fresh);
        assert_eq!(read.open(&created.seal(b"x")).unwrap(), b"x");
    }

    #[test]
    fn a_created_ca_loads_back_from_its_stored_form() {
        let keys = CaKeys {
            kek: Some(Arc::new(kek())),
            token: None,
        };
        let now = OffsetDateTime::now_utc();
        let (new, _) = create(&keys, true, now).unwrap();
        let stored = StoredCa {
            id: 3,
            certificate_der: new.certificate_der.clone(),
            key_sealed: new.key_sealed.clone(),
            key_label: new.key_label.clone(),
            not_after: new.not_after,
            created_at: now,
            retired_at: None,
        };
        let ca = Ca::load(&keys, &stored).unwrap();
        assert_eq!(ca.id, 3);
        assert!(ca
            .certificate_pem
            .starts_with("-----BEGIN CERTIFICATE-----"));
        let (_, parsed) = x509_parser::parse_x509_certificate(&ca.certificate_der).unwrap();
        assert!(parsed.is_ca());

        let wrong = CaKeys {
            kek: Some(Arc::new(Kek::from_bytes(&[9u8; 32]).unwrap())),
            token: None,
        };
        assert!(matches!(Ca::load(&wrong, &stored), Err(CaError::Unseal)));
        assert!(matches!(
            Ca::load(&CaKeys::default(), &stored),
            Err(CaError::NoKek)
        ));
    }
}
