//! Agent trust: Ampora's CA, bootstrap tokens, agents' certificates and who is speaking.
//!
//! # Layout
//! - [`ca`]: the CA — created on first start, its key sealed with the key-encryption key (or in
//!   a PKCS#11 token), rotated on request.
//! - [`signer`]: the [`signer::Signer`] trait the CA signs through: file-backed and PKCS#11.
//! - [`tokens`]: bootstrap tokens, shown once and stored as a hash.
//! - [`certificates`]: issuing agents' client certificates (from a CSR, or with a key made here).
//! - [`identity`]: the check of every agent message against the certificate it came with.
//! - [`enrolment`]: the OpAMP flows (CSR in `ConnectionSettingsRequest`, server-generated key
//!   in `ConnectionSettingsOffers`) and the API's token → certificate exchange.
//! - [`publisher`]: the trust state (CAs, revocations) on the bus for gateways.
//!
//! [`Trust`] holds it together for one control-plane replica.

pub mod ca;
pub mod certificates;
pub mod enrolment;
pub mod identity;
pub mod publisher;
pub mod signer;
pub mod tokens;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::Notify;

use crate::audit::AuditContext;
use crate::storage::{BootstrapToken, NewBootstrapToken, Store, StoreError};
use ca::{Ca, CaError, CaKeys, Kek};
use identity::Identities;
use signer::{Pkcs11Settings, Pkcs11Token};

/// Trust settings; the defaults are documented in the README.
#[derive(Debug, Clone)]
pub struct TrustConfig {
    /// Seals the CA key at rest (`AMPORA_CA_KEK_FILE` / `AMPORA_CA_KEK`).
    pub kek: Option<Arc<Kek>>,
    /// The CA key in a PKCS#11 token instead.
    pub pkcs11: Option<Pkcs11Settings>,
    /// A bootstrap token created without a lifetime lasts this long.
    pub bootstrap_token_ttl: Duration,
    /// How long an agent certificate is valid.
    pub certificate_lifetime: Duration,
    /// An agent may renew its certificate once it expires within this (a CSR earlier than
    /// that is refused).
    pub renewal_window: Duration,
    /// How often the trust state is published besides after each change.
    pub publish_interval: Duration,
    /// How long an identity read from the database is trusted in memory.
    pub identity_cache_ttl: Duration,
    /// Most identities kept in memory.
    pub identity_cache_capacity: usize,
}

impl Default for TrustConfig {
    fn default() -> Self {
        Self {
            kek: None,
            pkcs11: None,
            bootstrap_token_ttl: Duration::from_secs(24 * 3600),
            certificate_lifetime: Duration::from_secs(90 * 24 * 3600),
            renewal_window: Duration::from_secs(30 * 24 * 3600),
            publish_interval: Duration::from_secs(5),
            identity_cache_ttl: Duration::from_secs(10),
            identity_cache_capacity: 200_000,
        }
    }
}

impl TrustConfig {
    /// A random key-encryption key and short intervals.
    pub fn for_test() -> Self {
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .expect("the system's randomness");
        let kek = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes);
        Self {
            kek: Some(Arc::new(Kek::from_base64(&kek).expect("a valid test key"))),
            publish_interval: Duration::from_millis(250),
            identity_cache_ttl: Duration::from_millis(500),
            ..Self::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Signer(#[from] signer::SignerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("another rotation of the CA came first; try again")]
    RotationRaced,
}

/// One replica's view of trust: the current CA (to sign), the identity cache, and a way to
/// have the trust state published at once.
pub struct Trust {
    store: Arc<dyn Store>,
    config: TrustConfig,
    keys: CaKeys,
    ca: RwLock<Arc<Ca>>,
    identities: Identities,
    changed: Notify,
}

impl Trust {
    /// Loads the current CA, creating it on first start.
    pub async fn start(
        store: Arc<dyn Store>,
        config: TrustConfig,
    ) -> Result<Arc<Self>, TrustError> {
        let token = match &config.pkcs11 {
            Some(settings) => {
                let settings = settings.clone();
                let token = tokio::task::spawn_blocking(move || Pkcs11Token::open(settings))
                    .await
                    .expect("opening the PKCS#11 token does not panic")?;
                Some(Arc::new(token))
            }
            None => None,
        };
        let keys = CaKeys {
            kek: config.kek.clone(),
            token,
        };
        let ca = match store.current_ca().await? {
            Some(stored) => Ca::load(&keys, &stored)?,
            None => {
                let now = OffsetDateTime::now_utc();
                let (new, created) = ca::create(&keys, true, now)?;
                let stored = store.create_ca(&new, now, &AuditContext::system()).await?;
                if stored.certificate_der == new.certificate_der {
                    tracing::info!(ca_id = stored.id, key = %created.describe(), "created Ampora's CA");
                    created.stored_as(stored.id)
                } else {
                    // Another replica created one at the same moment: use that.
                    Ca::load(&keys, &stored)?
                }
            }
        };
        tracing::info!(ca_id = ca.id, key = %ca.describe(), "agent CA loaded");
        let identities = Identities::new(config.identity_cache_ttl, config.identity_cache_capacity);
        let snapshot = store.trust_snapshot(OffsetDateTime::now_utc()).await?;
        identities.start_with(snapshot.any_valid);
        Ok(Arc::new(Self {
            store,
            config,
            keys,
            ca: RwLock::new(Arc::new(ca)),
            identities,
            changed: Notify::new(),
        }))
    }

    pub fn config(&self) -> &TrustConfig {
        &self.config
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    pub fn identities(&self) -> &Identities {
        &self.identities
    }

    /// The CA that signs now.
    pub fn ca(&self) -> Arc<Ca> {
        self.ca.read().expect("CA lock").clone()
    }

    /// Follows a rotation made by another replica.
    pub async fn refresh_ca(&self) -> Result<(), TrustError> {
        let Some(stored) = self.store.current_ca().await? else {
            return Ok(());
        };
        if stored.id == self.ca().id {
            return Ok(());
        }
        let ca = Ca::load(&self.keys, &stored)?;
        tracing::info!(ca_id = ca.id, "following a CA rotation");
        *self.ca.write().expect("CA lock") = Arc::new(ca);
        Ok(())
    }

    /// A new CA signs from now on; the old one stays trusted while its certificates last.
    pub async fn rotate_ca(&self, audit: &AuditContext) -> Result<Arc<Ca>, TrustError> {
        let current = self.ca();
        let now = OffsetDateTime::now_utc();
        let (new, created) = ca::create(&self.keys, false, now)?;
        let stored = self
            .store
            .rotate_ca(current.id, &new, now, audit)
            .await?
            .ok_or(TrustError::RotationRaced)?;
        let ca = Arc::new(created.stored_as(stored.id));
        tracing::info!(old_ca_id = current.id, ca_id = ca.id, "CA rotated");
        *self.ca.write().expect("CA lock") = ca.clone();
        self.changed();
        Ok(ca)
    }

    /// Creates a bootstrap token; returns it (the only time it is shown) and its record.
    pub async fn create_token(
        &self,
        ttl: Option<Duration>,
        labels: BTreeMap<String, String>,
        audit: &AuditContext,
    ) -> Result<(String, BootstrapToken), TrustError> {
        let new = tokens::generate();
        let now = OffsetDateTime::now_utc();
        let ttl = ttl.unwrap_or(self.config.bootstrap_token_ttl);
        let record = self
            .store
            .create_bootstrap_token(
                &NewBootstrapToken {
                    token_hash: new.hash,
                    labels,
                    expires_at: now + ttl,
                },
                now,
                audit,
            )
            .await?;
        Ok((new.token, record))
    }

    /// Revokes a certificate; the trust state goes out at once.
    pub async fn revoke_certificate(
        &self,
        fingerprint: &str,
        audit: &AuditContext,
    ) -> Result<Option<crate::storage::AgentCertificate>, TrustError> {
        let now = OffsetDateTime::now_utc();
        let revoked = self
            .store
            .revoke_certificate(fingerprint, "revoked by an operator", now, audit)
            .await?;
        if revoked.is_some() {
            self.identities.revoked(&[fingerprint.to_owned()]);
            self.changed();
        }
        Ok(revoked)
    }

    /// PEM of every CA agents' certificates may chain to, the current one first.
    pub async fn ca_bundle_pem(&self) -> Result<String, TrustError> {
        let snapshot = self.store.trust_snapshot(OffsetDateTime::now_utc()).await?;
        Ok(snapshot
            .cas
            .iter()
            .map(|stored| ca::pem_encode("CERTIFICATE", &stored.certificate_der))
            .collect())
    }

    /// Asks the publisher to publish the trust state now.
    pub fn changed(&self) {
        self.changed.notify_one();
    }

    async fn wait_changed(&self) {
        self.changed.notified().await;
    }
}
