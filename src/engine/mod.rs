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
//! This file holds the [`Engine`] itself: its state, the entry points above and `settle`, which
//! every change to a queue ends in. The rest, by responsibility:
//! - `input` and `output`: the engine's vocabulary ([`Input`], [`Registration`], [`Output`],
//!   [`ChannelState`]);
//! - `handle`: the `handle_*` method behind each input, and fencing by token;
//! - `lifecycle`: creating channels within [`EngineLimits`], reloads and re-admission;
//! - `reports`: `infos` replies (the daemon-wide one rate-limited) and read-only queries;
//! - `recovery`: journal changes, snapshot export/restore, saying `go` again;
//! - `channel`: one channel's queue, leases, quotas and policy calls;
//! - `durable`, `fencing`, `options`, `policy`, `progress`, `quota`, `time`: the types and rules
//!   those build on.

mod channel;
mod durable;
mod fencing;
mod handle;
mod input;
mod lifecycle;
mod options;
mod output;
mod policy;
mod progress;
mod quota;
mod recovery;
mod reports;
mod time;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

pub use channel::{job_bytes, JOB_OVERHEAD_BYTES, PROGRESS_BYTES};
use channel::{Channel, Room};
use durable::ChangeLog;
pub use durable::{Change, ChannelSnapshot, Exit, JobSnapshot, Snapshot};
pub use fencing::{Reply, RunningJob, StaleAction};
pub use input::{Input, Registration};
pub use lifecycle::{EngineLimits, Resolver};
pub use options::{ChannelOptions, OnPolicyError, QuotaLog, QuotaSpec};
pub use output::{ChannelState, EndReason, Output, QuotaState, RejectKind};
pub use policy::{
    Admission, Agreement, ChannelView, Decision, JobEvent, JobInfo, NoPolicies, Policies,
    ShadowReport,
};
pub use progress::{
    HeldBy, Position, ETA_HORIZON, HEAD_POSITIONS, LISTED_JOBS, MAX_POSITIONS_PER_EVENT,
    PROGRESS_INTERVAL,
};
use reports::AllStatesLimit;
pub use reports::ALL_STATES_INTERVAL;
pub use time::{Millis, Time};

/// Index of a channel in `Engine::channels`: a plain `usize`, so every index of that `Vec` is
/// an id and no conversion can fail or alias another channel, however many channels exist
/// (`max_channels` bounds those clients create; a restore may add more). It costs no memory
/// over a `u32`: every place that stores one pads it to eight bytes anyway.
type ChannelId = usize;

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
                self.handle_set_concurrency(now, &channel, max, hooks)
            }
            Input::Renew {
                channel,
                uid,
                timeout,
                token,
            } => self.handle_renew(now, &channel, &uid, timeout, token, hooks),
            Input::Infos { channel } => self.handle_infos(now, &channel, false, hooks),
            Input::InfosJobs { channel } => self.handle_infos(now, &channel, true, hooks),
            Input::Delivered { channel, uid, seq } => self.handle_delivered(&channel, &uid, seq),
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
