//! A worker process: runs its share of the fleet and prints a cumulative snapshot of its
//! figures as one JSON line per second on standard output. Its plan arrives as the first line
//! on standard input; the end of standard input (the coordinator finishing or dying) stops it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::agent::{self, effective_config_of_size, Agent, Behaviour, Context};
use crate::fleet::{FleetArgs, WorkerPlan};
use crate::net::{Endpoint, SourceAddrs, TlsClient, TlsClientOptions};
use crate::stats::Stats;

/// How long stopping agents get to say goodbye.
const STOP_GRACE: Duration = Duration::from_secs(15);

pub async fn run() -> anyhow::Result<()> {
    let mut input = BufReader::new(tokio::io::stdin()).lines();
    let plan: WorkerPlan = serde_json::from_str(
        &input
            .next_line()
            .await?
            .context("no plan on standard input")?,
    )
    .context("worker plan")?;
    let context = Arc::new(context(&plan.fleet, plan.sources.parse()?)?);
    let stop = context.stop.clone();
    tokio::spawn(async move {
        while let Ok(Some(_)) = input.next_line().await {}
        stop.cancel();
    });

    let tracker = TaskTracker::new();
    tracker.spawn(ramp(plan.clone(), context.clone(), tracker.clone()));
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = ticks.tick() => report(&context.stats, plan.agents)?,
            _ = context.stop.cancelled() => break,
        }
    }
    tracker.close();
    let _ = tokio::time::timeout(STOP_GRACE, tracker.wait()).await;
    report(&context.stats, plan.agents)
}

fn report(stats: &Stats, agents: u64) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(&stats.snapshot(agents))?);
    Ok(())
}

pub fn endpoints(fleet: &FleetArgs) -> anyhow::Result<Vec<Endpoint>> {
    let endpoints = fleet
        .urls
        .iter()
        .chain(&fleet.standby_urls)
        .map(|url| url.parse())
        .collect::<anyhow::Result<Vec<Endpoint>>>()?;
    if endpoints
        .iter()
        .any(|e| e.websocket != endpoints[0].websocket)
    {
        bail!("all URLs must use the same transport (WebSocket or HTTP)");
    }
    Ok(endpoints)
}

/// Builds what the agents share; the coordinator calls it too, to reject bad settings before
/// starting any worker.
pub fn context(fleet: &FleetArgs, sources: SourceAddrs) -> anyhow::Result<Context> {
    let endpoints = endpoints(fleet)?;
    let tls = match (&fleet.ca, endpoints.iter().any(|e| e.tls)) {
        (Some(ca), true) => {
            let host = endpoints[0].addr.ip().to_string();
            let named = endpoints[0]
                .host
                .rsplit_once(':')
                .map(|(name, _)| name.to_owned());
            Some(TlsClient::new(TlsClientOptions {
                ca,
                client_cert: fleet.client_cert.as_deref(),
                client_key: fleet.client_key.as_deref(),
                server_name: fleet
                    .server_name
                    .as_deref()
                    .or(named.as_deref())
                    .unwrap_or(&host),
                resume: !fleet.no_resume,
                alpn_http1: true,
            })?)
        }
        (None, true) => bail!("wss:// and https:// URLs need --ca"),
        (_, false) => None,
    };
    Ok(Context {
        primaries: fleet.urls.len(),
        endpoints,
        sources,
        tls,
        stats: Stats::default(),
        stop: CancellationToken::new(),
        reconnect_jitter: fleet.reconnect_jitter,
        max_message_size: fleet.max_message_size,
    })
}

/// Starts the worker's agents at its share of the ramp rate.
async fn ramp(plan: WorkerPlan, context: Arc<Context>, tracker: TaskTracker) {
    let fleet = &plan.fleet;
    let behaviour = Arc::new(Behaviour {
        heartbeat: fleet.heartbeat,
        status_every: (fleet.status_rate > 0.0)
            .then(|| Duration::from_secs_f64(fleet.agents as f64 / fleet.status_rate)),
        failure_ratio: fleet.failure_ratio,
        fleet: fleet.fleet.clone(),
        initial_effective_config: effective_config_of_size(fleet.effective_config_bytes),
    });
    let workers = fleet.workers.max(1);
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / plan.ramp.max(0.001));
    for i in 0..plan.agents {
        tokio::select! {
            _ = context.stop.cancelled() => return,
            _ = sleep_until(started + interval.mul_f64(i as f64)) => {}
        }
        let global_index = i as usize * workers + plan.index;
        let endpoint = global_index % context.primaries;
        let agent = Agent::new(behaviour.clone());
        if context.endpoints[endpoint].websocket {
            tracker.spawn(agent::websocket::run(agent, endpoint, context.clone()));
        } else {
            tracker.spawn(agent::http::run(agent, endpoint, context.clone()));
        }
    }
}
