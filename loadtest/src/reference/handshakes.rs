//! TLS handshake load: `concurrency` loops that connect, complete a handshake and close, as fast
//! as they can. Run against the gateway's TLS port and against `tls-accept` in the same run, the
//! two rates say what the gateway costs on top of rustls when agents reconnect in a storm.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::{per_second, round2, spawn_progress};
use crate::net::{SourceAddrs, TlsClient, TlsClientOptions};

/// Handshakes before this are not counted: connection set-up and first-touch costs settle.
const WARM_UP: Duration = Duration::from_secs(1);
/// A connect + handshake slower than this counts as an error, so a stalled server cannot hang
/// the run.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Latencies above this are clamped into the histogram's last bucket.
const LATENCY_CEILING_MICROS: u64 = 60_000_000;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// HOST:PORT of the TLS listener.
    #[arg(long)]
    target: String,
    /// PEM CA that signed the server certificate.
    #[arg(long)]
    ca: PathBuf,
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// PEM client certificate, for a server that asks for one.
    #[arg(long, requires = "client_key")]
    client_cert: Option<PathBuf>,
    #[arg(long, requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// Source addresses: `127.0.0.1`, a list, or a range `127.0.1.1-127.0.1.40`.
    #[arg(long, default_value = "127.0.0.1")]
    sources: SourceAddrs,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// How long to count, after a 1 s warm-up.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Resume sessions (what reconnecting agents do) instead of full handshakes.
    #[arg(long)]
    resume: bool,
}

/// What one loop saw inside the counted window.
struct LoopTally {
    latencies_micros: Histogram<u64>,
    errors: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let target = tokio::net::lookup_host(&args.target)
        .await
        .with_context(|| format!("resolving --target {}", args.target))?
        .next()
        .with_context(|| format!("--target {} resolves to no address", args.target))?;
    let client = Arc::new(TlsClient::new(TlsClientOptions {
        ca: &args.ca,
        client_cert: args.client_cert.as_deref(),
        client_key: args.client_key.as_deref(),
        server_name: &args.server_name,
        resume: args.resume,
        alpn_http1: true,
    })?);
    let sources = Arc::new(args.sources);

    let started = Instant::now();
    let window = Window {
        from: started + WARM_UP,
        until: started + WARM_UP + args.duration,
    };
    let completed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let _progress = spawn_progress(Duration::from_secs(1), {
        let (completed, failed) = (completed.clone(), failed.clone());
        move || {
            format!(
                "{:>5.1}s handshakes/s: {} errors: {}",
                started.elapsed().as_secs_f64(),
                completed.swap(0, Ordering::Relaxed),
                failed.swap(0, Ordering::Relaxed)
            )
        }
    });
    let first_error_shown = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let counters = Counters {
                completed: completed.clone(),
                failed: failed.clone(),
                first_error_shown: first_error_shown.clone(),
            };
            tokio::spawn(handshake_loop(
                target,
                client.clone(),
                sources.clone(),
                window,
                counters,
            ))
        })
        .collect();

    let mut latencies_micros = new_histogram();
    let mut errors = 0;
    for handle in loops {
        let tally = handle.await.context("a handshake loop panicked")?;
        latencies_micros
            .add(&tally.latencies_micros)
            .context("merging latency histograms")?;
        errors += tally.errors;
    }
    let handshakes = latencies_micros.len();
    let seconds = args.duration.as_secs_f64();
    let millis_at = |quantile| latencies_micros.value_at_quantile(quantile) as f64 / 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "reference": "handshakes",
            "target": args.target,
            "handshakes": handshakes,
            "seconds": seconds,
            "per_second": round2(per_second(handshakes, seconds)),
            "errors": errors,
            "p50_ms": round2(millis_at(0.5)),
            "p99_ms": round2(millis_at(0.99)),
        })
    );
    Ok(())
}

/// The counted part of the run: a handshake counts when it completes inside it.
#[derive(Clone, Copy)]
struct Window {
    from: Instant,
    until: Instant,
}

/// Shared with the progress line.
struct Counters {
    completed: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    first_error_shown: Arc<AtomicBool>,
}

async fn handshake_loop(
    target: SocketAddr,
    client: Arc<TlsClient>,
    sources: Arc<SourceAddrs>,
    window: Window,
    counters: Counters,
) -> LoopTally {
    let mut tally = LoopTally {
        latencies_micros: new_histogram(),
        errors: 0,
    };
    while Instant::now() < window.until {
        let began = Instant::now();
        let outcome = tokio::time::timeout(ATTEMPT_TIMEOUT, async {
            let tcp = sources.connect(target).await.context("connect")?;
            client
                .connector
                .connect(client.server_name.clone(), tcp)
                .await
                .context("TLS handshake")
        })
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no handshake within {ATTEMPT_TIMEOUT:?}")));
        let ended = Instant::now();
        let counted = ended >= window.from && ended < window.until;
        match outcome {
            Ok(mut tls) => {
                if counted {
                    let micros = (ended - began).as_micros() as u64;
                    tally
                        .latencies_micros
                        .saturating_record(micros.clamp(1, LATENCY_CEILING_MICROS));
                    counters.completed.fetch_add(1, Ordering::Relaxed);
                }
                // A polite close (close_notify, FIN); the server may already have gone.
                let _ = tls.shutdown().await;
            }
            Err(error) => {
                if counted {
                    tally.errors += 1;
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                }
                if !counters.first_error_shown.swap(true, Ordering::Relaxed) {
                    eprintln!("first error: {error:#}");
                }
            }
        }
    }
    tally
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_CEILING_MICROS, 3)
        .expect("constant histogram bounds are valid")
}
