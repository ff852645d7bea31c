//! Payload decoding: a request's topic and payload into an engine [`Input`], or the
//! [`Rejection`] that says why not, one function per [`Action`].

use serde_json::{Map, Value};

use super::{Action, Answer, DecodeLimits, ProtocolError, Rejection, INTERNAL, STATE};
use crate::engine::{Input, Millis, Registration, Reply};

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

/// Whether an `infos` payload is a JSON object with `"jobs": true`.
fn wants_jobs(payload: &[u8]) -> bool {
    serde_json::from_slice::<Map<String, Value>>(payload)
        .is_ok_and(|o| o.get("jobs") == Some(&Value::Bool(true)))
}
