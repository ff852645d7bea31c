//! Plain Rust mirrors of the WIT `types` interface.
//!
//! The SDK keeps its own types (instead of exposing wit-bindgen's) so that
//! policy logic compiles and is unit-tested natively, where no bindings exist.

use std::fmt;

use serde_json::Value;

/// A job as registered (WIT `job`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Job {
    /// The client's job id.
    pub uid: String,
    /// The channel the job registered on.
    pub channel: String,
    /// The job's own timeout in milliseconds.
    pub timeout_ms: u64,
    /// When the job registered, ms since the Unix epoch (engine time).
    pub registered_at_ms: u64,
    /// The registration payload's fields other than uid and timeout: read
    /// them with [`Job::meta_i64`], [`Job::meta_str`] or [`Job::meta_json`]
    /// during the hook call that received the job.
    pub(crate) meta: Meta,
}

/// Where a job's registration fields come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum Meta {
    /// The JSON object text itself ([`Job::new`], native tests).
    Text(String),
    /// The host's `job-meta` import, valid during hook call number `call` only: a field is
    /// fetched (and parsed) when asked for, so the rest of the registration is never copied
    /// into the guest nor parsed.
    #[cfg_attr(
        not(target_family = "wasm"),
        allow(dead_code, reason = "built by the wasm glue")
    )]
    Host {
        /// The hook call that handed the job over.
        call: u64,
    },
    /// No fields.
    #[default]
    Empty,
}

/// The hooks a policy implements ([`Policy::HOOKS`](crate::Policy::HOOKS)); the host calls
/// only these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hooks {
    /// Call [`Policy::admit`](crate::Policy::admit) on every registration (else: accept at 0).
    pub admit: bool,
    /// Call [`Policy::before_grant`](crate::Policy::before_grant) (else: grant).
    pub before_grant: bool,
    /// Call [`Policy::on_event`](crate::Policy::on_event) (else: nothing).
    pub on_event: bool,
}

impl Hooks {
    /// Every hook.
    pub const ALL: Hooks = Hooks {
        admit: true,
        before_grant: true,
        on_event: true,
    };
    /// Only `admit` (a policy that orders or filters the queue).
    pub const ADMIT: Hooks = Hooks {
        admit: true,
        before_grant: false,
        on_event: false,
    };
}

/// The channel as the engine sees it at the moment of the call (WIT `channel-state`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChannelState {
    /// The channel's name.
    pub channel: String,
    /// The channel's semaphore size.
    pub max_concurrent_jobs: u32,
    /// Jobs holding a lease now.
    pub running: u32,
    /// Jobs in the wait queue now.
    pub waiting: u32,
    /// Engine time, ms since the Unix epoch.
    pub now_ms: u64,
}

/// The answer of [`Policy::admit`](crate::Policy::admit) (WIT `admission`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Queue the job with this priority: higher is granted first, FIFO among equals.
    Accept(i64),
    /// Refuse the job; the client gets `rejected/{uid}` with this reason.
    Reject(String),
}

/// The answer of [`Policy::before_grant`](crate::Policy::before_grant) (WIT `decision`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Grant now.
    Grant,
    /// Leave the job queued; the engine asks again on the next event.
    Defer,
    /// Remove the job from the queue; the client gets `rejected/{uid}` with this reason.
    Veto(String),
}

/// What happened to a job (WIT `event-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A waiting job was granted.
    Granted,
    /// A running job reported finished.
    Finished,
    /// A running job reported aborted.
    Aborted,
    /// A running job's lease ran out.
    Expired,
    /// A waiting job was removed by finished/aborted before being granted.
    Cancelled,
}

impl EventKind {
    /// True for the kinds that end a running job: finished, aborted, expired.
    pub fn ends_running_job(self) -> bool {
        matches!(self, Self::Finished | Self::Aborted | Self::Expired)
    }
}

/// Something that happened to a job (WIT `event`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The job it happened to.
    pub job: Job,
}

/// A registration field that is present but has the wrong JSON type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaError {
    /// The field's name, e.g. `priority`.
    pub field: String,
    /// What the field should have been, e.g. `an integer`.
    pub expected: &'static str,
    /// The value found, as JSON text.
    pub found: String,
}

impl fmt::Display for MetaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "field \"{}\" must be {}, got {}",
            self.field, self.expected, self.found
        )
    }
}

impl std::error::Error for MetaError {}

impl Job {
    /// A job with this uid and meta (JSON object text), for tests.
    pub fn new(uid: &str, meta: &str) -> Self {
        Self {
            uid: uid.to_owned(),
            meta: Meta::Text(meta.to_owned()),
            ..Self::default()
        }
    }

    /// All registration fields as a JSON object in text ("{}" if none).
    pub fn meta(&self) -> String {
        match &self.meta {
            Meta::Text(text) => text.clone(),
            Meta::Host { call } => host_all(*call),
            Meta::Empty => "{}".to_owned(),
        }
    }

    /// All registration fields parsed as JSON; `Value::Null` if they are not
    /// valid JSON (the host always sends an object, so that means a host bug).
    /// Reading one field with [`Job::meta_i64`] or [`Job::meta_str`] is
    /// cheaper: only that field is copied and parsed.
    pub fn meta_json(&self) -> Value {
        serde_json::from_str(&self.meta()).unwrap_or(Value::Null)
    }

    /// The registration field `key` as an `i64`: `Ok(None)` when it is absent
    /// or `null`, an error when it is anything but an integer in `i64` range
    /// (`5.0` and `"5"` are errors).
    pub fn meta_i64(&self, key: &str) -> Result<Option<i64>, MetaError> {
        if let Meta::Host { call } = &self.meta {
            // The usual answer is a plain integer: read it without building a JSON value.
            let Some(text) = host_field(*call, key) else {
                return Ok(None);
            };
            if let Some(n) = plain_i64(&text) {
                return Ok(Some(n));
            }
        }
        match self.meta_field(key) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| meta_error(key, "an integer", &v)),
        }
    }

    /// The registration field `key` as a string: `Ok(None)` when it is absent
    /// or `null`, an error when it is not a JSON string.
    pub fn meta_str(&self, key: &str) -> Result<Option<String>, MetaError> {
        match self.meta_field(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(meta_error(key, "a string", &v)),
        }
    }

    /// The field `key` of `meta`, treating `null` as absent.
    fn meta_field(&self, key: &str) -> Option<Value> {
        let value = match &self.meta {
            Meta::Host { call } => serde_json::from_str(&host_field(*call, key)?).ok()?,
            _ => match self.meta_json() {
                Value::Object(mut map) => map.remove(key)?,
                _ => return None,
            },
        };
        Some(value).filter(|v| !v.is_null())
    }
}

#[cfg(target_family = "wasm")]
fn host_field(call: u64, key: &str) -> Option<String> {
    crate::__private::meta_field(call, key)
}

#[cfg(target_family = "wasm")]
fn host_all(call: u64) -> String {
    crate::__private::meta_all(call)
}

#[cfg(not(target_family = "wasm"))]
fn host_field(_call: u64, _key: &str) -> Option<String> {
    unreachable!("host fields exist only in a wasm instance")
}

#[cfg(not(target_family = "wasm"))]
fn host_all(_call: u64) -> String {
    unreachable!("host fields exist only in a wasm instance")
}

/// `text` as an `i64` when it is JSON's text of an integer in range, as serde_json reads it;
/// `None` for anything else (left to the full parse). The host's texts are valid JSON, so
/// Rust's own parse accepts exactly the integers, except `-0`, a float to serde_json.
fn plain_i64(text: &str) -> Option<i64> {
    if text == "-0" {
        return None;
    }
    text.parse().ok()
}

fn meta_error(field: &str, expected: &'static str, found: &Value) -> MetaError {
    MetaError {
        field: field.to_owned(),
        expected,
        found: found.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_i64_reads_integers_and_rejects_the_rest() {
        assert_eq!(Job::new("a", r#"{"p":5}"#).meta_i64("p"), Ok(Some(5)));
        assert_eq!(Job::new("a", r#"{"p":-3}"#).meta_i64("p"), Ok(Some(-3)));
        assert_eq!(Job::new("a", "{}").meta_i64("p"), Ok(None));
        assert_eq!(Job::new("a", r#"{"p":null}"#).meta_i64("p"), Ok(None));
        let err = Job::new("a", r#"{"p":"high"}"#).meta_i64("p").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"field "p" must be an integer, got "high""#
        );
        assert!(Job::new("a", r#"{"p":1.5}"#).meta_i64("p").is_err());
        assert!(Job::new("a", r#"{"p":18446744073709551615}"#)
            .meta_i64("p")
            .is_err());
    }

    #[test]
    fn the_plain_integer_path_agrees_with_serde_json() {
        for text in [
            "0",
            "-0",
            "5",
            "-3",
            "9223372036854775807",
            "-9223372036854775808",
            "9223372036854775808",
            "18446744073709551615",
            "1.5",
            "1e3",
            "-1.0",
            "\"5\"",
            "null",
            "true",
            "[1]",
            "{}",
        ] {
            let full = serde_json::from_str::<Value>(text)
                .ok()
                .and_then(|v| v.as_i64());
            if let Some(n) = plain_i64(text) {
                assert_eq!(Some(n), full, "{text}");
            }
            assert_eq!(plain_i64(text).is_some(), full.is_some(), "{text}");
        }
    }

    #[test]
    fn meta_str_reads_strings_only() {
        let job = Job::new("a", r#"{"tenant":"acme","n":1}"#);
        assert_eq!(job.meta_str("tenant"), Ok(Some("acme".to_owned())));
        assert_eq!(job.meta_str("missing"), Ok(None));
        assert!(job.meta_str("n").is_err());
    }

    #[test]
    fn meta_json_of_garbage_is_null() {
        assert_eq!(Job::new("a", "not json").meta_json(), Value::Null);
        assert_eq!(Job::new("a", "not json").meta_i64("p"), Ok(None));
    }
}
