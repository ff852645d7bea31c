//! The rules engine: a deterministic state machine with injected time.
//!
//! Inputs go in through [`Engine::handle`] with the current [`Time`]; what must be published
//! comes out of [`Engine::poll_output`]; [`Engine::next_deadline`] says when the engine next needs
//! [`Engine::handle_timeout`] (a lease ends or a quota window opens). The engine never reads a
//! clock, sleeps or does I/O, so every rule can be tested by feeding it times.
//!
//! Cost per operation is O(log n) in the channel's queue depth; the engine keeps one timer entry
//! per channel that has something to wake for, so idle channels cost nothing.
//!
//! The daemon-wide `infos` reply ([`Output::AllStates`]) is as large as every channel's state
//! together, so it is rate-limited: at most one per [`ALL_STATES_INTERVAL`]. The first request
//! is answered at once; requests during the following interval are answered together, once, at
//! its end (a deadline like any other).

mod channel;
mod durable;
mod fencing;
mod options;
mod policy;
mod progress;
mod quota;
mod time;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

pub use channel::{job_bytes, JOB_OVERHEAD_BYTES, PROGRESS_BYTES};
use channel::{Channel, Room};
use durable::ChangeLog;
pub use durable::{Change, ChannelSnapshot, Exit, JobSnapshot, Snapshot};
pub use fencing::{Reply, RunningJob, StaleAction};
pub use options::{ChannelOptions, OnPolicyError, QuotaLog, QuotaSpec};
pub use policy::{
    Admission, Agreement, ChannelView, Decision, JobEvent, JobInfo, NoPolicies, Policies,
    ShadowReport,
};
pub use progress::{
    HeldBy, Position, ETA_HORIZON, HEAD_POSITIONS, LISTED_JOBS, MAX_POSITIONS_PER_EVENT,
    PROGRESS_INTERVAL,
};
pub use time::{Millis, Time};

/// A new job asking to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Channel name.
    pub channel: String,
    /// Client-chosen job id, unique within the channel while the job is known.
    pub uid: String,
    /// The job's own timeout; the lease adds the channel's `timeout_offset`.
    pub timeout: Millis,
    /// Queue priority: higher is granted first, FIFO among equals. 0 without a policy.
    pub priority: i64,
    /// The registration payload's other fields as a JSON object, kept for policies.
    pub meta: Option<Box<str>>,
    /// How its `go` is to be published.
    pub reply: Reply,
    /// Units of the channel's concurrency it holds while running, and counts in each quota
    /// window (`"cost"`, default 1). A cost the channel's limits could never admit is rejected.
    pub cost: u32,
    /// Whether the job is told its queue position while it waits (`"progress": true`).
    pub progress: bool,
}

impl Registration {
    /// A registration with every optional field at its protocol default: priority 0, no extra
    /// fields, a plain `go`, cost 1, no progress reports. Set the others with struct update
    /// syntax (`Registration { cost: 2, ..Registration::new(..) }`).
    pub fn new(channel: impl Into<String>, uid: impl Into<String>, timeout: Millis) -> Self {
        Registration {
            channel: channel.into(),
            uid: uid.into(),
            timeout,
            priority: 0,
            meta: None,
            reply: Reply::Plain,
            cost: 1,
            progress: false,
        }
    }
}

/// An event for the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// `register`: queue a job (ignored if the uid is already waiting or running).
    Register(Registration),
    /// `finished`: the job is done; frees its slot, or cancels it if still waiting.
    Finished {
        /// Channel name.
        channel: String,
        /// Job id.
        uid: String,
        /// The fencing token the sender holds, if it sent one: any other than the live grant's
        /// makes the engine ignore the message ([`Output::Stale`]).
        token: Option<u64>,
    },
    /// `aborted`: same effect as `Finished`, recorded as an abort.
    Aborted {
        /// Channel name.
        channel: String,
        /// Job id.
        uid: String,
        /// As in `Finished`.
        token: Option<u64>,
    },
    /// `concurrency/set`: change the running limit. Running jobs are never revoked.
    SetConcurrency {
        /// Channel name.
        channel: String,
        /// New limit; 0 pauses the channel.
        max: u32,
    },
    /// `renew`: restart a running job's lease at now + `timeout` + offset.
    Renew {
        /// Channel name.
        channel: String,
        /// Job id.
        uid: String,
        /// New timeout, from now.
        timeout: Millis,
        /// As in `Finished`; a stale one is also answered with `rejected/{uid}`.
        token: Option<u64>,
    },
    /// `infos`: report the channel's state.
    Infos {
        /// Channel name.
        channel: String,
    },
    /// `infos` with `{"jobs": true}`: report the channel's state with its first waiting jobs
    /// ([`ChannelState::waiting_jobs`]).
    InfosJobs {
        /// Channel name.
        channel: String,
    },
    /// `PREFIX/infos`: report the state of every channel (at most once per
    /// [`ALL_STATES_INTERVAL`]; requests in between share the next report).
    InfosAll,
    /// The broker acknowledged the `go` of job `seq` (from [`Output::Go`] or
    /// [`Output::GoAgain`]): it is no longer said again after a restart or a lost broker session.
    Delivered {
        /// Channel name.
        channel: Arc<str>,
        /// Job id.
        uid: Arc<str>,
        /// The grant's job sequence number.
        seq: u64,
    },
}

impl Input {
    /// The channel the input is about (`None` for the daemon-wide `InfosAll`).
    pub fn channel(&self) -> Option<&str> {
        match self {
            Input::Register(r) => Some(&r.channel),
            Input::Finished { channel, .. }
            | Input::Aborted { channel, .. }
            | Input::SetConcurrency { channel, .. }
            | Input::Renew { channel, .. }
            | Input::Infos { channel }
            | Input::InfosJobs { channel } => Some(channel),
            Input::Delivered { channel, .. } => Some(channel),
            Input::InfosAll => None,
        }
    }
}

impl Output {
    /// The channel the output is about (`None` for `AllStates`).
    pub fn channel(&self) -> Option<&str> {
        match self {
            Output::Go { channel, .. }
            | Output::GoAgain { channel, .. }
            | Output::Expired { channel, .. }
            | Output::Rejected { channel, .. }
            | Output::Stale { channel, .. }
            | Output::Ended { channel, .. }
            | Output::Position { channel, .. } => Some(channel),
            Output::State(s) => Some(&s.channel),
            Output::AllStates(_) => None,
        }
    }
}

/// How a job left the engine without expiring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// `finished` was received.
    Finished,
    /// `aborted` was received.
    Aborted,
}

/// Something the engine decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// The job may start now (publish `go/{uid}`).
    Go {
        /// Channel name.
        channel: Arc<str>,
        /// Job id.
        uid: Arc<str>,
        /// The job's sequence number: with `channel` and `uid` it names this grant, for
        /// [`Input::Delivered`].
        seq: u64,
        /// Grant time (the instant every quota window counts).
        at: Time,
        /// How long it waited in the queue.
        waited: Millis,
        /// The grant's fencing token: greater than every earlier grant's in the channel.
        token: u64,
        /// When the lease ends.
        deadline: Time,
        /// How the `go` is to be published.
        reply: Reply,
    },
    /// A running job's `go` once more, because the broker never acknowledged the first: after
    /// a restart (the crash may have come between recording the grant and publishing it), or
    /// after the broker lost the daemon's session with the `go` in flight (publish `go/{uid}`
    /// again).
    GoAgain {
        /// Channel name.
        channel: Arc<str>,
        /// Job id.
        uid: Arc<str>,
        /// The job's sequence number, as in [`Output::Go`].
        seq: u64,
        /// When it was granted (`None` if restored from a format-1 snapshot).
        granted_at: Option<Time>,
        /// The grant's fencing token, as in the first `go`.
        token: u64,
        /// When the lease ends now (a `renew` may have moved it).
        deadline: Time,
        /// What remains of the lease as this `go` is decided.
        remaining: Millis,
        /// How the `go` is to be published.
        reply: Reply,
    },
    /// The job's lease ran out; its slot is free again (publish `expired/{uid}`).
    Expired {
        /// Channel name.
        channel: Arc<str>,
        /// Job id.
        uid: Arc<str>,
    },
    /// The input about this job was refused (publish `rejected/{uid}`).
    Rejected {
        /// Channel name.
        channel: Arc<str>,
        /// Job id.
        uid: Arc<str>,
        /// Who refused it, for metrics.
        kind: RejectKind,
        /// Why, for the client.
        reason: String,
    },
    /// A job ended through `finished` or `aborted` (nothing is published).
    Ended {
        /// Channel name.
        channel: Arc<str>,
        /// Job id.
        uid: Arc<str>,
        /// Which message ended it.
        reason: EndReason,
        /// Whether it held a slot (false: it was cancelled while waiting).
        was_running: bool,
    },
    /// A `finished`, `aborted` or `renew` named a known job with a token other than its live
    /// grant's, and was ignored (nothing is published for it; a `renew` also gets `Rejected`).
    Stale {
        /// Channel name.
        channel: Arc<str>,
        /// Job id.
        uid: Arc<str>,
        /// Which request it was.
        action: StaleAction,
        /// The token it carried.
        token: u64,
        /// The live grant's token; `None` if the uid is waiting (registered again, not granted).
        live: Option<u64>,
    },
    /// A waiting job that asked for progress is told where it stands (publish
    /// `position/{uid}`); at most once a second per job, see [`PROGRESS_INTERVAL`].
    Position {
        /// Channel name.
        channel: Arc<str>,
        /// The job's place.
        position: Position,
    },
    /// Reply to `infos` (publish on `state`).
    State(ChannelState),
    /// Reply to the daemon-wide `infos` (publish on `PREFIX/state`), channels by name.
    AllStates(Vec<ChannelState>),
}

/// Who refused a request: a small fixed set, so it can label metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectKind {
    /// The message itself was invalid (protocol layer).
    Invalid,
    /// `renew` of a job that is not known.
    Renew,
    /// The channel's policy rejected or vetoed it (or failed, with `on_policy_error = closed`).
    Policy,
    /// Accepting it would have grown state past a configured limit (`max_channels`,
    /// `max_waiting_per_channel`, `max_waiting_bytes`).
    Limit,
}

impl RejectKind {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::Invalid => "invalid",
            RejectKind::Renew => "renew",
            RejectKind::Policy => "policy",
            RejectKind::Limit => "limit",
        }
    }
}

/// Use of one quota window, as reported in `state`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QuotaState {
    /// Quota name.
    pub name: String,
    /// Window length in milliseconds.
    pub interval_ms: u64,
    /// Grants allowed per window (0: disabled).
    pub limit: u32,
    /// Grants counting against the window now.
    pub used: u32,
    /// When the window has room again, if it is full (ms since the Unix epoch).
    pub next_opening: Option<Time>,
}

/// A channel's state, as published in reply to `infos`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChannelState {
    /// Channel name.
    pub channel: String,
    /// Current running limit.
    pub max_concurrent_jobs: u32,
    /// Added to each job's timeout, in milliseconds.
    pub timeout_offset_ms: u64,
    /// Uids holding a slot, earliest lease end first.
    pub running: Vec<String>,
    /// `running.len()`.
    pub running_count: usize,
    /// Units of concurrency the running jobs hold (the sum of their costs), what
    /// `max_concurrent_jobs` bounds; `None` (and left out of the JSON, as for clients of the
    /// original protocol) when it equals `running_count`, every running job costing 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running_units: Option<u64>,
    /// The running jobs with their fencing tokens and lease ends, in the order of `running`.
    pub running_jobs: Vec<RunningJob>,
    /// Jobs waiting for a slot.
    pub waiting: usize,
    /// Every quota window.
    pub quotas: Vec<QuotaState>,
    /// When all full windows have room again (ms since the Unix epoch), if any is full.
    pub next_window_opening: Option<Time>,
    /// The policy file deciding admission and order, if any.
    pub policy: Option<String>,
    /// Total time a quota kept a waiting job from a free slot, in milliseconds.
    pub quota_held_ms: u64,
    /// The engine time of this report (ms since the Unix epoch).
    pub now: Time,
    /// The first [`LISTED_JOBS`] waiting jobs in grant order, with their positions; only in a
    /// reply to `{"jobs": true}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_jobs: Option<Vec<Position>>,
    /// How the channel's shadow policy (`policy_shadow`) compares with the deciding one; only
    /// for a channel that has one.
    /// (Boxed: most channels have none, and a state is part of every [`Output`].)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Box<ShadowReport>>,
}

/// Index of a channel in `Engine::channels`: a plain `usize`, so every index of that `Vec` is
/// an id and no conversion can fail or alias another channel, however many channels exist
/// (`max_channels` bounds those clients create; a restore may add more). It costs no memory
/// over a `u32`: every place that stores one pads it to eight bytes anyway.
type ChannelId = usize;

/// Shortest time between two daemon-wide state reports ([`Output::AllStates`]).
pub const ALL_STATES_INTERVAL: Millis = Millis(1_000);

/// The rate limit of the daemon-wide state report.
#[derive(Debug, Default)]
struct AllStatesLimit {
    /// When the last report went out.
    last: Option<Time>,
    /// A request came after `last` and waits for the report at `last + ALL_STATES_INTERVAL`.
    pending: bool,
}

impl AllStatesLimit {
    /// When a waiting request is due, if one waits.
    fn due(&self) -> Option<Time> {
        self.last
            .filter(|_| self.pending)
            .map(|t| t + ALL_STATES_INTERVAL)
    }
}

/// Bounds on how much state clients can make the engine hold. A request that would go past one
/// is answered with `rejected/{uid}` ([`RejectKind::Limit`]) instead of growing state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLimits {
    /// Channels the engine will create. Channels are never forgotten, so this bounds how many
    /// distinct channel names clients can ever use in the daemon's lifetime.
    pub max_channels: usize,
    /// Jobs one channel may hold waiting (running jobs are bounded by `max_concurrent_jobs`).
    pub max_waiting_per_channel: usize,
    /// Bytes all waiting jobs together may hold, each counted as [`job_bytes`] (its uid, its
    /// extra fields and [`JOB_OVERHEAD_BYTES`]). A job that is granted at once never waits and
    /// is not refused by it.
    pub max_waiting_bytes: usize,
}

impl Default for EngineLimits {
    fn default() -> Self {
        EngineLimits {
            max_channels: 10_000,
            max_waiting_per_channel: 100_000,
            max_waiting_bytes: 256 << 20,
        }
    }
}

/// Resolves a channel's options from its name when the channel is first seen.
pub type Resolver = Box<dyn Fn(&str) -> ChannelOptions + Send>;

/// The state machine owning every channel.
pub struct Engine {
    /// Channels in order of first appearance; never removed, so ids stay valid.
    channels: Vec<Channel>,
    /// Name to id.
    by_name: HashMap<Arc<str>, ChannelId>,
    /// `(deadline, channel)` for every channel with something to wake for; each channel has at
    /// most one entry, equal to its `timer` field.
    timers: BTreeSet<(Time, ChannelId)>,
    /// Options for channels not yet seen.
    resolver: Resolver,
    /// Decisions not yet taken by `poll_output`.
    outputs: VecDeque<Output>,
    /// The latest time handed in; time never runs backwards inside the engine.
    now: Time,
    /// How many channels and waiting jobs clients may create; `channels.len()` never exceeds
    /// `max_channels`, but a lowered limit (reload) never drops what already exists.
    limits: EngineLimits,
    /// Sum of every channel's `counted_bytes`: the bytes of all waiting jobs as of each
    /// channel's last `settle`, which follows every change to a queue. A register is refused if
    /// it would take this past `limits.max_waiting_bytes` (restored jobs are never refused).
    waiting_bytes: usize,
    /// Changes to durable state since they were last taken (when recording).
    log: ChangeLog,
    /// Jobs restored running, `(channel, uid, seq)`, whose `go` is to be said again.
    redeliveries: Vec<(ChannelId, Arc<str>, u64)>,
    /// When the daemon-wide state was last reported and whether a request waits for the next.
    all_states: AllStatesLimit,
    /// At least the last fencing token of every channel that has none of its own in `channels`
    /// because a snapshot dropped it: a channel created by a client starts above it, so its
    /// tokens never go back to what an earlier life of the same name handed out.
    token_floor: u64,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("channels", &self.channels.len())
            .field("timers", &self.timers.len())
            .field("outputs", &self.outputs.len())
            .field("now", &self.now)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Engine {
    /// An engine whose channels take their options from `resolver`, with default limits.
    pub fn new(resolver: Resolver) -> Engine {
        Engine::with_limits(resolver, EngineLimits::default())
    }

    /// An engine whose channels take their options from `resolver`, bounded by `limits`.
    pub fn with_limits(resolver: Resolver, limits: EngineLimits) -> Engine {
        Engine {
            channels: Vec::new(),
            by_name: HashMap::new(),
            timers: BTreeSet::new(),
            resolver,
            outputs: VecDeque::new(),
            now: Time(0),
            limits,
            waiting_bytes: 0,
            log: ChangeLog::default(),
            redeliveries: Vec::new(),
            all_states: AllStatesLimit::default(),
            token_floor: 0,
        }
    }

    /// Starts or stops recording [`Change`]s for a journal (off by default).
    pub fn record_changes(&mut self, on: bool) {
        self.log.enabled = on;
        if !on {
            self.log.changes.clear();
        }
    }

    /// Records every channel's limits, after the time: a new journal generation begins, and
    /// `replay` may read it without the ones before.
    pub fn journal_limits(&mut self) {
        self.log.restamp();
        for ch in &self.channels {
            self.log.push(|| ch.limits_change());
        }
    }

    /// Moves the changes made since the last call into `into` (nothing unless recording).
    pub fn take_changes(&mut self, into: &mut Vec<Change>) {
        into.append(&mut self.log.changes);
    }

    /// Says `go` again ([`Output::GoAgain`]) for every job marked by [`Engine::restore`] or
    /// [`Engine::redeliver_running`] that still runs under the same grant and whose `go` the
    /// broker has still not acknowledged. The driver calls it once the requests queued for it
    /// while it was away have been read, so that a job whose `finished` was among them gets no
    /// second `go`. Later calls do nothing until jobs are marked again.
    pub fn redeliver(&mut self) {
        for (id, uid, seq) in std::mem::take(&mut self.redeliveries) {
            let ch = &self.channels[id];
            if let Some(again) = ch.go_again(uid, seq, self.now) {
                self.outputs.push_back(again);
            }
        }
    }

    /// Marks every running job whose `go` the broker has not acknowledged for
    /// [`Engine::redeliver`] (after the broker lost the daemon's session, and with it the
    /// publishes in flight). Returns how many.
    pub fn redeliver_running(&mut self) -> usize {
        self.redeliveries.clear();
        for (index, ch) in self.channels.iter().enumerate() {
            self.redeliveries
                .extend(ch.undelivered_jobs().map(|(uid, seq)| (index, uid, seq)));
        }
        self.redeliveries.len()
    }

    /// Whether restored jobs still wait for [`Engine::redeliver`].
    pub fn awaits_redelivery(&self) -> bool {
        !self.redeliveries.is_empty()
    }

    /// Everything durable, as of now: what [`Engine::restore`] takes back. A channel with
    /// nothing durable is left out; its last fencing token goes into the snapshot's floor.
    pub fn export(&self) -> Snapshot {
        let mut token_floor = self.token_floor;
        let mut channels = BTreeMap::new();
        for c in &self.channels {
            match c.export() {
                Some(snap) => {
                    channels.insert(c.name.clone(), snap);
                }
                None => token_floor = token_floor.max(c.last_token()),
            }
        }
        Snapshot {
            channels,
            token_floor,
        }
    }

    /// Takes back a snapshot into a fresh engine at `now` (the daemon's start): channels are
    /// created with the current config's options (even past `max_channels`: nothing restored is
    /// dropped), waiting jobs keep their order, running jobs their wall-clock lease ends. Leases
    /// that ended while the daemon was down expire at once (`Expired`); then the channels grant
    /// what they allow. Restoring into a channel that already has a job with the same uid keeps
    /// the existing job. The still-running jobs are remembered for [`Engine::redeliver`]. Each
    /// restored channel goes on from its own last fencing token; channels created later start
    /// above the snapshot's floor.
    pub fn restore(&mut self, now: Time, snapshot: Snapshot, hooks: &mut dyn Policies) {
        self.now = self.now.max(now);
        let now = self.now;
        self.log.at(now);
        self.log.push(|| Change::Started);
        let mut restored = Vec::new();
        for (name, snap) in snapshot.channels {
            let id = match self.by_name.get(&name) {
                Some(id) => *id,
                None => self.insert_channel(&name, 0),
            };
            let live = self.channels[id].restore(snap, now);
            let ch = &self.channels[id];
            self.log.push(|| ch.limits_change());
            self.redeliveries
                .extend(live.into_iter().map(|(uid, seq)| (id, uid, seq)));
            restored.push(id);
        }
        self.token_floor = self.token_floor.max(snapshot.token_floor);
        for id in restored {
            let ch = &mut self.channels[id];
            ch.expire(now, hooks, &mut self.outputs, &mut self.log);
            self.settle(id, now, hooks);
        }
    }

    /// Replaces the limits (a reloaded config). Lowering one refuses new growth only: existing
    /// channels and waiting jobs stay.
    pub fn set_limits(&mut self, limits: EngineLimits) {
        self.limits = limits;
    }

    /// The limits in force.
    pub fn limits(&self) -> EngineLimits {
        self.limits
    }

    /// Applies one input at `now` with no policies. Leases due by `now` end first.
    pub fn handle(&mut self, now: Time, input: Input) {
        self.handle_with(now, input, &mut NoPolicies);
    }

    /// Applies one input at `now`, asking `hooks` where a channel has a policy.
    pub fn handle_with(&mut self, now: Time, input: Input, hooks: &mut dyn Policies) {
        self.handle_timeout_with(now, hooks);
        let now = self.now;
        match input {
            Input::Register(reg) => self.handle_register(now, reg, hooks),
            Input::Finished {
                channel,
                uid,
                token,
            } => self.handle_end(now, &channel, &uid, token, EndReason::Finished, hooks),
            Input::Aborted {
                channel,
                uid,
                token,
            } => self.handle_end(now, &channel, &uid, token, EndReason::Aborted, hooks),
            Input::SetConcurrency { channel, max } => {
                let Some(id) = self.channel_id(&channel) else {
                    // No uid to answer to: the refusal is only logged.
                    tracing::warn!(
                        channel,
                        max_channels = self.limits.max_channels,
                        "concurrency/set for a new channel refused: max_channels reached"
                    );
                    return;
                };
                let ch = &mut self.channels[id];
                ch.set_max(max);
                self.log.push(|| Change::Concurrency {
                    channel: ch.name.clone(),
                    configured: ch.configured_max(),
                    max,
                });
                self.settle(id, now, hooks);
            }
            Input::Renew {
                channel,
                uid,
                timeout,
                token,
            } => self.handle_renew(now, &channel, &uid, timeout, token, hooks),
            Input::Infos { channel } => self.handle_infos(now, &channel, false, hooks),
            Input::InfosJobs { channel } => self.handle_infos(now, &channel, true, hooks),
            Input::Delivered { channel, uid, seq } => {
                if let Some(&id) = self.by_name.get(&channel) {
                    self.channels[id].mark_delivered(&uid, seq, &mut self.log);
                }
            }
            Input::InfosAll => self.handle_infos_all(now, hooks),
        }
    }

    /// `handle_timeout_with` and no policies.
    pub fn handle_timeout(&mut self, now: Time) {
        self.handle_timeout_with(now, &mut NoPolicies);
    }

    /// Ends due leases and grants into freed slots and opened quota windows, for every channel
    /// whose deadline is at or before `now`; then sends a daemon-wide state report that waited
    /// for the end of its interval.
    pub fn handle_timeout_with(&mut self, now: Time, hooks: &mut dyn Policies) {
        self.now = self.now.max(now);
        let now = self.now;
        self.log.at(now);
        while let Some(&(t, id)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.pop_first();
            self.channels[id].timer = None;
            self.channels[id].expire(now, hooks, &mut self.outputs, &mut self.log);
            self.settle(id, now, hooks);
        }
        if self.all_states.due().is_some_and(|t| t <= now) {
            self.report_all_states(now, hooks);
        }
    }

    /// After a policy changed: asks it again for the priority of every waiting job in the named
    /// channels (those whose policy instance was actually replaced: what `PolicyHost::swap`
    /// returns), then grants what the new order allows. Unknown names are skipped.
    pub fn readmit_channels(&mut self, now: Time, channels: &[Arc<str>], hooks: &mut dyn Policies) {
        self.handle_timeout_with(now, hooks);
        let now = self.now;
        for name in channels {
            if let Some(&id) = self.by_name.get(name) {
                self.channels[id].readmit(now, hooks, &mut self.outputs, &mut self.log);
                self.settle(id, now, hooks);
            }
        }
    }

    /// Takes a new resolver (a reloaded config) and re-resolves every known channel: new limits,
    /// quotas and policy mappings apply at once, running jobs are never revoked, quota history is
    /// kept by window name, and waiting jobs are re-admitted where the policy changed. Returns
    /// `(channel, changed keys)` for every channel that changed.
    pub fn reconfigure(
        &mut self,
        now: Time,
        resolver: Resolver,
        hooks: &mut dyn Policies,
    ) -> Vec<(Arc<str>, Vec<&'static str>)> {
        self.handle_timeout_with(now, hooks);
        let now = self.now;
        self.resolver = resolver;
        let mut report = Vec::new();
        for index in 0..self.channels.len() {
            let ch = &mut self.channels[index];
            let opts = (self.resolver)(&ch.name);
            let changed = ch.reconfigure(opts);
            if changed.is_empty() {
                continue;
            }
            if changed.contains(&"policy") {
                ch.readmit(now, hooks, &mut self.outputs, &mut self.log);
            }
            self.log.push(|| ch.limits_change());
            report.push((ch.name.clone(), changed));
            self.settle(index, now, hooks);
        }
        report
    }

    /// The earliest time at which `handle_timeout` has work to do.
    pub fn next_deadline(&self) -> Option<Time> {
        let channels = self.timers.first().map(|(t, _)| *t);
        match (channels, self.all_states.due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next decision to act on, oldest first.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The state of `channel` at the engine's current time (`None` if it was never seen).
    pub fn channel_state(&self, channel: &str) -> Option<ChannelState> {
        let id = *self.by_name.get(channel)?;
        Some(self.channels[id].state(self.now, &NoPolicies))
    }

    /// Waiting uids of `channel` in the order they will be granted.
    pub fn waiting(&self, channel: &str) -> Vec<Arc<str>> {
        self.channel(channel)
            .map(|c| c.queued().cloned().collect())
            .unwrap_or_default()
    }

    /// Running uids of `channel` with their lease deadlines.
    pub fn running(&self, channel: &str) -> Vec<(Arc<str>, Time)> {
        self.channel(channel)
            .map(|c| c.leases().map(|(u, t)| (u.clone(), t)).collect())
            .unwrap_or_default()
    }

    /// `(running, waiting)` of a known channel, cheaply (for gauges).
    pub fn counts(&self, channel: &str) -> Option<(usize, usize)> {
        self.channel(channel).map(|c| (c.running(), c.waiting()))
    }

    /// Total time quotas held `channel` back, in milliseconds (for metrics).
    pub fn quota_held(&self, channel: &str) -> Option<Millis> {
        self.channel(channel).map(|c| c.quota_held(self.now))
    }

    /// Number of channels seen so far.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Bytes held by waiting jobs over all channels, as `max_waiting_bytes` counts them.
    pub fn waiting_bytes(&self) -> usize {
        self.waiting_bytes
    }

    fn channel(&self, name: &str) -> Option<&Channel> {
        self.by_name.get(name).map(|id| &self.channels[*id])
    }

    fn handle_register(&mut self, now: Time, reg: Registration, hooks: &mut dyn Policies) {
        let Some(id) = self.channel_id(&reg.channel) else {
            let max = self.limits.max_channels;
            self.outputs.push_back(Output::Rejected {
                channel: reg.channel.as_str().into(),
                uid: reg.uid.into(),
                kind: RejectKind::Limit,
                reason: format!(
                    "max_channels: the coordinator already has {max} channels, the limit \
                     ([limits] max_channels = {max}); use an existing channel"
                ),
            });
            return;
        };
        let room = Room {
            max_waiting: self.limits.max_waiting_per_channel,
            max_bytes: self.limits.max_waiting_bytes,
            used_bytes: self.waiting_bytes,
        };
        let channel = &mut self.channels[id];
        if channel.register(reg, now, room, hooks, &mut self.outputs, &mut self.log) {
            self.settle(id, now, hooks);
        }
    }

    fn handle_end(
        &mut self,
        now: Time,
        channel: &str,
        uid: &str,
        token: Option<u64>,
        reason: EndReason,
        hooks: &mut dyn Policies,
    ) {
        let Some(&id) = self.by_name.get(channel) else {
            tracing::debug!(channel, uid, ?reason, "end for unknown channel ignored");
            return;
        };
        let action = match reason {
            EndReason::Finished => StaleAction::Finished,
            EndReason::Aborted => StaleAction::Aborted,
        };
        if self.fenced_off(id, uid, token, action) {
            return;
        }
        let ch = &mut self.channels[id];
        let Some(was_running) =
            ch.remove(uid, reason == EndReason::Aborted, now, hooks, &mut self.log)
        else {
            tracing::debug!(channel, uid, ?reason, "end for unknown uid ignored");
            return;
        };
        self.outputs.push_back(Output::Ended {
            channel: ch.name.clone(),
            uid: uid.into(),
            reason,
            was_running,
        });
        self.settle(id, now, hooks);
    }

    fn handle_renew(
        &mut self,
        now: Time,
        channel: &str,
        uid: &str,
        timeout: Millis,
        token: Option<u64>,
        hooks: &mut dyn Policies,
    ) {
        // Never creates a channel: a stray renew must not grow state.
        let id = self.by_name.get(channel).copied();
        if let Some(id) = id {
            if self.fenced_off(id, uid, token, StaleAction::Renew) {
                return;
            }
            if self.channels[id].renew(uid, timeout, now, &mut self.log) {
                self.settle(id, now, hooks);
                return;
            }
        }
        self.outputs.push_back(Output::Rejected {
            channel: channel.into(),
            uid: uid.into(),
            kind: RejectKind::Renew,
            reason: "renew: no such job (never registered, or its lease already ended)".into(),
        });
    }

    /// `PREFIX/infos`: a report now if none went out in the last interval; otherwise the
    /// request waits for the report at the interval's end (one report for all of them). A
    /// report sent at this very time already answers it.
    fn handle_infos_all(&mut self, now: Time, hooks: &dyn Policies) {
        match self.all_states.last {
            Some(last) if now < last + ALL_STATES_INTERVAL => {
                if last < now {
                    self.all_states.pending = true;
                }
            }
            _ => self.report_all_states(now, hooks),
        }
    }

    /// Every channel's state, by name.
    fn report_all_states(&mut self, now: Time, hooks: &dyn Policies) {
        let mut all: Vec<ChannelState> =
            self.channels.iter().map(|c| c.state(now, hooks)).collect();
        all.sort_by(|a, b| a.channel.cmp(&b.channel));
        self.outputs.push_back(Output::AllStates(all));
        self.all_states = AllStatesLimit {
            last: Some(now),
            pending: false,
        };
    }

    /// Whether `token` is not the live grant's of `uid`, a job the channel knows: then the
    /// request is reported as [`Output::Stale`] (and a `renew` rejected) and must be ignored.
    /// A request without a token, or for an unknown uid, is never fenced off here.
    fn fenced_off(
        &mut self,
        id: ChannelId,
        uid: &str,
        token: Option<u64>,
        action: StaleAction,
    ) -> bool {
        let ch = &self.channels[id];
        let Some((token, live)) = token.and_then(|t| Some((t, ch.stale(uid, t)?))) else {
            return false;
        };
        let (channel, uid): (Arc<str>, Arc<str>) = (ch.name.clone(), uid.into());
        if action == StaleAction::Renew {
            let reason = match live {
                Some(live) => format!(
                    "renew: token {token} is not the live grant's ({live}): that lease ended and \
                     the job was granted again; stop work under token {token}"
                ),
                None => format!(
                    "renew: token {token} names no live grant: that lease ended and the job \
                     waits for a new one; stop work under token {token}"
                ),
            };
            self.outputs.push_back(Output::Rejected {
                channel: channel.clone(),
                uid: uid.clone(),
                kind: RejectKind::Renew,
                reason,
            });
        }
        self.outputs.push_back(Output::Stale {
            channel,
            uid,
            action,
            token,
            live,
        });
        true
    }

    fn handle_infos(&mut self, now: Time, channel: &str, jobs: bool, hooks: &dyn Policies) {
        let mut state = match self.by_name.get(channel) {
            Some(id) => self.channels[*id].state(now, hooks),
            // Report what the channel would be without creating it: `infos` must not grow state.
            None => Channel::new(channel.into(), (self.resolver)(channel)).state(now, hooks),
        };
        if jobs {
            let listed = self.channel(channel).map(|c| c.waiting_jobs(now));
            state.waiting_jobs = Some(listed.unwrap_or_default());
        }
        self.outputs.push_back(Output::State(state));
    }

    /// The id of `name`, creating the channel with resolved options on first sight; `None` if
    /// it is new and `max_channels` channels already exist.
    fn channel_id(&mut self, name: &str) -> Option<ChannelId> {
        if let Some(id) = self.by_name.get(name) {
            return Some(*id);
        }
        if self.channels.len() >= self.limits.max_channels {
            return None;
        }
        Some(self.create_channel(name))
    }

    /// Creates a channel with its resolved options, its fencing tokens above the floor.
    fn create_channel(&mut self, name: &str) -> ChannelId {
        let id = self.insert_channel(name, self.token_floor);
        let ch = &self.channels[id];
        self.log.push(|| ch.limits_change());
        id
    }

    /// Creates a channel with its resolved options whose next grant gets token `last_token + 1`.
    fn insert_channel(&mut self, name: &str, last_token: u64) -> ChannelId {
        let opts = (self.resolver)(name);
        let name: Arc<str> = name.into();
        let id = self.channels.len();
        tracing::debug!(channel = %name, ?opts, "new channel");
        self.channels
            .push(Channel::new(name.clone(), opts).with_last_token(last_token));
        self.by_name.insert(name, id);
        id
    }

    /// Grants what the channel now allows, re-arms its timer and brings the daemon-wide count
    /// of waiting bytes up to date. Every path that changes a queue ends here.
    fn settle(&mut self, id: ChannelId, now: Time, hooks: &mut dyn Policies) {
        let ch = &mut self.channels[id];
        let quota_open = ch.grant(now, hooks, &mut self.outputs, &mut self.log);
        let bytes = ch.queued_bytes();
        // Invariant: `waiting_bytes` is the sum of every `counted_bytes`, so this cannot wrap.
        self.waiting_bytes = self.waiting_bytes.saturating_sub(ch.counted_bytes) + bytes;
        ch.counted_bytes = bytes;
        let next = ch.next_deadline(quota_open);
        if next != ch.timer {
            if let Some(old) = ch.timer {
                self.timers.remove(&(old, id));
            }
            if let Some(new) = next {
                self.timers.insert((new, id));
            }
            ch.timer = next;
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod policy_tests;

#[cfg(test)]
mod bounds_tests;

#[cfg(test)]
mod infos_tests;

#[cfg(test)]
mod fencing_tests;

#[cfg(test)]
mod cost_tests;
#[cfg(test)]
mod test_support;

#[cfg(test)]
mod progress_tests;
