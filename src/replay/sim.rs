//! The discrete-event simulation: the same [`Engine`] the daemon runs, fed the recorded
//! arrivals and, after each simulated grant, the job's recorded renewals and end at the same
//! distance from the grant as recorded. Time comes only from the trace, so a run is
//! deterministic, and under the recorded limits and decisions it makes the recorded grants.
//!
//! Rules for what the recording cannot say:
//! - A job that ended while running ends after its recorded run time (grant to `finished`,
//!   `aborted` or expiry), whatever its new grant time; its lease under the candidate (timeout,
//!   `timeout_offset`, renewals) may now end it earlier, as the engine decides.
//! - A job cancelled while waiting is cancelled at its recorded time if it still waits; if the
//!   candidate granted it before, it holds its slot until that time (the client was there until
//!   then; how long it would have run is unknown).
//! - A job its policy rejected while waiting: the recorded decision is repeated when the engine
//!   asks at or after the recorded time, and it is removed then if still waiting.
//! - Channels whose recorded limits say a policy decided: each job gets its recorded priority and
//!   every grant is allowed (deferrals are not journaled), unless a candidate policy file is
//!   given for the channel, which then runs for real.
//! - While the daemon was down (from its last change to its restart) nothing fires: leases and
//!   quota windows that ended meanwhile take effect at the restart, as they did.
//! - Registrations after `until` are not fed. A run under the recorded limits stops there, as
//!   the recording does; a candidate runs on until every job registered by then is granted or
//!   gone (a job still running when the journal ends runs until its lease ends).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use crate::engine::{
    ChannelOptions, Engine, EngineLimits, Exit, Input, Millis, Output, Policies, QuotaLog,
    QuotaSpec, Registration, RejectKind, Time,
};

use super::decisions::{Decisions, Hooks};
use super::trace::{LimitEvent, RecordedLimits, Trace};

/// Options per channel, shared with the resolver the engine holds.
type OptionsTable = Arc<std::sync::Mutex<HashMap<Arc<str>, ChannelOptions>>>;
/// A job's key while the engine holds it.
pub(super) type JobKey = (Arc<str>, Arc<str>);

/// The policy path standing for a channel's recorded decisions.
pub const RECORDED_POLICY: &str = "(recorded decisions)";

/// Where each channel's options come from in a run.
pub enum Setup<'a> {
    /// The recorded limits and their recorded changes, with the recorded policy decisions
    /// except where a channel is given a policy file here.
    Recorded(&'a HashMap<Arc<str>, Arc<Path>>),
    /// A candidate: options per channel (the recorded changes of limits are not replayed).
    Candidate(&'a dyn Fn(&str) -> ChannelOptions),
}

/// What one run decided, per job of the trace and per channel.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Grant time of each job (index into `Trace::jobs`), if granted.
    pub granted: Vec<Option<Time>>,
    /// Whether each job was rejected (by a policy, or a limit of the candidate).
    pub rejected: Vec<bool>,
    /// Per channel: the most jobs running at once at or after `from`.
    pub peak_running: BTreeMap<Arc<str>, usize>,
    /// Per channel: time quotas kept a waiting job from a free slot, from `from` on.
    pub quota_held: BTreeMap<Arc<str>, Millis>,
    /// Registrations the engine ignored because the same uid was still waiting or running
    /// under this run (as the daemon ignores them), per job.
    pub ignored: Vec<bool>,
}

/// One thing to feed the engine; ordered by time, then journal order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// Job `i` registers.
    Arrive(usize),
    /// Job `i` renews with this timeout.
    Renew(usize, Millis),
    /// Job `i` ends (or gives up waiting).
    End(usize),
    /// Recorded change of limits number `i`.
    Limits(usize),
}

/// Runs the trace up to `until` under `setup`, with `hooks` for channels whose options name a
/// real policy file. Statistics that accumulate over time count from `from` on.
pub fn simulate(
    trace: &Trace,
    setup: Setup<'_>,
    limits: EngineLimits,
    hooks: Option<&mut dyn Policies>,
    from: Time,
    until: Time,
) -> Outcome {
    let recorded = matches!(setup, Setup::Recorded(_));
    let current: OptionsTable = Arc::default();
    let mut overrides = HashMap::new();
    let resolver: crate::engine::Resolver = match setup {
        Setup::Recorded(policies) => {
            overrides.clone_from(policies);
            let table = current.clone();
            if let Ok(mut t) = table.lock() {
                for (name, l) in &trace.limits {
                    t.insert(name.clone(), options_of(l, policies.get(name)));
                }
            }
            Box::new(move |name: &str| {
                (table.lock().ok())
                    .and_then(|t| t.get(name).cloned())
                    .unwrap_or_default()
            })
        }
        Setup::Candidate(options) => {
            let table: HashMap<Arc<str>, ChannelOptions> = (trace.jobs.iter())
                .map(|j| (j.channel.clone(), options(&j.channel)))
                .chain((trace.start.channels.keys()).map(|name| (name.clone(), options(name))))
                .collect();
            Box::new(move |name: &str| table.get(name).cloned().unwrap_or_default())
        }
    };
    let mut sim = Sim {
        trace,
        engine: Engine::with_limits(resolver, limits),
        events: BTreeMap::new(),
        live: HashMap::new(),
        decisions: Decisions::default(),
        host: hooks,
        out: Outcome {
            granted: trace.jobs.iter().map(|_| None).collect(),
            rejected: vec![false; trace.jobs.len()],
            ..Outcome::default()
        },
        running: HashMap::new(),
        from,
        held_at_from: None,
        current: recorded.then_some(current),
        overrides,
    };
    sim.out.ignored = vec![false; trace.jobs.len()];
    sim.start(recorded, until);
    if recorded {
        for (i, (at, order, _, _)) in trace.limit_events.iter().enumerate() {
            if *at <= until {
                sim.events.insert((*at, *order, Event::Limits(i)), ());
            }
        }
    }
    // A recorded run mirrors the recording, which ends at `until`; a candidate runs on until
    // every job registered by then is granted or gone, so that a slower candidate's waits are
    // not cut short by the end of the journal.
    sim.run(if recorded { until } else { Time(u64::MAX) });
    sim.finish()
}

/// The engine options recorded limits stand for, with `policy` instead of the recorded
/// decisions if given.
pub fn options_of(l: &RecordedLimits, policy: Option<&Arc<Path>>) -> ChannelOptions {
    ChannelOptions {
        max_concurrent_jobs: l.max_concurrent_jobs,
        timeout_offset: l.timeout_offset,
        quotas: (l.quotas.iter())
            .map(|(name, interval, limit)| QuotaSpec {
                name: name.clone(),
                interval: *interval,
                limit: *limit,
                log: QuotaLog::Quiet,
            })
            .collect(),
        policy: policy
            .cloned()
            .or_else(|| l.policy.then(|| Arc::from(Path::new(RECORDED_POLICY)))),
        ..ChannelOptions::default()
    }
}

struct Sim<'a, 'h> {
    trace: &'a Trace,
    engine: Engine,
    /// Pending events by `(time, journal order, event)`.
    events: BTreeMap<(Time, u64, Event), ()>,
    /// Job index of each uid the engine holds, per channel.
    live: HashMap<JobKey, usize>,
    decisions: Decisions,
    host: Option<&'h mut dyn Policies>,
    out: Outcome,
    /// Running jobs per channel now.
    running: HashMap<Arc<str>, usize>,
    from: Time,
    /// Quota-held time of each channel when the run passed `from` (`None` before).
    held_at_from: Option<HashMap<Arc<str>, Millis>>,
    /// The recorded options in force, which recorded changes of limits update (recorded runs).
    current: Option<OptionsTable>,
    /// Policy files replacing recorded decisions, per channel (recorded runs).
    overrides: HashMap<Arc<str>, Arc<Path>>,
}

impl Sim<'_, '_> {
    fn start(&mut self, recorded: bool, until: Time) {
        let trace = self.trace;
        let mut snapshot = trace.start.clone();
        if !recorded {
            // The candidate's limits govern, not a runtime `concurrency/set` of the recording.
            for ch in snapshot.channels.values_mut() {
                ch.concurrency = None;
            }
        }
        for (i, job) in trace.jobs.iter().enumerate() {
            self.decisions.note(job);
            if !job.preexisting && job.arrival > until {
                continue;
            }
            if job.preexisting {
                self.live.insert((job.channel.clone(), job.uid.clone()), i);
            } else {
                self.events
                    .insert((job.arrival, job.order, Event::Arrive(i)), ());
            }
            match job.left {
                // Already running: it ends when it ended (or its lease does).
                Some((t, why, order)) if job.running_at_start && why != Exit::Expired => {
                    self.events.insert((t, order, Event::End(i)), ());
                }
                // It left unserved: cancelled, or rejected by its policy, at the recorded time.
                Some((t, Exit::Cancelled | Exit::Rejected, order)) => {
                    self.events.insert((t, order, Event::End(i)), ());
                }
                _ => {}
            }
            if job.running_at_start {
                *self.running.entry(job.channel.clone()).or_default() += 1;
                self.out.granted[i] = job.granted;
            }
        }
        let mut hooks = Hooks {
            decisions: &mut self.decisions,
            host: self.host.as_deref_mut(),
        };
        self.engine.restore(trace.begin, snapshot, &mut hooks);
        self.drain(trace.begin);
    }

    fn run(&mut self, until: Time) {
        loop {
            let next_event = self.events.keys().next().map(|k| k.0);
            // While the daemon was down nothing fired: a deadline inside took effect at the
            // restart.
            let deadline = self.engine.next_deadline().map(|d| {
                (self.trace.downtimes.iter())
                    .find(|(down, up)| *down < d && d < *up)
                    .map_or(d, |(_, up)| *up)
            });
            let due = match (deadline, next_event) {
                (Some(d), Some(e)) if d < e => Some(d),
                (Some(d), None) => Some(d),
                _ => None,
            };
            if let Some(d) = due.filter(|d| *d <= until) {
                self.pass(d);
                let mut hooks = Hooks {
                    decisions: &mut self.decisions,
                    host: self.host.as_deref_mut(),
                };
                self.engine.handle_timeout_with(d, &mut hooks);
                self.drain(d);
                continue;
            }
            let Some((&(at, _, event), ())) = self.events.first_key_value() else {
                break;
            };
            if at > until {
                break;
            }
            self.events.pop_first();
            self.pass(at);
            self.feed(at, event);
            self.drain(at);
        }
    }

    /// Notes quota-held time of every channel the first time the run reaches `from`.
    fn pass(&mut self, now: Time) {
        if now < self.from || self.held_at_from.is_some() {
            return;
        }
        let mut held = HashMap::new();
        for name in self
            .trace
            .limits
            .keys()
            .chain(self.trace.start.channels.keys())
        {
            held.insert(
                name.clone(),
                self.engine.quota_held(name).unwrap_or_default(),
            );
        }
        self.held_at_from = Some(held);
        for (name, n) in &self.running {
            self.out.peak_running.insert(name.clone(), *n);
        }
    }

    fn feed(&mut self, now: Time, event: Event) {
        let trace = self.trace;
        let input = match event {
            Event::Arrive(i) => {
                let job = &trace.jobs[i];
                let key = (job.channel.clone(), job.uid.clone());
                if self.live.contains_key(&key) {
                    // The same uid still waits or runs in this run: the engine ignores the
                    // registration, as the daemon would.
                    self.out.ignored[i] = true;
                    return;
                }
                self.live.insert(key, i);
                Input::Register(Registration {
                    channel: job.channel.to_string(),
                    uid: job.uid.to_string(),
                    timeout: job.timeout,
                    priority: 0,
                    meta: job.meta.as_deref().map(Box::from),
                    reply: job.reply,
                    // The recorded cost; progress is no decision, so the replay asks for none.
                    cost: job.cost,
                    progress: false,
                })
            }
            Event::Renew(i, timeout) => {
                let job = &trace.jobs[i];
                if self.live.get(&(job.channel.clone(), job.uid.clone())) != Some(&i) {
                    return;
                }
                Input::Renew {
                    channel: job.channel.to_string(),
                    uid: job.uid.to_string(),
                    timeout,
                    token: None,
                }
            }
            Event::End(i) => {
                let job = &trace.jobs[i];
                if self.live.get(&(job.channel.clone(), job.uid.clone())) != Some(&i) {
                    return;
                }
                let (channel, uid) = (job.channel.to_string(), job.uid.to_string());
                match job.left {
                    Some((_, Exit::Aborted, _)) => Input::Aborted {
                        channel,
                        uid,
                        token: None,
                    },
                    Some((_, Exit::Rejected, _)) if self.out.granted[i].is_none() => {
                        // The policy's recorded rejection of a job it never was asked about
                        // again (a re-admission after a swap): it leaves now, as recorded.
                        self.out.rejected[i] = true;
                        Input::Finished {
                            channel,
                            uid,
                            token: None,
                        }
                    }
                    _ => Input::Finished {
                        channel,
                        uid,
                        token: None,
                    },
                }
            }
            Event::Limits(k) => {
                self.change_limits(now, k);
                return;
            }
        };
        let mut hooks = Hooks {
            decisions: &mut self.decisions,
            host: self.host.as_deref_mut(),
        };
        self.engine.handle_with(now, input, &mut hooks);
    }

    fn change_limits(&mut self, now: Time, k: usize) {
        let (_, _, channel, change) = &self.trace.limit_events[k];
        let max = match change {
            LimitEvent::Concurrency(max) => *max,
            LimitEvent::Limits(l) => {
                if let Some(current) = &self.current {
                    if let Ok(mut t) = current.lock() {
                        t.insert(channel.clone(), options_of(l, self.overrides.get(channel)));
                    }
                    let table = current.clone();
                    let resolver: crate::engine::Resolver = Box::new(move |name: &str| {
                        (table.lock().ok())
                            .and_then(|t| t.get(name).cloned())
                            .unwrap_or_default()
                    });
                    let mut hooks = Hooks {
                        decisions: &mut self.decisions,
                        host: self.host.as_deref_mut(),
                    };
                    self.engine.reconfigure(now, resolver, &mut hooks);
                }
                l.max_concurrent_jobs
            }
        };
        // A `concurrency/set` creates the channel, as it did in the recording.
        let in_force = self
            .engine
            .channel_state(channel)
            .map(|s| s.max_concurrent_jobs);
        if in_force != Some(max) {
            let mut hooks = Hooks {
                decisions: &mut self.decisions,
                host: self.host.as_deref_mut(),
            };
            let input = Input::SetConcurrency {
                channel: channel.to_string(),
                max,
            };
            self.engine.handle_with(now, input, &mut hooks);
        }
    }

    /// Takes the engine's decisions: grants schedule the job's recorded renewals and end.
    fn drain(&mut self, now: Time) {
        while let Some(output) = self.engine.poll_output() {
            match output {
                Output::Go {
                    channel, uid, at, ..
                } => {
                    let Some(&i) = self.live.get(&(channel.clone(), uid)) else {
                        continue;
                    };
                    self.out.granted[i] = Some(at);
                    self.schedule_after_grant(i, at);
                    let n = self.running.entry(channel.clone()).or_default();
                    *n += 1;
                    if now >= self.from {
                        let peak = self.out.peak_running.entry(channel).or_default();
                        *peak = (*peak).max(*n);
                    }
                }
                Output::Expired { channel, uid }
                | Output::Ended {
                    channel,
                    uid,
                    was_running: true,
                    ..
                } => {
                    self.live.remove(&(channel.clone(), uid));
                    if let Some(n) = self.running.get_mut(&channel) {
                        *n = n.saturating_sub(1);
                    }
                }
                Output::Ended { channel, uid, .. } => {
                    self.live.remove(&(channel, uid));
                }
                Output::Rejected {
                    channel, uid, kind, ..
                } if kind != RejectKind::Renew => {
                    if let Some(i) = self.live.remove(&(channel, uid)) {
                        self.out.rejected[i] = true;
                    }
                }
                _ => {}
            }
        }
    }

    fn schedule_after_grant(&mut self, i: usize, at: Time) {
        let job = &self.trace.jobs[i];
        for &(after, timeout, order) in &job.renewals {
            self.events
                .insert((at + after, order, Event::Renew(i, timeout)), ());
        }
        match (job.run_time(), job.left) {
            // Expiry is the engine's to decide from the lease.
            (Some(_), Some((_, Exit::Expired, _))) if job.granted.is_some() => {}
            // Other ends come after the recorded run time.
            (Some(run), Some((_, _, order))) if job.granted.is_some() => {
                self.events.insert((at + run, order, Event::End(i)), ());
            }
            (_, Some((t, _, order))) => {
                // Granted now though it left unserved in the recording: it holds its slot
                // until the recorded time it left.
                self.events.insert((t.max(at), order, Event::End(i)), ());
            }
            _ => {}
        }
    }

    fn finish(mut self) -> Outcome {
        for name in self
            .trace
            .limits
            .keys()
            .chain(self.trace.start.channels.keys())
        {
            let Some(total) = self.engine.quota_held(name) else {
                continue;
            };
            let before = (self.held_at_from.as_ref())
                .and_then(|h| h.get(name).copied())
                .unwrap_or_default();
            self.out
                .quota_held
                .insert(name.clone(), Millis(total.0.saturating_sub(before.0)));
        }
        self.out
    }
}
