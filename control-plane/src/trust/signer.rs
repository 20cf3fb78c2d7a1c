//! Where the CA's private key lives and how it signs: the [`Signer`] trait, a file-backed
//! signer (the key decrypted in memory) and a PKCS#11 signer (the key never leaves the token).
//! An HSM or a cloud KMS is one more implementation of [`Signer`]; see `docs/trust.md`.

use std::path::PathBuf;
use std::sync::Mutex;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use rcgen::{KeyPair, PublicKeyData, SignatureAlgorithm, SigningKey, PKCS_ECDSA_P256_SHA256};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("CA key: {0}")]
    Key(String),
    #[error("PKCS#11: {0}")]
    Pkcs11(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

impl From<cryptoki::error::Error> for SignerError {
    fn from(error: cryptoki::error::Error) -> Self {
        SignerError::Pkcs11(error.to_string())
    }
}

/// Signs on behalf of a CA. Implementations hold (or reach) one private key.
pub trait Signer: Send + Sync {
    /// The public key as X.509 puts it in a SubjectPublicKeyInfo's BIT STRING (for ECDSA, the
    /// uncompressed point).
    fn public_key(&self) -> &[u8];

    /// The signature algorithm; ECDSA P-256 with SHA-256 for Ampora's own keys.
    fn algorithm(&self) -> &'static SignatureAlgorithm;

    /// Signs `message` (the whole to-be-signed bytes: the signer hashes), returning the
    /// signature as X.509 carries it (for ECDSA, a DER `ECDSA-Sig-Value`).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignerError>;

    /// Says where the key lives, for logs (never the key).
    fn describe(&self) -> String;
}

/// Lets rcgen sign with any [`Signer`].
pub struct RcgenKey<'a>(pub &'a dyn Signer);

impl PublicKeyData for RcgenKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0.public_key()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.0.algorithm()
    }
}

impl SigningKey for RcgenKey<'_> {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0.sign(message).map_err(|error| {
            tracing::warn!(%error, "CA signer failed");
            rcgen::Error::RemoteKeyError
        })
    }
}

// === file-backed ===

/// The CA key in memory, decrypted from its sealed copy in the database at start.
pub struct FileSigner {
    key: KeyPair,
}

impl FileSigner {
    /// A new ECDSA P-256 key.
    pub fn generate() -> Result<Self, SignerError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| SignerError::Key(e.to_string()))?;
        Ok(Self { key })
    }

    /// From a PKCS#8 DER private key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, SignerError> {
        let key = KeyPair::try_from(der).map_err(|e| SignerError::Key(e.to_string()))?;
        Ok(Self { key })
    }

    /// The private key as PKCS#8 DER, to be sealed for storage.
    pub fn pkcs8(&self) -> Vec<u8> {
        self.key.serialize_der()
    }
}

impl Signer for FileSigner {
    fn public_key(&self) -> &[u8] {
        PublicKeyData::der_bytes(&self.key)
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        PublicKeyData::algorithm(&self.key)
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignerError> {
        SigningKey::sign(&self.key, message).map_err(|e| SignerError::Sign(e.to_string()))
    }

    fn describe(&self) -> String {
        "key sealed in the database".into()
    }
}

// === PKCS#11 ===

/// Which PKCS#11 token holds the CA key, and how to log in.
#[derive(Clone)]
pub struct Pkcs11Settings {
    /// The vendor's PKCS#11 library (e.g. `/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// The token, by label; takes precedence over `slot`.
    pub token_label: Option<String>,
    /// The slot id, when no token label is given.
    pub slot: Option<u64>,
    /// The user PIN.
    pub pin: String,
    /// The CA key's label; rotation creates keys labelled `{key_label}-{n}`.
    pub key_label: String,
}

/// Never the PIN.
impl std::fmt::Debug for Pkcs11Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Settings")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("slot", &self.slot)
            .field("key_label", &self.key_label)
            .finish_non_exhaustive()
    }
}

/// An open PKCS#11 library and a logged-in session on the token that holds the CA keys.
pub struct Pkcs11Token {
    settings: Pkcs11Settings,
    // The library must outlive its sessions.
    _library: Pkcs11,
    // One session, used by one signature at a time (a PKCS#11 session is not reentrant).
    session: Mutex<Session>,
}

impl std::fmt::Debug for Pkcs11Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Token")
            .field("module", &self.settings.module)
            .field("token_label", &self.settings.token_label)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Token {
    pub fn open(settings: Pkcs11Settings) -> Result<Self, SignerError> {
        let library = Pkcs11::new(&settings.module).map_err(|e| {
            SignerError::Pkcs11(format!(
                "cannot load module {}: {e}",
                settings.module.display()
            ))
        })?;
        match library.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            // Opened again in this process (a restart in place): the library is ready.
            Ok(())
            | Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::CryptokiAlreadyInitialized,
                _,
            )) => {}
            Err(error) => return Err(error.into()),
        }
        let slot = find_slot(&library, &settings)?;
        let session = library.open_rw_session(slot)?;
        let pin = AuthPin::new(settings.pin.clone().into());
        match session.login(UserType::User, Some(&pin)) {
            // PKCS#11 logins are per application: another session of ours logged in already.
            Ok(())
            | Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::UserAlreadyLoggedIn,
                _,
            )) => {}
            Err(error) => return Err(error.into()),
        }
        Ok(Self {
            settings,
            _library: library,
            session: Mutex::new(session),
        })
    }

    pub fn key_label(&self) -> &str {
        &self.settings.key_label
    }

    /// The signer of the key labelled `label`, creating an ECDSA P-256 key pair in the token
    /// (sensitive, never extractable) when there is none.
    pub fn signer(self: &std::sync::Arc<Self>, label: &str) -> Result<Pkcs11Signer, SignerError> {
        let session = self.session.lock().expect("PKCS#11 session lock");
        let private = match find_key(&session, ObjectClass::PRIVATE_KEY, label)? {
            Some(private) => private,
            None => {
                generate_key(&session, label)?;
                find_key(&session, ObjectClass::PRIVATE_KEY, label)?.ok_or_else(|| {
                    SignerError::Pkcs11(format!("key {label:?} not found after generating it"))
                })?
            }
        };
        let public = find_key(&session, ObjectClass::PUBLIC_KEY, label)?.ok_or_else(|| {
            SignerError::Pkcs11(format!("no public key labelled {label:?} in the token"))
        })?;
        let point = session
            .get_attributes(public, &[AttributeType::EcPoint])?
            .into_iter()
            .find_map(|attribute| match attribute {
                Attribute::EcPoint(point) => Some(point),
                _ => None,
            })
            .ok_or_else(|| SignerError::Pkcs11(format!("key {label:?} has no EC point")))?;
        drop(session);
        Ok(Pkcs11Signer {
            token: self.clone(),
            label: label.to_owned(),
            key: private,
            public_key: ec_point(&point)?,
        })
    }
}

fn find_slot(library: &Pkcs11, settings: &Pkcs11Settings) -> Result<Slot, SignerError> {
    let slots = library.get_slots_with_token()?;
    if let Some(label) = &settings.token_label {
        for slot in slots {
            if library.get_token_info(slot)?.label() == label {
                return Ok(slot);
            }
        }
        return Err(SignerError::Pkcs11(format!("no token labelled {label:?}")));
    }
    match settings.slot {
        Some(id) => slots
            .into_iter()
            .find(|slot| slot.id() == id)
            .ok_or_else(|| SignerError::Pkcs11(format!("no token in slot {id}"))),
        None => Err(SignerError::Pkcs11(
            "name the token: a token label or a slot".into(),
        )),
    }
}

fn find_key(
    session: &Session,
    class: ObjectClass,
    label: &str,
) -> Result<Option<ObjectHandle>, SignerError> {
    let found = session.find_objects(&[
        Attribute::Class(class),
        Attribute::KeyType(KeyType::EC),
        Attribute::Label(label.as_bytes().to_vec()),
    ])?;
    Ok(found.into_iter().next())
}

/// The DER OID of the P-256 curve, as `CKA_EC_PARAMS` names it.
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

fn generate_key(session: &Session, label: &str) -> Result<(), SignerError> {
    let label = label.as_bytes().to_vec();
    let public = [
        Attribute::Token(true),
        Attribute::Verify(true),
        Attribute::EcParams(P256_PARAMS.to_vec()),
        Attribute::Label(label.clone()),
    ];
    let private = [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Label(label),
    ];
    session.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)?;
    Ok(())
}

/// `CKA_EC_POINT` is the point wrapped in a DER OCTET STRING; X.509 wants the bare point.
fn ec_point(attribute: &[u8]) -> Result<Vec<u8>, SignerError> {
    let point = yasna::parse_der(attribute, |reader| reader.read_bytes())
        .unwrap_or_else(|_| attribute.to_vec());
    if point.len() != 65 || point[0] != 0x04 {
        return Err(SignerError::Pkcs11(
            "the key is not an uncompressed P-256 point".into(),
        ));
    }
    Ok(point)
}

/// A CA key inside a PKCS#11 token: the token signs a SHA-256 digest computed here.
pub struct Pkcs11Signer {
    token: std::sync::Arc<Pkcs11Token>,
    label: String,
    key: ObjectHandle,
    public_key: Vec<u8>,
}

impl Signer for Pkcs11Signer {
    fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignerError> {
        let digest = Sha256::digest(message);
        let raw = {
            let session = self.token.session.lock().expect("PKCS#11 session lock");
            session.sign(&Mechanism::Ecdsa, self.key, &digest)?
        };
        // The token answers r || s; X.509 wants SEQUENCE { INTEGER r, INTEGER s }.
        if raw.len() != 64 {
            return Err(SignerError::Sign(format!(
                "the token returned a {}-byte ECDSA signature, expected 64",
                raw.len()
            )));
        }
        let (r, s) = raw.split_at(32);
        Ok(yasna::construct_der(|writer| {
            writer.write_sequence(|writer| {
                writer.next().write_bigint_bytes(r, true);
                writer.next().write_bigint_bytes(s, true);
            })
        }))
    }

    fn describe(&self) -> String {
        format!(
            "PKCS#11 key {:?} ({})",
            self.label,
            self.token.settings.module.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_never_show_the_pin() {
        let settings = Pkcs11Settings {
            module: "/lib/x.so".into(),
            token_label: Some("ca".into()),
            slot: None,
            pin: "s3cret-pin".into(),
            key_label: "ampora-ca".into(),
        };
        let shown = format!("{settings:?}");
        assert!(!shown.contains("s3cret-pin"), "{shown}");
        assert!(shown.contains("ampora-ca"), "{shown}");
    }
}
