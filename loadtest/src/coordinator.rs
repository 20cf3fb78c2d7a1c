//! The `agents` command: splits the fleet over worker processes (one process may hold only
//! ~19.9k sockets here) and source addresses, shows progress while they run, and ends with a
//! report: connections, message rates, latencies, the reconnect storm (and how many of its TLS
//! handshakes resumed), config rollouts and, given the database, the send → commit latency.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::time::Instant;

use crate::fleet::{FleetArgs, WorkerPlan};
use crate::latency::{self, CommitLatency};
use crate::net::SourceAddrs;
use crate::stats::{self, unix_nanos, Latency, Snapshot};

#[derive(clap::Args, Debug)]
pub struct AgentsArgs {
    #[command(flatten)]
    pub fleet: FleetArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// How long to keep the fleet running once every agent has been started.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// End this long after every agent is ready, if that comes before the duration is up: a
    /// run that must see the whole fleet ready need not guess how long the handshakes take.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub after_ready: Option<Duration>,
    /// How often to print progress.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub progress_interval: Duration,
    /// Also write the latest figures (JSON) here at every progress line, for scripts to watch.
    #[arg(long)]
    pub progress_file: Option<PathBuf>,
    /// Write the final report (JSON) here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// PostgreSQL the control-plane writes to (run with track_commit_timestamp = on): adds the
    /// agent-send → commit latency of health changes to the report.
    #[arg(long)]
    pub database_url: Option<String>,
    /// How long after every agent is ready the send → commit latency starts to count. A ramp
    /// faster than the machine's TLS handshake rate leaves a backlog that takes a while to
    /// drain; the report's 10 s windows show it either way.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
}

/// Figures as the progress file and the report carry them.
#[derive(Debug, Serialize)]
struct Figures {
    elapsed_seconds: f64,
    agents: u64,
    connected: u64,
    ready: u64,
    counters: BTreeMap<String, u64>,
    latency: BTreeMap<String, Latency>,
}

#[derive(Debug, Serialize)]
struct Report {
    workers: usize,
    #[serde(flatten)]
    figures: Figures,
    /// From the start until every agent had its first reply.
    all_ready_after_seconds: Option<f64>,
    /// Rates between the moment every agent was ready and the end.
    steady_rates: BTreeMap<String, f64>,
    /// From the first lost connection to the last agent back with its state committed.
    reconnect_storm_seconds: Option<f64>,
    /// TLS handshakes of the connections opened once every agent was ready, i.e. reconnects:
    /// how many resumed a session instead of paying for a full handshake.
    reconnect_tls_handshakes: Option<TlsHandshakes>,
    rollouts: BTreeMap<String, Rollout>,
    commit_latency: Option<CommitLatency>,
}

#[derive(Debug, Serialize)]
struct TlsHandshakes {
    full: u64,
    resumed: u64,
}

#[derive(Debug, Serialize)]
struct Rollout {
    /// Agents offered the config at least once.
    offered: u64,
    /// Offers received, repeats included.
    offers: u64,
    /// Fewest and most offers one agent of the fleet received (the fewest is 0 while some
    /// agent has not had it).
    min_offers_per_agent: u32,
    max_offers_per_agent: u32,
    applied: u64,
    failed: u64,
    /// From the first agent offered the config to the last.
    offer_spread_seconds: f64,
    /// The first agent's first offer and the last agent's, unix nanoseconds.
    first_offered_unix_ns: u64,
    last_offered_unix_ns: u64,
    /// Agents' first offers per 100 ms, keyed by unix time in tenths of a second.
    offered_per_100ms: BTreeMap<u64, u64>,
}

pub async fn run(mut fleet: FleetArgs, options: RunArgs) -> anyhow::Result<()> {
    let sources: SourceAddrs = fleet.sources.parse()?;
    crate::worker::context(&fleet, sources.clone())?;
    let workers = fleet
        .workers
        .max(fleet.agents.div_ceil(fleet.agents_per_worker.max(1)) as usize)
        .max(1);
    fleet.workers = workers;
    let latest: Arc<Mutex<Vec<Snapshot>>> =
        Arc::new(Mutex::new(vec![Snapshot::default(); workers]));
    let mut running = Vec::with_capacity(workers);
    for index in 0..workers {
        let share = fleet.agents / workers as u64
            + u64::from((index as u64) < fleet.agents % workers as u64);
        let plan = WorkerPlan {
            fleet: fleet.clone(),
            index,
            agents: share,
            ramp: fleet.ramp / workers as f64,
            sources: sources.share(index, workers).to_arg(),
        };
        running.push(spawn_worker(&plan, latest.clone()).await?);
    }
    eprintln!(
        "{} agents over {workers} worker process(es) from {} source address(es), to {}",
        fleet.agents,
        sources.len(),
        fleet.urls.join(", ")
    );

    let started = Instant::now();
    let started_unix_us = (unix_nanos() / 1000) as i64;
    let ramp_time = Duration::from_secs_f64(fleet.agents as f64 / fleet.ramp.max(0.001));
    let mut end = started + ramp_time + options.duration;
    let mut ticks = tokio::time::interval(options.progress_interval);
    let mut previous: Option<(Instant, Snapshot)> = None;
    let mut all_ready: Option<(Instant, Snapshot, i64)> = None;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = tokio::time::sleep_until(end) => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
        let (total, latencies) = stats::merge(&latest.lock().expect("snapshots lock"))?;
        let now = Instant::now();
        if all_ready.is_none() && total.agents == fleet.agents && total.ready >= fleet.agents {
            all_ready = Some((now, total.clone(), (unix_nanos() / 1000) as i64));
            if let Some(after_ready) = options.after_ready {
                end = end.min(now + after_ready);
            }
        }
        eprintln!(
            "{}",
            progress_line(started, previous.as_ref(), &total, &latencies)
        );
        if let Some(path) = &options.progress_file {
            write_json(path, &figures(started, &total, latencies))?;
        }
        previous = Some((now, total));
    }

    let commit_latency = match &options.database_url {
        Some(url) => {
            let window_end = (unix_nanos() / 1000) as i64;
            // Let what was in flight at the end commit.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let warmup = i64::try_from(options.warmup.as_micros()).unwrap_or(i64::MAX);
            let from = all_ready
                .as_ref()
                .map_or(started_unix_us, |(_, _, at)| *at)
                .saturating_add(warmup);
            Some(latency::measure(url, from, window_end).await?)
        }
        None => None,
    };
    let (total, latencies) = stats::merge(&latest.lock().expect("snapshots lock"))?;
    let report = report(
        started,
        workers,
        &total,
        latencies,
        all_ready.as_ref(),
        commit_latency,
    );
    stop_workers(running).await;
    print_summary(&report);
    if let Some(path) = &options.report {
        write_json(path, &report)?;
    }
    Ok(())
}

async fn spawn_worker(
    plan: &WorkerPlan,
    latest: Arc<Mutex<Vec<Snapshot>>>,
) -> anyhow::Result<Worker> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting a worker process")?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(format!("{}\n", serde_json::to_string(plan)?).as_bytes())
        .await?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let index = plan.index;
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Snapshot>(&line) {
                Ok(snapshot) => latest.lock().expect("snapshots lock")[index] = snapshot,
                Err(error) => eprintln!("worker {index}: unreadable report ({error}): {line}"),
            }
        }
    });
    Ok(Worker { child, stdin })
}

/// Closing their input tells workers to stop; their agents say goodbye first.
async fn stop_workers(workers: Vec<Worker>) {
    let mut children = Vec::new();
    for Worker { child, mut stdin } in workers {
        let _ = stdin.shutdown().await;
        drop(stdin);
        children.push(child);
    }
    for mut child in children {
        if tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}

fn figures(started: Instant, total: &Snapshot, latency: BTreeMap<String, Latency>) -> Figures {
    Figures {
        elapsed_seconds: started.elapsed().as_secs_f64(),
        agents: total.agents,
        connected: total.connected,
        ready: total.ready,
        counters: total.counters.clone(),
        latency,
    }
}

fn counter(snapshot: &Snapshot, name: &str) -> u64 {
    snapshot.counters.get(name).copied().unwrap_or(0)
}

fn progress_line(
    started: Instant,
    previous: Option<&(Instant, Snapshot)>,
    total: &Snapshot,
    latencies: &BTreeMap<String, Latency>,
) -> String {
    let rate = |name: &str| match previous {
        Some((at, before)) => {
            (counter(total, name) - counter(before, name)) as f64
                / at.elapsed().as_secs_f64().max(0.001)
        }
        None => 0.0,
    };
    let p99 = |name: &str| latencies.get(name).map_or(0.0, |l| l.p99_ms);
    format!(
        "[{:>5.0}s] agents {} connected {} ready {} | connects/s {:.0} sent/s {:.0} status/s {:.0} replies/s {:.0} \
         | errors: connect {} http {} server {} | p99 connect {:.1} ms, first reply {:.1} ms, http {:.1} ms",
        started.elapsed().as_secs_f64(),
        total.agents,
        total.connected,
        total.ready,
        rate("connects"),
        rate("sent"),
        rate("status_changes"),
        rate("replies"),
        counter(total, "connect_errors"),
        counter(total, "http_errors"),
        counter(total, "server_errors"),
        p99("connect"),
        p99("first_reply"),
        p99("http_round_trip"),
    )
}

fn report(
    started: Instant,
    workers: usize,
    total: &Snapshot,
    latencies: BTreeMap<String, Latency>,
    all_ready: Option<&(Instant, Snapshot, i64)>,
    commit_latency: Option<CommitLatency>,
) -> Report {
    let steady_rates = all_ready
        .map(|(at, before, _)| {
            let seconds = at.elapsed().as_secs_f64().max(0.001);
            [
                "sent",
                "status_changes",
                "heartbeats",
                "replies",
                "connects",
                "disconnects",
            ]
            .into_iter()
            .map(|name| {
                let per_second = (counter(total, name) - counter(before, name)) as f64 / seconds;
                (format!("{name}_per_second"), per_second)
            })
            .collect()
        })
        .unwrap_or_default();
    let reconnect_storm_seconds = total
        .first_disconnect_unix_ns
        .filter(|_| total.ready >= total.agents)
        .map(|lost| total.last_ready_unix_ns.saturating_sub(lost) as f64 / 1e9);
    let since = |before: &Snapshot, name: &str| counter(total, name) - counter(before, name);
    let reconnect_tls_handshakes = all_ready.map(|(_, before, _)| TlsHandshakes {
        full: since(before, "tls_full_handshakes"),
        resumed: since(before, "tls_resumed_handshakes"),
    });
    let rollouts = total
        .rollouts
        .iter()
        .map(|(hash, r)| {
            let rollout = Rollout {
                offered: r.offered,
                offers: r.offers,
                min_offers_per_agent: u32::from(r.offered >= total.agents),
                max_offers_per_agent: r.max_offers_per_agent,
                applied: r.applied,
                failed: r.failed,
                offer_spread_seconds: r
                    .last_offered_unix_ns
                    .saturating_sub(r.first_offered_unix_ns)
                    as f64
                    / 1e9,
                first_offered_unix_ns: r.first_offered_unix_ns,
                last_offered_unix_ns: r.last_offered_unix_ns,
                offered_per_100ms: r.offered_per_100ms.clone(),
            };
            (hash.clone(), rollout)
        })
        .collect();
    Report {
        workers,
        all_ready_after_seconds: all_ready.map(|(at, _, _)| (*at - started).as_secs_f64()),
        figures: figures(started, total, latencies),
        steady_rates,
        reconnect_storm_seconds,
        reconnect_tls_handshakes,
        rollouts,
        commit_latency,
    }
}

fn print_summary(report: &Report) {
    let figures = &report.figures;
    println!(
        "agents {} over {} workers, {:.0} s",
        figures.agents, report.workers, figures.elapsed_seconds
    );
    println!(
        "connected {} ready {} at the end",
        figures.connected, figures.ready
    );
    if let Some(seconds) = report.all_ready_after_seconds {
        println!("all agents ready after {seconds:.1} s");
    }
    for (name, value) in &report.steady_rates {
        println!("steady {name}: {value:.0}");
    }
    for (name, latency) in &figures.latency {
        if latency.count > 0 {
            println!(
                "latency {name}: n={} p50 {:.1} ms p90 {:.1} ms p99 {:.1} ms max {:.1} ms",
                latency.count, latency.p50_ms, latency.p90_ms, latency.p99_ms, latency.max_ms
            );
        }
    }
    if let Some(seconds) = report.reconnect_storm_seconds {
        println!(
            "reconnect storm: every agent back and committed {seconds:.1} s after the first loss"
        );
    }
    if let Some(&TlsHandshakes { full, resumed }) = report.reconnect_tls_handshakes.as_ref() {
        if full + resumed > 0 {
            println!(
                "reconnects' TLS handshakes: {} ({resumed} resumed, {:.1}%; {full} full)",
                full + resumed,
                100.0 * resumed as f64 / (full + resumed) as f64
            );
        }
    }
    for (hash, rollout) in &report.rollouts {
        println!(
            "config {hash}: offered to {} agents within {:.2} s, {} offers (per agent: min {}, max {}), {} applied, {} failed",
            rollout.offered,
            rollout.offer_spread_seconds,
            rollout.offers,
            rollout.min_offers_per_agent,
            rollout.max_offers_per_agent,
            rollout.applied,
            rollout.failed
        );
    }
    if let Some(commit) = &report.commit_latency {
        println!(
            "send → commit: {} health changes, {:.0}/s, p50 {:.1} ms p90 {:.1} ms p99 {:.1} ms p99.9 {:.1} ms max {:.1} ms",
            commit.committed, commit.committed_per_second, commit.p50_ms, commit.p90_ms, commit.p99_ms, commit.p999_ms, commit.max_ms
        );
        for window in &commit.windows {
            println!(
                "send → commit, sent at {:>4} s +{}: {} health changes, p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
                window.from_second, latency::WINDOW_SECONDS, window.committed, window.p50_ms, window.p99_ms, window.max_ms
            );
        }
    }
    let counter = |name: &str| figures.counters.get(name).copied().unwrap_or(0);
    println!(
        "errors: connect_errors {} (refused {}, tcp {}, tls {}, upgrade {}), http_errors {}, server_errors {}",
        counter("connect_errors"),
        counter("connect_refused"),
        counter("connect_tcp_errors"),
        counter("connect_tls_errors"),
        counter("connect_upgrade_errors"),
        counter("http_errors"),
        counter("server_errors"),
    );
}

/// Written whole then renamed, so a reader never sees half a file.
fn write_json(path: &std::path::Path, value: &impl Serialize) -> anyhow::Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
