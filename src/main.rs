//! `ampora`: parse the configuration, start the chosen roles, run until a signal, drain; or run
//! an operator command.

mod cli;
mod operator;
mod roles;

use clap::Parser;

/// Exit status for configuration mistakes (sysexits' EX_USAGE).
const EXIT_BAD_CONFIG: i32 = 64;

fn main() {
    cli::load_config_file();
    let command = cli::Cli::try_parse().unwrap_or_else(|error| {
        let code = if error.use_stderr() {
            EXIT_BAD_CONFIG
        } else {
            0
        };
        let _ = error.print();
        std::process::exit(code);
    });
    let role = match command.command {
        cli::Command::Configs(cli::ConfigsCommand::Validate(args)) => {
            std::process::exit(operator::validate(&args))
        }
        cli::Command::Role(role) => *role,
    };
    ampora_shared::telemetry::init_tracing();
    // Installed before anything records, so no early measurement is lost.
    ampora_shared::telemetry::prometheus();
    tracing::info!("starting");
    let runtime = tokio::runtime::Runtime::new().expect("cannot start the tokio runtime");
    if let Err(error) = runtime.block_on(roles::run(role)) {
        eprintln!("ampora: {error:#}");
        let code = if error.is::<roles::ConfigError>() {
            EXIT_BAD_CONFIG
        } else {
            1
        };
        std::process::exit(code);
    }
}
