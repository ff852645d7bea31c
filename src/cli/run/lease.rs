//! The command under the lease: spawned once `go` came, its lease renewed every half timeout,
//! signals forwarded to it, and stopped if the lease is lost; its exit becomes `finished` or
//! `aborted`.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use super::signals::Signals;
use super::{finish, reason, Job, FLUSH_TIMEOUT};
use crate::cli::child::{self, RunThread};
use crate::cli::session::Session;
use crate::cli::{exit, CliError};
use crate::protocol::{Action, Answer};

/// How long a command stopped after a lost lease gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(10);

/// Runs the command under the lease and returns its exit code (or 123/125 if the lease or the
/// connection is lost, after stopping it).
pub(super) async fn run_command(
    mut session: Session,
    job: &Job,
    signals: &mut Signals,
    command: &[OsString],
    here: &RunThread,
) -> Result<u8, CliError> {
    let mut child = match child::spawn(Command::new(&command[0]).args(&command[1..]), here) {
        Ok(child) => child,
        Err(e) => {
            let shown = command[0].to_string_lossy();
            eprintln!("coordinosaur run: cannot run {shown}: {e}");
            session.publish(&job.request(Action::Aborted), job.uid.clone())?;
            finish(session).await;
            return Ok(match e.kind() {
                std::io::ErrorKind::NotFound => exit::NOT_FOUND,
                _ => exit::CANNOT_EXECUTE,
            });
        }
    };
    let status = match supervise(&mut session, job, signals, &mut child).await {
        Ok(status) => status,
        Err(lost) => return Ok(give_up(lost, session, job, &mut child).await),
    };
    let code = match status {
        Ok(status) => exit_code(status),
        Err(e) => {
            eprintln!("coordinosaur run: waiting for the command failed: {e}");
            exit::UNREACHABLE
        }
    };
    let action = if code == 0 {
        Action::Finished
    } else {
        Action::Aborted
    };
    session.publish(&job.request(action), job.uid.clone())?;
    finish(session).await;
    Ok(code)
}

/// Why the command has to stop before it exits on its own.
enum LeaseLost {
    /// `expired/{uid}`: the daemon gave the slot away.
    Expired,
    /// `rejected/{uid}` for a renew: the daemon no longer knows the job.
    RenewRefused(String),
    /// The connection to the broker ended; the will has freed the slot.
    Disconnected(CliError),
}

/// Renews the lease every half timeout and forwards signals until the command exits (or
/// waiting for it fails), or the lease is lost.
async fn supervise(
    session: &mut Session,
    job: &Job,
    signals: &mut Signals,
    child: &mut Child,
) -> Result<std::io::Result<ExitStatus>, LeaseLost> {
    let half = (job.timeout / 2).max(Duration::from_millis(10));
    let mut renew = interval_at(Instant::now() + half, half);
    renew.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (expired, rejected) = (job.answer(Answer::Expired), job.answer(Answer::Rejected));
    let renew_body = Value::Object(job.lease_body()).to_string();
    loop {
        tokio::select! {
            status = child.wait() => return Ok(status),
            sig = signals.recv() => forward(child, sig),
            _ = renew.tick() => {
                if let Err(e) = session.publish(&job.request(Action::Renew), renew_body.clone()) {
                    return Err(LeaseLost::Disconnected(e));
                }
            }
            message = session.next_message() => match message {
                Ok(m) if m.topic == expired => return Err(LeaseLost::Expired),
                Ok(m) if m.topic == rejected => {
                    return Err(LeaseLost::RenewRefused(reason(&m.payload)))
                }
                Ok(_) => {}
                Err(e) => return Err(LeaseLost::Disconnected(e)),
            },
        }
    }
}

/// Stops the command after the lease was lost, says why, and returns the exit code.
async fn give_up(lost: LeaseLost, session: Session, job: &Job, child: &mut Child) -> u8 {
    match lost {
        LeaseLost::Expired => {
            eprintln!(
                "coordinosaur run: the lease of {} on channel {} expired (timeout {}); stopping the command",
                job.uid,
                job.channel,
                humantime::format_duration(job.timeout)
            );
        }
        LeaseLost::RenewRefused(reason) => {
            eprintln!(
                "coordinosaur run: the coordinator refused to renew the lease of {}: {reason}; stopping the command",
                job.uid
            );
        }
        LeaseLost::Disconnected(e) => {
            // The broker has published our will: the slot is gone, so the gate no longer
            // holds (as `consul lock` does when its session is lost).
            eprintln!("coordinosaur run: {e}; the slot was released, stopping the command");
            stop(child).await;
            return exit::UNREACHABLE;
        }
    }
    stop(child).await;
    session.disconnect(FLUSH_TIMEOUT).await;
    exit::LEASE_EXPIRED
}

/// Sends SIGTERM, then SIGKILL after [`TERM_GRACE`], and reaps the child.
async fn stop(child: &mut Child) {
    forward(child, Signal::SIGTERM);
    if tokio::time::timeout(TERM_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

/// Sends `sig` to the child, if it still runs.
fn forward(child: &Child, sig: Signal) {
    if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// The child's code, or 128+N if signal N killed it, as shells report it.
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        // Exit codes are 0..=255 on Unix; the truncation is the identity.
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        (None, None) => exit::UNREACHABLE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(2)), 130);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
    }
}
