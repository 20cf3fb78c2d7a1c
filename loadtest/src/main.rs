//! `ampora-loadtest`: simulated OpAMP agents by the hundred thousand, and the bare references
//! Ampora is measured against. See `loadtest/README.md` for the scenarios.

mod agent;
mod coordinator;
mod fleet;
mod latency;
mod net;
mod reference;
mod stats;
mod trust;
mod worker;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "ampora-loadtest", version, about = "Load generator for Ampora")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Simulate a fleet of agents: connect, heartbeat, change status, apply configs, report.
    Agents(Box<coordinator::AgentsArgs>),
    /// One worker process of `agents` (started by it; reads its plan on standard input).
    #[command(hide = true)]
    Worker,
    /// Bare servers and clients Ampora is measured against.
    #[command(subcommand)]
    Reference(reference::Command),
    /// Publish a trust state naming a private CA, so gateways accept its client certificates.
    Trust(trust::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    ampora_shared::telemetry::init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Agents(args) => coordinator::run(args.fleet, args.run).await,
            Command::Worker => worker::run().await,
            Command::Reference(command) => reference::run(command).await,
            Command::Trust(args) => trust::run(args).await,
        }
    })
}
