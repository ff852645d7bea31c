//! Waiting for `go`: the answer, a rejection, `--wait-timeout` or a signal, whichever comes
//! first; on a terminal, a status line redrawn every second from the channel's `state`.

use std::io::Write as _;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::{sleep_until, Instant, MissedTickBehavior};

use super::signals::Signals;
use super::{reason, Job};
use crate::cli::format::{short, StateView};
use crate::cli::session::{Message, Session};
use crate::cli::CliError;
use crate::protocol::{Action, Answer};

/// How the wait for `go` ended.
pub(super) enum Gate {
    /// `go/{uid}`: the command may run.
    Go,
    /// `rejected/{uid}`, with the reason.
    Rejected(String),
    /// `--wait-timeout` passed.
    TimedOut,
    /// SIGINT or SIGTERM arrived first.
    Signalled(Signal),
}

/// Waits for `go/{uid}`, a rejection, the wait deadline or a signal; on a terminal, redraws a
/// status line every second from the channel's `state`.
pub(super) async fn wait_for_go(
    session: &mut Session,
    job: &Job,
    signals: &mut Signals,
    deadline: Option<Instant>,
    tty: bool,
) -> Result<Gate, CliError> {
    let (go, rejected) = (job.answer(Answer::Go), job.answer(Answer::Rejected));
    let state = job.state();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut counts: Option<StateView> = None;
    let until_deadline = async {
        match deadline {
            Some(at) => sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until_deadline);
    let gate = loop {
        tokio::select! {
            message = session.next_message() => {
                let Message { topic, payload } = message?;
                if topic == go {
                    break Gate::Go;
                } else if topic == rejected {
                    break Gate::Rejected(reason(&payload));
                } else if topic == state {
                    counts = serde_json::from_slice(&payload).ok();
                    draw_status(job, started, counts.as_ref());
                }
            }
            sig = signals.recv() => break Gate::Signalled(sig),
            () = &mut until_deadline => break Gate::TimedOut,
            _ = tick.tick(), if tty => {
                session.publish_qos0(&job.request(Action::Infos), Vec::new())?;
                draw_status(job, started, counts.as_ref());
            }
        }
    };
    if tty {
        // Erase the status line.
        eprint!("\r\x1b[2K");
    }
    Ok(gate)
}

/// `waiting for go on C: 12s (3 waiting, 2/2 running)`, rewritten in place.
fn draw_status(job: &Job, started: Instant, state: Option<&StateView>) {
    let counts = state.map_or_else(String::new, |s| {
        format!(" ({} waiting, {} running)", s.waiting, s.running())
    });
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\r\x1b[2Kwaiting for go on {}: {}{counts}",
        job.channel,
        short(Duration::from_secs(started.elapsed().as_secs()))
    );
    let _ = err.flush();
}
