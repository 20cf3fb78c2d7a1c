//! One ingest worker: owns the agents of its partitions, applies their messages in order,
//! writes each round of changes in one transaction, and answers only after the commit.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use ampora_shared::bus::Bus;
use ampora_shared::pb::bus::{
    agent_envelope::Event, AgentEnvelope, GatewayDelivery, Transport as WireTransport,
};
use ampora_shared::pb::opamp::{
    AgentCapabilities, AgentIdentification, AgentRemoteConfig, AgentToServer, AgentToServerFlags,
    ConnectionSettingsOffers, OpAmpConnectionSettings, ServerErrorResponseType, ServerToAgent,
};
use ampora_shared::{server_error, uid};
use bytes::Bytes;
use metrics::Counter;
use prost::Message;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::ownership::Ownership;
use crate::agents::capabilities::SERVER_CAPABILITIES;
use crate::agents::history::EventKind;
use crate::agents::merge::{
    apply_connection_closed, apply_message, event_payload, new_record, EventPayload, Origin,
};
use crate::agents::snapshot::{AgentRecord, AgentStatus, RemoteConfigStatus, Transport};
use crate::assignments::{Assignment, AssignmentWatch};
use crate::audit::AuditContext;
use crate::config::ControlPlaneConfig;
use crate::remote_config::drift::AgentConfig;
use crate::remote_config::{self, AgentOffers, Report};
use crate::storage::{NewEvent, SeenUpdate, Store, StoreError, WriteBatch};
use crate::trust::enrolment::{self, Requester};
use crate::trust::identity::{Admission, Presented};
use crate::trust::Trust;

pub enum WorkItem {
    Envelope(Uuid, AgentEnvelope),
    /// A sweep marked this agent offline in storage for silence since `cutoff`.
    MarkedOffline {
        uid: Uuid,
        cutoff: OffsetDateTime,
    },
    /// This replica no longer owns the partition (or owns it under a new epoch).
    Release(u16),
}

pub struct Worker {
    index: usize,
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    config: Arc<ControlPlaneConfig>,
    ownership: Arc<Ownership>,
    /// Online agents this worker owns, as last committed (or about to be). Boxed, as in the
    /// rounds: each message moves its agent's snapshot out and back in.
    cache: HashMap<Uuid, Box<AgentRecord>>,
    /// Digest of the last message applied per cached agent: a redelivered or retried message
    /// (same sequence number, same bytes) is answered but not applied again.
    last_applied: HashMap<Uuid, u64>,
    /// Uids this worker assigned over WebSocket, by the uid that asked for each. The gateway
    /// reports the closed connection for the uids that spoke on it, so a new uid its agent never
    /// used is closed with the uid that asked for it. Kept while the new uid is cached.
    assigned: HashMap<Uuid, Uuid>,
    /// Heartbeat-only liveness not yet written.
    pending_seen: HashMap<Uuid, SeenUpdate>,
    assignments: AssignmentWatch,
    /// Per cached agent: its assignment and what it was offered.
    configs: HashMap<Uuid, AgentOffers>,
    /// Who is speaking: the identity check and enrolment.
    trust: Arc<Trust>,
    applied_changes: Counter,
    config_offers: Counter,
    applied_heartbeats: Counter,
}

/// What one round of messages leaves to commit, and the replies to send once it is stored.
#[derive(Default)]
struct Uncommitted {
    /// Partitions whose agents this round writes: the commit is fenced by their leases.
    partitions: HashSet<u16>,
    /// Agents whose snapshot this round rewrites, and where that snapshot waits.
    agents: HashMap<Uuid, Staged>,
    /// Agents whose attribute rows must be (re)written: new ones, and changed descriptions.
    described: HashSet<Uuid>,
    /// Agents whose details must be (re)written: new ones, and changed configs, packages or
    /// components. The others' details stay as stored.
    detailed: HashSet<Uuid>,
    events: Vec<NewEvent>,
    /// Agents' config rows to write.
    configs: Vec<AgentConfig>,
    replies: Vec<Reply>,
    /// Agents of the round the cache did not hold, as stored when the round began, read in one
    /// query rather than one per agent. An agent missing here was not read (the query failed).
    loaded: HashMap<Uuid, Preloaded>,
}

/// Where the snapshot an agent's row is written from waits for the commit.
enum Staged {
    /// In the worker's cache (an online agent): messages do not copy it.
    Cached,
    /// Here, as the cache does not keep it (an agent gone offline).
    Held(Box<AgentRecord>),
}

/// What the round's up-front read found for an agent.
enum Preloaded {
    Stored(Box<AgentRecord>),
    NotStored,
}

struct Reply {
    gateway_id: String,
    connection_id: u64,
    message: ServerToAgent,
}

/// What one message told that bears on the agent's remote config.
struct Heard<'a> {
    /// The stored status before the message, when it carried one.
    status_before: Option<&'a RemoteConfigStatus>,
    carried_status: bool,
    effective_changed: bool,
    new_connection: bool,
    described: bool,
    at: OffsetDateTime,
}

impl Worker {
    pub fn new(
        index: usize,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        config: Arc<ControlPlaneConfig>,
        ownership: Arc<Ownership>,
        assignments: AssignmentWatch,
        trust: Arc<Trust>,
    ) -> Self {
        Self {
            index,
            store,
            bus,
            config,
            ownership,
            cache: HashMap::new(),
            last_applied: HashMap::new(),
            assigned: HashMap::new(),
            pending_seen: HashMap::new(),
            assignments,
            configs: HashMap::new(),
            trust,
            config_offers: metrics::counter!("ampora_control_plane_config_offers_total"),
            applied_changes: metrics::counter!("ampora_control_plane_messages_applied_total", "kind" => "change"),
            applied_heartbeats: metrics::counter!("ampora_control_plane_messages_applied_total", "kind" => "heartbeat"),
        }
    }

    pub async fn run(mut self, mut receiver: mpsc::Receiver<WorkItem>) {
        let mut flush = tokio::time::interval(self.config.seen_flush_interval);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_round = tokio::time::Instant::now();
        let mut assignments = self.assignments.subscribe();
        loop {
            let first = tokio::select! {
                item = receiver.recv() => match item {
                    Some(item) => item,
                    None => break,
                },
                _ = flush.tick() => {
                    self.flush_seen().await;
                    // An assignment matters while its uid is online (cached) on the connection
                    // that asked; one whose uid left the cache is done.
                    self.assigned.retain(|_, assigned| self.cache.contains_key(assigned));
                    self.configs.retain(|uid, _| self.cache.contains_key(uid));
                    continue;
                }
                Ok(()) = assignments.changed() => {
                    self.follow_assignments().await;
                    continue;
                }
            };
            let mut items = vec![first];
            gather(&mut receiver, &mut items, self.config.batch_max, next_round).await;
            next_round = tokio::time::Instant::now() + self.config.round_interval;
            metrics::histogram!("ampora_control_plane_round_messages").record(items.len() as f64);
            self.prefetch_identities(&items).await;
            let mut round = Uncommitted {
                loaded: self.load_uncached(&items).await,
                ..Uncommitted::default()
            };
            for item in items {
                self.handle(item, &mut round).await;
            }
            self.commit(round).await;
            if self.pending_seen.len() >= self.config.batch_max {
                self.flush_seen().await;
            }
            let worker = self.index.to_string();
            metrics::gauge!("ampora_control_plane_cached_agents", "worker" => worker.clone())
                .set(self.cache.len() as f64);
            metrics::gauge!("ampora_control_plane_worker_queue_depth", "worker" => worker.clone())
                .set(receiver.len() as f64);
            metrics::gauge!("ampora_control_plane_pending_liveness", "worker" => worker)
                .set(self.pending_seen.len() as f64);
        }
        self.flush_seen().await;
    }

    async fn handle(&mut self, item: WorkItem, round: &mut Uncommitted) {
        match item {
            WorkItem::Envelope(uid, envelope) => self.handle_envelope(uid, envelope, round).await,
            WorkItem::MarkedOffline { uid, cutoff } => {
                // Only trims the cache: the stored status follows liveness flushes, which bring
                // an agent seen at or after the cutoff back online, eviction delivered or not.
                match self.cache.get(&uid) {
                    Some(record) if record.head.last_seen >= cutoff => {
                        let seen = SeenUpdate {
                            instance_uid: uid,
                            last_seen: record.head.last_seen,
                            sequence_num: record.head.sequence_num,
                        };
                        self.pending_seen.entry(uid).or_insert(seen);
                    }
                    _ => {
                        self.forget([uid]);
                        self.pending_seen.remove(&uid);
                    }
                }
            }
            WorkItem::Release(partition) => {
                let subjects = &self.config.subjects;
                let released = |uid: &Uuid| subjects.partition_of(uid) == partition;
                // Snapshots this round has yet to write leave the cache for the round.
                for (uid, staged) in &mut round.agents {
                    if matches!(staged, Staged::Cached) && released(uid) {
                        if let Some(record) = self.cache.remove(uid) {
                            *staged = Staged::Held(record);
                        }
                    }
                }
                self.cache.retain(|uid, _| !released(uid));
                self.last_applied.retain(|uid, _| !released(uid));
                self.assigned.retain(|asker, _| !released(asker));
                self.pending_seen.retain(|uid, _| !released(uid));
                self.configs.retain(|uid, _| !released(uid));
            }
        }
    }

    async fn handle_envelope(
        &mut self,
        uid: Uuid,
        envelope: AgentEnvelope,
        round: &mut Uncommitted,
    ) {
        let origin = Origin {
            gateway_id: envelope.gateway_id.clone(),
            connection_id: envelope.connection_id,
            transport: match WireTransport::try_from(envelope.transport) {
                Ok(WireTransport::Http) => Transport::Http,
                _ => Transport::Websocket,
            },
            remote_addr: envelope.remote_addr.clone(),
            received_at: OffsetDateTime::from_unix_timestamp_nanos(i128::from(
                envelope.received_unix_nano,
            ))
            .unwrap_or_else(|_| OffsetDateTime::now_utc()),
        };
        let reply_to = |message| Reply {
            gateway_id: envelope.gateway_id.clone(),
            connection_id: envelope.connection_id,
            message,
        };
        match envelope.event {
            Some(Event::AgentToServer(payload)) => {
                let digest = payload_digest(&payload);
                let message = match AgentToServer::decode(payload) {
                    Ok(message) => message,
                    Err(error) => {
                        round.replies.push(reply_to(server_error::reply(
                            Bytes::copy_from_slice(uid.as_bytes()),
                            ServerErrorResponseType::BadRequest,
                            &format!("undecodable AgentToServer: {error}"),
                            None,
                        )));
                        return;
                    }
                };
                let presented = Presented {
                    uid,
                    fingerprint: &envelope.client_certificate_sha256,
                    enrolment_only: envelope.enrolment_only,
                };
                let admission = match self
                    .trust
                    .identities()
                    .admit(self.store.as_ref(), presented)
                    .await
                {
                    Ok(admission) => admission,
                    Err(error) => {
                        tracing::warn!(instance_uid = %uid, %error, "cannot check the agent's identity");
                        round.replies.push(reply_to(server_error::reply(
                            Bytes::copy_from_slice(uid.as_bytes()),
                            ServerErrorResponseType::Unavailable,
                            "state storage unavailable",
                            Some(self.config.retry_after),
                        )));
                        return;
                    }
                };
                let reply = match &admission {
                    Admission::Refused(refusal) => {
                        self.refuse(uid, refusal, &origin, round);
                        Some(server_error::reply(
                            Bytes::copy_from_slice(uid.as_bytes()),
                            ServerErrorResponseType::BadRequest,
                            &refusal.reason,
                            None,
                        ))
                    }
                    Admission::EnrolmentOnly => Some(
                        self.enrol_only(uid, &message, &envelope.bearer_token, &origin, round)
                            .await,
                    ),
                    Admission::Certified(_) | Admission::Plain => {
                        if let Admission::Certified(certificate) = &admission {
                            self.retire_superseded(certificate).await;
                        }
                        let reply = self.apply(uid, &message, digest, &origin, round).await;
                        self.enrol(
                            uid,
                            &message,
                            &envelope.bearer_token,
                            &admission,
                            &origin,
                            reply,
                            round,
                        )
                        .await
                    }
                };
                if let Some(reply) = reply {
                    round.replies.push(reply_to(reply));
                }
            }
            Some(Event::ConnectionClosed(closed)) => {
                // A uid assigned on this connection closes with the uid that asked for it: its
                // agent may have left before speaking as the new one.
                let assigned = self.assigned.remove(&uid);
                for uid in std::iter::once(uid).chain(assigned) {
                    self.close_connection(uid, &closed.reason, &origin, round)
                        .await;
                }
            }
            None => tracing::warn!(instance_uid = %uid, "envelope without an event"),
        }
    }

    /// Reads, in one query, the identities a round's messages need that the cache lacks. If
    /// the read fails, each message reads its own (and fails there with the usual answer).
    async fn prefetch_identities(&self, items: &[WorkItem]) {
        let presented: Vec<Presented<'_>> = items
            .iter()
            .filter_map(|item| match item {
                WorkItem::Envelope(uid, envelope)
                    if matches!(envelope.event, Some(Event::AgentToServer(_))) =>
                {
                    Some(Presented {
                        uid: *uid,
                        fingerprint: &envelope.client_certificate_sha256,
                        enrolment_only: envelope.enrolment_only,
                    })
                }
                _ => None,
            })
            .collect();
        if let Err(error) = self
            .trust
            .identities()
            .prefetch(self.store.as_ref(), &presented)
            .await
        {
            tracing::warn!(%error, "cannot read agents' identities");
        }
    }

    /// A message turned away by the identity check: a valid certificate of another agent
    /// claiming `uid` is recorded in `uid`'s history, and nothing else of it changes.
    fn refuse(
        &self,
        uid: Uuid,
        refusal: &crate::trust::identity::Refusal,
        origin: &Origin,
        round: &mut Uncommitted,
    ) {
        metrics::counter!("ampora_control_plane_identity_refusals_total").increment(1);
        tracing::warn!(instance_uid = %uid, reason = %refusal.reason, remote_addr = %origin.remote_addr, "agent message refused");
        let Some(certificate) = &refusal.impersonated_by else {
            return;
        };
        let payload = serde_json::json!({
            "fingerprint": certificate.fingerprint,
            "certificate_instance_uid": certificate.instance_uid,
            "remote_addr": origin.remote_addr,
            "gateway_id": origin.gateway_id,
        });
        round
            .partitions
            .insert(self.config.subjects.partition_of(&uid));
        round.events.push(event(
            uid,
            origin.received_at,
            EventKind::IdentityRefused,
            event_payload(&payload),
        ));
    }

    /// A connection without a certificate that may only enrol: its message is an enrolment
    /// or is refused; nothing of the agent's state is stored.
    async fn enrol_only(
        &self,
        uid: Uuid,
        message: &AgentToServer,
        bearer_token: &str,
        origin: &Origin,
        round: &mut Uncommitted,
    ) -> ServerToAgent {
        let refused = |reason: &str| {
            server_error::reply(
                Bytes::copy_from_slice(uid.as_bytes()),
                ServerErrorResponseType::BadRequest,
                reason,
                None,
            )
        };
        match self
            .trust
            .enrol_over_opamp(
                uid,
                message,
                bearer_token,
                &Admission::EnrolmentOnly,
                &requester(origin),
            )
            .await
        {
            None => refused(
                "this connection has no client certificate: only enrolment is accepted (a \
                 certificate signing request, or connection settings accepted, with a valid \
                 bootstrap token)",
            ),
            Some(Err(error)) => refused(&format!("enrolment refused: {error}")),
            Some(Ok(enrolled)) => {
                self.enrolled(uid, &enrolled, origin, round);
                let mut reply = ServerToAgent {
                    instance_uid: Bytes::copy_from_slice(uid.as_bytes()),
                    capabilities: SERVER_CAPABILITIES,
                    ..Default::default()
                };
                enrolment::offer(&mut reply, &enrolled, self.config.agent_heartbeat_interval);
                reply
            }
        }
    }

    /// After an admitted message was applied: the enrolment or renewal it asks for, if any,
    /// rides on its reply (the offer, or the reason it was refused).
    #[allow(clippy::too_many_arguments)]
    async fn enrol(
        &self,
        uid: Uuid,
        message: &AgentToServer,
        bearer_token: &str,
        admission: &Admission,
        origin: &Origin,
        reply: Option<ServerToAgent>,
        round: &mut Uncommitted,
    ) -> Option<ServerToAgent> {
        // An agent that asked for a new uid is enrolled under it on a later message.
        if message.flags & AgentToServerFlags::RequestInstanceUid as u64 != 0 {
            return reply;
        }
        let Some(outcome) = self
            .trust
            .enrol_over_opamp(uid, message, bearer_token, admission, &requester(origin))
            .await
        else {
            return reply;
        };
        let mut reply = reply.unwrap_or_else(|| ServerToAgent {
            instance_uid: Bytes::copy_from_slice(uid.as_bytes()),
            capabilities: SERVER_CAPABILITIES,
            ..Default::default()
        });
        match outcome {
            Ok(enrolled) => {
                self.enrolled(uid, &enrolled, origin, round);
                enrolment::offer(&mut reply, &enrolled, self.config.agent_heartbeat_interval);
            }
            Err(error) => {
                reply.error_response = server_error::reply(
                    reply.instance_uid.clone(),
                    ServerErrorResponseType::BadRequest,
                    &format!("enrolment refused: {error}"),
                    None,
                )
                .error_response;
            }
        }
        Some(reply)
    }

    /// Records an issued certificate in the agent's history.
    fn enrolled(
        &self,
        uid: Uuid,
        enrolled: &enrolment::Enrolled,
        origin: &Origin,
        round: &mut Uncommitted,
    ) {
        let payload = serde_json::json!({
            "fingerprint": enrolled.certificate.fingerprint,
            "not_after": enrolled.certificate.not_after.unix_timestamp(),
            "labels": enrolled.certificate.labels,
            "renewal": enrolled.certificate.token_id.is_none(),
            "server_generated_key": enrolled.issued.private_key_pem.is_some(),
        });
        round
            .partitions
            .insert(self.config.subjects.partition_of(&uid));
        round.events.push(event(
            uid,
            origin.received_at,
            EventKind::Enrolled,
            event_payload(&payload),
        ));
    }

    /// An agent presented a renewed certificate: any it held before that one is retired
    /// (revoked as superseded), once per certificate and replica. A certificate from a token
    /// has no predecessor to retire (its uid held no valid one), so a reconnecting fleet costs
    /// no writes here.
    async fn retire_superseded(&self, certificate: &crate::storage::AgentCertificate) {
        if certificate.token_id.is_some()
            || !self.trust.identities().first_use(&certificate.fingerprint)
        {
            return;
        }
        match self
            .store
            .retire_superseded(
                certificate.instance_uid,
                &certificate.fingerprint,
                OffsetDateTime::now_utc(),
                &AuditContext::system(),
            )
            .await
        {
            Ok(retired) if !retired.is_empty() => {
                tracing::info!(instance_uid = %certificate.instance_uid, retired = retired.len(), "superseded certificates retired");
                self.trust.identities().revoked(&retired);
                self.trust.changed();
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "cannot retire superseded certificates; they expire on their own");
            }
        }
    }

    /// The connection `origin` names closed: `uid` goes offline if that is still its
    /// connection.
    async fn close_connection(
        &mut self,
        uid: Uuid,
        reason: &str,
        origin: &Origin,
        round: &mut Uncommitted,
    ) {
        let Ok(Some(mut record)) = self.cached_or_stored(uid, round).await else {
            return;
        };
        if let Some(payload) = apply_connection_closed(
            &mut record,
            &origin.gateway_id,
            origin.connection_id,
            reason,
        ) {
            tracing::info!(instance_uid = %uid, %reason, "agent offline: connection closed");
            round
                .partitions
                .insert(self.config.subjects.partition_of(&uid));
            round.events.push(event(
                uid,
                origin.received_at,
                EventKind::Disconnected,
                payload,
            ));
            self.pending_seen.remove(&uid);
            self.stage(round, uid, record);
        } else {
            self.keep_if_online(uid, record);
        }
    }

    /// Applies one message (`digest`: of its bytes); returns the reply the agent should get, if
    /// any.
    async fn apply(
        &mut self,
        uid: Uuid,
        message: &AgentToServer,
        digest: u64,
        origin: &Origin,
        round: &mut Uncommitted,
    ) -> Option<ServerToAgent> {
        let requested_uid = message.flags & AgentToServerFlags::RequestInstanceUid as u64 != 0;
        // An agent asking for a uid becomes the new uid right away: nothing is kept under the old one.
        let (target, stored) = if requested_uid {
            (self.config.subjects.new_instance_uid_beside(&uid), Ok(None))
        } else {
            (uid, self.cached_or_stored(uid, round).await)
        };
        if let Ok(Some(record)) = &stored {
            let duplicate = record.head.sequence_num == message.sequence_num
                && self.last_applied.get(&target) == Some(&digest);
            if duplicate {
                metrics::counter!("ampora_control_plane_duplicates_total").increment(1);
                let reply = (origin.transport == Transport::Http).then(|| ServerToAgent {
                    instance_uid: Bytes::copy_from_slice(uid.as_bytes()),
                    capabilities: SERVER_CAPABILITIES,
                    ..Default::default()
                });
                if let Ok(Some(record)) = stored {
                    self.keep_if_online(target, record);
                }
                return reply;
            }
        }
        let (mut record, known) = match stored {
            Ok(Some(record)) => (record, true),
            Ok(None) => (Box::new(new_record(target, origin)), false),
            Err(error) => {
                tracing::warn!(instance_uid = %uid, %error, "cannot load agent");
                return Some(server_error::reply(
                    Bytes::copy_from_slice(uid.as_bytes()),
                    ServerErrorResponseType::Unavailable,
                    "state storage unavailable",
                    Some(self.config.retry_after),
                ));
            }
        };
        let status_before = message
            .remote_config_status
            .as_ref()
            .and_then(|_| record.head.summary.remote_config_status.clone());
        let mut outcome = apply_message(&mut record, known, message, origin);
        round
            .partitions
            .insert(self.config.subjects.partition_of(&target));
        self.last_applied.insert(target, digest);
        if outcome.snapshot_changed {
            self.applied_changes.increment(1);
        } else {
            self.applied_heartbeats.increment(1);
        }
        let described = outcome
            .events
            .iter()
            .any(|(kind, _)| *kind == EventKind::Description);
        if !known || described {
            round.described.insert(target);
        }
        let effective_changed = outcome
            .events
            .iter()
            .any(|(kind, _)| *kind == EventKind::EffectiveConfig);
        let heard = Heard {
            status_before: status_before.as_ref(),
            carried_status: message.remote_config_status.is_some(),
            effective_changed,
            new_connection: outcome.new_connection,
            described,
            at: origin.received_at,
        };
        let remote_config = self.follow_config(&mut record, &heard, round);
        if !known || outcome.details_changed() {
            round.detailed.insert(target);
        }
        for (kind, payload) in std::mem::take(&mut outcome.events) {
            round
                .events
                .push(event(target, origin.received_at, kind, payload));
        }
        if outcome.snapshot_changed {
            self.pending_seen.remove(&target);
        } else {
            self.pending_seen.insert(
                target,
                SeenUpdate {
                    instance_uid: target,
                    last_seen: record.head.last_seen,
                    sequence_num: record.head.sequence_num,
                },
            );
        }
        let connection_settings = (outcome.new_connection || outcome.report_full_state)
            .then(|| self.connection_settings(&record))
            .flatten();
        let answer = origin.transport == Transport::Http
            || outcome.new_connection
            || outcome.flags() != 0
            || requested_uid
            || remote_config.is_some();
        if requested_uid {
            tracing::info!(old_instance_uid = %uid, instance_uid = %target, "assigned a new instance uid");
            if origin.transport == Transport::Websocket {
                // Asking again means the agent never took the uid it was given before.
                if let Some(unused) = self.assigned.insert(uid, target) {
                    self.close_connection(unused, "another uid was assigned", origin, round)
                        .await;
                }
            }
        }
        if outcome.snapshot_changed {
            self.stage(round, target, record);
        } else {
            self.keep_if_online(target, record);
        }
        answer.then(|| ServerToAgent {
            instance_uid: Bytes::copy_from_slice(uid.as_bytes()),
            flags: outcome.flags(),
            capabilities: SERVER_CAPABILITIES,
            agent_identification: requested_uid.then(|| AgentIdentification {
                new_instance_uid: Bytes::copy_from_slice(target.as_bytes()),
            }),
            remote_config,
            connection_settings,
            ..Default::default()
        })
    }

    /// Follows an agent's remote config after one of its messages: resolves what it should
    /// run, takes in what it reported, stages its config row when anything in it changed, and
    /// returns the config to offer it, if any.
    fn follow_config(
        &mut self,
        record: &mut AgentRecord,
        heard: &Heard<'_>,
        round: &mut Uncommitted,
    ) -> Option<AgentRemoteConfig> {
        let set = self.assignments.current();
        let uid = record.head.instance_uid;
        let view = self.configs.entry(uid).or_default();
        let assignment_changed = view.resolve(&set, record, heard.described);
        if heard.new_connection {
            view.new_connection();
        }
        let status_after = record.head.summary.remote_config_status.as_ref();
        let report = Report {
            // A message without a status left it as it was.
            before: if heard.carried_status {
                heard.status_before
            } else {
                status_after
            },
            after: status_after,
            effective_changed: heard.effective_changed,
            new_connection: heard.new_connection,
            at: heard.at,
        };
        let status_changed = report.before != report.after;
        let mut track_changed = record.config.observe(&report, view.assignment());
        let offer = view.offer(record, heard.at, self.config.offer_retry_interval);
        if offer.is_some() {
            track_changed |= record.config.offered();
        }
        if assignment_changed || track_changed || status_changed {
            round
                .configs
                .push(AgentConfig::of(record, view.assignment()));
        }
        let assignment = offer?;
        round.events.push(offered(uid, &assignment, heard.at));
        self.config_offers.increment(1);
        Some(remote_config::offer(&assignment))
    }

    /// The assignments changed: resolves every cached agent again and offers their new
    /// config to those connected over WebSocket (HTTP agents get it in the reply to their next
    /// poll). The assignment wrote the agents' assigned side already; the offers' history
    /// events are committed, and the offers sent, a round's worth at a time, so the first
    /// agents have theirs while the last are being written.
    async fn follow_assignments(&mut self) {
        let set = self.assignments.current();
        let now = OffsetDateTime::now_utc();
        let mut offers = Vec::new();
        let mut resolved = 0usize;
        for (uid, record) in &mut self.cache {
            let view = self.configs.entry(*uid).or_default();
            if !view.resolve(&set, record, false) {
                continue;
            }
            resolved += 1;
            if record.head.transport != Transport::Websocket {
                continue;
            }
            if let Some(assignment) = view.offer(record, now, self.config.offer_retry_interval) {
                record.config.offered();
                offers.push((
                    *uid,
                    assignment,
                    record.head.gateway_id.clone(),
                    record.head.connection_id,
                ));
            }
        }
        if resolved == 0 {
            return;
        }
        tracing::info!(
            worker = self.index,
            agents = resolved,
            offers = offers.len(),
            newest_assignment = set.newest_id(),
            "assignments changed"
        );
        for chunk in offers.chunks(self.config.batch_max.max(1)) {
            let subjects = &self.config.subjects;
            let batch = WriteBatch {
                events: chunk
                    .iter()
                    .map(|(uid, assignment, ..)| offered(*uid, assignment, now))
                    .collect(),
                fence: Some(
                    self.ownership
                        .fence(chunk.iter().map(|(uid, ..)| subjects.partition_of(uid))),
                ),
                ..WriteBatch::default()
            };
            if let Err(error) = self.store.write(&batch).await {
                tracing::warn!(%error, agents = chunk.len(), "cannot record offers; each is made again on the agent's next message");
                for (uid, ..) in chunk {
                    self.configs.remove(uid);
                }
                continue;
            }
            self.config_offers.increment(chunk.len() as u64);
            for (uid, assignment, gateway_id, connection_id) in chunk {
                self.send(Reply {
                    gateway_id: gateway_id.clone(),
                    connection_id: *connection_id,
                    message: ServerToAgent {
                        instance_uid: Bytes::copy_from_slice(uid.as_bytes()),
                        capabilities: SERVER_CAPABILITIES,
                        remote_config: Some(remote_config::offer(assignment)),
                        ..Default::default()
                    },
                })
                .await;
            }
        }
    }

    /// The heartbeat interval this server wants, for an agent that reports heartbeats.
    fn connection_settings(&self, record: &AgentRecord) -> Option<ConnectionSettingsOffers> {
        let interval = self.config.agent_heartbeat_interval?;
        let heartbeats = AgentCapabilities::ReportsHeartbeat as u64;
        if record.head.capabilities & heartbeats == 0 {
            return None;
        }
        let seconds = interval.as_secs().max(1);
        Some(ConnectionSettingsOffers {
            // Identifies the offer: the agent reports it back when it applied these settings.
            hash: Bytes::from(format!("heartbeat={seconds}s").into_bytes()),
            opamp: Some(OpAmpConnectionSettings {
                heartbeat_interval_seconds: seconds,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    async fn cached_or_stored(
        &mut self,
        uid: Uuid,
        round: &mut Uncommitted,
    ) -> crate::storage::Result<Option<Box<AgentRecord>>> {
        if let Some(record) = self.cache.remove(&uid) {
            return Ok(Some(record));
        }
        match round.loaded.remove(&uid) {
            Some(Preloaded::Stored(record)) => Ok(Some(record)),
            Some(Preloaded::NotStored) => Ok(None),
            None => Ok(self.store.get_agent(uid).await?.map(Box::new)),
        }
    }

    /// Reads the agents `items` name that the cache does not hold, all in one query: after a
    /// reconnect storm or a control-plane restart, every agent of a round is one of those.
    /// If the read fails, each agent is read on its own when its turn comes (and fails there
    /// with the usual answer).
    async fn load_uncached(&self, items: &[WorkItem]) -> HashMap<Uuid, Preloaded> {
        let uncached: HashSet<Uuid> = items
            .iter()
            .filter_map(|item| match item {
                WorkItem::Envelope(uid, _) if !self.cache.contains_key(uid) => Some(*uid),
                _ => None,
            })
            .collect();
        if uncached.is_empty() {
            return HashMap::new();
        }
        let uids: Vec<Uuid> = uncached.into_iter().collect();
        match self.store.get_agents(&uids).await {
            Ok(records) => {
                let mut loaded: HashMap<Uuid, Preloaded> = uids
                    .into_iter()
                    .map(|uid| (uid, Preloaded::NotStored))
                    .collect();
                for record in records {
                    loaded.insert(
                        record.head.instance_uid,
                        Preloaded::Stored(Box::new(record)),
                    );
                }
                loaded
            }
            Err(error) => {
                tracing::warn!(%error, agents = uids.len(), "cannot load agents");
                HashMap::new()
            }
        }
    }

    /// Keeps a changed snapshot for the round's commit: an online agent's in the cache, the
    /// others' in the round.
    fn stage(&mut self, round: &mut Uncommitted, uid: Uuid, record: Box<AgentRecord>) {
        if record.head.status == AgentStatus::Online {
            round.agents.insert(uid, Staged::Cached);
            self.cache.insert(uid, record);
        } else {
            self.last_applied.remove(&uid);
            round.agents.insert(uid, Staged::Held(record));
        }
    }

    /// Offline agents leave the cache, which so holds about the online fleet this worker owns.
    fn keep_if_online(&mut self, uid: Uuid, record: Box<AgentRecord>) {
        if record.head.status == AgentStatus::Online {
            self.cache.insert(uid, record);
        } else {
            self.last_applied.remove(&uid);
        }
    }

    fn forget(&mut self, uids: impl IntoIterator<Item = Uuid>) {
        for uid in uids {
            self.cache.remove(&uid);
            self.last_applied.remove(&uid);
            self.configs.remove(&uid);
        }
    }

    async fn commit(&mut self, round: Uncommitted) {
        let Uncommitted {
            partitions,
            agents,
            described,
            detailed,
            events,
            configs,
            mut replies,
            loaded: _,
        } = round;
        let touched: Vec<Uuid> = agents.keys().copied().collect();
        let followed: Vec<Uuid> = configs.iter().map(|config| config.instance_uid).collect();
        // The agents of the round whose stored part `changed` does not name.
        let current = |changed: &HashSet<Uuid>| -> HashSet<Uuid> {
            touched
                .iter()
                .filter(|uid| !changed.contains(uid))
                .copied()
                .collect()
        };
        let records = agents
            .iter()
            .filter_map(|(uid, staged)| match staged {
                Staged::Held(record) => Some(&**record),
                Staged::Cached => self.cache.get(uid).map(|record| &**record),
            })
            .collect();
        let batch = WriteBatch {
            attributes_current: current(&described),
            details_current: current(&detailed),
            agents: records,
            events,
            seen: Vec::new(),
            configs,
            fence: Some(self.ownership.fence(partitions)),
        };
        if !batch.is_empty() {
            let started = Instant::now();
            let result = self.store.write(&batch).await;
            metrics::histogram!("ampora_control_plane_commit_seconds")
                .record(started.elapsed().as_secs_f64());
            if let Err(error) = result {
                let reason = if matches!(error, StoreError::Fenced) {
                    "fenced"
                } else {
                    "unavailable"
                };
                metrics::counter!("ampora_control_plane_commit_errors_total", "reason" => reason)
                    .increment(1);
                tracing::warn!(%error, agents = touched.len(), "commit failed; agents will re-sync");
                // Forget what was not stored: the next message reloads, sees a sequence gap and
                // asks the agent for its full state, and resolves its assignment again.
                self.forget(touched);
                for uid in followed {
                    self.configs.remove(&uid);
                }
                for reply in &mut replies {
                    let uid = uid::from_wire(&reply.message.instance_uid).unwrap_or_default();
                    reply.message = server_error::reply(
                        Bytes::copy_from_slice(uid.as_bytes()),
                        ServerErrorResponseType::Unavailable,
                        "state storage unavailable",
                        Some(self.config.retry_after),
                    );
                }
            }
        }
        for reply in replies {
            self.send(reply).await;
        }
    }

    async fn flush_seen(&mut self) {
        if self.pending_seen.is_empty() {
            return;
        }
        let seen: Vec<SeenUpdate> = self.pending_seen.drain().map(|(_, seen)| seen).collect();
        let subjects = &self.config.subjects;
        let fence = self
            .ownership
            .fence(seen.iter().map(|s| subjects.partition_of(&s.instance_uid)));
        let batch = WriteBatch {
            seen,
            fence: Some(fence),
            ..WriteBatch::default()
        };
        match self.store.write(&batch).await {
            Ok(()) => {}
            // Someone else owns these agents now: their liveness is theirs to write.
            Err(StoreError::Fenced) => self.forget(batch.seen.iter().map(|s| s.instance_uid)),
            Err(error) => {
                tracing::warn!(%error, agents = batch.seen.len(), "liveness flush failed; will retry");
                for seen in batch.seen {
                    self.pending_seen.entry(seen.instance_uid).or_insert(seen);
                }
            }
        }
    }

    async fn send(&self, reply: Reply) {
        let delivery = GatewayDelivery {
            instance_uid: reply.message.instance_uid.clone(),
            connection_id: reply.connection_id,
            server_to_agent: reply.message.encode_to_vec().into(),
            close_after: false,
        };
        let subject = self.config.subjects.gateway(&reply.gateway_id);
        if let Err(error) = self
            .bus
            .publish(&subject, delivery.encode_to_vec().into())
            .await
        {
            metrics::counter!("ampora_control_plane_reply_errors_total").increment(1);
            tracing::warn!(%error, gateway_id = %reply.gateway_id, "cannot deliver reply");
        }
    }
}

/// Adds to `items` what is queued and what arrives until `until`, up to `limit` items in all.
async fn gather<T>(
    receiver: &mut mpsc::Receiver<T>,
    items: &mut Vec<T>,
    limit: usize,
    until: tokio::time::Instant,
) {
    let deadline = tokio::time::sleep_until(until);
    tokio::pin!(deadline);
    while items.len() < limit {
        let room = limit - items.len();
        tokio::select! {
            biased;
            received = receiver.recv_many(items, room) => if received == 0 {
                return;
            },
            _ = &mut deadline => return,
        }
    }
}

/// Identifies a message's bytes, to tell a redelivery from a new message.
fn payload_digest(payload: &[u8]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    payload.hash(&mut hasher);
    hasher.finish()
}

/// The history entry of an offer.
fn offered(uid: Uuid, assignment: &Assignment, at: OffsetDateTime) -> NewEvent {
    let payload = serde_json::json!({
        "hash": assignment.hash,
        "version": assignment.version,
        "configuration_id": assignment.configuration_id,
    });
    event(uid, at, EventKind::ConfigOffered, event_payload(&payload))
}

fn event(
    instance_uid: Uuid,
    at: OffsetDateTime,
    kind: EventKind,
    payload: EventPayload,
) -> NewEvent {
    NewEvent {
        instance_uid,
        at,
        kind: kind.as_str(),
        payload,
    }
}

/// Who the audit log says an agent's enrolment came from: its address without the port, as
/// the API records operators' addresses.
fn requester(origin: &Origin) -> Requester {
    let address = origin
        .remote_addr
        .parse::<std::net::SocketAddr>()
        .map(|addr| addr.ip().to_string())
        .unwrap_or_else(|_| origin.remote_addr.clone());
    Requester {
        address,
        request_id: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_round_gathers_what_arrives_before_its_start() {
        let (sender, mut receiver) = mpsc::channel(16);
        let start = Instant::now();
        tokio::spawn(async move {
            for item in 1..=3 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                sender.send(item).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            sender.send(4).await.unwrap();
        });
        let mut items = vec![0];
        gather(
            &mut receiver,
            &mut items,
            100,
            start + Duration::from_millis(20),
        )
        .await;
        assert_eq!(items, [0, 1, 2, 3]);
        assert_eq!(start.elapsed(), Duration::from_millis(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_round_starts_without_waiting() {
        let (sender, mut receiver) = mpsc::channel(16);
        for item in 1..=5 {
            sender.send(item).await.unwrap();
        }
        let start = Instant::now();
        let mut items = vec![0];
        gather(&mut receiver, &mut items, 4, start + Duration::from_secs(1)).await;
        assert_eq!(items, [0, 1, 2, 3]);
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(receiver.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_quiet_spell_a_round_takes_what_is_queued_and_starts() {
        let (sender, mut receiver) = mpsc::channel(16);
        sender.send(1).await.unwrap();
        let start = Instant::now();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut items = vec![0];
        gather(&mut receiver, &mut items, 100, start).await;
        assert_eq!(items, [0, 1]);
        assert_eq!(start.elapsed(), Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_queue_ends_the_gathering() {
        let (sender, mut receiver) = mpsc::channel(16);
        sender.send(1).await.unwrap();
        drop(sender);
        let start = Instant::now();
        let mut items = vec![0];
        gather(
            &mut receiver,
            &mut items,
            100,
            start + Duration::from_secs(1),
        )
        .await;
        assert_eq!(items, [0, 1]);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
