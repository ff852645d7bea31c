//! The recorded period as a simulation's input: every job with its arrival, fields and what
//! happened to it after its grant (renewals, the end), and the operator's and reloads' changes
//! of each channel's limits, all with their engine times and journal order.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::engine::{Change, Exit, Millis, Reply, Snapshot, Time};
use crate::state::read::History;

/// A channel's limits as the journal recorded them ([`Change::Limits`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedLimits {
    /// Running limit in force.
    pub max_concurrent_jobs: u32,
    /// Added to each job's timeout to give its lease.
    pub timeout_offset: Millis,
    /// `(name, interval, limit)` per window.
    pub quotas: Vec<(String, Millis, u32)>,
    /// Whether a policy decided admission and order.
    pub policy: bool,
}

/// One job of the recorded period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Channel name.
    pub channel: Arc<str>,
    /// Job id.
    pub uid: Arc<str>,
    /// Registration time.
    pub arrival: Time,
    /// Position of its `Queued` in the journal (orders events of the same millisecond); 0
    /// for jobs the starting snapshot already held.
    pub order: u64,
    /// The priority its policy gave it (0 without one).
    pub priority: i64,
    /// Its own timeout (as last renewed while waiting).
    pub timeout: Millis,
    /// Extra registration fields.
    pub meta: Option<Arc<str>>,
    /// How it asked for its `go`.
    pub reply: Reply,
    /// Its units of concurrency and quota (journal format 5; 1 before).
    pub cost: u32,
    /// Whether it was already waiting or running when the period began (in the snapshot).
    pub preexisting: bool,
    /// Whether it was already running when the period began.
    pub running_at_start: bool,
    /// Recorded grant time, if granted within the period or before it.
    pub granted: Option<Time>,
    /// `renew`s while running: `(time after the grant, new timeout, journal order)`.
    pub renewals: Vec<(Millis, Millis, u64)>,
    /// How and when it left, with its journal order; `None` if still there at the end.
    pub left: Option<(Time, Exit, u64)>,
}

impl Job {
    /// Recorded run time, grant to end: what the job takes under any candidate.
    pub fn run_time(&self) -> Option<Millis> {
        match (self.granted, self.left) {
            (Some(g), Some((t, _, _))) => Some(Millis(t.0.saturating_sub(g.0))),
            _ => None,
        }
    }
}

/// An operator's or a reload's change to a channel's limits, at its recorded time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitEvent {
    /// `concurrency/set`.
    Concurrency(u32),
    /// A reload changed the channel's limits.
    Limits(RecordedLimits),
}

/// The recorded period, ready to simulate.
#[derive(Debug, Default)]
pub struct Trace {
    /// State when the period began.
    pub start: Snapshot,
    /// Engine time of the first change read.
    pub begin: Time,
    /// Engine time of the last change read: nothing after it is known.
    pub end: Time,
    /// Every job, in order of arrival in the journal (snapshot jobs first).
    pub jobs: Vec<Job>,
    /// The first limits recorded for each channel: those it starts the period with.
    pub limits: BTreeMap<Arc<str>, RecordedLimits>,
    /// Later changes of limits: `(time, journal order, channel, change)`.
    pub limit_events: Vec<(Time, u64, Arc<str>, LimitEvent)>,
    /// Channels with jobs but no limits recorded (their channel's record was lost).
    pub unknown_limits: Vec<Arc<str>>,
    /// Daemon restarts: `(time of the last change before, time it started again)`. Nothing ran
    /// in between: a deadline that fell inside took effect at the restart.
    pub downtimes: Vec<(Time, Time)>,
}

impl Trace {
    /// Builds the trace of a history read from a state dir.
    pub fn from_history(history: History) -> Trace {
        let mut b = Builder::default();
        b.trace.start = history.start;
        b.add_snapshot_jobs();
        for (i, change) in history.changes.into_iter().enumerate() {
            b.apply(i as u64 + 1, change);
        }
        b.finish()
    }
}

#[derive(Default)]
struct Builder {
    trace: Trace,
    /// Job index of each uid currently known, per channel.
    live: HashMap<(Arc<str>, Arc<str>), usize>,
    now: Option<Time>,
    /// Time of the last change other than a clock or a start.
    last_change: Option<Time>,
}

impl Builder {
    fn add_snapshot_jobs(&mut self) {
        let mut jobs = Vec::new();
        for (name, ch) in &self.trace.start.channels {
            for job in ch.jobs.values() {
                jobs.push(Job {
                    channel: name.clone(),
                    uid: job.uid.clone(),
                    arrival: job.registered_at,
                    order: 0,
                    priority: job.priority,
                    timeout: job.timeout,
                    meta: job.meta.clone(),
                    reply: job.reply,
                    cost: job.cost.max(1),
                    preexisting: true,
                    running_at_start: job.deadline.is_some(),
                    granted: job.deadline.map(|d| job.granted_at.unwrap_or(d)),
                    renewals: Vec::new(),
                    left: None,
                });
            }
        }
        for job in jobs {
            self.insert(job);
        }
    }

    fn insert(&mut self, job: Job) {
        let key = (job.channel.clone(), job.uid.clone());
        self.live.insert(key, self.trace.jobs.len());
        self.trace.jobs.push(job);
    }

    fn job(&mut self, channel: &Arc<str>, uid: &Arc<str>) -> Option<&mut Job> {
        let i = *self.live.get(&(channel.clone(), uid.clone()))?;
        self.trace.jobs.get_mut(i)
    }

    fn apply(&mut self, order: u64, change: Change) {
        let now = self.now.unwrap_or_default();
        if !matches!(change, Change::Clock { .. } | Change::Started) {
            self.last_change = Some(now);
        }
        match change {
            Change::Started => {
                if let Some(before) = self.last_change.filter(|t| *t < now) {
                    self.trace.downtimes.push((before, now));
                }
            }
            Change::Clock { at } => {
                if self.now.is_none() {
                    self.trace.begin = at;
                }
                self.now = Some(at);
                self.trace.end = self.trace.end.max(at);
            }
            Change::Queued {
                channel,
                uid,
                priority,
                timeout,
                registered_at,
                meta,
                ..
            } => self.insert(Job {
                channel,
                uid,
                arrival: registered_at,
                order,
                priority,
                timeout,
                meta,
                reply: Reply::Plain,
                cost: 1,
                preexisting: false,
                running_at_start: false,
                granted: None,
                renewals: Vec::new(),
                left: None,
            }),
            Change::Reply {
                channel,
                uid,
                reply,
            } => {
                if let Some(job) = self.job(&channel, &uid) {
                    job.reply = reply;
                }
            }
            Change::GrantedWithToken {
                channel, uid, at, ..
            }
            | Change::Granted {
                channel, uid, at, ..
            } => {
                if let Some(job) = self.job(&channel, &uid) {
                    job.granted = Some(at);
                }
            }
            Change::Renewed {
                channel,
                uid,
                timeout,
                ..
            } => {
                if let Some(job) = self.job(&channel, &uid) {
                    match job.granted {
                        Some(g) => {
                            job.renewals
                                .push((Millis(now.0.saturating_sub(g.0)), timeout, order))
                        }
                        None => job.timeout = timeout,
                    }
                }
            }
            Change::Left { channel, uid, why } => {
                if let Some(job) = self.job(&channel, &uid) {
                    job.left = Some((now, why, order));
                }
                self.live.remove(&(channel, uid));
            }
            Change::Removed { channel, uid } => {
                // Format 4 writes `Left`; a `Removed` here cannot occur, but must not leave
                // the job running forever either.
                let why = match self.job(&channel, &uid) {
                    Some(job) if job.granted.is_some() => Exit::Finished,
                    _ => Exit::Cancelled,
                };
                if let Some(job) = self.job(&channel, &uid) {
                    job.left = Some((now, why, order));
                }
                self.live.remove(&(channel, uid));
            }
            Change::Concurrency { channel, max, .. } => {
                self.trace
                    .limit_events
                    .push((now, order, channel, LimitEvent::Concurrency(max)));
            }
            Change::Limits {
                channel,
                max_concurrent_jobs,
                timeout_offset,
                quotas,
                policy,
            } => {
                let limits = RecordedLimits {
                    max_concurrent_jobs,
                    timeout_offset,
                    quotas,
                    policy,
                };
                match self.trace.limits.get(&channel) {
                    None => {
                        self.trace.limits.insert(channel, limits);
                    }
                    Some(_) => self.trace.limit_events.push((
                        now,
                        order,
                        channel,
                        LimitEvent::Limits(limits),
                    )),
                }
            }
            Change::JobOptions {
                channel, uid, cost, ..
            } => {
                if let Some(job) = self.job(&channel, &uid) {
                    job.cost = cost.max(1);
                }
            }
            Change::Reprioritized { .. } | Change::Delivered { .. } => {}
        }
    }

    fn finish(mut self) -> Trace {
        let mut unknown: Vec<Arc<str>> = (self.trace.jobs.iter())
            .map(|j| j.channel.clone())
            .filter(|c| !self.trace.limits.contains_key(c))
            .collect();
        unknown.sort();
        unknown.dedup();
        self.trace.unknown_limits = unknown;
        self.trace
    }
}
