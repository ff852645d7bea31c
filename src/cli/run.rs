//! `coordinosaur run`: wait for `go` on a channel, run a command, report how it ended.
//!
//! The order matters: connect with a last will (`PREFIX/C/aborted` = uid, so a worker that dies
//! frees its slot at once), subscribe to the uid's `go`, `rejected` and `expired` topics and wait
//! for the SUBACK, and only then register, so the answer cannot be missed. While the command
//! runs the lease is renewed every half timeout and SIGINT/SIGTERM are forwarded to it; when it
//! exits, `finished` or `aborted` is published and acknowledged before a clean DISCONNECT. If
//! `run` itself is killed, the will frees the slot and the kernel kills the command
//! (see [`super::child`]).
//!
//! [`args`] checks the arguments, [`wait`] waits for `go`, [`lease`] runs the command under the
//! lease, and [`signals`] keeps SIGINT and SIGTERM from killing `run` itself.

mod args;
mod lease;
mod signals;
mod wait;

use std::ffi::OsString;
use std::io::IsTerminal as _;
use std::path::Path;
use std::time::Duration;

use rumqttc::{LastWill, QoS};
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::child::RunThread;
use super::endpoint::client_config;
use super::session::Session;
use super::{exit, parse_duration, CliError, Endpoint};
use crate::protocol::{self, Action, Answer};
use args::{check_channel, check_uid, default_uid, parse_meta};
use signals::Signals;
use wait::{wait_for_go, Gate};

/// How long the final `finished`/`aborted` may wait for its PUBACK, and DISCONNECT to go out.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Checks the arguments and builds the job and its `register` body, before anything connects.
fn prepare(config: Option<&Path>, args: &RunArgs) -> Result<(Job, Map<String, Value>), CliError> {
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
    Ok((job, register))
}

async fn run(config: Option<&Path>, args: RunArgs, here: &RunThread) -> Result<u8, CliError> {
    let (job, register) = prepare(config, &args)?;
    // Installed first: from now on SIGINT/SIGTERM are ours to handle, not fatal.
    let mut signals = Signals::new()?;
    let tty = std::io::stderr().is_terminal();
    let mut session = connect(&job, tty).await?;
    let register = Value::Object(register).to_string();
    session.publish(&job.request(Action::Register), register)?;

    let deadline = args.wait_timeout.map(|d| Instant::now() + d);
    let gate = wait_for_go(&mut session, &job, &mut signals, deadline, tty).await?;
    let code = match gate {
        Gate::Go => {
            return lease::run_command(session, &job, &mut signals, &args.command, here).await
        }
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

/// Connects with the job's last will (`aborted`, so a `run` that dies frees its slot) and
/// subscribes to its answers (and, on a terminal, the channel's state), so none can be missed.
async fn connect(job: &Job, tty: bool) -> Result<Session, CliError> {
    let will = LastWill::new(
        job.request(Action::Aborted),
        job.uid.clone(),
        QoS::AtLeastOnce,
        false,
    );
    let client_id = format!("coordinosaur-run-{}", job.uid);
    let mut session = Session::connect(&job.endpoint, &client_id, Some(will)).await?;
    let mut filters = vec![
        job.answer(Answer::Go),
        job.answer(Answer::Rejected),
        job.answer(Answer::Expired),
    ];
    if tty {
        filters.push(job.state());
    }
    session.subscribe(&filters).await?;
    Ok(session)
}

/// Waits for the last publish's PUBACK, then disconnects cleanly (no will).
async fn finish(mut session: Session) {
    if let Err(e) = session.flush(FLUSH_TIMEOUT).await {
        eprintln!("coordinosaur run: could not confirm the final report ({e}); the lease will end on its own");
    }
    session.disconnect(FLUSH_TIMEOUT).await;
}

/// The `reason` of a `rejected` payload, or the payload itself.
fn reason(payload: &[u8]) -> String {
    serde_json::from_slice::<Value>(payload)
        .ok()
        .and_then(|v| v.get("reason").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(payload).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

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
