//! The `coordinosaur` command: the daemon, `check-config`, `explain` and `replay`, and the client
//! commands `run`, `status` and `policy check` / `policy try` (in the library's `cli` module).

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use coordinosaur::cli;
use coordinosaur::config::Config;

/// Coordinates jobs over MQTT: semaphores, leases and sliding-window quotas per channel.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file [default: coordinosaur.toml; for run and status, only if it exists].
    /// For `policy check` and `policy try`: the policy's config, as JSON.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
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
    /// Wait for go on a channel, run a command under the lease, report how it ended.
    Run(cli::run::RunArgs),
    /// Ask the daemon for its channels' state: running/max, waiting, quota windows, policy.
    Status(cli::status::StatusArgs),
    /// Re-run the journaled period under the recorded limits or a candidate (--config, --policy).
    Replay(coordinosaur::replay::ReplayArgs),
    /// Try a policy component without a daemon: `policy check FILE`, `policy try FILE --jobs F`.
    #[command(subcommand)]
    Policy(cli::policy::PolicyCommand),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.exit_code() {
                0 => ExitCode::SUCCESS,
                _ => ExitCode::from(cli::usage_exit_code(std::env::args_os())),
            };
        }
    };
    let path = cli.config.as_deref();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Run(args) => ExitCode::from(cli::run::main(path, args)),
        Command::Status(args) => ExitCode::from(cli::status::main(path, args)),
        Command::Replay(args) => ExitCode::from(coordinosaur::replay::main(path, args)),
        Command::Policy(command) => ExitCode::from(cli::policy::main(path, command)),
        Command::CheckConfig => with_config(path, |path, config| {
            if let Err(code) = check_tls_files(path, &config) {
                return code;
            }
            println!("{}: OK\n{}", path.display(), config.summary());
            ExitCode::SUCCESS
        }),
        Command::Explain { channel } => with_config(path, |_, config| {
            print!("{}", config.explain(&channel));
            ExitCode::SUCCESS
        }),
        Command::Serve => with_config(path, |path, config| {
            if let Err(code) = check_tls_files(path, &config) {
                return code;
            }
            match serve(config, path.to_owned()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }),
    }
}

/// Loads the daemon's config (exit code 2 if it is unreadable or invalid), applies the
/// environment's overrides (`COORDINOSAUR_MQTT_USERNAME`, `..._PASSWORD`) and hands it to `f`.
fn with_config(path: Option<&Path>, f: impl FnOnce(&Path, Config) -> ExitCode) -> ExitCode {
    let path = path.unwrap_or(Path::new(cli::endpoint::DEFAULT_CONFIG));
    match Config::load(path) {
        Ok(mut config) => {
            config.apply_env(|key| std::env::var(key).ok());
            f(path, config)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Reads the `[mqtt.tls]` files, so that a missing or invalid one is a config error (exit code
/// 2, which systemd does not restart on) for `check-config` and the daemon alike.
fn check_tls_files(path: &Path, config: &Config) -> Result<(), ExitCode> {
    match coordinosaur::mqtt::Broker::from_config(&config.mqtt) {
        Ok(_) => Ok(()),
        Err(e) => {
            eprintln!("error: config file {}: {e}", path.display());
            Err(ExitCode::from(2))
        }
    }
}

fn serve(config: Config, path: PathBuf) -> anyhow::Result<()> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,rumqttd=warn".into());
    let output = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // rumqttd logs every clean client disconnect at `error`; whatever RUST_LOG says, keep that
    // out while its real warnings and errors still show.
    #[cfg(feature = "embedded-broker")]
    let output =
        tracing_subscriber::Layer::with_filter(output, coordinosaur::broker::BenignDisconnects);
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
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
