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
    /// The registration payload's fields other than uid and timeout, as a
    /// JSON object in text ("{}" if none).
    pub meta: String,
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
            meta: meta.to_owned(),
            ..Self::default()
        }
    }

    /// `meta` parsed as JSON; `Value::Null` if it is not valid JSON (the host
    /// always sends an object, so that means a host bug).
    pub fn meta_json(&self) -> Value {
        serde_json::from_str(&self.meta).unwrap_or(Value::Null)
    }

    /// The registration field `key` as an `i64`: `Ok(None)` when it is absent
    /// or `null`, an error when it is anything but an integer in `i64` range
    /// (`5.0` and `"5"` are errors).
    pub fn meta_i64(&self, key: &str) -> Result<Option<i64>, MetaError> {
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
        match self.meta_json() {
            Value::Object(mut map) => map.remove(key).filter(|v| !v.is_null()),
            _ => None,
        }
    }
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
