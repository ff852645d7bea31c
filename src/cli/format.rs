//! Human-readable durations and the `state` payload as the client commands read it.

use std::time::Duration;

use serde::Deserialize;

/// One quota window in a `state` payload.
#[derive(Debug, Clone, Deserialize)]
pub struct QuotaView {
    /// Quota name.
    pub name: String,
    /// Grants allowed per window (0: disabled).
    pub limit: u64,
    /// Grants counting against the window now.
    pub used: u64,
    /// When the window has room again (ms since the Unix epoch), if it is full.
    #[serde(default)]
    pub next_opening: Option<u64>,
}

/// A channel's `state` payload; unknown fields are ignored so newer daemons still parse.
#[derive(Debug, Clone, Deserialize)]
pub struct StateView {
    /// Channel name.
    pub channel: String,
    /// Running limit.
    pub max_concurrent_jobs: u64,
    /// Jobs holding a slot.
    pub running_count: u64,
    /// Jobs waiting for one.
    pub waiting: u64,
    /// Quota windows.
    #[serde(default)]
    pub quotas: Vec<QuotaView>,
    /// The policy file in force, if any.
    #[serde(default)]
    pub policy: Option<String>,
    /// The daemon's time of the report (ms since the Unix epoch); relative times use it, so
    /// clock skew between hosts does not matter.
    pub now: u64,
}

impl QuotaView {
    /// `minute 15/15, opens in 42s`, `hour 3/100`, or `minute off` for a disabled window.
    pub fn describe(&self, now: u64) -> String {
        if self.limit == 0 {
            return format!("{} off", self.name);
        }
        match self.next_opening {
            Some(at) => format!(
                "{} {}/{}, opens in {}",
                self.name,
                self.used,
                self.limit,
                short(Duration::from_millis(at.saturating_sub(now)))
            ),
            None => format!("{} {}/{}", self.name, self.used, self.limit),
        }
    }
}

impl StateView {
    /// `1/2`.
    pub fn running(&self) -> String {
        format!("{}/{}", self.running_count, self.max_concurrent_jobs)
    }

    /// Every quota window, `; `-separated, or `-`.
    pub fn quotas(&self) -> String {
        if self.quotas.is_empty() {
            return "-".into();
        }
        let parts: Vec<_> = self.quotas.iter().map(|q| q.describe(self.now)).collect();
        parts.join("; ")
    }

    /// The policy's file name, or `built-in` when only the semaphore and quotas decide.
    pub fn policy(&self) -> String {
        match &self.policy {
            None => "built-in".into(),
            Some(path) => std::path::Path::new(path)
                .file_name()
                .map_or_else(|| path.clone(), |n| n.to_string_lossy().into_owned()),
        }
    }
}

/// A compact duration: `850ms`, `12s`, `2m05s`, `1h02m`, `3d04h`.
pub fn short(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 if d.subsec_millis() > 0 => format!("{}ms", d.subsec_millis()),
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_durations() {
        assert_eq!(short(Duration::ZERO), "0s");
        assert_eq!(short(Duration::from_millis(850)), "850ms");
        assert_eq!(short(Duration::from_secs(12)), "12s");
        assert_eq!(short(Duration::from_secs(125)), "2m05s");
        assert_eq!(short(Duration::from_secs(3720)), "1h02m");
        assert_eq!(short(Duration::from_secs(2 * 86400 + 7200)), "2d02h");
    }

    #[test]
    fn quota_windows_read_like_the_readme() {
        let q = |used, next_opening| QuotaView {
            name: "minute".into(),
            limit: 15,
            used,
            next_opening,
        };
        assert_eq!(
            q(15, Some(43_000)).describe(1_000),
            "minute 15/15, opens in 42s"
        );
        assert_eq!(q(3, None).describe(1_000), "minute 3/15");
    }
}
