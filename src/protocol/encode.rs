//! Encoding: engine outputs into `(topic, payload)`, and the channel `state` kept under the
//! size brokers accept (cut lists, daemon-wide pages).

use serde_json::{Map, Value};

use super::{answer_topic, state_topic, Answer, STATE};
use crate::engine::{ChannelState, Millis, Output, Reply};

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
pub(super) fn state_json(state: &ChannelState, max: usize) -> Vec<u8> {
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
