//! `coordinosaur replay`: re-runs the period a state dir's journals recorded through the same
//! engine, as a discrete-event simulation, under the recorded limits or a candidate config
//! and policies, and compares per channel what happened with what would have.
//!
//! - [`crate::state::read`]: the journals and the snapshot they start from, read without
//!   taking the daemon's lock.
//! - [`trace`]: the recorded jobs (arrival, fields, grant, renewals, how and when they left)
//!   and the recorded changes of limits.
//! - [`sim`]: the simulation (its doc says how it fills in what the recording cannot know);
//!   `decisions`: the recorded policy decisions it replays, and the hooks it calls.
//! - [`stats`]: per-channel figures and the table.
//!
//! Every run is first made under the recorded limits and decisions and checked against the
//! recorded grant times; the report says whether it reproduced them (it does, restarts
//! included, unless a policy deferred jobs, which the journal does not record), so the
//! candidate's figures can be trusted as far as that check goes.

mod decisions;
pub mod sim;
pub mod stats;
pub mod trace;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::config::Config;
use crate::engine::{EngineLimits, Policies, Time};
use crate::policy::{Compiler, PolicyHost};
use sim::{simulate, Setup};
use stats::ChannelStats;
use trace::Trace;

/// Arguments of `coordinosaur replay` (the candidate config is the global `--config`).
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// The daemon's `[state] dir`; read only, without its lock (a daemon may be running).
    #[arg(long, value_name = "DIR")]
    pub state: PathBuf,
    /// Count jobs registered at or after this time: milliseconds since the Unix epoch or an
    /// RFC 3339 time (`2026-11-29T15:00:00Z`) [default: the start of the journals].
    #[arg(long, value_name = "T")]
    pub from: Option<String>,
    /// Stop at this time [default: the last change journaled].
    #[arg(long, value_name = "T")]
    pub to: Option<String>,
    /// Run this policy component for channel CH instead of its recorded decisions or the
    /// candidate config's policy (repeatable).
    #[arg(long = "policy", value_name = "CH=FILE")]
    pub policies: Vec<String>,
    /// Also list every job registered in the period: its recorded and candidate grant times.
    #[arg(long)]
    pub jobs: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A bad argument or candidate file.
    #[error("{0}")]
    Usage(String),
    /// The state dir could not be read.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

/// The whole report, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The state dir read.
    pub state: PathBuf,
    /// Journal generations read.
    pub generations: Vec<u64>,
    /// Engine time of the first and last change read (ms since the Unix epoch).
    pub journal: (Time, Time),
    /// The period whose registrations are counted.
    pub period: (Time, Time),
    /// What the journal could not cover (compacted history, older formats).
    pub warnings: Vec<String>,
    /// What the candidate was: `"recorded limits"` without one.
    pub candidate: String,
    /// Jobs granted in the recording within the period, and how many of them the run under
    /// the recorded limits granted at exactly the recorded time.
    pub reproduced: (usize, usize),
    /// Per channel: recorded and candidate figures.
    pub channels: BTreeMap<Arc<str>, Comparison>,
    /// With `--jobs`: every job registered in the period, in order of registration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jobs: Option<Vec<JobLine>>,
}

/// One job's recorded and candidate grant.
#[derive(Debug, Serialize)]
pub struct JobLine {
    /// Channel name.
    pub channel: Arc<str>,
    /// Job id.
    pub uid: Arc<str>,
    /// Registration time (ms since the Unix epoch).
    pub registered: Time,
    /// Recorded grant time, if granted.
    pub recorded: Option<Time>,
    /// Candidate grant time, if granted.
    pub candidate: Option<Time>,
}

/// One channel's recorded and candidate figures.
#[derive(Debug, Serialize)]
pub struct Comparison {
    /// What the journal recorded.
    pub recorded: ChannelStats,
    /// What the candidate run did.
    pub candidate: ChannelStats,
}

/// `coordinosaur replay`: prints the report; returns the exit code (0, or 2 with a message).
pub fn main(config: Option<&Path>, args: ReplayArgs) -> u8 {
    match replay(config, &args) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("error: cannot encode the report: {e}");
                        return 1;
                    }
                }
            } else {
                print!("{}", render(&report));
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

/// Reads the state dir and runs the recorded limits and the candidate.
pub fn replay(config: Option<&Path>, args: &ReplayArgs) -> Result<Report, ReplayError> {
    let candidate = match config {
        Some(path) => Some(Config::load(path).map_err(|e| ReplayError::Usage(e.to_string()))?),
        None => None,
    };
    let policies = parse_policies(&args.policies)?;
    let from = parse_time(args.from.as_deref(), "--from")?;
    let to = parse_time(args.to.as_deref(), "--to")?;
    // Every file a run may call: the candidate config's policies and those given by name.
    let mut files: Vec<Arc<Path>> = candidate.iter().flat_map(Config::policy_paths).collect();
    files.extend(policies.values().cloned());
    files.sort();
    files.dedup();
    let sandbox = candidate
        .as_ref()
        .map(|c| c.policy_sandbox.clone())
        .unwrap_or_default();
    // Compiled before the journals are read, so that a bad file is named at once.
    let mut host = policy_host(&files, &sandbox)?;
    let history = crate::state::read::read_history(&args.state)?;
    let generations = history.generations.clone();
    let mut warnings = history.warnings.clone();
    let trace = Trace::from_history(history);
    for name in &trace.unknown_limits {
        warnings.push(format!(
            "channel {name}: its limits are not in the journals read; replayed with the defaults"
        ));
    }
    let from = from.unwrap_or(trace.begin);
    let until = to.map_or(trace.end, |t| t.min(trace.end));
    let unlimited = EngineLimits {
        max_channels: usize::MAX,
        max_waiting_per_channel: usize::MAX,
        max_waiting_bytes: usize::MAX,
    };
    let baseline = {
        let none = HashMap::new();
        simulate(&trace, Setup::Recorded(&none), unlimited, None, from, until)
    };
    let granted: Vec<usize> = (0..trace.jobs.len())
        .filter(|&i| {
            let job = &trace.jobs[i];
            !job.preexisting && job.granted.is_some_and(|g| g >= from && g <= until)
        })
        .collect();
    let exact = (granted.iter())
        .filter(|&&i| baseline.granted[i] == trace.jobs[i].granted)
        .count();
    let hooks = host.as_mut().map(|h| h as &mut dyn Policies);
    let (label, outcome) = match (&candidate, policies.is_empty()) {
        (None, true) => ("recorded limits".to_string(), None),
        (None, false) => (
            format!("recorded limits with {}", args.policies.join(", ")),
            Some(simulate(
                &trace,
                Setup::Recorded(&policies),
                unlimited,
                hooks,
                from,
                until,
            )),
        ),
        (Some(cfg), _) => {
            let options = |name: &str| {
                let mut o = cfg.channel_options(name);
                if let Some(p) = policies.get(name) {
                    o.policy = Some(p.clone());
                }
                o
            };
            let mut name = config.map_or_else(String::new, |p| p.display().to_string());
            if !policies.is_empty() {
                name = format!("{name} with {}", args.policies.join(", "));
            }
            let limits = cfg.limits.engine();
            let limits = EngineLimits {
                max_channels: usize::MAX,
                ..limits
            };
            let outcome = simulate(
                &trace,
                Setup::Candidate(&options),
                limits,
                hooks,
                from,
                until,
            );
            (name, Some(outcome))
        }
    };
    let recorded = stats::recorded(&trace, from, until, &baseline);
    let run = outcome.as_ref().unwrap_or(&baseline);
    let simulated = stats::simulated(&trace, from, until, run);
    let jobs = args.jobs.then(|| {
        let counted = stats::counted(&trace, from, until);
        (trace.jobs.iter().enumerate())
            .filter(|(i, _)| counted[*i])
            .map(|(i, j)| JobLine {
                channel: j.channel.clone(),
                uid: j.uid.clone(),
                registered: j.arrival,
                recorded: j.granted.filter(|g| *g <= until),
                candidate: run.granted[i],
            })
            .collect()
    });
    let channels = recorded
        .into_iter()
        .map(|(name, recorded)| {
            let candidate = simulated.get(&name).cloned().unwrap_or_default();
            (
                name,
                Comparison {
                    recorded,
                    candidate,
                },
            )
        })
        .collect();
    Ok(Report {
        state: args.state.clone(),
        generations,
        journal: (trace.begin, trace.end),
        period: (from, until),
        warnings,
        candidate: label,
        reproduced: (granted.len(), exact),
        channels,
        jobs,
    })
}

/// A policy host with every file in `files` compiled, or `None` if there are none.
fn policy_host(
    files: &[Arc<Path>],
    sandbox: &crate::config::PolicySandbox,
) -> Result<Option<PolicyHost>, ReplayError> {
    if files.is_empty() {
        return Ok(None);
    }
    let usage = |e: crate::policy::PolicyError| ReplayError::Usage(e.to_string());
    let mut host = PolicyHost::new(Compiler::new().map_err(usage)?, sandbox);
    host.preload(files).map_err(usage)?;
    Ok(Some(host))
}

/// `CH=FILE` pairs.
fn parse_policies(pairs: &[String]) -> Result<HashMap<Arc<str>, Arc<Path>>, ReplayError> {
    let mut out = HashMap::new();
    for pair in pairs {
        let Some((channel, file)) = pair
            .split_once('=')
            .filter(|(c, f)| !c.is_empty() && !f.is_empty())
        else {
            return Err(ReplayError::Usage(format!(
                "--policy {pair}: expected CHANNEL=FILE, e.g. --policy scrape=policies/fair_share.wasm"
            )));
        };
        if out
            .insert(Arc::from(channel), Arc::from(Path::new(file)))
            .is_some()
        {
            return Err(ReplayError::Usage(format!(
                "--policy: channel {channel} is given twice"
            )));
        }
    }
    Ok(out)
}

/// A time argument: milliseconds since the Unix epoch, or an RFC 3339 time.
pub fn parse_time(text: Option<&str>, flag: &str) -> Result<Option<Time>, ReplayError> {
    let Some(text) = text else { return Ok(None) };
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(Some(Time(ms)));
    }
    let at = humantime::parse_rfc3339_weak(text).map_err(|e| {
        ReplayError::Usage(format!(
            "{flag} {text}: {e}; give milliseconds since the Unix epoch or an RFC 3339 time \
             such as 2026-11-29T15:00:00Z"
        ))
    })?;
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map(crate::engine::Millis::from_duration)
        .map_err(|_| ReplayError::Usage(format!("{flag} {text}: before 1970")))?;
    Ok(Some(Time(ms.0)))
}

/// An engine time as RFC 3339 with milliseconds.
fn rfc3339(t: Time) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(t.0);
    humantime::format_rfc3339_millis(at).to_string()
}

/// The report as text.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let gens = match report.generations.as_slice() {
        [one] => format!("generation {one}"),
        [first, .., last] => format!("generations {first} to {last}"),
        [] => "no generation".into(),
    };
    out.push_str(&format!(
        "replay of {} ({gens}): journal {} to {}\n",
        report.state.display(),
        rfc3339(report.journal.0),
        rfc3339(report.journal.1),
    ));
    out.push_str(&format!(
        "jobs registered {} to {}, candidate: {}\n",
        rfc3339(report.period.0),
        rfc3339(report.period.1),
        report.candidate
    ));
    for w in &report.warnings {
        out.push_str(&format!("note: {w}\n"));
    }
    let (granted, exact) = report.reproduced;
    if granted == exact {
        out.push_str(&format!(
            "the recorded limits reproduce every recorded grant time ({exact} of {granted})\n"
        ));
    } else {
        out.push_str(&format!(
            "warning: the recorded limits reproduce {exact} of {granted} recorded grant times \
             (policy deferrals are not journaled); compare the candidate with that in mind\n"
        ));
    }
    out.push('\n');
    let recorded = (report.channels.iter())
        .map(|(k, v)| (k.clone(), v.recorded.clone()))
        .collect();
    let candidate = (report.channels.iter())
        .map(|(k, v)| (k.clone(), v.candidate.clone()))
        .collect();
    let label = if report.candidate == "recorded limits" {
        "replayed"
    } else {
        "candidate"
    };
    out.push_str(&stats::table(&recorded, &candidate, label));
    if let Some(jobs) = &report.jobs {
        out.push('\n');
        out.push_str(&stats::job_table(jobs, label));
    }
    out
}

#[cfg(test)]
mod tests;
