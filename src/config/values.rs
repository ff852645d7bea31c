//! Validated values: each check runs inside deserialization, so a bad value fails with the span
//! (and so the line) of the value itself.

use std::fmt;
use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Deserializer};

use super::duration::ConfigDuration;
use crate::engine::{Millis, QuotaLog};

/// The largest MQTT packet the protocol can express (remaining length of 268,435,455 bytes).
const MQTT_MAX_PACKET: usize = 268_435_455;

/// Smallest accepted `limits.max_payload`: a register payload with a short uid must fit.
const MIN_PAYLOAD: usize = 64;

/// `mqtt.topic_prefix`: non-empty, no wildcards, no leading or trailing `/`.
pub(super) fn topic_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let prefix = String::deserialize(d)?;
    let problem = if prefix.is_empty() {
        Some("must not be empty")
    } else if prefix.contains(['+', '#']) {
        Some("must not contain the MQTT wildcards '+' or '#'")
    } else if prefix.starts_with('/') || prefix.ends_with('/') {
        Some("must not start or end with '/'")
    } else if prefix.contains('\0') {
        Some("must not contain a NUL character")
    } else {
        None
    };
    match problem {
        Some(why) => Err(serde::de::Error::custom(format!(
            "topic_prefix {prefix:?} {why}"
        ))),
        None => Ok(prefix),
    }
}

/// `mqtt.keep_alive`: 0 (off) or between 1 s and 65535 s. rumqttc panics below 1 s and sends
/// whole seconds in a 16-bit field.
pub(super) fn keep_alive<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let ConfigDuration(value) = ConfigDuration::deserialize(d)?;
    if value.is_zero() || (Duration::from_secs(1)..=Duration::from_secs(65_535)).contains(&value) {
        Ok(value)
    } else {
        Err(serde::de::Error::custom(format!(
            "keep_alive must be 0 (off) or between 1s and 65535s, got {}",
            humantime::format_duration(value)
        )))
    }
}

/// `limits.max_payload`: at least 64 bytes, at most what MQTT can carry.
pub(super) fn max_payload<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let bytes = usize::deserialize(d)?;
    if (MIN_PAYLOAD..=MQTT_MAX_PACKET).contains(&bytes) {
        Ok(bytes)
    } else {
        Err(serde::de::Error::custom(format!(
            "max_payload must be between {MIN_PAYLOAD} and {MQTT_MAX_PACKET} bytes, got {bytes}"
        )))
    }
}

/// Longest accepted `limits.max_uid_len`: a uid is one level of an MQTT topic, and a topic must
/// fit in 65,535 bytes together with the prefix, the channel and the action.
pub(super) const MAX_UID_LEN_CEILING: usize = 32_768;

/// `limits.max_uid_len`: 1 to 32,768 bytes.
pub(super) fn max_uid_len<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let bytes = usize::deserialize(d)?;
    if (1..=MAX_UID_LEN_CEILING).contains(&bytes) {
        Ok(bytes)
    } else {
        Err(serde::de::Error::custom(format!(
            "max_uid_len must be between 1 and {MAX_UID_LEN_CEILING} bytes, got {bytes}"
        )))
    }
}

/// A count limit (`limits.max_channels`, `limits.max_waiting_per_channel`): at least 1, since 0
/// would refuse every job.
pub(super) fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = usize::deserialize(d)?;
    if n >= 1 {
        Ok(n)
    } else {
        Err(serde::de::Error::custom(
            "must be at least 1 (0 would refuse every job)",
        ))
    }
}

/// Smallest accepted `limits.max_waiting_bytes`: room for a few small jobs. Below it the
/// limit would refuse nearly every job that has to wait.
pub(super) const MIN_WAITING_BYTES: usize = 4096;

/// `limits.max_waiting_bytes`: at least 4096.
pub(super) fn max_waiting_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let bytes = usize::deserialize(d)?;
    if bytes >= MIN_WAITING_BYTES {
        Ok(bytes)
    } else {
        Err(serde::de::Error::custom(format!(
            "max_waiting_bytes must be at least {MIN_WAITING_BYTES} bytes (each waiting job \
             counts {} bytes plus its uid and extra fields), got {bytes}",
            crate::engine::JOB_OVERHEAD_BYTES
        )))
    }
}

/// `mqtt.username` / `mqtt.password`: an empty string means "not set", as in the original.
pub(super) fn optional_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let text = String::deserialize(d)?;
    Ok((!text.is_empty()).then_some(text))
}

/// A `[[channels]]` pattern: a regex matched at the start of the channel name only, like
/// Python's `re.match` in the original (`"test(.+)"` matches `"test1"`, not `"atest1"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct ChannelPattern {
    /// The pattern as written in the config.
    text: String,
    /// `^(?:text)`: anchored at the start, open at the end.
    anchored: Regex,
}

impl ChannelPattern {
    /// The pattern as written in the config file.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern matches `channel`, anchored at its start only.
    pub fn matches(&self, channel: &str) -> bool {
        self.anchored.is_match(channel)
    }
}

impl TryFrom<String> for ChannelPattern {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        // Compile the bare pattern first: wrapping an unbalanced one such as `a)|(b` in `^(?:…)`
        // could otherwise yield a valid regex that means something else.
        Regex::new(&text).map_err(|e| format!("invalid channel pattern {text:?}: {e}"))?;
        let anchored = Regex::new(&format!("^(?:{text})"))
            .map_err(|e| format!("invalid channel pattern {text:?}: {e}"))?;
        Ok(ChannelPattern { text, anchored })
    }
}

impl fmt::Display for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A quota's `interval`: strictly positive, in engine milliseconds.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "ConfigDuration")]
pub(super) struct QuotaInterval(pub(super) Millis);

impl TryFrom<ConfigDuration> for QuotaInterval {
    type Error = String;

    fn try_from(d: ConfigDuration) -> Result<Self, String> {
        match d.millis() {
            Millis(0) => Err("quota interval must be at least 1ms".to_owned()),
            ms => Ok(QuotaInterval(ms)),
        }
    }
}

/// A quota's `limit`: 0 (window disabled) up to `u32::MAX`. The original ignored a negative
/// limit silently; here it is an error, since it is almost certainly a typo.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "i64")]
pub(super) struct QuotaLimit(pub(super) u32);

impl TryFrom<i64> for QuotaLimit {
    type Error = String;

    fn try_from(n: i64) -> Result<Self, String> {
        u32::try_from(n).map(QuotaLimit).map_err(|_| {
            format!(
                "quota limit must be between 0 (disables the window) and {}, got {n}",
                u32::MAX
            )
        })
    }
}

/// A quota's explicit `name`: non-empty (uniqueness is checked across the list afterwards).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "String")]
pub(super) struct QuotaName(pub(super) String);

impl TryFrom<String> for QuotaName {
    type Error = &'static str;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        if name.trim().is_empty() {
            Err("quota name must not be empty (leave it out to use the interval as name)")
        } else {
            Ok(QuotaName(name))
        }
    }
}

/// A quota's `log` as written: `"q"`, `"v"` or `"vv"`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub(super) enum LogLevel {
    /// Quiet.
    #[default]
    #[serde(rename = "q")]
    Quiet,
    /// Verbose.
    #[serde(rename = "v")]
    Verbose,
    /// Very verbose.
    #[serde(rename = "vv")]
    VeryVerbose,
}

impl From<LogLevel> for QuotaLog {
    fn from(level: LogLevel) -> QuotaLog {
        match level {
            LogLevel::Quiet => QuotaLog::Quiet,
            LogLevel::Verbose => QuotaLog::Verbose,
            LogLevel::VeryVerbose => QuotaLog::VeryVerbose,
        }
    }
}
