//! SIGINT and SIGTERM while `run` runs: forwarded to the command, never fatal to `run` itself.

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::CliError;

/// SIGINT and SIGTERM, which must not kill `run` itself.
pub(super) struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    /// Takes over SIGINT and SIGTERM from now on.
    pub(super) fn new() -> Result<Signals, CliError> {
        let install =
            |kind| signal(kind).map_err(|e| CliError::Usage(format!("cannot handle signals: {e}")));
        Ok(Signals {
            int: install(SignalKind::interrupt())?,
            term: install(SignalKind::terminate())?,
        })
    }

    /// The next signal received.
    pub(super) async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.int.recv() => Signal::SIGINT,
            _ = self.term.recv() => Signal::SIGTERM,
        }
    }
}
