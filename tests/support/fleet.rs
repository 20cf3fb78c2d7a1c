//! A fleet of simulated agents that behave like real ones under failures: they reconnect
//! through the load balancer, answer ReportFullState, and resend their full state after errors.
//! Each keeps changing its health status (`tick-N`) so tests can check that the server ends
//! with every agent's latest status, and that it never applied an older one after a newer one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ampora_shared::codec;
use ampora_shared::pb::opamp::{
    any_value, AgentDescription, AgentToServer, AnyValue, ComponentHealth, KeyValue, ServerToAgent,
    ServerToAgentFlags,
};
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    WebSocket,
    Http,
}

pub struct SimAgent {
    pub uid: Uuid,
    pub kind: Kind,
    /// The latest tick this agent reported.
    last_tick: AtomicU64,
}

pub struct Fleet {
    pub agents: Vec<Arc<SimAgent>>,
    frozen: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    tasks: JoinSet<()>,
}

const TICK: Duration = Duration::from_millis(300);

fn message(agent: &SimAgent, seq: u64, tick: u64, full: bool) -> AgentToServer {
    let text = |s: String| {
        Some(AnyValue {
            value: Some(any_value::Value::StringValue(s)),
        })
    };
    AgentToServer {
        instance_uid: agent.uid.as_bytes().to_vec().into(),
        sequence_num: seq,
        capabilities: 0x1 | 0x800 | 0x2000,
        agent_description: full.then(|| AgentDescription {
            identifying_attributes: vec![KeyValue {
                key: "service.name".into(),
                value: text(format!("sim-{}", agent.uid)),
            }],
            non_identifying_attributes: vec![KeyValue {
                key: "fleet".into(),
                value: text("cluster-test".into()),
            }],
        }),
        health: Some(ComponentHealth {
            healthy: true,
            status: format!("tick-{tick}"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn wants_full_state(reply: &ServerToAgent) -> bool {
    reply.error_response.is_some() || reply.flags & ServerToAgentFlags::ReportFullState as u64 != 0
}

impl Fleet {
    pub fn start(ws_url: &str, http_url: &str, websocket: usize, http: usize) -> Fleet {
        let frozen = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        let mut agents = Vec::new();
        for (kind, count) in [(Kind::WebSocket, websocket), (Kind::Http, http)] {
            for _ in 0..count {
                let agent = Arc::new(SimAgent {
                    uid: Uuid::now_v7(),
                    kind,
                    last_tick: AtomicU64::new(0),
                });
                agents.push(agent.clone());
                let (frozen, stop) = (frozen.clone(), stop.clone());
                match kind {
                    Kind::WebSocket => {
                        tasks.spawn(run_websocket(agent, ws_url.to_owned(), frozen, stop))
                    }
                    Kind::Http => tasks.spawn(run_http(agent, http_url.to_owned(), frozen, stop)),
                };
            }
        }
        Fleet {
            agents,
            frozen,
            stop,
            tasks,
        }
    }

    /// Agents stop changing and only heartbeat, so the server can catch up with them.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// Agents change their status again every tick.
    pub fn thaw(&self) {
        self.frozen.store(false, Ordering::SeqCst);
    }

    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        while self.tasks.join_next().await.is_some() {}
    }

    /// Waits until every agent has sent `changes` more changes than it had when called;
    /// panics after `within`.
    pub async fn wait_progress(&self, changes: u64, within: Duration) {
        let targets: Vec<u64> = self
            .agents
            .iter()
            .map(|agent| agent.last_tick.load(Ordering::SeqCst) + changes)
            .collect();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let behind = self
                .agents
                .iter()
                .zip(&targets)
                .filter(|(agent, target)| agent.last_tick.load(Ordering::SeqCst) < **target)
                .count();
            if behind == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{behind} agents did not send {changes} more changes within {within:?}"
            );
            tokio::time::sleep(TICK).await;
        }
    }

    /// Waits until the API shows every agent online with the status it last reported; returns
    /// the agents still behind (empty on success).
    /// `http` carries the credentials for the API at `api`.
    pub async fn wait_current(
        &self,
        http: &reqwest::Client,
        api: &str,
        within: Duration,
    ) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let behind = self.behind(http, api).await;
            if behind.is_empty() || tokio::time::Instant::now() > deadline {
                return behind;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn behind(&self, http: &reqwest::Client, api: &str) -> Vec<String> {
        let mut stored: HashMap<String, Value> = HashMap::new();
        let mut token = String::new();
        loop {
            let url = format!(
                "{api}/api/v1/agents?attr=fleet=cluster-test&limit=1000&page_token={token}"
            );
            let Ok(response) = http.get(&url).send().await else {
                return vec!["API unreachable".into()];
            };
            let Ok(body) = response.json::<Value>().await else {
                return vec!["API error".into()];
            };
            for agent in body["agents"].as_array().cloned().unwrap_or_default() {
                stored.insert(
                    agent["instance_uid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    agent,
                );
            }
            match body["next_page_token"].as_str() {
                Some(next) => token = next.to_owned(),
                None => break,
            }
        }
        self.agents
            .iter()
            .filter_map(|agent| {
                let expected = format!("tick-{}", agent.last_tick.load(Ordering::SeqCst));
                let found = stored.get(&agent.uid.to_string());
                let ok = found.is_some_and(|a| {
                    a["status"] == "online" && a["health"]["status"] == expected.as_str()
                });
                (!ok).then(|| {
                    format!(
                        "{} ({:?}) expected {expected} online, found {:?} {:?}",
                        agent.uid,
                        agent.kind,
                        found.map(|a| a["health"]["status"].clone()),
                        found.map(|a| a["status"].clone())
                    )
                })
            })
            .collect()
    }

    /// Checks that no agent's history ever went back: the health ticks the server recorded
    /// increase strictly (an older message applied after a newer one, or one applied twice
    /// after a newer one, would break this).
    pub async fn history_in_order(
        &self,
        http: &reqwest::Client,
        api: &str,
        sample: usize,
    ) -> Result<usize, String> {
        let mut checked = 0;
        for agent in self.agents.iter().take(sample) {
            let url = format!("{api}/api/v1/agents/{}/events?limit=1000", agent.uid);
            let body: Value = http
                .get(&url)
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            let ticks: Vec<u64> = body["events"]
                .as_array()
                .unwrap()
                .iter()
                .rev()
                .filter(|e| e["kind"] == "health")
                .filter_map(|e| {
                    e["payload"]["status"]
                        .as_str()?
                        .strip_prefix("tick-")?
                        .parse()
                        .ok()
                })
                .collect();
            if !ticks.windows(2).all(|w| w[0] < w[1]) {
                return Err(format!(
                    "agent {} history out of order: {ticks:?}",
                    agent.uid
                ));
            }
            checked += ticks.len();
        }
        Ok(checked)
    }
}

async fn run_websocket(
    agent: Arc<SimAgent>,
    url: String,
    frozen: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let mut seq = 0u64;
    let mut tick = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let Ok(Ok((mut socket, _))) = tokio::time::timeout(
            Duration::from_secs(3),
            tokio_tungstenite::connect_async(&url),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        // A (re)connected agent reports everything.
        let mut full = true;
        let mut ticker = tokio::time::interval(TICK);
        'connected: loop {
            if stop.load(Ordering::SeqCst) {
                let _ = socket.close(None).await;
                return;
            }
            tokio::select! {
                _ = ticker.tick() => {
                    if !frozen.load(Ordering::SeqCst) {
                        tick += 1;
                    }
                    let outgoing = message(&agent, seq, tick, full);
                    seq += 1;
                    full = false;
                    agent.last_tick.store(tick, Ordering::SeqCst);
                    let frame = codec::ws_frame_from_encoded(&outgoing.encode_to_vec());
                    if socket.send(Message::Binary(frame.into())).await.is_err() {
                        break 'connected;
                    }
                }
                incoming = socket.next() => match incoming {
                    Some(Ok(Message::Binary(data))) => {
                        if let Ok(reply) = codec::ws_payload(&data).map_err(|_| ()).and_then(|p| ServerToAgent::decode(p).map_err(|_| ())) {
                            full |= wants_full_state(&reply);
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break 'connected,
                },
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run_http(
    agent: Arc<SimAgent>,
    url: String,
    frozen: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut seq = 0u64;
    let mut tick = 0u64;
    let mut full = true;
    let mut ticker = tokio::time::interval(TICK);
    while !stop.load(Ordering::SeqCst) {
        ticker.tick().await;
        if !frozen.load(Ordering::SeqCst) {
            tick += 1;
        }
        let outgoing = message(&agent, seq, tick, full);
        seq += 1;
        agent.last_tick.store(tick, Ordering::SeqCst);
        let response = client
            .post(&url)
            .header("Content-Type", "application/x-protobuf")
            .body(outgoing.encode_to_vec())
            .send()
            .await;
        full = match response {
            Ok(response) if response.status() == 200 => {
                match response.bytes().await.map(ServerToAgent::decode) {
                    Ok(Ok(reply)) => wants_full_state(&reply),
                    _ => true,
                }
            }
            // Not taken: say everything again next time.
            _ => true,
        };
    }
}
