//! The one deserializer behind every duration key: `60`, `0.5`, `"60"`, `"90s"`, `"1h"`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

use crate::engine::Millis;

/// A non-negative duration as written in the config: an integer or float number of seconds, or a
/// string that is either such a number or a `humantime` duration (`"200ms"`, `"5m"`, `"1h 30m"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ConfigDuration(pub(super) Duration);

impl ConfigDuration {
    /// Whole milliseconds, the engine's unit (anything below a millisecond is dropped).
    pub(super) fn millis(self) -> Millis {
        Millis::from_duration(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = ConfigDuration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a duration: seconds as a number (60, 0.5) or a string such as \"90s\", \"5m\", \"1h\"",
        )
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        u64::try_from(v)
            .map_err(|_| E::custom(format!("a duration cannot be negative, got {v}")))
            .and_then(|secs| self.visit_u64(secs))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        // Keep the value representable in engine milliseconds.
        if v > u64::MAX / 1000 {
            return Err(E::custom(format!("duration of {v} seconds is too large")));
        }
        Ok(ConfigDuration(Duration::from_secs(v)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        seconds_from_f64(v).map(ConfigDuration).map_err(E::custom)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        parse_duration_str(v).map(ConfigDuration).map_err(E::custom)
    }
}

fn seconds_from_f64(v: f64) -> Result<Duration, String> {
    if !v.is_finite() || v < 0.0 {
        return Err(format!(
            "a duration must be a finite number of seconds >= 0, got {v}"
        ));
    }
    // `u64::MAX / 1000` seconds is the most that still fits in engine milliseconds.
    Duration::try_from_secs_f64(v)
        .ok()
        .filter(|d| d.as_secs() <= u64::MAX / 1000)
        .ok_or_else(|| format!("duration of {v} seconds is too large"))
}

/// A duration as the config and the command line take it: a bare number is seconds, as for
/// numeric TOML values (`300`, `0.5`); anything else goes to `humantime` (`"500ms"`, `"5m"`,
/// `"1h 30m"`). Never negative, and always representable in engine milliseconds.
pub fn parse_duration_str(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if let Ok(secs) = trimmed.parse::<u64>() {
        return DurationVisitor
            .visit_u64::<de::value::Error>(secs)
            .map(|d| d.0)
            .map_err(|e| e.to_string());
    }
    if let Ok(secs) = trimmed.parse::<f64>() {
        return seconds_from_f64(secs);
    }
    humantime::parse_duration(trimmed)
        .map_err(|e| {
            format!("invalid duration {text:?}: {e} (write e.g. 60, \"90s\", \"5m\", \"1h\")")
        })
        .and_then(|d| {
            if d.as_secs() > u64::MAX / 1000 {
                Err(format!("duration {text:?} is too large"))
            } else {
                Ok(d)
            }
        })
}

/// `deserialize_with` helper for keys that hold engine milliseconds.
pub(super) fn millis<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Millis, D::Error> {
    serde::Deserialize::deserialize(deserializer).map(ConfigDuration::millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_in_every_form() {
        let cases = [
            ("60", 60_000),
            ("1.5", 1_500),
            ("90s", 90_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("200ms", 200),
            ("1h 30m", 5_400_000),
            ("365d", 365 * 86_400_000),
        ];
        for (text, ms) in cases {
            let d = parse_duration_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(Millis::from_duration(d), Millis(ms), "{text}");
        }
    }

    #[test]
    fn bad_strings() {
        for text in ["", "-5", "5 parsecs", "NaN", "inf", "-1s"] {
            assert!(parse_duration_str(text).is_err(), "{text:?} accepted");
        }
    }
}
