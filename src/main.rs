//! The `coordinosaur` command: the daemon, plus `check-config` and `explain`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use coordinosaur::config::Config;

/// Coordinates jobs over MQTT: semaphores, leases and sliding-window quotas per channel.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file.
    #[arg(long, short, global = true, default_value = "coordinosaur.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (the default when no command is given).
    Serve,
    /// Validate the configuration file and exit.
    CheckConfig,
    /// Print the effective options of a channel and which [[channels]] patterns matched.
    Explain {
        /// Channel name, as in PREFIX/CHANNEL/register.
        channel: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            println!("{}: OK\n{}", cli.config.display(), config.summary());
            ExitCode::SUCCESS
        }
        Command::Explain { channel } => {
            print!("{}", config.explain(&channel));
            ExitCode::SUCCESS
        }
        Command::Serve => match serve(config, cli.config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn serve(config: Config, path: PathBuf) -> anyhow::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    // One thread: the driver owns all decisions and the MQTT task only forwards, so more workers
    // add cross-thread wake-ups (measured: +24-35 us p50 per round trip) and nothing else.
    // Blocking work (policy compiles, the embedded broker's start-up) runs on the blocking pool.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(coordinosaur::run(config, Some(path), shutdown_signal()))
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
