//! What goes into the engine: [`Input`], and the [`Registration`] of a new job.

use std::sync::Arc;

use super::{Millis, Reply};

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
        /// makes the engine ignore the message ([`Output::Stale`](super::Output::Stale)).
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
    /// ([`ChannelState::waiting_jobs`](super::ChannelState::waiting_jobs)).
    InfosJobs {
        /// Channel name.
        channel: String,
    },
    /// `PREFIX/infos`: report the state of every channel (at most once per
    /// [`ALL_STATES_INTERVAL`](super::ALL_STATES_INTERVAL); requests in between share the next
    /// report).
    InfosAll,
    /// The broker acknowledged the `go` of job `seq` (from [`Output::Go`](super::Output::Go) or
    /// [`Output::GoAgain`](super::Output::GoAgain)): it is no longer said again after a restart or
    /// a lost broker session.
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
