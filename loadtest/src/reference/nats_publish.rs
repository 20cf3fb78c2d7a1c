//! Raw NATS throughput: one connection publishing fixed-size payloads as fast as async-nats
//! takes them, one connection counting what arrives. Gateways relay every agent message over
//! NATS, so this is the ceiling the bus puts on Ampora's message rate on this machine.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use tokio::time::Instant;

use super::{per_second, round2, spawn_progress};

/// After the last publish, how long the subscriber may go without a message before whatever
/// has not arrived is taken as dropped (NATS drops messages for a slow consumer).
const DRAIN_QUIET: Duration = Duration::from_secs(2);
const DRAIN_POLL: Duration = Duration::from_millis(50);

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    url: String,
    #[arg(long, default_value = "loadtest.reference")]
    subject: String,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 300)]
    size: usize,
    /// How long to publish.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let subject = async_nats::Subject::validated(&args.subject)
        .with_context(|| format!("--subject {:?}", args.subject))?;
    let subscriber_client = async_nats::connect(&args.url)
        .await
        .with_context(|| format!("connecting the subscriber to {}", args.url))?;
    let publisher = async_nats::connect(&args.url)
        .await
        .with_context(|| format!("connecting the publisher to {}", args.url))?;
    let mut subscription = subscriber_client
        .subscribe(subject.clone())
        .await
        .context("subscribing")?;
    // The server knows the subscription once it has answered a ping sent after it.
    subscriber_client
        .flush()
        .await
        .context("flushing the subscription")?;

    let published = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let receiver = tokio::spawn({
        let received = received.clone();
        async move {
            let mut last_arrival = started;
            while subscription.next().await.is_some() {
                received.fetch_add(1, Ordering::Relaxed);
                last_arrival = Instant::now();
            }
            last_arrival
        }
    });
    let _progress = spawn_progress(Duration::from_secs(1), {
        let (published, received) = (published.clone(), received.clone());
        let (mut published_before, mut received_before) = (0, 0);
        move || {
            let (published_now, received_now) = (
                published.load(Ordering::Relaxed),
                received.load(Ordering::Relaxed),
            );
            let line = format!(
                "{:>5.1}s published/s: {} received/s: {}",
                started.elapsed().as_secs_f64(),
                published_now - published_before,
                received_now - received_before
            );
            (published_before, received_before) = (published_now, received_now);
            line
        }
    });

    let payload = Bytes::from(vec![b'x'; args.size]);
    let deadline = started + args.duration;
    while Instant::now() < deadline {
        publisher
            .publish(subject.clone(), payload.clone())
            .await
            .context("publishing")?;
        published.fetch_add(1, Ordering::Relaxed);
    }
    publisher.flush().await.context("flushing the publisher")?;
    let published = published.load(Ordering::Relaxed);

    let mut seen = received.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    while seen < published && quiet_since.elapsed() < DRAIN_QUIET {
        tokio::time::sleep(DRAIN_POLL).await;
        let now = received.load(Ordering::Relaxed);
        if now != seen {
            (seen, quiet_since) = (now, Instant::now());
        }
    }
    subscriber_client
        .drain()
        .await
        .context("closing the subscriber")?;
    let last_arrival = receiver.await.context("the subscriber task panicked")?;
    let received = received.load(Ordering::Relaxed);

    let seconds = args.duration.as_secs_f64();
    // Messages still in flight when publishing stops arrive a little later; their rate is
    // over the time the subscriber actually took.
    let receive_seconds = (last_arrival - started).as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "reference": "nats-publish",
            "published": published,
            "received": received,
            "seconds": seconds,
            "published_per_second": round2(per_second(published, seconds)),
            "received_per_second": round2(per_second(received, receive_seconds)),
            "size": args.size,
        })
    );
    Ok(())
}
