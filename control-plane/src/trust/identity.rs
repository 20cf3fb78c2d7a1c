//! Who is speaking: an agent enrolled with a certificate is identified by its fingerprint (which
//! the gateway puts in the envelope), never by the uid it claims. A bounded cache keeps the
//! hot path off the database: certificates by fingerprint and, per uid, whether it holds a
//! valid certificate; entries live a short while, and revocations heard on the bus apply at once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use uuid::Uuid;

use crate::storage::{AgentCertificate, Result, Store};

/// What may be done with an agent's message.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Identified by a valid certificate bound to this uid.
    Certified(AgentCertificate),
    /// No certificate, and the uid holds none (loopback or plain mode): as before trust.
    Plain,
    /// The connection has no certificate and the gateway requires one: enrolment only.
    EnrolmentOnly,
    /// Turned away, with why (told to the agent).
    Refused(Refusal),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub reason: String,
    /// A valid certificate of another agent claimed this uid: recorded in this uid's history.
    pub impersonated_by: Option<AgentCertificate>,
}

impl Refusal {
    fn because(reason: impl Into<String>) -> Admission {
        Admission::Refused(Refusal {
            reason: reason.into(),
            impersonated_by: None,
        })
    }
}

/// What the identity check needs of one message: its uid, fingerprint and whether its
/// connection may only enrol.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    pub uid: Uuid,
    pub fingerprint: &'a str,
    pub enrolment_only: bool,
}

struct Cached<T> {
    value: T,
    at: Instant,
}

#[derive(Default)]
struct Cache {
    /// Certificates by fingerprint (only those the database has).
    certificates: HashMap<String, Cached<AgentCertificate>>,
    /// Per uid, whether it holds a valid certificate.
    bound: HashMap<Uuid, Cached<bool>>,
    /// Fingerprints whose older siblings were retired already (see `retire_superseded`).
    retired: HashSet<String>,
}

/// The identity check and its cache; one per control-plane replica, shared by its workers.
pub struct Identities {
    cache: Mutex<Cache>,
    ttl: Duration,
    capacity: usize,
    /// Whether any agent may hold a certificate. Until one does, a message without a
    /// certificate needs no look-up: a fleet that does not use certificates pays nothing.
    /// Set by an enrolment here or by the trust state; never unset.
    any_bound: AtomicBool,
}

impl Identities {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            cache: Mutex::new(Cache::default()),
            ttl,
            capacity: capacity.max(1),
            any_bound: AtomicBool::new(true),
        }
    }

    /// What the database says: whether any agent holds a valid certificate. Only ever turns
    /// the look-ups on: an enrolment made here since the read must not be missed.
    pub fn certificates_exist(&self, any: bool) {
        if any {
            self.any_bound.store(true, Ordering::Relaxed);
        }
    }

    /// At start, before any message: whether any agent holds a valid certificate.
    pub fn start_with(&self, any: bool) {
        self.any_bound.store(any, Ordering::Relaxed);
    }

    fn any_bound(&self) -> bool {
        self.any_bound.load(Ordering::Relaxed)
    }

    /// Reads, in one query, what the cache lacks for a round of messages.
    pub async fn prefetch(&self, store: &dyn Store, presented: &[Presented<'_>]) -> Result<()> {
        let (fingerprints, uids) = {
            let cache = self.cache.lock().expect("identity cache lock");
            let fresh = |at: Instant| at.elapsed() < self.ttl;
            let mut fingerprints: Vec<String> = Vec::new();
            let mut uids: Vec<Uuid> = Vec::new();
            for message in presented {
                if !message.fingerprint.is_empty() {
                    if !cache
                        .certificates
                        .get(message.fingerprint)
                        .is_some_and(|c| fresh(c.at))
                    {
                        fingerprints.push(message.fingerprint.to_owned());
                    }
                } else if !message.enrolment_only
                    && self.any_bound()
                    && !cache.bound.get(&message.uid).is_some_and(|b| fresh(b.at))
                {
                    uids.push(message.uid);
                }
            }
            fingerprints.sort();
            fingerprints.dedup();
            uids.sort();
            uids.dedup();
            (fingerprints, uids)
        };
        if fingerprints.is_empty() && uids.is_empty() {
            return Ok(());
        }
        let now = OffsetDateTime::now_utc();
        let found = store
            .certificate_bindings(&fingerprints, &uids, now)
            .await?;
        let mut cache = self.cache.lock().expect("identity cache lock");
        self.make_room(&mut cache, fingerprints.len() + uids.len());
        let at = Instant::now();
        for uid in uids {
            let bound = found
                .iter()
                .any(|certificate| certificate.instance_uid == uid && certificate.is_valid(now));
            cache.bound.insert(uid, Cached { value: bound, at });
        }
        for certificate in found {
            if certificate.is_valid(now) {
                cache
                    .bound
                    .insert(certificate.instance_uid, Cached { value: true, at });
            }
            if fingerprints.binary_search(&certificate.fingerprint).is_ok() {
                cache.certificates.insert(
                    certificate.fingerprint.clone(),
                    Cached {
                        value: certificate,
                        at,
                    },
                );
            }
        }
        Ok(())
    }

    /// Decides what may be done with one message, reading the database for what the cache
    /// lacks.
    pub async fn admit(&self, store: &dyn Store, presented: Presented<'_>) -> Result<Admission> {
        if let Some(admission) = self.decide(presented) {
            return Ok(admission);
        }
        self.prefetch(store, &[presented]).await?;
        Ok(self.decide(presented).unwrap_or_else(|| {
            // Not in the database: the gateway let through a certificate Ampora never issued.
            Refusal::because("unknown client certificate: not issued by this server")
        }))
    }

    /// The decision from the cache alone; `None` when it lacks something.
    fn decide(&self, presented: Presented<'_>) -> Option<Admission> {
        let cache = self.cache.lock().expect("identity cache lock");
        let fresh = |at: Instant| at.elapsed() < self.ttl;
        if !presented.fingerprint.is_empty() {
            let certificate = &cache
                .certificates
                .get(presented.fingerprint)
                .filter(|c| fresh(c.at))?
                .value;
            return Some(judge(certificate, presented.uid, OffsetDateTime::now_utc()));
        }
        if presented.enrolment_only {
            return Some(Admission::EnrolmentOnly);
        }
        if !self.any_bound() {
            return Some(Admission::Plain);
        }
        let bound = cache.bound.get(&presented.uid).filter(|b| fresh(b.at))?;
        Some(if bound.value {
            Refusal::because(format!(
                "instance uid {} is enrolled with a client certificate: connect with it",
                presented.uid
            ))
        } else {
            Admission::Plain
        })
    }

    /// A certificate was issued to `uid` here: its messages must now come with one.
    pub fn enrolled(&self, certificate: &AgentCertificate) {
        self.any_bound.store(true, Ordering::Relaxed);
        let mut cache = self.cache.lock().expect("identity cache lock");
        self.make_room(&mut cache, 2);
        let at = Instant::now();
        cache
            .bound
            .insert(certificate.instance_uid, Cached { value: true, at });
        cache.certificates.insert(
            certificate.fingerprint.clone(),
            Cached {
                value: certificate.clone(),
                at,
            },
        );
    }

    /// These fingerprints are revoked (heard from the trust state, or revoked here).
    pub fn revoked(&self, fingerprints: &[String]) {
        let mut cache = self.cache.lock().expect("identity cache lock");
        for fingerprint in fingerprints {
            if let Some(entry) = cache.certificates.remove(fingerprint) {
                // Its agent may hold no valid certificate any more: read again.
                cache.bound.remove(&entry.value.instance_uid);
            }
        }
    }

    /// Whether superseded certificates must still be retired for this fingerprint; true once.
    pub fn first_use(&self, fingerprint: &str) -> bool {
        let mut cache = self.cache.lock().expect("identity cache lock");
        if cache.retired.len() >= self.capacity {
            cache.retired.clear();
        }
        cache.retired.insert(fingerprint.to_owned())
    }

    /// Keeps the cache within its capacity: expired entries go first, then everything (the
    /// next rounds read again what they need).
    fn make_room(&self, cache: &mut Cache, wanted: usize) {
        if cache.certificates.len() + cache.bound.len() + wanted <= self.capacity {
            return;
        }
        let ttl = self.ttl;
        cache.certificates.retain(|_, c| c.at.elapsed() < ttl);
        cache.bound.retain(|_, b| b.at.elapsed() < ttl);
        if cache.certificates.len() + cache.bound.len() + wanted > self.capacity {
            cache.certificates.clear();
            cache.bound.clear();
        }
    }
}

/// A message carrying `certificate` and claiming `uid`.
fn judge(certificate: &AgentCertificate, uid: Uuid, now: OffsetDateTime) -> Admission {
    if certificate.revoked_at.is_some() {
        return Refusal::because("client certificate revoked");
    }
    if certificate.not_after <= now {
        return Refusal::because("client certificate expired");
    }
    if certificate.instance_uid != uid {
        return Admission::Refused(Refusal {
            reason: format!(
                "this client certificate identifies agent {}, not {uid}",
                certificate.instance_uid
            ),
            impersonated_by: Some(certificate.clone()),
        });
    }
    Admission::Certified(certificate.clone())
}
