//! Enrolment: a bootstrap token (or, for a renewal, a valid certificate) exchanged for a
//! certificate. Over OpAMP, as the specification describes it: the agent sends a CSR in
//! `ConnectionSettingsRequest` and is offered `OpAMPConnectionSettings.certificate` (certificate
//! and CA, no key); an agent that accepts connection settings but sends no CSR is offered a key
//! made here with its certificate. Over the API, the same exchange for agents that take their
//! certificate out of band.

use std::time::Duration;

use bytes::Bytes;
use time::OffsetDateTime;
use uuid::Uuid;

use ampora_shared::pb::opamp::{
    AgentCapabilities, AgentToServer, ConnectionSettingsOffers, OpAmpConnectionSettings,
    ServerToAgent, TlsCertificate,
};

use super::certificates::{self, IssueError, Issued};
use super::identity::Admission;
use super::{tokens, Trust};
use crate::audit::AuditContext;
use crate::operators::Actor;
use crate::storage::{AgentCertificate, EnrolRefusal, NewCertificate, StoreError, TokenRefusal};

#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error("no bootstrap token: send it as `Authorization: Bearer <token>`")]
    NoToken,
    #[error(transparent)]
    Token(#[from] TokenRefusal),
    #[error(transparent)]
    Refused(EnrolRefusal),
    #[error(transparent)]
    Issue(#[from] IssueError),
    #[error("the certificate signing request is not UTF-8 PEM")]
    NotPem,
    #[error("the certificate is not due for renewal before {0}")]
    NotDue(OffsetDateTime),
    #[error("storage unavailable: {0}")]
    Store(#[from] StoreError),
}

/// Where an agent's enrolment or renewal came from, for its audit entry.
#[derive(Debug, Clone, Default)]
pub struct Requester {
    /// The agent's address (IP), empty when unknown.
    pub address: String,
    /// The API request's `x-request-id`; empty over OpAMP.
    pub request_id: String,
}

impl Requester {
    fn audit(&self, actor: Actor) -> AuditContext {
        AuditContext {
            actor,
            address: self.address.clone(),
            request_id: self.request_id.clone(),
        }
    }
}

/// A token refused when the certificate is stored (another enrolment spent it meanwhile) is
/// refused like one refused when first checked: the API answers both `403`.
impl From<EnrolRefusal> for EnrolError {
    fn from(refusal: EnrolRefusal) -> Self {
        match refusal {
            EnrolRefusal::Token(token) => EnrolError::Token(token),
            other => EnrolError::Refused(other),
        }
    }
}

/// A certificate issued and stored, with what the agent needs to use it.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub issued: Issued,
    pub certificate: AgentCertificate,
    pub ca_pem: String,
}

impl Trust {
    /// Exchanges a bootstrap token for a certificate: for the key in `csr_pem`, or for a key
    /// made here. `agent` is the uid of the agent asking (over OpAMP); the API has none.
    /// `from` is where the request came from (address, request id): the audit entry names
    /// the token as the actor.
    pub async fn enrol_with_token(
        &self,
        token: &str,
        csr_pem: Option<&str>,
        agent: Option<Uuid>,
        from: &Requester,
    ) -> Result<Enrolled, EnrolError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(EnrolError::NoToken);
        }
        let hash = tokens::hash(token);
        let now = OffsetDateTime::now_utc();
        // A refused token costs no signature; the enrolment itself decides for good.
        let checked = self.store().check_bootstrap_token(&hash, now).await??;
        let issued = self.issue(csr_pem, agent, now)?;
        // The hash names one token row: the one checked is the one `enrol` consumes.
        let audit = from.audit(Actor::BootstrapToken(checked.id));
        self.store_issued(Some(&hash), issued, Default::default(), now, &audit)
            .await
    }

    /// Renews the certificate an agent is identified by, for the key in `csr_pem`, once it
    /// expires within the renewal window. The audit entry names the agent as the actor.
    pub async fn renew(
        &self,
        current: &AgentCertificate,
        csr_pem: &str,
        from: &Requester,
    ) -> Result<Enrolled, EnrolError> {
        let now = OffsetDateTime::now_utc();
        let due = current.not_after - self.config().renewal_window;
        if now < due {
            return Err(EnrolError::NotDue(due));
        }
        let issued = self.issue(Some(csr_pem), Some(current.instance_uid), now)?;
        let audit = from.audit(Actor::Agent(current.instance_uid));
        self.store_issued(None, issued, current.labels.clone(), now, &audit)
            .await
    }

    fn issue(
        &self,
        csr_pem: Option<&str>,
        agent: Option<Uuid>,
        now: OffsetDateTime,
    ) -> Result<Issued, EnrolError> {
        let ca = self.ca();
        let lifetime = self.config().certificate_lifetime;
        Ok(match csr_pem {
            Some(pem) => certificates::from_csr(&ca, pem, agent, lifetime, now)?,
            None => {
                certificates::generated(&ca, agent.unwrap_or_else(Uuid::now_v7), lifetime, now)?
            }
        })
    }

    async fn store_issued(
        &self,
        token_hash: Option<&str>,
        issued: Issued,
        labels: std::collections::BTreeMap<String, String>,
        now: OffsetDateTime,
        audit: &AuditContext,
    ) -> Result<Enrolled, EnrolError> {
        let ca = self.ca();
        let new = NewCertificate {
            fingerprint: issued.fingerprint.clone(),
            instance_uid: issued.instance_uid,
            certificate_der: issued.certificate_der.clone(),
            ca_id: ca.id,
            labels,
            issued_at: issued.issued_at,
            not_after: issued.not_after,
        };
        let certificate = self.store().enrol(token_hash, &new, now, audit).await??;
        self.identities().enrolled(&certificate);
        tracing::info!(
            instance_uid = %certificate.instance_uid,
            fingerprint = %certificate.fingerprint,
            renewal = token_hash.is_none(),
            "certificate issued"
        );
        metrics::counter!("ampora_control_plane_certificates_issued_total",
            "kind" => if token_hash.is_some() { "enrolment" } else { "renewal" })
        .increment(1);
        Ok(Enrolled {
            issued,
            certificate,
            ca_pem: ca.certificate_pem.clone(),
        })
    }

    /// The enrolment an agent's message asks for, if any, given what the identity check
    /// decided. `None`: the message asks for none (or is not allowed to).
    pub async fn enrol_over_opamp(
        &self,
        uid: Uuid,
        message: &AgentToServer,
        bearer_token: &str,
        admission: &Admission,
        from: &Requester,
    ) -> Option<Result<Enrolled, EnrolError>> {
        let csr = csr_of(message);
        let accepts =
            message.capabilities & AgentCapabilities::AcceptsOpAmpConnectionSettings as u64 != 0;
        let token = bearer_token.trim();
        let csr = match csr.map(std::str::from_utf8) {
            Some(Ok(pem)) => Some(pem),
            Some(Err(_)) => return Some(Err(EnrolError::NotPem)),
            None => None,
        };
        match (admission, csr) {
            (Admission::Certified(current), Some(csr)) => {
                Some(self.renew(current, csr, from).await)
            }
            (Admission::Plain | Admission::EnrolmentOnly, Some(csr)) => Some(
                self.enrol_with_token(token, Some(csr), Some(uid), from)
                    .await,
            ),
            // No CSR: a key made here, for an agent that takes connection settings and shows
            // a token of ours (an unrelated `Authorization` header is not an enrolment).
            (Admission::Plain | Admission::EnrolmentOnly, None)
                if accepts && tokens::looks_like_token(token) =>
            {
                Some(self.enrol_with_token(token, None, Some(uid), from).await)
            }
            _ => None,
        }
    }
}

/// The CSR in an agent's `ConnectionSettingsRequest`, if it sent one.
pub fn csr_of(message: &AgentToServer) -> Option<&[u8]> {
    let csr = &message
        .connection_settings_request
        .as_ref()?
        .opamp
        .as_ref()?
        .certificate_request
        .as_ref()?
        .csr;
    (!csr.is_empty()).then_some(csr.as_ref())
}

/// The specification's default heartbeat interval.
const DEFAULT_HEARTBEAT_SECONDS: u64 = 30;

/// Puts the certificate offer in `reply`, beside any other connection settings it carries.
/// Agents apply an offer's heartbeat interval with its certificate, and opamp-go takes 0 for
/// "no heartbeats": the offer names `heartbeat` (the server's setting) or the specification's
/// default.
pub fn offer(reply: &mut ServerToAgent, enrolled: &Enrolled, heartbeat: Option<Duration>) {
    let settings = reply
        .connection_settings
        .get_or_insert_with(ConnectionSettingsOffers::default);
    let opamp = settings
        .opamp
        .get_or_insert_with(OpAmpConnectionSettings::default);
    if opamp.heartbeat_interval_seconds == 0 {
        opamp.heartbeat_interval_seconds = heartbeat
            .map_or(DEFAULT_HEARTBEAT_SECONDS, |interval| {
                interval.as_secs().max(1)
            });
    }
    opamp.certificate = Some(TlsCertificate {
        cert: Bytes::from(enrolled.issued.certificate_pem.clone().into_bytes()),
        private_key: enrolled
            .issued
            .private_key_pem
            .clone()
            .map(|pem| Bytes::from(pem.into_bytes()))
            .unwrap_or_default(),
        ca_cert: Bytes::from(enrolled.ca_pem.clone().into_bytes()),
    });
    // The offer's identity: the agent reports it back once it applied these settings.
    let mut hash = settings.hash.to_vec();
    hash.extend_from_slice(b";certificate=");
    hash.extend_from_slice(enrolled.issued.fingerprint.as_bytes());
    settings.hash = Bytes::from(hash);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_spent_by_a_racing_enrolment_is_refused_as_a_token() {
        assert!(matches!(
            EnrolError::from(EnrolRefusal::Token(TokenRefusal::Used)),
            EnrolError::Token(TokenRefusal::Used)
        ));
        assert!(matches!(
            EnrolError::from(EnrolRefusal::AlreadyEnrolled(uuid::Uuid::nil())),
            EnrolError::Refused(EnrolRefusal::AlreadyEnrolled(_))
        ));
    }
}
