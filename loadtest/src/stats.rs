//! What a worker counts, and the snapshot it sends its coordinator every second. Snapshots are
//! cumulative, so the coordinator only keeps each worker's latest and sums them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use hdrhistogram::Histogram;
use rustls::HandshakeKind;
use serde::{Deserialize, Serialize};

use crate::net::ConnectFailure;

/// Latencies are kept in microseconds, up to ten minutes, to three significant figures.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

macro_rules! counters {
    ($($name:ident: $doc:literal),* $(,)?) => {
        /// Monotonic counters; each one's name is its key in the report.
        #[derive(Default)]
        pub struct Counters { $(#[doc = $doc] pub $name: AtomicU64,)* }

        impl Counters {
            fn snapshot(&self) -> BTreeMap<String, u64> {
                BTreeMap::from([$((stringify!($name).to_owned(), self.$name.load(Ordering::Relaxed)),)*])
            }
        }
    };
}

counters! {
    connects: "Connections opened (TCP, TLS and WebSocket upgrade done).",
    connect_errors: "Connection attempts that failed, all steps together.",
    connect_refused: "Connection attempts refused: nothing listening (a dead gateway).",
    connect_tcp_errors: "Connection attempts that failed in TCP otherwise (reset, timed out, no source port).",
    connect_tls_errors: "Connection attempts that failed in the TLS handshake.",
    connect_upgrade_errors: "Connection attempts that failed in the WebSocket upgrade or the HTTP/1.1 handshake.",
    tls_full_handshakes: "TLS handshakes with the certificate sent and verified.",
    tls_resumed_handshakes: "TLS handshakes that resumed one of the agent's earlier sessions.",
    disconnects: "Open connections that ended.",
    sent: "AgentToServer messages sent.",
    full_states: "Messages that carried the agent's full state.",
    heartbeats: "Heartbeat messages (nothing changed).",
    status_changes: "Messages reporting a new health status.",
    replies: "ServerToAgent messages received.",
    full_state_requests: "Replies asking for the full state.",
    server_errors: "Replies carrying a ServerErrorResponse.",
    http_errors: "HTTP exchanges that failed (status, body or connection).",
    configs_offered: "Remote configs received that the agent did not run yet.",
    configs_applied: "Remote configs reported APPLIED.",
    configs_failed: "Remote configs reported FAILED.",
}

/// Per remote-config hash: when the fleet received it, how often, and the outcomes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ConfigRollout {
    /// The first agent's first offer.
    pub first_offered_unix_ns: u64,
    /// The last agent's first offer: the whole fleet has it from then on.
    pub last_offered_unix_ns: u64,
    /// Agents offered it at least once.
    pub offered: u64,
    /// Offers received, repeats included.
    pub offers: u64,
    /// Most offers of it one agent received (1 when the server offered it once each).
    pub max_offers_per_agent: u32,
    /// Agents' first offers per tenth of a second (unix time in units of 100 ms), so that the
    /// offer latency's percentiles can be read against the moment of the assignment.
    pub offered_per_100ms: BTreeMap<u64, u64>,
    pub applied: u64,
    pub failed: u64,
}

impl ConfigRollout {
    pub fn merge(&mut self, other: &ConfigRollout) {
        if self.offers == 0 {
            *self = other.clone();
            return;
        }
        if other.offers == 0 {
            return;
        }
        self.first_offered_unix_ns = self.first_offered_unix_ns.min(other.first_offered_unix_ns);
        self.last_offered_unix_ns = self.last_offered_unix_ns.max(other.last_offered_unix_ns);
        self.offered += other.offered;
        self.offers += other.offers;
        self.max_offers_per_agent = self.max_offers_per_agent.max(other.max_offers_per_agent);
        for (tenth, count) in &other.offered_per_100ms {
            *self.offered_per_100ms.entry(*tenth).or_default() += count;
        }
        self.applied += other.applied;
        self.failed += other.failed;
    }
}

pub struct Stats {
    pub counters: Counters,
    /// Connections open now.
    connected: AtomicI64,
    /// Agents whose current connection has had its first reply, i.e. whose state the server
    /// has committed since they (re)connected.
    ready: AtomicI64,
    first_disconnect_unix_ns: AtomicU64,
    last_ready_unix_ns: AtomicU64,
    connect_latency: Mutex<Histogram<u64>>,
    first_reply_latency: Mutex<Histogram<u64>>,
    http_round_trip: Mutex<Histogram<u64>>,
    rollouts: Mutex<BTreeMap<String, ConfigRollout>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            counters: Counters::default(),
            connected: AtomicI64::new(0),
            ready: AtomicI64::new(0),
            first_disconnect_unix_ns: AtomicU64::new(u64::MAX),
            last_ready_unix_ns: AtomicU64::new(0),
            connect_latency: Mutex::new(new_histogram()),
            first_reply_latency: Mutex::new(new_histogram()),
            http_round_trip: Mutex::new(new_histogram()),
            rollouts: Mutex::default(),
        }
    }
}

fn record(histogram: &Mutex<Histogram<u64>>, elapsed: Duration) {
    let micros = (elapsed.as_micros() as u64).clamp(1, 600_000_000);
    histogram
        .lock()
        .expect("histogram lock")
        .record(micros)
        .expect("value within bounds");
}

pub fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    pub fn connected(&self, took: Duration) {
        count(&self.counters.connects);
        self.connected.fetch_add(1, Ordering::Relaxed);
        record(&self.connect_latency, took);
    }

    pub fn connect_failed(&self, failure: ConnectFailure) {
        count(&self.counters.connect_errors);
        count(match failure {
            ConnectFailure::Refused => &self.counters.connect_refused,
            ConnectFailure::Tcp => &self.counters.connect_tcp_errors,
            ConnectFailure::Tls => &self.counters.connect_tls_errors,
            ConnectFailure::Upgrade => &self.counters.connect_upgrade_errors,
        });
    }

    /// Counts a connection's TLS handshake by kind; `None` (no TLS) counts nothing.
    pub fn tls_handshake(&self, kind: Option<HandshakeKind>) {
        match kind {
            Some(HandshakeKind::Resumed) => count(&self.counters.tls_resumed_handshakes),
            Some(HandshakeKind::Full | HandshakeKind::FullWithHelloRetryRequest) => {
                count(&self.counters.tls_full_handshakes)
            }
            None => {}
        }
    }

    pub fn disconnected(&self, was_ready: bool) {
        count(&self.counters.disconnects);
        self.connected.fetch_sub(1, Ordering::Relaxed);
        if was_ready {
            self.not_ready();
        }
        self.first_disconnect_unix_ns
            .fetch_min(unix_nanos(), Ordering::Relaxed);
    }

    pub fn ready(&self, first_reply_after: Duration) {
        self.ready.fetch_add(1, Ordering::Relaxed);
        self.last_ready_unix_ns
            .fetch_max(unix_nanos(), Ordering::Relaxed);
        record(&self.first_reply_latency, first_reply_after);
    }

    pub fn not_ready(&self) {
        self.ready.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn http_exchange(&self, took: Duration) {
        record(&self.http_round_trip, took);
    }

    /// An offer of `hash` arrived, this agent's `nth` of it (repeats included).
    pub fn config_offer_received(&self, hash: &[u8], nth: u32) {
        let now = unix_nanos();
        let mut rollouts = self.rollouts.lock().expect("rollouts lock");
        let rollout = rollouts.entry(hex(hash)).or_insert(ConfigRollout {
            first_offered_unix_ns: now,
            ..ConfigRollout::default()
        });
        rollout.offers += 1;
        rollout.max_offers_per_agent = rollout.max_offers_per_agent.max(nth);
        if nth == 1 {
            rollout.offered += 1;
            rollout.last_offered_unix_ns = now;
            *rollout
                .offered_per_100ms
                .entry(now / 100_000_000)
                .or_default() += 1;
        }
    }

    /// An offered config the agent did not run yet: it applies it (or fails to).
    pub fn config_offered(&self) {
        count(&self.counters.configs_offered);
    }

    pub fn config_outcome(&self, hash: &[u8], applied: bool) {
        count(if applied {
            &self.counters.configs_applied
        } else {
            &self.counters.configs_failed
        });
        if let Some(rollout) = self
            .rollouts
            .lock()
            .expect("rollouts lock")
            .get_mut(&hex(hash))
        {
            if applied {
                rollout.applied += 1;
            } else {
                rollout.failed += 1;
            }
        }
    }

    pub fn snapshot(&self, agents: u64) -> Snapshot {
        let encode = |histogram: &Mutex<Histogram<u64>>| {
            let mut bytes = Vec::new();
            V2Serializer::new()
                .serialize(&histogram.lock().expect("histogram lock"), &mut bytes)
                .expect("serializing to memory");
            base64::engine::general_purpose::STANDARD.encode(bytes)
        };
        let first_disconnect = self.first_disconnect_unix_ns.load(Ordering::Relaxed);
        Snapshot {
            agents,
            connected: self.connected.load(Ordering::Relaxed).max(0) as u64,
            ready: self.ready.load(Ordering::Relaxed).max(0) as u64,
            first_disconnect_unix_ns: (first_disconnect != u64::MAX).then_some(first_disconnect),
            last_ready_unix_ns: self.last_ready_unix_ns.load(Ordering::Relaxed),
            counters: self.counters.snapshot(),
            histograms: BTreeMap::from([
                ("connect".to_owned(), encode(&self.connect_latency)),
                ("first_reply".to_owned(), encode(&self.first_reply_latency)),
                ("http_round_trip".to_owned(), encode(&self.http_round_trip)),
            ]),
            rollouts: self.rollouts.lock().expect("rollouts lock").clone(),
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One worker's cumulative figures (or, summed, the whole fleet's).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub agents: u64,
    pub connected: u64,
    pub ready: u64,
    pub first_disconnect_unix_ns: Option<u64>,
    pub last_ready_unix_ns: u64,
    pub counters: BTreeMap<String, u64>,
    /// V2-serialized HdrHistograms of microseconds, base64.
    pub histograms: BTreeMap<String, String>,
    pub rollouts: BTreeMap<String, ConfigRollout>,
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(histogram: &Histogram<u64>) -> Latency {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Latency {
            count: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.5)),
            p90_ms: ms(histogram.value_at_quantile(0.9)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// Sums workers' snapshots: counters and gauges add up, histograms merge, the storm window
/// spans the earliest disconnect to the latest recovery.
pub fn merge(snapshots: &[Snapshot]) -> anyhow::Result<(Snapshot, BTreeMap<String, Latency>)> {
    let mut total = Snapshot::default();
    let mut histograms: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
    let mut deserializer = Deserializer::new();
    for snapshot in snapshots {
        total.agents += snapshot.agents;
        total.connected += snapshot.connected;
        total.ready += snapshot.ready;
        total.first_disconnect_unix_ns = match (
            total.first_disconnect_unix_ns,
            snapshot.first_disconnect_unix_ns,
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        total.last_ready_unix_ns = total.last_ready_unix_ns.max(snapshot.last_ready_unix_ns);
        for (name, value) in &snapshot.counters {
            *total.counters.entry(name.clone()).or_default() += value;
        }
        for (hash, rollout) in &snapshot.rollouts {
            total
                .rollouts
                .entry(hash.clone())
                .or_default()
                .merge(rollout);
        }
        for (name, encoded) in &snapshot.histograms {
            let bytes = base64::engine::general_purpose::STANDARD.decode(encoded)?;
            let histogram: Histogram<u64> = deserializer.deserialize(&mut bytes.as_slice())?;
            match histograms.get_mut(name) {
                Some(merged) => merged.add(&histogram)?,
                None => {
                    histograms.insert(name.clone(), histogram);
                }
            }
        }
    }
    let latencies = histograms
        .iter()
        .map(|(name, histogram)| (name.clone(), Latency::of(histogram)))
        .collect();
    Ok((total, latencies))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_snapshots_merge_into_fleet_figures() {
        let first = Stats::default();
        first.connected(Duration::from_millis(2));
        first.ready(Duration::from_millis(10));
        first.config_offer_received(b"\x01\x02", 1);
        first.config_outcome(b"\x01\x02", true);
        let second = Stats::default();
        second.connected(Duration::from_millis(4));
        second.connected(Duration::from_millis(6));
        second.disconnected(false);
        second.config_offer_received(b"\x01\x02", 1);
        second.config_outcome(b"\x01\x02", false);
        second.config_offer_received(b"\x01\x02", 2);

        let (total, latencies) = merge(&[first.snapshot(1), second.snapshot(2)]).unwrap();
        assert_eq!(total.agents, 3);
        assert_eq!(total.connected, 2);
        assert_eq!(total.ready, 1);
        assert_eq!(total.counters["connects"], 3);
        assert_eq!(total.counters["disconnects"], 1);
        assert!(total.first_disconnect_unix_ns.is_some());
        let rollout = &total.rollouts["0102"];
        assert_eq!(
            (rollout.offered, rollout.applied, rollout.failed),
            (2, 1, 1)
        );
        assert_eq!((rollout.offers, rollout.max_offers_per_agent), (3, 2));
        assert_eq!(rollout.offered_per_100ms.values().sum::<u64>(), 2);
        assert!(rollout.first_offered_unix_ns <= rollout.last_offered_unix_ns);
        let connect = &latencies["connect"];
        assert_eq!(connect.count, 3);
        assert!((3.9..=4.1).contains(&connect.p50_ms), "{connect:?}");
        assert!((5.9..=6.1).contains(&connect.max_ms), "{connect:?}");
        assert_eq!(latencies["first_reply"].count, 1);
    }
}
