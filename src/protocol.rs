//! The wire format: topic grammar `PREFIX/CHANNEL/ACTION`, payload decoding into engine inputs,
//! and engine outputs into `(topic, payload)`. Pure functions; no MQTT client types.
//!
//! Inbound actions: `register` (JSON `{"uid", "timeout", "reply"?, "cost"?, ...}`), `finished` and
//! `aborted` (the uid as plain text, or JSON `{"uid", "token"?}`), `concurrency/set` (an
//! integer), `renew` (JSON `{"uid", "timeout", "token"?}`) and `infos`. Outbound: `go/{uid}`
//! (payload: the uid, or with `"reply": "json"` JSON `{"uid", "token", "lease_ms",
//! "deadline_ms"}`; said again to a running job whose `go` may have been lost, after a restart
//! or a lost broker session), `expired/{uid}` (payload: the uid), `rejected/{uid}` (JSON
//! `{"uid", "reason"}`), `position/{uid}` (JSON, for jobs registered with `"progress": true`)
//! and `state` (JSON, at most [`MAX_STATE_MESSAGE`] bytes a message: the daemon-wide one in pages
//! when it is larger). The names are defined once, in [`Action`] and [`Answer`].
//!
//! This file holds the names and topics; [`decode()`] and [`encode()`] live in `decode.rs` and
//! `encode.rs`.

mod decode;
mod encode;

use crate::engine::{Input, Millis, Output};
pub use decode::{check_uid, decode};
#[cfg(test)]
use encode::state_json;
pub use encode::{encode, encode_all_states, MAX_STATE_MESSAGE};

/// Default longest uid, in bytes (`[limits] max_uid_len`). A uid becomes a topic level, and
/// topics are capped at 64 KiB.
pub const DEFAULT_MAX_UID_LEN: usize = 1024;

/// A request's action: the last level(s) of `PREFIX/CHANNEL/ACTION`. The one list of the names
/// a client publishes to; the daemon decodes them and `coordinosaur run` and `status` send them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `register`: ask for a slot.
    Register,
    /// `finished`: the job ended well; frees its slot.
    Finished,
    /// `aborted`: the job failed or was cancelled; frees its slot or its place in the queue.
    Aborted,
    /// `renew`: extend a running job's lease.
    Renew,
    /// `infos`: publish the channel's `state` (`PREFIX/infos`: every channel's).
    Infos,
    /// `concurrency/set`: change the channel's `max_concurrent_jobs`.
    SetConcurrency,
}

impl Action {
    /// Every action, in the order the protocol reference lists them.
    pub const ALL: [Action; 6] = [
        Action::Register,
        Action::Finished,
        Action::Aborted,
        Action::Renew,
        Action::Infos,
        Action::SetConcurrency,
    ];

    /// The topic level(s) it is published on.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Register => "register",
            Action::Finished => "finished",
            Action::Aborted => "aborted",
            Action::Renew => "renew",
            Action::Infos => "infos",
            Action::SetConcurrency => "concurrency/set",
        }
    }

    /// The action published on `level(s)`, if it is one.
    pub fn parse(levels: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == levels)
    }
}

/// What the daemon publishes about one job, on `PREFIX/CHANNEL/ANSWER/UID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `go/{uid}`: the job may run.
    Go,
    /// `expired/{uid}`: its lease ran out; the slot went to another job.
    Expired,
    /// `rejected/{uid}`: a request about it was refused (JSON `{"uid", "reason"}`).
    Rejected,
    /// `position/{uid}`: where it waits, and why (jobs registered with `"progress": true`).
    Position,
}

impl Answer {
    /// Every answer.
    pub const ALL: [Answer; 4] = [
        Answer::Go,
        Answer::Expired,
        Answer::Rejected,
        Answer::Position,
    ];

    /// The topic level before the uid.
    pub fn as_str(self) -> &'static str {
        match self {
            Answer::Go => "go",
            Answer::Expired => "expired",
            Answer::Rejected => "rejected",
            Answer::Position => "position",
        }
    }
}

/// The topic level of a channel's `state` (and, under the prefix alone, of every channel's).
pub const STATE: &str = "state";

/// `PREFIX/CHANNEL/state`, where a channel's state is published.
pub fn state_topic(prefix: &str, channel: &str) -> String {
    format!("{prefix}/{channel}/{STATE}")
}

/// `PREFIX/CHANNEL/ANSWER/UID`.
pub fn answer_topic(prefix: &str, channel: &str, answer: Answer, uid: &str) -> String {
    format!("{prefix}/{channel}/{}/{uid}", answer.as_str())
}

/// Limits applied while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest payload accepted, in bytes.
    pub max_payload: usize,
    /// Largest `timeout` accepted.
    pub max_timeout: Millis,
    /// Longest uid accepted, in bytes.
    pub max_uid_len: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_payload: 64 * 1024,
            max_timeout: Millis(365 * 24 * 3600 * 1000),
            max_uid_len: DEFAULT_MAX_UID_LEN,
        }
    }
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The topic is not `PREFIX/CHANNEL/ACTION`.
    #[error("topic is not PREFIX/CHANNEL/ACTION")]
    BadTopic,
    /// The action is not one we know.
    #[error("unknown action {0:?}")]
    UnknownAction(String),
    /// The payload exceeds `max_payload`.
    #[error("payload of {size} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// Payload size.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
    /// The payload is not valid UTF-8 (we never alter bytes to make it so).
    #[error("payload is not valid UTF-8")]
    NotUtf8,
    /// The payload is not the JSON object this action needs.
    #[error("payload is not a JSON object: {0}")]
    BadJson(String),
    /// A required field is absent.
    #[error("missing field `{0}`")]
    Missing(&'static str),
    /// `uid` has a type other than string or integer.
    #[error("`uid` must be a string or an integer, not {0}")]
    UidType(&'static str),
    /// `uid` cannot be used as a topic level.
    #[error("`uid` {0}")]
    BadUid(&'static str),
    /// `uid` is longer than `[limits] max_uid_len`.
    #[error("`uid` of {len} bytes is over the limit max_uid_len = {limit} bytes")]
    UidTooLong {
        /// The uid's length in bytes.
        len: usize,
        /// Configured limit.
        limit: usize,
    },
    /// `timeout` is not a usable number of seconds.
    #[error("`timeout` {0}")]
    BadTimeout(String),
    /// `reply` is not a form of `go` we publish.
    #[error("`reply` must be \"json\" or \"plain\", not {0}")]
    BadReply(String),
    /// `cost` is not a whole number of units the engine can hold.
    #[error("`cost` must be an integer from 1 to 4294967295, not {0}")]
    BadCost(String),
    /// `progress` is not a boolean.
    #[error("`progress` must be true or false, not {0}")]
    BadProgress(String),
    /// `token` is not a fencing token.
    #[error("`token` must be a non-negative integer, not {0}")]
    BadToken(String),
    /// `concurrency/set` payload is not a non-negative integer.
    #[error("concurrency must be a non-negative integer, got {0:?}")]
    BadConcurrency(String),
    /// Delivered with the retain flag: a message the broker stored and replays on every
    /// subscribe, not a request made now.
    #[error(
        "retained message refused: a request is never stored by the broker (publish it without \
         the retain flag; clear this one with an empty retained message on the same topic)"
    )]
    Retained,
}

/// A refused message, with what is known of it so that the client can be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The channel, if the topic named one.
    pub channel: Option<String>,
    /// The uid, if the payload had a usable one.
    pub uid: Option<String>,
    /// Why.
    pub error: ProtocolError,
}

impl Rejection {
    fn new(channel: Option<&str>, uid: Option<&str>, error: ProtocolError) -> Rejection {
        Rejection {
            channel: channel.map(str::to_owned),
            uid: uid.map(str::to_owned),
            error,
        }
    }

    /// The `rejected/{uid}` output to publish, when both channel and uid are known.
    pub fn to_output(&self) -> Option<Output> {
        Some(Output::Rejected {
            kind: crate::engine::RejectKind::Invalid,
            channel: self.channel.as_deref()?.into(),
            uid: self.uid.as_deref()?.into(),
            reason: self.error.to_string(),
        })
    }
}

/// The refusal of a request the broker delivered with the retain flag set: a stored message it
/// replays on every (re)subscribe, at times nobody chose. Acting on it would create, end or renew
/// a job after every reconnect (a phantom job holding a slot), or re-apply an old concurrency.
/// The first, live delivery of a message published with the retain flag comes without it (MQTT
/// 3.1.1 section 3.3.1.3), so that one is served as usual.
pub fn retained(input: &Input) -> Rejection {
    let (channel, uid) = match input {
        Input::Register(r) => (Some(r.channel.as_str()), Some(r.uid.as_str())),
        Input::Finished { channel, uid, .. }
        | Input::Aborted { channel, uid, .. }
        | Input::Renew { channel, uid, .. } => (Some(channel.as_str()), Some(uid.as_str())),
        Input::SetConcurrency { channel, .. }
        | Input::Infos { channel }
        | Input::InfosJobs { channel } => (Some(channel.as_str()), None),
        Input::InfosAll | Input::Delivered { .. } => (None, None),
    };
    Rejection::new(channel, uid, ProtocolError::Retained)
}

/// Subscription filters for everything `decode` handles under `prefix` (`PREFIX/infos` asks for
/// every channel's state at once). They do not match the daemon's own answers about a job
/// ([`Answer`]: one level deeper), so those never come back to it; its channels' `state` does,
/// and [`decode`] ignores it.
pub fn subscriptions(prefix: &str) -> [String; 3] {
    [
        format!("{prefix}/+/+"),
        format!("{prefix}/+/{}", Action::SetConcurrency.as_str()),
        format!("{prefix}/{}", Action::Infos.as_str()),
    ]
}

/// The topic the daemon publishes a marker to after each connect: when its own marker comes
/// back, every request the broker queued for it before the connect has been read.
pub fn sync_topic(prefix: &str) -> String {
    format!("{prefix}/{INTERNAL}/sync")
}

/// The daemon's own topic level: its sync marker and leader record, never a channel.
pub const INTERNAL: &str = "_coordinosaur";

/// Where the leader (JetStream backend) publishes, retained, `{"node", "since_ms"}` after each
/// connect; `coordinosaur status` shows it.
pub fn leader_topic(prefix: &str) -> String {
    format!("{prefix}/{INTERNAL}/leader")
}

/// The topic a request for `channel` with `action` arrives on (for log lines).
pub fn request_topic(prefix: &str, channel: &str, action: &str) -> String {
    format!("{prefix}/{channel}/{action}")
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fencing_tests;

#[cfg(test)]
mod job_options_tests;
