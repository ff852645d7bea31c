//! `coordinosaur policy check` and `coordinosaur policy try`: a policy component tried on its
//! own, without a broker or a daemon, through the daemon's own host code (compile, type-check,
//! `init`, the sandbox, the engine's hook calls).
//!
//! `try` reads a JSON Lines file: one object per line, `at` (engine time in ms, never going
//! back; absent: the previous line's), `channel` (absent: `try`) and at most one request keyed
//! by its action (`register`, `finished`, `aborted`, `renew`, `concurrency/set`) whose value is
//! the payload as a client would publish it (a JSON string is sent as its text, anything else as
//! JSON). A line with only `at` moves time on (leases expire, quota windows open). Blank lines
//! and lines starting with `#` are skipped.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::config::PolicySandbox;
use crate::engine::{ChannelOptions, Engine, Input, Millis, Output, Time};
use crate::policy::{Compiler, PolicyHost};
use crate::protocol::{self, Action, DecodeLimits};

/// Exit code of a policy the daemon would refuse, or of a bad jobs file.
pub const REFUSED: u8 = 2;
/// Longest line of a jobs file, in bytes (a registration payload is at most 64 KiB by default).
const MAX_LINE: usize = 1 << 20;
/// Topic prefix of the requests built from a jobs file (never shown).
const PREFIX: &str = "try";
/// The actions a line of a `policy try` job file may hold: every request but `infos`.
const TRY_ACTIONS: [Action; 5] = [
    Action::Register,
    Action::Finished,
    Action::Aborted,
    Action::Renew,
    Action::SetConcurrency,
];

/// `coordinosaur policy ...`.
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Compile and type-check a policy component, run its `init`, print what it exports and
    /// imports and its size. Exit 2 with the reason if the daemon would refuse it.
    Check(CheckArgs),
    /// Run a policy's hooks over a file of registrations and events (JSON Lines) with the engine
    /// time the file gives, and print each verdict.
    Try(TryArgs),
}

/// What `check` and `try` share.
#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    /// The policy component (`.wasm`).
    pub file: PathBuf,
    /// Linear memory one instance may use, in bytes, as `[policy_sandbox] max_memory`.
    #[arg(long, value_name = "BYTES", default_value_t = PolicySandbox::default().max_memory)]
    pub max_memory: usize,
    /// CPU-time budget of one call, as `[policy_sandbox] call_timeout` (seconds or 10ms, 1s...).
    #[arg(long, value_name = "DUR", default_value = "10ms", value_parser = super::parse_duration)]
    pub call_timeout: std::time::Duration,
}

/// Arguments of `policy check`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "The policy's config is given with the global --config, as JSON (the channel's policy_config\ntable as the daemon hands it to init), e.g. --config '{\"max_running_per_tenant\":2}'.\nExit codes: 0 the daemon would load it; 2 it would refuse it (the reason is printed)."
)]
pub struct CheckArgs {
    /// The policy and its sandbox.
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// Arguments of `policy try`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Each line of the jobs file: {\"at\": MS, \"channel\": \"C\", \"register\": {\"uid\": \"a\", \"timeout\": 30, ...}};\nother actions: finished, aborted, renew, concurrency/set (the payload as published), or none\n(time passes). The policy's config is given with the global --config, as JSON.\nExit codes: 0 the file was run; 2 the policy would be refused, or the jobs file is invalid."
)]
pub struct TryArgs {
    /// The policy and its sandbox.
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// The JSON Lines file of requests.
    #[arg(long, value_name = "FILE")]
    pub jobs: PathBuf,
    /// `max_concurrent_jobs` of every channel.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub max_concurrent_jobs: u32,
}

/// Runs `coordinosaur policy ...`; `config` is the global `--config`, the policy's JSON config.
/// Returns the exit code.
pub fn main(config: Option<&Path>, command: PolicyCommand) -> u8 {
    let config = match policy_config(config) {
        Ok(config) => config,
        Err(reason) => {
            eprintln!("coordinosaur policy: {reason}");
            return REFUSED;
        }
    };
    let result = match command {
        PolicyCommand::Check(args) => check(&args.policy, &config),
        PolicyCommand::Try(args) => run_try(&args, &config),
    };
    match result {
        Ok(()) => 0,
        Err(reason) => {
            eprintln!("coordinosaur policy: {reason}");
            REFUSED
        }
    }
}

/// The `--config` text as a JSON object, compact as the daemon hands it to `init` ("{}" if none).
fn policy_config(config: Option<&Path>) -> Result<String, String> {
    let Some(text) = config else {
        return Ok("{}".to_owned());
    };
    let text = text
        .to_str()
        .ok_or("--config: not UTF-8 (for policy commands it is the policy's JSON config)")?;
    match serde_json::from_str::<Value>(text) {
        Ok(value @ Value::Object(_)) => Ok(value.to_string()),
        Ok(_) => Err(format!("--config {text:?}: must be a JSON object, like the policy_config table")),
        Err(e) => Err(format!(
            "--config {text:?}: not JSON ({e}); for policy commands it is the policy's config, e.g. '{{\"limit\":2}}'"
        )),
    }
}

/// What `check` prints about a loaded policy.
struct Loaded {
    host: PolicyHost,
    path: Arc<Path>,
    size: u64,
    compile_time: std::time::Duration,
    imports: Vec<String>,
    exports: Vec<String>,
}

/// A host with the policy compiled, type-checked and installed, as the daemon would have it,
/// with `init` run for `channel`.
fn load(args: &PolicyArgs, channel: &str, config: &str) -> Result<Loaded, String> {
    let compiler = Compiler::new().map_err(|e| e.to_string())?;
    let compiled = compiler.compile(&args.file).map_err(|e| e.to_string())?;
    let (imports, exports) = compiler.interface(&compiled);
    let path: Arc<Path> = Arc::from(compiled.path.as_path());
    let (size, compile_time) = (compiled.size, compiled.compile_time);
    let sandbox = PolicySandbox {
        call_timeout: Millis(args.call_timeout.as_millis().try_into().unwrap_or(u64::MAX)),
        max_memory: args.max_memory,
    };
    let mut host = PolicyHost::new(compiler, &sandbox);
    host.install(vec![compiled]);
    host.init_channel(channel, &path, config)
        .map_err(|reason| format!("policy {}: {reason}", path.display()))?;
    Ok(Loaded {
        host,
        path,
        size,
        compile_time,
        imports,
        exports,
    })
}

fn check(args: &PolicyArgs, config: &str) -> Result<(), String> {
    let loaded = load(args, "check", config)?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}: OK", loaded.path.display());
    let _ = writeln!(
        out,
        "size: {} bytes (compiled in {} ms)",
        loaded.size,
        loaded.compile_time.as_millis()
    );
    let _ = writeln!(out, "init: ok with config {config}");
    let hooks = loaded.host.called_hooks("check").unwrap_or_default();
    let _ = writeln!(out, "hooks called: {}", hooks.join(", "));
    let _ = writeln!(out, "exports: {}", loaded.exports.join(", "));
    let _ = writeln!(out, "imports: {}", loaded.imports.join(", "));
    Ok(())
}

/// One line of a jobs file, decoded.
struct Step {
    at: Option<u64>,
    input: Result<Option<Input>, protocol::Rejection>,
}

fn parse_line(line: &str, limits: &DecodeLimits) -> Result<Step, String> {
    let Value::Object(mut fields) = serde_json::from_str(line).map_err(|e| e.to_string())? else {
        return Err("not a JSON object".to_owned());
    };
    let at = match fields.remove("at") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or("\"at\" must be a non-negative integer (ms)")?,
        ),
    };
    let channel = match fields.remove("channel") {
        None => "try".to_owned(),
        Some(Value::String(c)) => c,
        Some(_) => return Err("\"channel\" must be a string".to_owned()),
    };
    let mut actions = fields.into_iter();
    let Some((action, payload)) = actions.next() else {
        return Ok(Step {
            at,
            input: Ok(None),
        });
    };
    if let Some((other, _)) = actions.next() {
        return Err(format!(
            "one action per line, found {action:?} and {other:?}"
        ));
    }
    if !TRY_ACTIONS.iter().any(|a| a.as_str() == action) {
        let names: Vec<_> = TRY_ACTIONS.iter().map(|a| a.as_str()).collect();
        return Err(format!(
            "unknown key {action:?} (expected at, channel, and one of {})",
            names.join(", ")
        ));
    }
    let payload = match payload {
        Value::String(text) => text,
        other => other.to_string(),
    };
    let topic = protocol::request_topic(PREFIX, &channel, &action);
    Ok(Step {
        at,
        input: protocol::decode(PREFIX, &topic, payload.as_bytes(), limits),
    })
}

fn run_try(args: &TryArgs, config: &str) -> Result<(), String> {
    let file = std::fs::File::open(&args.jobs)
        .map_err(|e| format!("cannot read {}: {e}", args.jobs.display()))?;
    let Loaded { host, path, .. } = load(&args.policy, "try", config)?;
    let options = ChannelOptions {
        max_concurrent_jobs: args.max_concurrent_jobs,
        policy: Some(path),
        policy_config: Arc::from(config),
        ..ChannelOptions::default()
    };
    let mut trial = Trial {
        engine: Engine::new(Box::new(move |_| options.clone())),
        host,
        now: 0,
        channels: BTreeSet::new(),
        out: std::io::stdout().lock(),
    };
    let limits = DecodeLimits::default();
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    for number in 1.. {
        let bad = |reason: String| format!("{}:{number}: {reason}", args.jobs.display());
        if !read_line(&mut reader, &mut line).map_err(bad)? {
            break;
        }
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let step = parse_line(text, &limits).map_err(bad)?;
        trial.play(step).map_err(bad)?;
    }
    trial.print_waiting();
    Ok(())
}

/// Reads the next line of a jobs file into `line`, refusing one over [`MAX_LINE`] bytes.
/// `false` at the end of the file.
fn read_line(reader: &mut impl BufRead, line: &mut String) -> Result<bool, String> {
    line.clear();
    let read = reader
        .take(MAX_LINE as u64 + 1)
        .read_line(line)
        .map_err(|e| e.to_string())?;
    if read > 0 && line.len() > MAX_LINE {
        return Err(format!("line over {MAX_LINE} bytes"));
    }
    Ok(read > 0)
}

/// `policy try` under way: the engine with the policy, in engine time.
struct Trial {
    /// The engine, one channel option set for every channel.
    engine: Engine,
    /// The policy under test.
    host: PolicyHost,
    /// Engine time of the last line, in ms; never goes back.
    now: u64,
    /// The channels the lines named, for the final waiting lists.
    channels: BTreeSet<String>,
    /// Where the outputs are printed.
    out: std::io::StdoutLock<'static>,
}

impl Trial {
    /// Plays one line: first what happens by itself before its time, then its input.
    fn play(&mut self, step: Step) -> Result<(), String> {
        let at = step.at.unwrap_or(self.now);
        if at < self.now {
            return Err(format!(
                "\"at\" {at} goes back in time (previous: {})",
                self.now
            ));
        }
        // What happens by itself before this line: lease expiries, quota windows opening.
        while let Some(deadline) = self.engine.next_deadline().filter(|d| d.0 <= at) {
            self.engine.handle_timeout_with(deadline, &mut self.host);
            print_outputs(&mut self.out, &mut self.engine, deadline.0);
        }
        self.now = at;
        match step.input {
            Ok(Some(input)) => {
                if let Some(c) = input_channel(&input) {
                    self.channels.insert(c.to_owned());
                }
                self.engine.handle_with(Time(at), input, &mut self.host);
            }
            Ok(None) => {}
            Err(rejection) => {
                let _ = writeln!(
                    self.out,
                    "{at} {} rejected {}: {}",
                    rejection.channel.as_deref().unwrap_or("-"),
                    rejection.uid.as_deref().unwrap_or("-"),
                    rejection.error
                );
            }
        }
        print_outputs(&mut self.out, &mut self.engine, at);
        Ok(())
    }

    /// Prints who still waits on each channel at the end.
    fn print_waiting(mut self) {
        let now = self.now;
        for channel in &self.channels {
            let waiting: Vec<String> = self
                .engine
                .waiting(channel)
                .iter()
                .map(|u| u.to_string())
                .collect();
            let _ = writeln!(self.out, "{now} {channel} waiting [{}]", waiting.join(", "));
        }
    }
}

fn input_channel(input: &Input) -> Option<&str> {
    match input {
        Input::Register(r) => Some(&r.channel),
        Input::Finished { channel, .. }
        | Input::Aborted { channel, .. }
        | Input::SetConcurrency { channel, .. }
        | Input::Renew { channel, .. } => Some(channel),
        _ => None,
    }
}

/// Prints the verdicts the engine produced, one per line: `AT CHANNEL go|rejected|expired|ended UID`.
fn print_outputs(out: &mut impl std::io::Write, engine: &mut Engine, at: u64) {
    while let Some(output) = engine.poll_output() {
        let _ = match output {
            Output::Go { channel, uid, .. } => writeln!(out, "{at} {channel} go {uid}"),
            Output::Rejected {
                channel,
                uid,
                reason,
                ..
            } => writeln!(out, "{at} {channel} rejected {uid}: {reason}"),
            Output::Expired { channel, uid } => writeln!(out, "{at} {channel} expired {uid}"),
            Output::Ended {
                channel,
                uid,
                was_running,
                ..
            } => {
                let what = if was_running { "ended" } else { "cancelled" };
                writeln!(out, "{at} {channel} {what} {uid}")
            }
            _ => Ok(()),
        };
    }
}
