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

use serde_json::{Map, Value};

use crate::engine::{ChannelState, Input, Millis, Output, Registration, Reply};

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

/// Decodes one message. `Ok(None)`: a topic we publish ourselves, ignored silently.
pub fn decode(
    prefix: &str,
    topic: &str,
    payload: &[u8],
    limits: &DecodeLimits,
) -> Result<Option<Input>, Rejection> {
    let rest = topic.strip_prefix(prefix).and_then(|r| r.strip_prefix('/'));
    if rest == Some(Action::Infos.as_str()) {
        // Daemon-wide: every channel's state on PREFIX/state.
        return Ok(Some(Input::InfosAll));
    }
    let (channel, action) = rest
        .and_then(|rest| rest.split_once('/'))
        .filter(|(c, a)| !c.is_empty() && !a.is_empty())
        .ok_or_else(|| Rejection::new(None, None, ProtocolError::BadTopic))?;
    if is_own_output(action) || channel == INTERNAL {
        return Ok(None);
    }
    let reject = |error| Rejection::new(Some(channel), None, error);
    let action = Action::parse(action)
        .ok_or_else(|| reject(ProtocolError::UnknownAction(action.to_owned())))?;
    if payload.len() > limits.max_payload {
        let size = payload.len();
        let limit = limits.max_payload;
        return Err(reject(ProtocolError::TooLarge { size, limit }));
    }
    let text = || std::str::from_utf8(payload).map_err(|_| reject(ProtocolError::NotUtf8));
    let input = match action {
        Action::Infos => decode_infos(channel, payload),
        Action::Register => decode_register(channel, text()?, limits)?,
        Action::Renew => decode_renew(channel, text()?, limits)?,
        Action::Finished | Action::Aborted => decode_end(action, channel, text()?, limits)?,
        Action::SetConcurrency => decode_concurrency(channel, text()?)?,
    };
    Ok(Some(input))
}

/// A channel's `infos`: anything goes, as in the original; `{"jobs": true}` asks for the
/// waiting jobs too.
fn decode_infos(channel: &str, payload: &[u8]) -> Input {
    let channel = channel.to_owned();
    match wants_jobs(payload) {
        true => Input::InfosJobs { channel },
        false => Input::Infos { channel },
    }
}

/// A `register` payload: `{"uid", "timeout", "reply"?, "cost"?, "progress"?, ...}`.
fn decode_register(channel: &str, text: &str, limits: &DecodeLimits) -> Result<Input, Rejection> {
    let mut job =
        decode_job(text, limits).map_err(|(uid, e)| reject(channel, uid.as_deref(), e))?;
    let reject_job = |e| reject(channel, Some(&job.uid), e);
    let reply = take_reply(&mut job.rest).map_err(reject_job)?;
    let cost = read_cost(&job.rest).map_err(reject_job)?;
    let progress = take_progress(&mut job.rest).map_err(reject_job)?;
    // What is left is the policies' business; `reply` is the protocol's, not theirs.
    // `cost` stays: policies see it there (the WIT `job` has no field of its own).
    let meta = (!job.rest.is_empty()).then(|| Value::Object(job.rest).to_string().into_boxed_str());
    Ok(Input::Register(Registration {
        channel: channel.to_owned(),
        uid: job.uid,
        timeout: job.timeout,
        priority: 0,
        meta,
        reply,
        cost,
        progress,
    }))
}

/// A `renew` payload: `{"uid", "timeout", "token"?}`.
fn decode_renew(channel: &str, text: &str, limits: &DecodeLimits) -> Result<Input, Rejection> {
    let mut job =
        decode_job(text, limits).map_err(|(uid, e)| reject(channel, uid.as_deref(), e))?;
    let token = take_token(&mut job.rest).map_err(|e| reject(channel, Some(&job.uid), e))?;
    Ok(Input::Renew {
        channel: channel.to_owned(),
        uid: job.uid,
        timeout: job.timeout,
        token,
    })
}

/// A `finished` or `aborted` payload (see [`decode_end_fields`]).
fn decode_end(
    action: Action,
    channel: &str,
    text: &str,
    limits: &DecodeLimits,
) -> Result<Input, Rejection> {
    let (uid, token) =
        decode_end_fields(text, limits).map_err(|(uid, e)| reject(channel, uid.as_deref(), e))?;
    let channel = channel.to_owned();
    Ok(match action {
        Action::Finished => Input::Finished {
            channel,
            uid,
            token,
        },
        _ => Input::Aborted {
            channel,
            uid,
            token,
        },
    })
}

/// A `concurrency/set` payload: a non-negative integer.
fn decode_concurrency(channel: &str, text: &str) -> Result<Input, Rejection> {
    let max = text
        .trim()
        .parse::<u32>()
        .map_err(|_| reject(channel, None, ProtocolError::BadConcurrency(shorten(text))))?;
    Ok(Input::SetConcurrency {
        channel: channel.to_owned(),
        max,
    })
}

/// The refusal of a message on `channel`, about `uid` when it is known.
fn reject(channel: &str, uid: Option<&str>, error: ProtocolError) -> Rejection {
    Rejection::new(Some(channel), uid, error)
}

/// Whether `action` is a topic the daemon publishes itself (`state`, `go/{uid}`, ...).
fn is_own_output(action: &str) -> bool {
    action == STATE
        || Answer::ALL.iter().any(|answer| {
            action
                .strip_prefix(answer.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
        })
}

/// The fields of a `register` or `renew` payload.
struct JobFields {
    uid: String,
    timeout: Millis,
    /// The other fields.
    rest: Map<String, Value>,
}

/// Parses `{"uid", "timeout", ...}`. On error, returns the uid too when it was usable.
fn decode_job(
    text: &str,
    limits: &DecodeLimits,
) -> Result<JobFields, (Option<String>, ProtocolError)> {
    let mut obj: Map<String, Value> =
        serde_json::from_str(text).map_err(|e| (None, ProtocolError::BadJson(e.to_string())))?;
    let uid = take_uid(&mut obj, limits).map_err(|e| (None, e))?;
    let timeout = match obj.remove("timeout") {
        None => Err(ProtocolError::Missing("timeout")),
        Some(v) => timeout_millis(&v, limits.max_timeout),
    }
    .map_err(|e| (Some(uid.clone()), e))?;
    Ok(JobFields {
        uid,
        timeout,
        rest: obj,
    })
}

/// Removes and checks `uid` (a string, or an integer taken as its decimal text).
fn take_uid(obj: &mut Map<String, Value>, limits: &DecodeLimits) -> Result<String, ProtocolError> {
    let uid = match obj.remove("uid") {
        None => return Err(ProtocolError::Missing("uid")),
        Some(Value::String(s)) => s,
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
        Some(other) => return Err(ProtocolError::UidType(json_type(&other))),
    };
    check_uid(&uid, limits.max_uid_len)?;
    Ok(uid)
}

/// Removes `reply`: absent or `"plain"` is the original protocol's `go`, `"json"` the JSON one.
fn take_reply(obj: &mut Map<String, Value>) -> Result<Reply, ProtocolError> {
    match obj.remove("reply") {
        None => Ok(Reply::Plain),
        Some(Value::String(s)) if s == "plain" => Ok(Reply::Plain),
        Some(Value::String(s)) if s == "json" => Ok(Reply::Json),
        Some(other) => Err(ProtocolError::BadReply(shorten(&other.to_string()))),
    }
}

/// Reads `cost` (absent: 1), leaving it among the fields handed to policies.
fn read_cost(obj: &Map<String, Value>) -> Result<u32, ProtocolError> {
    match obj.get("cost") {
        None => Ok(1),
        Some(Value::Number(n)) => match n.as_u64().map(u32::try_from) {
            Some(Ok(cost)) if cost >= 1 => Ok(cost),
            _ => Err(ProtocolError::BadCost(shorten(&n.to_string()))),
        },
        Some(other) => Err(ProtocolError::BadCost(shorten(&other.to_string()))),
    }
}

/// Removes `progress` (absent: false), the protocol's business, not the policies'.
fn take_progress(obj: &mut Map<String, Value>) -> Result<bool, ProtocolError> {
    match obj.remove("progress") {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(b),
        Some(other) => Err(ProtocolError::BadProgress(shorten(&other.to_string()))),
    }
}

/// Removes `token` (absent or `null`: none).
fn take_token(obj: &mut Map<String, Value>) -> Result<Option<u64>, ProtocolError> {
    match obj.remove("token") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.is_u64() => Ok(n.as_u64()),
        Some(other) => Err(ProtocolError::BadToken(shorten(&other.to_string()))),
    }
}

/// A `finished` or `aborted` payload: the plain uid, as in the original protocol, or a JSON
/// object with `uid` and an optional `token`. Text that is not a JSON object with a `uid`
/// member is a plain uid. On error, returns the uid too when it was usable.
fn decode_end_fields(
    text: &str,
    limits: &DecodeLimits,
) -> Result<(String, Option<u64>), (Option<String>, ProtocolError)> {
    if text.starts_with('{') {
        if let Ok(mut obj) = serde_json::from_str::<Map<String, Value>>(text) {
            if obj.contains_key("uid") {
                let uid = take_uid(&mut obj, limits).map_err(|e| (None, e))?;
                let token = take_token(&mut obj).map_err(|e| (Some(uid.clone()), e))?;
                return Ok((uid, token));
            }
        }
    }
    check_uid(text, limits.max_uid_len).map_err(|e| (None, e))?;
    Ok((text.to_owned(), None))
}

/// A uid must be usable as one topic level of `go/{uid}`, at most `max_len` bytes long
/// (`[limits] max_uid_len`). `coordinosaur run` checks its `--uid` with the same rule.
pub fn check_uid(uid: &str, max_len: usize) -> Result<(), ProtocolError> {
    if uid.is_empty() {
        Err(ProtocolError::BadUid("is empty"))
    } else if uid.len() > max_len {
        Err(ProtocolError::UidTooLong {
            len: uid.len(),
            limit: max_len,
        })
    } else if uid.contains(['+', '#', '\0']) {
        Err(ProtocolError::BadUid(
            "contains '+', '#' or NUL, which cannot appear in a topic",
        ))
    } else {
        Ok(())
    }
}

/// Seconds (integer, fraction, or a numeric string for compatibility) to milliseconds.
fn timeout_millis(v: &Value, max: Millis) -> Result<Millis, ProtocolError> {
    let secs = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        ProtocolError::BadTimeout(format!(
            "must be a number of seconds, not {}",
            shorten(&v.to_string())
        ))
    })?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(ProtocolError::BadTimeout(format!(
            "must be a non-negative number of seconds, got {secs}"
        )));
    }
    let ms = (secs * 1000.0).round();
    if ms > max.0 as f64 {
        return Err(ProtocolError::BadTimeout(format!(
            "of {secs} s is over the limit of {max}"
        )));
    }
    // In range: 0 <= ms <= max (a u64) was checked above.
    Ok(Millis(ms as u64))
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a fractional number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// At most 64 characters of `s`, for error messages.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

/// Largest `state` message the daemon publishes, in bytes: brokers cap packet sizes (AWS IoT at
/// 128 KiB, others at 256 KiB), and one request must not make the daemon publish megabytes.
pub const MAX_STATE_MESSAGE: usize = 256 * 1024;

/// Room a page's wrapper (`{"page":..,"pages":..,"now":..,"channels":[..]}`) needs around its
/// channels: three 20-digit numbers and the keys.
const PAGE_WRAPPER: usize = 128;

/// The messages that announce `output`, in order: none for outputs that are not published, one
/// for most, and for the daemon-wide state as many pages as it needs (see
/// [`encode_all_states`]).
pub fn encode(prefix: &str, output: &Output) -> Vec<(String, Vec<u8>)> {
    match output {
        Output::Go {
            channel,
            uid,
            at,
            token,
            deadline,
            reply,
            ..
        } => vec![(
            answer_topic(prefix, channel, Answer::Go, uid),
            go_payload(uid, *reply, *token, *deadline - *at, *deadline),
        )],
        Output::GoAgain {
            channel,
            uid,
            token,
            deadline,
            remaining,
            reply,
            ..
        } => vec![(
            answer_topic(prefix, channel, Answer::Go, uid),
            go_payload(uid, *reply, *token, *remaining, *deadline),
        )],
        Output::Expired { channel, uid } => vec![(
            answer_topic(prefix, channel, Answer::Expired, uid),
            uid.as_bytes().to_vec(),
        )],
        Output::Rejected {
            channel,
            uid,
            reason,
            ..
        } => {
            let body = serde_json::json!({ "uid": &**uid, "reason": reason });
            vec![(
                answer_topic(prefix, channel, Answer::Rejected, uid),
                body.to_string().into_bytes(),
            )]
        }
        Output::State(state) => vec![(
            state_topic(prefix, &state.channel),
            state_json(state, MAX_STATE_MESSAGE),
        )],
        Output::AllStates(states) => encode_all_states(prefix, states, MAX_STATE_MESSAGE),
        Output::Position { channel, position } => vec![(
            answer_topic(prefix, channel, Answer::Position, &position.uid),
            // Strings, numbers and null: always serializes.
            serde_json::to_vec(position).unwrap_or_default(),
        )],
        Output::Ended { .. } | Output::Stale { .. } => Vec::new(),
    }
}

/// Whether an `infos` payload is a JSON object with `"jobs": true`.
fn wants_jobs(payload: &[u8]) -> bool {
    serde_json::from_slice::<Map<String, Value>>(payload)
        .is_ok_and(|o| o.get("jobs") == Some(&Value::Bool(true)))
}

/// The daemon-wide state on `PREFIX/state`. If the JSON array of every channel's state fits in
/// `max` bytes, it is that array, as it always was. Otherwise it is split into pages, published
/// one after the other, each an object
/// `{"page": 1, "pages": 3, "now": T, "channels": [...]}` of at most `max` bytes: channels in
/// name order, never split, `now` the same in every page of one report.
pub fn encode_all_states(
    prefix: &str,
    states: &[ChannelState],
    max: usize,
) -> Vec<(String, Vec<u8>)> {
    let topic = format!("{prefix}/{STATE}");
    let entries: Vec<Vec<u8>> = states
        .iter()
        .map(|s| state_json(s, max.saturating_sub(PAGE_WRAPPER)))
        .collect();
    let commas = entries.len().saturating_sub(1);
    let whole = 2 + commas + entries.iter().map(Vec::len).sum::<usize>();
    if whole <= max {
        return vec![(topic, json_array(&entries))];
    }
    let budget = max.saturating_sub(PAGE_WRAPPER);
    let mut pages: Vec<&[Vec<u8>]> = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, entry) in entries.iter().enumerate() {
        if i > start && size + entry.len() + 1 > budget {
            pages.push(&entries[start..i]);
            (start, size) = (i, 0);
        }
        size += entry.len() + 1;
    }
    pages.push(&entries[start..]);
    let now = states.first().map_or(0, |s| s.now.0);
    let count = pages.len();
    pages
        .iter()
        .enumerate()
        .map(|(i, page)| {
            let mut body = format!(
                "{{\"page\":{},\"pages\":{count},\"now\":{now},\"channels\":",
                i + 1
            )
            .into_bytes();
            body.extend(json_array(page));
            body.push(b'}');
            (topic.clone(), body)
        })
        .collect()
}

/// `[a,b,...]` from already encoded elements.
fn json_array(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + entries.iter().map(|e| e.len() + 1).sum::<usize>());
    out.push(b'[');
    for (i, entry) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(entry);
    }
    out.push(b']');
    out
}

/// One channel's state as JSON of at most `max` bytes where possible: if its `running` list
/// (up to `max_concurrent_jobs` uids) makes it larger, the list keeps only its first uids and
/// `"running_truncated": true` is added (`running_count` stays exact).
///
/// Listed waiting jobs (`{"jobs": true}`) go first: if they make it too large, the list keeps
/// its first jobs and `"waiting_jobs_truncated": true` is added.
fn state_json(state: &ChannelState, max: usize) -> Vec<u8> {
    match &state.waiting_jobs {
        Some(jobs) if !jobs.is_empty() => waiting_jobs_json(state, jobs, max),
        _ => running_json(state, max),
    }
}

/// `state` with its listed waiting jobs cut to the longest prefix that fits in `max`.
fn waiting_jobs_json(
    state: &ChannelState,
    jobs: &[crate::engine::Position],
    max: usize,
) -> Vec<u8> {
    let with = |keep: usize| {
        let mut cut = state.clone();
        cut.waiting_jobs = Some(jobs[..keep].to_vec());
        let mut body = running_json(&cut, max);
        if keep < jobs.len() && body.last() == Some(&b'}') {
            body.pop();
            body.extend_from_slice(b",\"waiting_jobs_truncated\":true}");
        }
        body
    };
    let full = with(jobs.len());
    if full.len() <= max {
        return full;
    }
    let (mut fits, mut over) = (0, jobs.len());
    while over - fits > 1 {
        let mid = fits + (over - fits) / 2;
        if with(mid).len() <= max {
            fits = mid;
        } else {
            over = mid;
        }
    }
    with(fits)
}

/// `state` with its `running` list cut to fit, as described at [`state_json`].
fn running_json(state: &ChannelState, max: usize) -> Vec<u8> {
    let full = serde_json::to_vec(state).unwrap_or_default();
    if full.len() <= max || state.running.is_empty() {
        return full;
    }
    let Ok(Value::Object(mut object)) = serde_json::to_value(state) else {
        return full;
    };
    object.insert("running_truncated".into(), Value::Bool(true));
    let with = |object: &Map<String, Value>, keep: usize| {
        let mut object = object.clone();
        let running = state.running[..keep].iter().cloned().map(Value::String);
        object.insert("running".into(), Value::Array(running.collect()));
        // The same jobs, in the same order, with their tokens.
        let jobs = &state.running_jobs[..keep.min(state.running_jobs.len())];
        object.insert(
            "running_jobs".into(),
            serde_json::to_value(jobs).unwrap_or_default(),
        );
        serde_json::to_vec(&object).unwrap_or_default()
    };
    // The longest prefix of the list that fits: binary search, a few encodings of a rare case.
    let (mut fits, mut over) = (0, state.running.len());
    while over - fits > 1 {
        let mid = fits + (over - fits) / 2;
        if with(&object, mid).len() <= max {
            fits = mid;
        } else {
            over = mid;
        }
    }
    with(&object, fits)
}

/// The JSON `go` payload, in this field order.
#[derive(serde::Serialize)]
struct GoJson<'a> {
    uid: &'a str,
    token: u64,
    lease_ms: u64,
    deadline_ms: u64,
}

/// A `go` payload: the uid, or the JSON object the job asked for.
fn go_payload(
    uid: &str,
    reply: Reply,
    token: u64,
    lease: Millis,
    deadline: crate::engine::Time,
) -> Vec<u8> {
    match reply {
        Reply::Plain => uid.as_bytes().to_vec(),
        Reply::Json => {
            let body = GoJson {
                uid,
                token,
                lease_ms: lease.0,
                deadline_ms: deadline.0,
            };
            // A struct of a string and numbers always serializes; the uid is the fallback.
            serde_json::to_vec(&body).unwrap_or_else(|_| uid.as_bytes().to_vec())
        }
    }
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
