//! A bare rustls accept loop: accept, complete the handshake with the gateway's TLS settings,
//! drop. It exists so the gateway's handshake rate (driven by `handshakes`) has a ceiling to be
//! read against: what rustls alone manages on this machine.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{listen_tls, next_connection, spawn_progress, ServerArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    server: ServerArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let (listener, acceptor) = listen_tls(&args.server).await?;
    let completed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let _progress = spawn_progress(Duration::from_secs(5), {
        let (completed, failed) = (completed.clone(), failed.clone());
        move || {
            format!(
                "handshakes in the last 5s: {} completed, {} failed",
                completed.swap(0, Ordering::Relaxed),
                failed.swap(0, Ordering::Relaxed)
            )
        }
    });
    loop {
        let stream = next_connection(&listener).await;
        let acceptor = acceptor.clone();
        let (completed, failed) = (completed.clone(), failed.clone());
        tokio::spawn(async move {
            // Same socket option as the gateway, so the two differ only above TLS.
            let _ = stream.set_nodelay(true);
            match acceptor.accept(stream).await {
                Ok(_) => completed.fetch_add(1, Ordering::Relaxed),
                Err(_) => failed.fetch_add(1, Ordering::Relaxed),
            };
        });
    }
}
