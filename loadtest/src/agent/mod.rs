//! One simulated agent's OpAMP state, independent of the transport: what it sends (full state
//! on every new connection, as real clients do; heartbeats; health changes stamped with their
//! send time, so the commit latency can be read back from PostgreSQL) and how it answers what
//! the server says (full-state requests, new instance uids, remote configs).

pub mod http;
pub mod websocket;

use std::sync::Arc;
use std::time::Duration;

use ampora_shared::pb::opamp::server_error_response::Details;
use ampora_shared::pb::opamp::{
    any_value, AgentCapabilities, AgentConfigFile, AgentConfigMap, AgentDescription, AgentToServer,
    AnyValue, ComponentHealth, EffectiveConfig, KeyValue, RemoteConfigStatus, RemoteConfigStatuses,
    ServerErrorResponseType, ServerToAgent, ServerToAgentFlags,
};
use bytes::Bytes;
use rand::Rng;
use uuid::Uuid;

use crate::net::{Endpoint, SourceAddrs, TlsClient};
use crate::stats::{count, unix_nanos, Stats};

/// What every agent task of one worker process shares.
pub struct Context {
    /// The primary URLs, then the standbys.
    pub endpoints: Vec<Endpoint>,
    pub primaries: usize,
    pub sources: SourceAddrs,
    pub tls: Option<TlsClient>,
    pub stats: Stats,
    pub stop: tokio_util::sync::CancellationToken,
    pub reconnect_jitter: Duration,
    /// Largest ServerToAgent the agent accepts.
    pub max_message_size: usize,
}

/// What every agent of a run does, besides connecting.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub heartbeat: Duration,
    /// Mean time between one agent's health changes; `None`: it never changes.
    pub status_every: Option<Duration>,
    /// Share of offered configs reported FAILED instead of APPLIED.
    pub failure_ratio: f64,
    /// Labels every agent, so a run's agents can be told apart in the API.
    pub fleet: String,
    /// What every agent reports running before any config is offered.
    pub initial_effective_config: Option<EffectiveConfig>,
}

/// A collector-like effective config, valid YAML of exactly `size` bytes (none for 0).
pub fn effective_config_of_size(size: usize) -> Option<EffectiveConfig> {
    if size == 0 {
        return None;
    }
    const HEADER: &str = "processors:\n";
    let mut yaml = String::new();
    for index in 0.. {
        let processor = format!(
            "  attributes/{index}:\n    actions:\n      - key: deployment.environment\n        value: production\n        action: upsert\n"
        );
        if HEADER.len().max(yaml.len()) + processor.len() > size {
            break;
        }
        if yaml.is_empty() {
            yaml.push_str(HEADER);
        }
        yaml.push_str(&processor);
    }
    // A comment line fills the rest, so the size is exact and the YAML stays whole.
    let rest = size.saturating_sub(yaml.len());
    if rest > 0 {
        yaml.push('#');
        yaml.push_str(&" ".repeat(rest.saturating_sub(2)));
        if rest > 1 {
            yaml.push('\n');
        }
    }
    Some(EffectiveConfig {
        config_map: Some(AgentConfigMap {
            config_map: [(
                String::new(),
                AgentConfigFile {
                    body: Bytes::from(yaml),
                    content_type: "text/yaml".into(),
                },
            )]
            .into(),
        }),
    })
}

const CAPABILITIES: u64 = AgentCapabilities::ReportsStatus as u64
    | AgentCapabilities::AcceptsRemoteConfig as u64
    | AgentCapabilities::ReportsEffectiveConfig as u64
    | AgentCapabilities::ReportsHealth as u64
    | AgentCapabilities::ReportsRemoteConfig as u64
    | AgentCapabilities::ReportsHeartbeat as u64;

/// What the agent must do after a reply, besides carrying on.
#[derive(Debug, PartialEq)]
pub enum Next {
    Carry,
    /// Send these messages now.
    Send(Vec<AgentToServer>),
    /// The server is unavailable: send the full state again after this long.
    RetryAfter(Duration),
}

pub struct Agent {
    pub uid: Uuid,
    sequence_num: u64,
    status_counter: u64,
    behaviour: Arc<Behaviour>,
    remote_config_status: Option<RemoteConfigStatus>,
    effective_config: Option<EffectiveConfig>,
    /// Offers received per config hash, repeats included: a server should offer a hash once.
    offers: Vec<(Bytes, u32)>,
}

fn text(value: impl Into<String>) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(value.into())),
    })
}

impl Agent {
    pub fn new(behaviour: Arc<Behaviour>) -> Agent {
        Agent {
            uid: Uuid::now_v7(),
            sequence_num: 0,
            status_counter: 0,
            remote_config_status: None,
            effective_config: behaviour.initial_effective_config.clone(),
            offers: Vec::new(),
            behaviour,
        }
    }

    pub fn behaviour(&self) -> &Behaviour {
        &self.behaviour
    }

    fn next(&mut self) -> AgentToServer {
        self.sequence_num += 1;
        AgentToServer {
            instance_uid: Bytes::copy_from_slice(self.uid.as_bytes()),
            sequence_num: self.sequence_num,
            capabilities: CAPABILITIES,
            ..Default::default()
        }
    }

    fn health(&self) -> ComponentHealth {
        ComponentHealth {
            healthy: true,
            status: format!("status-{}", self.status_counter),
            status_time_unix_nano: unix_nanos(),
            ..Default::default()
        }
    }

    /// Everything the agent knows, as on a new connection or when asked.
    pub fn full_state(&mut self, stats: &Stats) -> AgentToServer {
        count(&stats.counters.full_states);
        let mut message = self.next();
        message.agent_description = Some(AgentDescription {
            identifying_attributes: vec![
                KeyValue {
                    key: "service.name".into(),
                    value: text("loadtest-agent"),
                },
                KeyValue {
                    key: "service.instance.id".into(),
                    value: text(self.uid.to_string()),
                },
            ],
            non_identifying_attributes: vec![
                KeyValue {
                    key: "loadtest.fleet".into(),
                    value: text(self.behaviour.fleet.clone()),
                },
                KeyValue {
                    key: "os.type".into(),
                    value: text("linux"),
                },
            ],
        });
        message.health = Some(self.health());
        message.effective_config = self.effective_config.clone();
        message.remote_config_status = self.remote_config_status.clone();
        message
    }

    pub fn heartbeat(&mut self, stats: &Stats) -> AgentToServer {
        count(&stats.counters.heartbeats);
        self.next()
    }

    pub fn status_change(&mut self, stats: &Stats) -> AgentToServer {
        count(&stats.counters.status_changes);
        self.status_counter += 1;
        let mut message = self.next();
        message.health = Some(self.health());
        message
    }

    /// Time until this agent's next health change: exponential around the configured mean, so
    /// the fleet's changes arrive as a steady stream rather than in waves.
    pub fn next_status_in(&self) -> Option<Duration> {
        let mean = self.behaviour.status_every?;
        let uniform: f64 = rand::rng().random_range(f64::EPSILON..1.0);
        Some(mean.mul_f64(-uniform.ln()).min(mean * 20))
    }

    pub fn handle(&mut self, reply: ServerToAgent, stats: &Stats) -> Next {
        count(&stats.counters.replies);
        if let Some(error) = reply.error_response {
            count(&stats.counters.server_errors);
            let retry = match error.details {
                Some(Details::RetryInfo(info)) => {
                    Duration::from_nanos(info.retry_after_nanoseconds)
                }
                None => Duration::ZERO,
            };
            return if error.r#type == ServerErrorResponseType::Unavailable as i32 {
                Next::RetryAfter(retry.max(Duration::from_secs(1)))
            } else {
                Next::RetryAfter(Duration::from_secs(5))
            };
        }
        if let Some(identification) = &reply.agent_identification {
            if let Ok(uid) = Uuid::from_slice(&identification.new_instance_uid) {
                self.uid = uid;
            }
        }
        let mut send = Vec::new();
        if let Some(offer) = reply.remote_config {
            stats.config_offer_received(&offer.config_hash, self.count_offer(&offer.config_hash));
            let already = self
                .remote_config_status
                .as_ref()
                .is_some_and(|status| status.last_remote_config_hash == offer.config_hash);
            if !already {
                stats.config_offered();
                let applied =
                    !rand::rng().random_bool(self.behaviour.failure_ratio.clamp(0.0, 1.0));
                stats.config_outcome(&offer.config_hash, applied);
                self.remote_config_status = Some(RemoteConfigStatus {
                    last_remote_config_hash: offer.config_hash,
                    status: if applied {
                        RemoteConfigStatuses::Applied
                    } else {
                        RemoteConfigStatuses::Failed
                    } as i32,
                    error_message: if applied {
                        String::new()
                    } else {
                        "simulated failure to apply".into()
                    },
                });
                if applied {
                    self.effective_config = Some(EffectiveConfig {
                        config_map: offer.config,
                    });
                }
                let mut message = self.next();
                message.remote_config_status = self.remote_config_status.clone();
                message.effective_config = applied.then(|| self.effective_config.clone()).flatten();
                send.push(message);
            }
        }
        if reply.flags & ServerToAgentFlags::ReportFullState as u64 != 0 {
            count(&stats.counters.full_state_requests);
            send = vec![self.full_state(stats)];
        }
        if send.is_empty() {
            Next::Carry
        } else {
            Next::Send(send)
        }
    }
}

impl Agent {
    /// Counts an offer of `hash`; returns how many this agent has now received.
    fn count_offer(&mut self, hash: &Bytes) -> u32 {
        match self.offers.iter_mut().find(|(seen, _)| seen == hash) {
            Some((_, count)) => {
                *count += 1;
                *count
            }
            None => {
                self.offers.push((hash.clone(), 1));
                1
            }
        }
    }
}

impl Context {
    /// Where to go after `endpoint` failed: its standby (or back to its primary), else the
    /// next primary.
    pub fn failover(&self, endpoint: usize) -> usize {
        let standbys = self.endpoints.len() - self.primaries;
        match (standbys, endpoint < self.primaries) {
            (0, _) => (endpoint + 1) % self.primaries,
            (_, true) => self.primaries + endpoint % standbys,
            (_, false) => (endpoint - self.primaries) % self.primaries,
        }
    }
}

/// A reconnect delay: random within `jitter` at first, then doubling up to 5 s, so a fleet
/// that lost its gateway comes back spread out instead of in one burst.
pub fn backoff(attempt: u32, jitter: Duration) -> Duration {
    let ceiling = (jitter.max(Duration::from_millis(10)) * 2u32.saturating_pow(attempt.min(8)))
        .min(Duration::from_secs(5).max(jitter));
    ceiling.mul_f64(rand::rng().random_range(0.0..1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ampora_shared::pb::opamp::{
        AgentConfigFile, AgentConfigMap, AgentIdentification, AgentRemoteConfig,
    };
    use ampora_shared::server_error;

    fn agent(failure_ratio: f64) -> Agent {
        Agent::new(Arc::new(Behaviour {
            heartbeat: Duration::from_secs(30),
            status_every: Some(Duration::from_secs(1)),
            failure_ratio,
            fleet: "test".into(),
            initial_effective_config: None,
        }))
    }

    fn offer(hash: &[u8]) -> ServerToAgent {
        ServerToAgent {
            remote_config: Some(AgentRemoteConfig {
                config: Some(AgentConfigMap {
                    config_map: [(
                        String::new(),
                        AgentConfigFile {
                            body: Bytes::from_static(b"receivers: {}"),
                            content_type: "text/yaml".into(),
                        },
                    )]
                    .into(),
                }),
                config_hash: Bytes::copy_from_slice(hash),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn agents_report_an_initial_effective_config_of_the_size_asked() {
        let stats = Stats::default();
        let mut agent = Agent::new(Arc::new(Behaviour {
            initial_effective_config: effective_config_of_size(4096),
            ..agent(0.0).behaviour().clone()
        }));
        let config = agent
            .full_state(&stats)
            .effective_config
            .expect("an effective config");
        let files = config.config_map.expect("a config map").config_map;
        assert_eq!(files[""].body.len(), 4096);
        assert!(effective_config_of_size(0).is_none());
        for size in [1, 2, 11, 12, 13, 500] {
            let config = effective_config_of_size(size).unwrap().config_map.unwrap();
            let body = &config.config_map[""].body;
            assert_eq!(body.len(), size);
            assert!(std::str::from_utf8(body).unwrap().lines().all(|line| {
                line.starts_with('#')
                    || line.starts_with(' ')
                    || line == "processors:"
                    || line.is_empty()
            }));
        }
    }

    #[test]
    fn an_offered_config_is_applied_once_and_reported_with_the_effective_config() {
        let stats = Stats::default();
        let mut agent = agent(0.0);
        let first = agent.full_state(&stats);
        let Next::Send(messages) = agent.handle(offer(b"h1"), &stats) else {
            panic!("an offer is answered");
        };
        assert_eq!(messages.len(), 1);
        assert!(messages[0].sequence_num > first.sequence_num);
        let status = messages[0].remote_config_status.as_ref().unwrap();
        assert_eq!(status.status, RemoteConfigStatuses::Applied as i32);
        assert_eq!(&status.last_remote_config_hash[..], b"h1");
        assert!(messages[0].effective_config.is_some());
        assert_eq!(
            agent.handle(offer(b"h1"), &stats),
            Next::Carry,
            "already running it"
        );
        let again = agent.full_state(&stats);
        assert!(again.effective_config.is_some() && again.remote_config_status.is_some());
        let rollout = &stats.snapshot(1).rollouts[&crate::stats::hex(b"h1")];
        assert_eq!(
            (
                rollout.offered,
                rollout.offers,
                rollout.max_offers_per_agent
            ),
            (1, 2, 2),
            "the repeated offer is counted"
        );
    }

    #[test]
    fn failures_follow_the_ratio() {
        let stats = Stats::default();
        let mut agent = agent(1.0);
        let Next::Send(messages) = agent.handle(offer(b"h2"), &stats) else {
            panic!("an offer is answered");
        };
        let status = messages[0].remote_config_status.as_ref().unwrap();
        assert_eq!(status.status, RemoteConfigStatuses::Failed as i32);
        assert!(messages[0].effective_config.is_none());
    }

    #[test]
    fn full_state_requests_new_uids_and_unavailability_are_obeyed() {
        let stats = Stats::default();
        let mut agent = agent(0.0);
        let flagged = ServerToAgent {
            flags: ServerToAgentFlags::ReportFullState as u64,
            ..Default::default()
        };
        let Next::Send(messages) = agent.handle(flagged, &stats) else {
            panic!("full state requested");
        };
        assert!(messages[0].agent_description.is_some());

        let new_uid = Uuid::now_v7();
        let renamed = ServerToAgent {
            agent_identification: Some(AgentIdentification {
                new_instance_uid: Bytes::copy_from_slice(new_uid.as_bytes()),
            }),
            ..Default::default()
        };
        assert_eq!(agent.handle(renamed, &stats), Next::Carry);
        assert_eq!(
            agent.heartbeat(&stats).instance_uid,
            new_uid.as_bytes().to_vec()
        );

        let unavailable = server_error::reply(
            Bytes::new(),
            ServerErrorResponseType::Unavailable,
            "no control-plane",
            Some(Duration::from_secs(3)),
        );
        assert_eq!(
            agent.handle(unavailable, &stats),
            Next::RetryAfter(Duration::from_secs(3))
        );
    }

    fn context(primaries: usize, standbys: usize) -> Context {
        Context {
            endpoints: (0..primaries + standbys)
                .map(|port| format!("ws://127.0.0.1:{}/", 1000 + port).parse().unwrap())
                .collect(),
            primaries,
            sources: "127.0.0.1".parse().unwrap(),
            tls: None,
            stats: Stats::default(),
            stop: tokio_util::sync::CancellationToken::new(),
            reconnect_jitter: Duration::from_secs(1),
            max_message_size: 1 << 20,
        }
    }

    #[test]
    fn failed_agents_move_to_their_standby_and_back_or_else_to_the_next_url() {
        let paired = context(3, 3);
        assert_eq!([0, 1, 2].map(|e| paired.failover(e)), [3, 4, 5]);
        assert_eq!([3, 4, 5].map(|e| paired.failover(e)), [0, 1, 2]);
        let fewer_standbys = context(4, 2);
        assert_eq!(
            [0, 1, 2, 3].map(|e| fewer_standbys.failover(e)),
            [4, 5, 4, 5]
        );
        let alone = context(3, 0);
        assert_eq!([0, 1, 2].map(|e| alone.failover(e)), [1, 2, 0]);
    }

    #[test]
    fn backoff_stays_within_its_ceiling() {
        for attempt in 0..20 {
            assert!(backoff(attempt, Duration::from_secs(1)) <= Duration::from_secs(5));
        }
        assert!(backoff(0, Duration::from_millis(100)) <= Duration::from_millis(100));
    }
}
