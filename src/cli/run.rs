//! `coordinosaur run`: wait for `go` on a channel, run a command, report how it ended.
//!
//! The order matters: connect with a last will (`PREFIX/C/aborted` = uid, so a worker that dies
//! frees its slot at once), subscribe to the uid's `go`, `rejected` and `expired` topics and wait
//! for the SUBACK, and only then register, so the answer cannot be missed. While the command
//! runs the lease is renewed every half timeout and SIGINT/SIGTERM are forwarded to it; when it
//! exits, `finished` or `aborted` is published and acknowledged before a clean DISCONNECT. If
//! `run` itself is killed, the will frees the slot and the kernel kills the command
//! (see [`super::child`]).

use std::ffi::OsString;
use std::io::{IsTerminal as _, Write as _};
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::Signal;
use rumqttc::{LastWill, QoS};
use serde_json::{Map, Value};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::{interval_at, sleep_until, Instant, MissedTickBehavior};

use super::child::{self, RunThread};
use super::endpoint::client_config;
use super::format::{short, StateView};
use super::session::{Message, Session};
use super::{exit, parse_duration, random_u32, CliError, Endpoint};
use crate::protocol::{self, Action, Answer};

/// How long the final `finished`/`aborted` may wait for its PUBACK, and DISCONNECT to go out.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a command stopped after a lost lease gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(10);

/// The exit codes, for `--help` and the README.
pub const EXIT_CODES: &str = "\
Exit codes:
  CMD's own    the command ran (killed by signal N: 128+N)
  122          the coordinator rejected the registration (reason on stderr)
  123          the lease expired or was lost while CMD ran; CMD was sent SIGTERM
  124          --wait-timeout passed before go; the registration was cancelled
  125          cannot reach the broker or the coordinator, or a usage error
  126, 127     CMD could not be executed / was not found (as in a shell)";

/// Arguments of `coordinosaur run`.
#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct RunArgs {
    /// Channel to ask for a slot, as in PREFIX/CHANNEL/register.
    #[arg(long)]
    pub channel: String,
    /// Job timeout: the lease, renewed every half of it while CMD runs (seconds or 5m, 1h...).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Duration,
    /// Job uid [default: HOSTNAME-PID-RANDOM].
    #[arg(long)]
    pub uid: Option<String>,
    /// Extra registration field for policies; integers and true/false are sent as JSON numbers
    /// and booleans, anything else as a string. Repeatable.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    pub meta: Vec<(String, Value)>,
    /// Give up waiting for go after this long (seconds or 500ms, 5m...): cancels the
    /// registration and exits 124.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub wait_timeout: Option<Duration>,
    /// Broker address, overriding [mqtt] host and port of the config file.
    #[arg(long, value_name = "HOST:PORT")]
    pub broker: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// Runs `coordinosaur run` and returns the process exit code.
///
/// The command is spawned from this thread, which blocks in the runtime until `run` ends (see
/// [`RunThread`]): the kernel's parent-death signal follows the thread that forked the child.
pub fn main(config: Option<&Path>, args: RunArgs) -> u8 {
    let here = RunThread::here();
    super::block_on(async move {
        match run(config, args, &here).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("coordinosaur run: {e}");
                exit::UNREACHABLE
            }
        }
    })
}

/// A job's identity and topics.
struct Job {
    channel: String,
    uid: String,
    timeout: Duration,
    endpoint: Endpoint,
}

impl Job {
    /// Where this job's `action` requests go.
    fn request(&self, action: Action) -> String {
        protocol::request_topic(&self.endpoint.prefix, &self.channel, action.as_str())
    }

    /// Where the daemon publishes `answer` about this job.
    fn answer(&self, answer: Answer) -> String {
        protocol::answer_topic(&self.endpoint.prefix, &self.channel, answer, &self.uid)
    }

    /// Where the daemon publishes the channel's state.
    fn state(&self) -> String {
        protocol::state_topic(&self.endpoint.prefix, &self.channel)
    }

    /// `{"uid", "timeout"}`: a whole number of seconds as an integer, as the original expects.
    fn lease_body(&self) -> Map<String, Value> {
        let mut body = Map::new();
        body.insert("uid".into(), self.uid.clone().into());
        let timeout = if self.timeout.subsec_nanos() == 0 {
            self.timeout.as_secs().into()
        } else {
            Value::from((self.timeout.as_millis() as f64) / 1000.0)
        };
        body.insert("timeout".into(), timeout);
        body
    }
}

/// How the wait for `go` ended, other than with `go`.
enum Gate {
    Go,
    Rejected(String),
    TimedOut,
    Signalled(Signal),
}

async fn run(config: Option<&Path>, args: RunArgs, here: &RunThread) -> Result<u8, CliError> {
    let config = client_config(config)?;
    let endpoint = Endpoint::from_config(&config, args.broker.as_deref())?;
    let uid = args.uid.clone().unwrap_or_else(default_uid);
    check_channel(&args.channel)?;
    check_uid(&uid, config.limits.max_uid_len)?;
    if args.timeout.is_zero() {
        return Err(CliError::Usage("--timeout must be more than 0".into()));
    }
    let job = Job {
        channel: args.channel.clone(),
        uid,
        timeout: args.timeout,
        endpoint,
    };
    let mut register = job.lease_body();
    for (key, value) in &args.meta {
        if register.contains_key(key) {
            return Err(CliError::Usage(format!(
                "--meta {key}=...: `{key}` is set by run itself"
            )));
        }
        register.insert(key.clone(), value.clone());
    }

    // Installed first: from now on SIGINT/SIGTERM are ours to handle, not fatal.
    let mut signals = Signals::new()?;
    let will = LastWill::new(
        job.request(Action::Aborted),
        job.uid.clone(),
        QoS::AtLeastOnce,
        false,
    );
    let client_id = format!("coordinosaur-run-{}", job.uid);
    let mut session = Session::connect(&job.endpoint, &client_id, Some(will)).await?;
    let tty = std::io::stderr().is_terminal();
    let mut filters = vec![
        job.answer(Answer::Go),
        job.answer(Answer::Rejected),
        job.answer(Answer::Expired),
    ];
    if tty {
        filters.push(job.state());
    }
    session.subscribe(&filters).await?;
    session.publish(
        &job.request(Action::Register),
        Value::Object(register).to_string(),
    )?;

    let deadline = args.wait_timeout.map(|d| Instant::now() + d);
    let gate = wait_for_go(&mut session, &job, &mut signals, deadline, tty).await?;
    let code = match gate {
        Gate::Go => return run_command(session, &job, &mut signals, &args.command, here).await,
        Gate::Rejected(reason) => {
            eprintln!(
                "coordinosaur run: rejected on channel {}: {reason}",
                job.channel
            );
            session.disconnect(FLUSH_TIMEOUT).await;
            return Ok(exit::REJECTED);
        }
        Gate::TimedOut => {
            let waited = args.wait_timeout.unwrap_or_default();
            eprintln!(
                "coordinosaur run: no go on channel {} within {}; cancelled",
                job.channel,
                humantime::format_duration(waited)
            );
            exit::WAIT_TIMEOUT
        }
        Gate::Signalled(sig) => 128 + sig as u8,
    };
    // Cancel the registration; `aborted` also frees the slot should `go` cross it.
    session.publish(&job.request(Action::Aborted), job.uid.clone())?;
    finish(session).await;
    Ok(code)
}

/// Waits for `go/{uid}`, a rejection, the wait deadline or a signal; on a terminal, redraws a
/// status line every second from the channel's `state`.
async fn wait_for_go(
    session: &mut Session,
    job: &Job,
    signals: &mut Signals,
    deadline: Option<Instant>,
    tty: bool,
) -> Result<Gate, CliError> {
    let (go, rejected, state) = (
        job.answer(Answer::Go),
        job.answer(Answer::Rejected),
        job.state(),
    );
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

/// Runs the command under the lease and returns its exit code (or 123/125 if the lease or the
/// connection is lost, after stopping it).
async fn run_command(
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
    let half = (job.timeout / 2).max(Duration::from_millis(10));
    let mut renew = interval_at(Instant::now() + half, half);
    renew.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (expired, rejected) = (job.answer(Answer::Expired), job.answer(Answer::Rejected));
    let renew_body = Value::Object(job.lease_body()).to_string();
    let end = loop {
        tokio::select! {
            status = child.wait() => break Running::Exited(status),
            sig = signals.recv() => forward(&child, sig),
            _ = renew.tick() => {
                if let Err(e) = session.publish(&job.request(Action::Renew), renew_body.clone()) {
                    break Running::Lost(e);
                }
            }
            message = session.next_message() => match message {
                Ok(m) if m.topic == expired => break Running::Expired,
                Ok(m) if m.topic == rejected => break Running::RenewRefused(reason(&m.payload)),
                Ok(_) => {}
                Err(e) => break Running::Lost(e),
            },
        }
    };
    let status = match end {
        Running::Exited(status) => status,
        Running::Expired => {
            eprintln!(
                "coordinosaur run: the lease of {} on channel {} expired (timeout {}); stopping the command",
                job.uid,
                job.channel,
                humantime::format_duration(job.timeout)
            );
            stop(&mut child).await;
            session.disconnect(FLUSH_TIMEOUT).await;
            return Ok(exit::LEASE_EXPIRED);
        }
        Running::RenewRefused(reason) => {
            eprintln!(
                "coordinosaur run: the coordinator refused to renew the lease of {}: {reason}; stopping the command",
                job.uid
            );
            stop(&mut child).await;
            session.disconnect(FLUSH_TIMEOUT).await;
            return Ok(exit::LEASE_EXPIRED);
        }
        Running::Lost(e) => {
            // The broker has published our will: the slot is gone, so the gate no longer
            // holds (as `consul lock` does when its session is lost).
            eprintln!("coordinosaur run: {e}; the slot was released, stopping the command");
            stop(&mut child).await;
            return Ok(exit::UNREACHABLE);
        }
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

/// How the command's run under the lease ended.
enum Running {
    /// The command exited (or waiting for it failed).
    Exited(std::io::Result<ExitStatus>),
    /// `expired/{uid}`: the daemon gave the slot away.
    Expired,
    /// `rejected/{uid}` for a renew: the daemon no longer knows the job.
    RenewRefused(String),
    /// The connection to the broker ended; the will has freed the slot.
    Lost(CliError),
}

/// Waits for the last publish's PUBACK, then disconnects cleanly (no will).
async fn finish(mut session: Session) {
    if let Err(e) = session.flush(FLUSH_TIMEOUT).await {
        eprintln!("coordinosaur run: could not confirm the final report ({e}); the lease will end on its own");
    }
    session.disconnect(FLUSH_TIMEOUT).await;
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

/// The `reason` of a `rejected` payload, or the payload itself.
fn reason(payload: &[u8]) -> String {
    serde_json::from_slice::<Value>(payload)
        .ok()
        .and_then(|v| v.get("reason").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(payload).into_owned())
}

/// SIGINT and SIGTERM, which must not kill `run` itself.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals, CliError> {
        let install =
            |kind| signal(kind).map_err(|e| CliError::Usage(format!("cannot handle signals: {e}")));
        Ok(Signals {
            int: install(SignalKind::interrupt())?,
            term: install(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.int.recv() => Signal::SIGINT,
            _ = self.term.recv() => Signal::SIGTERM,
        }
    }
}

/// `HOSTNAME-PID-RANDOM`, with the host name from /etc/hostname or `$HOSTNAME`.
fn default_uid() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{host}-{}-{:08x}", std::process::id(), random_u32())
}

/// A channel is one topic level, never a wildcard or NUL.
fn check_channel(name: &str) -> Result<(), CliError> {
    let bad = name.is_empty() || name.len() > 1024 || name.contains(['+', '#', '\0', '/']);
    if bad {
        return Err(CliError::Usage(format!(
            "--channel {name:?}: must be 1 to 1024 bytes without `+`, `#`, `/` or NUL"
        )));
    }
    Ok(())
}

/// The daemon's own rule for a uid (it may hold `/`), with the config's `[limits] max_uid_len`,
/// so that a uid the daemon would reject is refused before connecting.
fn check_uid(uid: &str, max_len: usize) -> Result<(), CliError> {
    protocol::check_uid(uid, max_len).map_err(|e| CliError::Usage(format!("--uid: {e}")))
}

/// `key=value`: integers and booleans become JSON numbers and booleans, the rest strings.
fn parse_meta(text: &str) -> Result<(String, Value), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    if key.is_empty() {
        return Err(format!("{text:?} has an empty key"));
    }
    let value = if let Ok(n) = value.parse::<i64>() {
        Value::from(n)
    } else if let Ok(b) = value.parse::<bool>() {
        Value::from(b)
    } else {
        Value::from(value)
    };
    Ok((key.to_owned(), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_values_keep_numbers_and_booleans() {
        assert_eq!(
            parse_meta("priority=5"),
            Ok(("priority".into(), Value::from(5)))
        );
        assert_eq!(
            parse_meta("dry=true"),
            Ok(("dry".into(), Value::from(true)))
        );
        assert_eq!(
            parse_meta("tenant=acme"),
            Ok(("tenant".into(), Value::from("acme")))
        );
        assert_eq!(parse_meta("v=1.5"), Ok(("v".into(), Value::from("1.5"))));
        assert_eq!(
            parse_meta("note=a=b"),
            Ok(("note".into(), Value::from("a=b")))
        );
        assert!(parse_meta("novalue").is_err());
        assert!(parse_meta("=x").is_err());
    }

    #[test]
    fn default_uids_are_valid_and_differ() {
        let (a, b) = (default_uid(), default_uid());
        assert!(check_uid(&a, protocol::DEFAULT_MAX_UID_LEN).is_ok(), "{a}");
        assert_ne!(a, b);
        assert!(a.contains(&format!("-{}-", std::process::id())), "{a}");
    }

    #[test]
    fn uids_follow_the_daemons_rule_with_the_configured_length() {
        let long = "u".repeat(2000);
        assert!(check_uid(&long, 4096).is_ok());
        let e = check_uid(&long, 1024).unwrap_err().to_string();
        assert!(e.contains("max_uid_len = 1024"), "{e}");
        assert!(check_uid("host/job-1", 16).is_ok());
        assert!(check_uid("a+b", 16).is_err());
        assert!(check_uid("", 16).is_err());
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(2)), 130);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
    }

    #[test]
    fn lease_bodies_send_whole_seconds_as_integers() {
        let job = |ms| Job {
            channel: "c".into(),
            uid: "u".into(),
            timeout: Duration::from_millis(ms),
            endpoint: Endpoint::resolve(None, Some("h:1")).unwrap(),
        };
        assert_eq!(
            Value::Object(job(300_000).lease_body()).to_string(),
            r#"{"timeout":300,"uid":"u"}"#
        );
        assert_eq!(
            Value::Object(job(1_500).lease_body()).to_string(),
            r#"{"timeout":1.5,"uid":"u"}"#
        );
    }
}
