//! `ampora-loadtest trust`: publishes a `TrustState` naming a private CA, as control-planes do
//! with Ampora's own, so gateways with `AMPORA_TLS_CLIENT_AUTH` verify the load generator's
//! client certificate. It answers every `TrustRequest` and publishes again every `--interval`.
//!
//! Its read time is far ahead of any real one: a control-plane on the same bus (the scenarios
//! start one for the agents' replies) publishes its own CA, and gateways keep the newest state,
//! so this one must stay the newest for the run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ampora_shared::bus::{Bus, NatsBus, NatsOptions};
use ampora_shared::pb::bus::TrustState;
use ampora_shared::subjects::{Subjects, DEFAULT_PARTITIONS};
use anyhow::Context;
use futures::StreamExt;
use prost::Message;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long)]
    nats_url: String,
    /// The gateways' `AMPORA_BUS_PREFIX`.
    #[arg(long, default_value = "ampora")]
    prefix: String,
    /// PEM CA(s) the gateways are to trust for client certificates.
    #[arg(long)]
    ca: PathBuf,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: Duration,
}

/// Ahead of any read time a control-plane stamps in this century.
const FAR_AHEAD_UNIX_NANO: u64 = u64::MAX / 2;

pub async fn run(args: Args) -> anyhow::Result<()> {
    let cas = CertificateDer::pem_file_iter(&args.ca)
        .and_then(|cas| cas.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("--ca {}", args.ca.display()))?;
    let state = TrustState {
        ca_certificates_der: cas.iter().map(|ca| ca.to_vec().into()).collect(),
        revoked_certificate_sha256: Vec::new(),
        read_unix_nano: FAR_AHEAD_UNIX_NANO,
    }
    .encode_to_vec();
    let bus: Arc<dyn Bus> = Arc::new(
        NatsBus::connect(&NatsOptions {
            url: args.nats_url.clone(),
            name: "ampora-loadtest-trust".to_owned(),
            subscription_capacity: 1024,
            ..Default::default()
        })
        .await
        .context("connecting to NATS")?,
    );
    let subjects = Subjects::new(args.prefix, DEFAULT_PARTITIONS);
    let mut requests = bus.subscribe(&subjects.trust_request()).await?;
    let mut ticks = tokio::time::interval(args.interval);
    println!("publishing the trust state of {} CA(s)", cas.len());
    loop {
        tokio::select! {
            request = requests.next() => if request.is_none() {
                anyhow::bail!("the trust request subscription ended");
            },
            _ = ticks.tick() => {}
        }
        bus.publish(&subjects.trust_state(), state.clone().into())
            .await
            .context("publishing the trust state")?;
    }
}
