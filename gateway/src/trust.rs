//! The gateway's side of agent trust: the control-planes' `TrustState` in, live connections out.
//!
//! At start, and again every `trust_request_interval` until one arrives, the gateway publishes a
//! `TrustRequest`; control-planes answer with their `TrustState` and publish it besides after
//! every change and every few seconds. Each state newer than the one held replaces the trusted
//! CAs and revoked fingerprints of the [`ClientCertificates`] verifier and closes the live
//! connections whose certificate it revokes: every connection that presented a certificate is
//! registered here by its fingerprint for as long as it (or its WebSocket session) lasts.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ampora_shared::bus::{Bus, BusError, Subscription};
use ampora_shared::pb::bus::{TrustRequest, TrustState};
use futures::StreamExt;
use prost::Message;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::tls::client_auth::{self, ClientCertificates, Fingerprint};
use crate::GatewayConfig;

pub struct Trust {
    certificates: Arc<ClientCertificates>,
    /// Connections that presented a certificate, by its fingerprint: (registration id, the
    /// token that closes the connection).
    live: Mutex<HashMap<Fingerprint, Vec<(u64, CancellationToken)>>>,
    next_id: AtomicU64,
    /// `read_unix_nano` of the state applied last; `None` until one is.
    applied: watch::Sender<Option<u64>>,
}

impl Trust {
    /// Subscribes to trust states before asking for one; runs until `stop`.
    pub async fn start(
        bus: Arc<dyn Bus>,
        config: Arc<GatewayConfig>,
        certificates: Arc<ClientCertificates>,
        stop: CancellationToken,
    ) -> Result<Arc<Trust>, BusError> {
        let states = bus.subscribe(&config.subjects.trust_state()).await?;
        let trust = Arc::new(Trust {
            certificates,
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            applied: watch::Sender::new(None),
        });
        let task = tokio::spawn(trust.clone().follow(bus, config, states));
        tokio::spawn(async move {
            stop.cancelled().await;
            task.abort();
        });
        Ok(trust)
    }

    /// Whether a trust state is held, so client certificates can be verified.
    pub fn is_held(&self) -> bool {
        self.applied.borrow().is_some()
    }

    /// Resolves with each newly applied state's `read_unix_nano`.
    pub fn applied(&self) -> watch::Receiver<Option<u64>> {
        self.applied.subscribe()
    }

    pub fn is_revoked(&self, fingerprint: &Fingerprint) -> bool {
        self.certificates.is_revoked(fingerprint)
    }

    async fn follow(
        self: Arc<Self>,
        bus: Arc<dyn Bus>,
        config: Arc<GatewayConfig>,
        mut states: Subscription,
    ) {
        let request = TrustRequest {
            gateway_id: config.gateway_id.clone(),
        }
        .encode_to_vec();
        let subject = config.subjects.trust_request();
        let mut ask = tokio::time::interval(config.trust_request_interval);
        ask.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                message = states.next() => match message {
                    Some(message) => match TrustState::decode(message.payload) {
                        Ok(state) => self.apply(state),
                        Err(error) => tracing::warn!(%error, "dropping an undecodable trust state"),
                    },
                    None => break,
                },
                _ = ask.tick(), if !self.is_held() => {
                    if let Err(error) = bus.publish(&subject, request.clone().into()).await {
                        tracing::debug!(%error, "cannot ask for the trust state");
                    }
                }
            }
        }
        tracing::error!(gateway_id = %config.gateway_id, "trust state subscription ended");
    }

    /// Takes `state` unless it is not newer than the one held.
    pub fn apply(&self, state: TrustState) {
        let newer = self.applied.send_if_modified(|applied| {
            let newer = applied.is_none_or(|held| state.read_unix_nano > held);
            if newer {
                *applied = Some(state.read_unix_nano);
            }
            newer
        });
        if !newer {
            return;
        }
        let revoked: HashSet<Fingerprint> = state
            .revoked_certificate_sha256
            .iter()
            .filter_map(|hex| {
                let fingerprint = client_auth::from_hex(hex);
                if fingerprint.is_none() {
                    tracing::warn!(entry = %hex, "ignoring a revoked fingerprint that is not 64 hex digits");
                }
                fingerprint
            })
            .collect();
        let revoked_count = revoked.len();
        if let Err(error) = self
            .certificates
            .replace(&state.ca_certificates_der, revoked.clone())
        {
            // The revocations still count; the CAs stay those of the last good state.
            tracing::error!(%error, "the trust state names a CA that cannot be used; keeping the trusted CAs held");
            metrics::counter!("ampora_gateway_trust_state_errors_total").increment(1);
            self.certificates.revoke(revoked.clone());
        }
        metrics::counter!("ampora_gateway_trust_states_applied_total").increment(1);
        metrics::gauge!("ampora_gateway_trust_revoked_certificates").set(revoked_count as f64);
        metrics::gauge!("ampora_gateway_trust_cas").set(state.ca_certificates_der.len() as f64);
        let closed = self.close_revoked(&revoked);
        tracing::info!(
            cas = state.ca_certificates_der.len(),
            revoked = revoked_count,
            closed,
            read_unix_nano = state.read_unix_nano,
            "trust state applied"
        );
    }

    fn live(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Fingerprint, Vec<(u64, CancellationToken)>>> {
        self.live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Ends every live connection whose certificate is in `revoked`; returns how many.
    fn close_revoked(&self, revoked: &HashSet<Fingerprint>) -> usize {
        let mut live = self.live();
        let mut closed = 0;
        for fingerprint in revoked {
            for (_, connection) in live.remove(fingerprint).unwrap_or_default() {
                connection.cancel();
                closed += 1;
            }
        }
        drop(live);
        if closed > 0 {
            metrics::counter!("ampora_gateway_connections_revoked_total").increment(closed as u64);
        }
        closed
    }

    /// Registers a connection that presented the certificate `fingerprint`: the returned
    /// token is cancelled when the certificate is revoked (at once, if it already is).
    pub fn watch(self: &Arc<Self>, fingerprint: Fingerprint) -> LiveCertificate {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let revoked = CancellationToken::new();
        self.live()
            .entry(fingerprint)
            .or_default()
            .push((id, revoked.clone()));
        // A state applied between the handshake and now has not seen this connection.
        if self.is_revoked(&fingerprint) {
            revoked.cancel();
        }
        LiveCertificate {
            trust: self.clone(),
            fingerprint,
            id,
            revoked,
        }
    }
}

/// A connection's certificate, watched for revocation while this lives.
pub struct LiveCertificate {
    trust: Arc<Trust>,
    fingerprint: Fingerprint,
    id: u64,
    revoked: CancellationToken,
}

impl LiveCertificate {
    /// Cancelled when the certificate is revoked.
    pub fn revoked(&self) -> &CancellationToken {
        &self.revoked
    }
}

impl Drop for LiveCertificate {
    fn drop(&mut self) {
        let mut live = self.trust.live();
        if let Some(connections) = live.get_mut(&self.fingerprint) {
            connections.retain(|(id, _)| *id != self.id);
            if connections.is_empty() {
                live.remove(&self.fingerprint);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ampora_shared::bus::InProcessBus;

    async fn trust() -> (Arc<Trust>, CancellationToken) {
        let stop = CancellationToken::new();
        let trust = Trust::start(
            Arc::new(InProcessBus::default()),
            Arc::new(GatewayConfig::for_test()),
            Arc::new(ClientCertificates::new(true)),
            stop.clone(),
        )
        .await
        .unwrap();
        (trust, stop)
    }

    fn state(read_unix_nano: u64, revoked: &[Fingerprint]) -> TrustState {
        TrustState {
            ca_certificates_der: Vec::new(),
            revoked_certificate_sha256: revoked.iter().map(client_auth::to_hex).collect(),
            read_unix_nano,
        }
    }

    #[tokio::test]
    async fn revocation_closes_the_live_connections_of_that_certificate_only() {
        let (trust, _stop) = trust().await;
        let (one, other) = ([1u8; 32], [2u8; 32]);
        let first = trust.watch(one);
        let second = trust.watch(one);
        let bystander = trust.watch(other);
        trust.apply(state(10, &[one]));
        assert!(first.revoked().is_cancelled() && second.revoked().is_cancelled());
        assert!(!bystander.revoked().is_cancelled());
        // Connecting again with it is cut at once.
        assert!(trust.watch(one).revoked().is_cancelled());
        drop(bystander);
        assert!(
            trust.live().is_empty(),
            "registrations end with their guards"
        );
    }

    #[tokio::test]
    async fn an_older_state_does_not_undo_a_newer_one() {
        let (trust, _stop) = trust().await;
        let revoked = [3u8; 32];
        assert!(!trust.is_held());
        trust.apply(state(20, &[revoked]));
        trust.apply(state(19, &[]));
        trust.apply(state(20, &[]));
        assert!(trust.is_held());
        assert!(trust.is_revoked(&revoked));
        trust.apply(state(21, &[]));
        assert!(!trust.is_revoked(&revoked));
        assert_eq!(*trust.applied().borrow(), Some(21));
    }
}
