//! Client commands that talk to a running daemon over MQTT: `run` (gate a command behind a
//! channel, like `flock` or `consul lock`) and `status` (what the daemon holds right now).
//!
//! - [`endpoint`]: which broker and topic prefix to use (`[mqtt]` of the config, `--broker`).
//! - [`session`]: a small rumqttc wrapper with bounded waits for CONNACK, SUBACK and PUBACK.
//! - [`run`] and [`status`]: the commands themselves; each returns the process exit code.
//! - [`policy`]: `policy check` and `policy try`, which run a policy component through the
//!   daemon's host code without a broker.
//! - [`child`]: starting `run`'s command so that it dies with `run`, even of SIGKILL.
//!
//! Every failure to reach the broker or the daemon, and every usage error, exits with
//! [`exit::UNREACHABLE`] (125), so scripts can tell "the gate is broken" from their own codes.

pub mod child;
pub mod endpoint;
pub mod format;
pub mod policy;
pub mod run;
pub mod session;
pub mod status;

use std::ffi::OsString;
use std::future::Future;
use std::time::Duration;

pub use endpoint::Endpoint;

/// Exit codes of the client commands (besides the gated command's own code).
pub mod exit {
    /// `run`: the coordinator rejected the registration (bad timeout, a policy said no, ...).
    pub const REJECTED: u8 = 122;
    /// `run`: the lease expired (or was lost) while the command ran; the command was stopped.
    pub const LEASE_EXPIRED: u8 = 123;
    /// `run`: `--wait-timeout` passed before `go`; the registration was cancelled.
    pub const WAIT_TIMEOUT: u8 = 124;
    /// Cannot reach the broker or the coordinator, or a usage error.
    pub const UNREACHABLE: u8 = 125;
    /// `run`: the command could not be executed (permission denied), as in a shell.
    pub const CANNOT_EXECUTE: u8 = 126;
    /// `run`: the command was not found, as in a shell.
    pub const NOT_FOUND: u8 = 127;
}

/// Why a client command could not do its work; every variant exits with [`exit::UNREACHABLE`].
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A bad argument or configuration file.
    #[error("{0}")]
    Usage(String),
    /// The first connection to the broker failed.
    #[error("cannot reach the MQTT broker at {broker}: {cause}")]
    Unreachable {
        /// `host:port`.
        broker: String,
        /// What rumqttc said.
        cause: String,
    },
    /// An established connection dropped.
    #[error("lost the connection to the MQTT broker at {broker}: {cause}")]
    Lost {
        /// `host:port`.
        broker: String,
        /// What rumqttc said.
        cause: String,
    },
    /// The daemon did not answer.
    #[error("{0}")]
    NoAnswer(String),
}

/// Runs `future` on a small runtime of its own and returns its exit code.
pub fn block_on(future: impl Future<Output = u8>) -> u8 {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(future),
        Err(e) => {
            eprintln!("coordinosaur: cannot start the async runtime: {e}");
            exit::UNREACHABLE
        }
    }
}

/// Exit code for a command line clap refused: `run` and `status` use [`exit::UNREACHABLE`] so
/// that a typo in a crontab is never mistaken for the gated command's own code; the daemon's
/// commands keep clap's usual 2. `args` is the whole command line, program name first.
pub fn usage_exit_code(args: impl IntoIterator<Item = OsString>) -> u8 {
    let mut args = args.into_iter().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy();
        if arg == "--config" || arg == "-c" {
            args.next();
        } else if !arg.starts_with('-') {
            return if arg == "run" || arg == "status" {
                exit::UNREACHABLE
            } else {
                2
            };
        }
    }
    2
}

/// Parses a duration given on the command line, as the config does: seconds (`300`, `0.5`) or
/// a humantime string (`"500ms"`, `"5m"`, `"1h 30m"`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::config::parse_duration(text)
}

/// A random-enough 32-bit value from std alone: the process-seeded `RandomState` hashing the
/// time and pid. Used for unique client ids and uids, not for anything secret.
pub fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::hash::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    hasher.write_u128(now.as_nanos());
    hasher.write_u32(std::process::id());
    // Truncation keeps the low half of a well-mixed hash.
    hasher.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn usage_errors_of_client_commands_exit_125() {
        assert_eq!(usage_exit_code(args(&["c", "run", "--bogus"])), 125);
        assert_eq!(usage_exit_code(args(&["c", "-c", "run", "status"])), 125);
        assert_eq!(usage_exit_code(args(&["c", "--config", "x", "serve"])), 2);
        assert_eq!(usage_exit_code(args(&["c", "--bogus"])), 2);
    }

    #[test]
    fn durations_take_seconds_or_humantime() {
        assert_eq!(parse_duration("300"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("0.5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
