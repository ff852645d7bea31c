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
    /// Units the running jobs hold (job cost); absent when equal to `running_count`, and from
    /// daemons without job cost.
    #[serde(default)]
    pub running_units: Option<u64>,
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
    /// The first waiting jobs, when asked for with `{"jobs": true}`.
    #[serde(default)]
    pub waiting_jobs: Option<Vec<JobView>>,
    /// The shadow policy's agreement with the deciding one, if the channel has one.
    #[serde(default)]
    pub shadow: Option<crate::engine::ShadowReport>,
}

/// `rows` as lines of left-aligned columns two spaces apart, without trailing spaces.
pub fn aligned<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A waiting job as `state` lists it (the fields of `position/{uid}`).
#[derive(Debug, Clone, Deserialize)]
pub struct JobView {
    /// Job id.
    pub uid: String,
    /// 1 = next.
    pub position: u64,
    /// What holds the queue.
    pub held_by: String,
    /// Expected grant time (ms since the Unix epoch), if known.
    #[serde(default)]
    pub eta_ms: Option<u64>,
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
    /// `1/2`; `4/5 (2 jobs)` when jobs of a cost above 1 make the units differ from the jobs.
    pub fn running(&self) -> String {
        let (jobs, max) = (self.running_count, self.max_concurrent_jobs);
        match self.running_units {
            Some(units) if units != jobs => format!("{units}/{max} ({jobs} jobs)"),
            _ => format!("{jobs}/{max}"),
        }
    }

    /// `POSITION UID HELD_BY ETA`, one row per listed job, columns aligned; ETAs relative to
    /// the daemon's `now`.
    pub fn jobs_table(&self, jobs: &[JobView]) -> String {
        if jobs.is_empty() {
            return format!("no jobs waiting in {}\n", self.channel);
        }
        let header = ["POSITION", "UID", "HELD_BY", "ETA"].map(String::from);
        let rows: Vec<[String; 4]> = std::iter::once(header)
            .chain(jobs.iter().map(|j| {
                let eta = j.eta_ms.map_or("-".into(), |at| {
                    format!(
                        "in {}",
                        short(Duration::from_millis(at.saturating_sub(self.now)))
                    )
                });
                [
                    j.position.to_string(),
                    j.uid.clone(),
                    j.held_by.clone(),
                    eta,
                ]
            }))
            .collect();
        let mut out = aligned(&rows);
        if (jobs.len() as u64) < self.waiting {
            out.push_str(&format!(
                "... {} more waiting\n",
                self.waiting - jobs.len() as u64
            ));
        }
        out
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
        let policy = match &self.policy {
            None => "built-in".into(),
            Some(path) => file_name(path),
        };
        let Some(shadow) = &self.shadow else {
            return policy;
        };
        let compared = shadow.admit.compared + shadow.before_grant.compared;
        let agreement = match (&shadow.suspended, shadow.agreement_rate()) {
            (Some(_), _) => format!("suspended after {} failures", shadow.failures),
            (None, None) => "no calls yet".into(),
            (None, Some(rate)) => format!("{:.1}% of {compared} agree", rate * 100.0),
        };
        format!(
            "{policy} (shadow {}: {agreement})",
            file_name(&shadow.policy)
        )
    }
}

/// The last component of a path as the daemon reported it.
fn file_name(path: &str) -> String {
    std::path::Path::new(path)
        .file_name()
        .map_or_else(|| path.to_owned(), |n| n.to_string_lossy().into_owned())
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

    #[test]
    fn running_shows_units_when_costs_make_them_differ() {
        let view = |units: Option<u64>| -> StateView {
            let mut v = serde_json::json!({"channel": "c", "max_concurrent_jobs": 5,
                "running_count": 2, "waiting": 0, "now": 0});
            if let Some(u) = units {
                v["running_units"] = u.into();
            }
            serde_json::from_value(v).unwrap()
        };
        assert_eq!(view(None).running(), "2/5");
        assert_eq!(view(Some(2)).running(), "2/5");
        assert_eq!(view(Some(4)).running(), "4/5 (2 jobs)");
    }

    #[test]
    fn waiting_jobs_read_as_a_table_with_relative_etas() {
        let v: StateView = serde_json::from_value(serde_json::json!({
            "channel": "c", "max_concurrent_jobs": 1, "running_count": 1, "waiting": 3,
            "now": 1_000,
            "waiting_jobs": [
                {"uid": "a", "position": 1, "waiting": 3, "held_by": "quota:minute", "eta_ms": 43_000},
                {"uid": "bb", "position": 2, "waiting": 3, "held_by": "quota:minute", "eta_ms": null}
            ]
        }))
        .unwrap();
        let jobs = v.waiting_jobs.clone().unwrap();
        assert_eq!(
            v.jobs_table(&jobs),
            "POSITION  UID  HELD_BY       ETA\n\
             1         a    quota:minute  in 42s\n\
             2         bb   quota:minute  -\n\
             ... 1 more waiting\n"
        );
    }
}
