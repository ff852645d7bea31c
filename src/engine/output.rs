//! What comes out of the engine: [`Output`], why a request was refused ([`RejectKind`]), and
//! the [`ChannelState`] reported in reply to `infos`.

use std::sync::Arc;

use super::{Millis, Position, Reply, RunningJob, ShadowReport, StaleAction, Time};

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
        /// [`Input::Delivered`](super::Input::Delivered).
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
    /// A waiting job that asked for progress is told where it stands (publish `position/{uid}`); at
    /// most once a second per job, see [`PROGRESS_INTERVAL`](super::PROGRESS_INTERVAL).
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

    /// Whether the output becomes a message (`Ended` and `Stale` are only logged and counted).
    pub fn is_published(&self) -> bool {
        !matches!(self, Output::Ended { .. } | Output::Stale { .. })
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
    /// The first [`LISTED_JOBS`](super::LISTED_JOBS) waiting jobs in grant order, with their
    /// positions; only in a reply to `{"jobs": true}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_jobs: Option<Vec<Position>>,
    /// How the channel's shadow policy (`policy_shadow`) compares with the deciding one; only
    /// for a channel that has one.
    /// (Boxed: most channels have none, and a state is part of every [`Output`].)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Box<ShadowReport>>,
}
