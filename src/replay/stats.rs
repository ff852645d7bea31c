//! Per-channel figures of a run, recorded or simulated, and how they are printed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use serde::Serialize;

use super::sim::Outcome;
use super::trace::Trace;
use crate::engine::{Exit, Time};

/// One channel's figures over the jobs registered in the period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChannelStats {
    /// Jobs registered in the period.
    pub jobs: usize,
    /// Of those, how many were granted (by the end of what is known).
    pub grants: usize,
    /// Of those, how many still waited at the end.
    pub waiting_at_end: usize,
    /// Wait from registration to grant of the granted jobs, in milliseconds.
    pub wait_ms: Waits,
    /// Jobs rejected by a policy (or, simulated, a `[limits]` key of the candidate).
    pub rejections: usize,
    /// Registrations ignored because the uid was still waiting or running (simulated only).
    pub ignored: usize,
    /// Time quotas kept a waiting job from a free slot, in milliseconds.
    pub quota_held_ms: u64,
    /// Most jobs running at once.
    pub peak_running: usize,
}

/// Wait percentiles (nearest rank), in milliseconds; `None` without grants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Waits {
    /// Median.
    pub p50: Option<u64>,
    /// 95th percentile.
    pub p95: Option<u64>,
    /// 99th percentile.
    pub p99: Option<u64>,
    /// Longest.
    pub max: Option<u64>,
}

impl Waits {
    /// Percentiles of `waits`.
    pub fn of(mut waits: Vec<u64>) -> Waits {
        waits.sort_unstable();
        let rank = |p: usize| -> Option<u64> {
            let n = waits.len();
            if n == 0 {
                return None;
            }
            // Nearest rank: the smallest value with at least p% of the values at or below it.
            let k = (p * n).div_ceil(100).clamp(1, n);
            waits.get(k - 1).copied()
        };
        Waits {
            p50: rank(50),
            p95: rank(95),
            p99: rank(99),
            max: waits.last().copied(),
        }
    }
}

/// Which jobs of the trace count: registered in `[from, until]`.
pub fn counted(trace: &Trace, from: Time, until: Time) -> Vec<bool> {
    (trace.jobs.iter())
        .map(|j| !j.preexisting && j.arrival >= from && j.arrival <= until)
        .collect()
}

/// The recorded figures, straight from the journal; quota-held time comes from `replayed`,
/// the run under the recorded limits (the journal does not keep it).
pub fn recorded(
    trace: &Trace,
    from: Time,
    until: Time,
    replayed: &Outcome,
) -> BTreeMap<Arc<str>, ChannelStats> {
    let granted: Vec<Option<Time>> = trace.jobs.iter().map(|j| j.granted).collect();
    let rejected: Vec<bool> = (trace.jobs.iter())
        .map(|j| matches!(j.left, Some((t, Exit::Rejected, _)) if t <= until))
        .collect();
    let mut stats = tally(trace, (from, until), until, &granted, &rejected, None);
    for (name, s) in &mut stats {
        s.quota_held_ms = replayed.quota_held.get(name).map_or(0, |m| m.0);
        s.peak_running = recorded_peak(trace, name, from, until);
    }
    stats
}

/// The figures of a simulated run: grants after `until` count too (a candidate runs on until
/// its queues drain).
pub fn simulated(
    trace: &Trace,
    from: Time,
    until: Time,
    outcome: &Outcome,
) -> BTreeMap<Arc<str>, ChannelStats> {
    let mut stats = tally(
        trace,
        (from, until),
        Time(u64::MAX),
        &outcome.granted,
        &outcome.rejected,
        Some(&outcome.ignored),
    );
    for (name, s) in &mut stats {
        s.quota_held_ms = outcome.quota_held.get(name).map_or(0, |m| m.0);
        s.peak_running = outcome.peak_running.get(name).copied().unwrap_or(0);
    }
    stats
}

/// Figures of the jobs registered in `period`, counting grants up to `horizon`.
fn tally(
    trace: &Trace,
    (from, until): (Time, Time),
    horizon: Time,
    granted: &[Option<Time>],
    rejected: &[bool],
    ignored: Option<&[bool]>,
) -> BTreeMap<Arc<str>, ChannelStats> {
    let counted = counted(trace, from, until);
    let mut stats: BTreeMap<Arc<str>, ChannelStats> = BTreeMap::new();
    let mut waits: BTreeMap<Arc<str>, Vec<u64>> = BTreeMap::new();
    for (i, job) in trace.jobs.iter().enumerate() {
        if !counted[i] {
            continue;
        }
        let s = stats.entry(job.channel.clone()).or_default();
        s.jobs += 1;
        if ignored.is_some_and(|ig| ig[i]) {
            s.ignored += 1;
            continue;
        }
        match granted[i].filter(|g| *g <= horizon) {
            Some(g) => {
                s.grants += 1;
                (waits.entry(job.channel.clone()).or_default())
                    .push(g.0.saturating_sub(job.arrival.0));
            }
            None if rejected[i] => s.rejections += 1,
            None => {
                // Not granted: it gave up waiting at its recorded time, or still waits.
                let gave_up = matches!(job.left, Some((t, Exit::Cancelled, _)) if t <= horizon);
                s.waiting_at_end += usize::from(!gave_up);
            }
        }
    }
    for (name, w) in waits {
        if let Some(s) = stats.get_mut(&name) {
            s.wait_ms = Waits::of(w);
        }
    }
    stats
}

/// The most jobs of `channel` running at once in the recording between `from` and `until`.
fn recorded_peak(trace: &Trace, channel: &str, from: Time, until: Time) -> usize {
    // +1 at each grant, -1 at each end of a granted job; ends first within a millisecond.
    let mut steps: Vec<(Time, i8)> = Vec::new();
    for job in trace.jobs.iter().filter(|j| &*j.channel == channel) {
        let Some(g) = job.granted else { continue };
        steps.push((g, 1));
        if let Some((t, _, _)) = job.left {
            steps.push((t, -1));
        }
    }
    steps.sort_unstable();
    let (mut now, mut peak) = (0i64, 0i64);
    for (t, d) in steps {
        if t > until {
            break;
        }
        now += i64::from(d);
        if t >= from {
            peak = peak.max(now);
        }
    }
    usize::try_from(peak).unwrap_or(0)
}

/// A duration for people: `850ms`, `12.3s`, `4.5m`, `2.0h`.
pub fn human(ms: Option<u64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms < 1_000 => format!("{ms}ms"),
        Some(ms) if ms < 60_000 => format!("{:.1}s", ms as f64 / 1e3),
        Some(ms) if ms < 3_600_000 => format!("{:.1}m", ms as f64 / 6e4),
        Some(ms) => format!("{:.1}h", ms as f64 / 3.6e6),
    }
}

/// The `--jobs` table: each job's waits, recorded and simulated.
pub fn job_table(jobs: &[super::JobLine], label: &str) -> String {
    let wait = |j: &super::JobLine, g: Option<Time>| match g {
        Some(g) => human(Some(g.0.saturating_sub(j.registered.0))),
        None => "not granted".into(),
    };
    let mut rows = vec![vec![
        "CHANNEL".to_string(),
        "UID".to_string(),
        "WAIT recorded".to_string(),
        label.to_string(),
    ]];
    for j in jobs {
        rows.push(vec![
            j.channel.to_string(),
            j.uid.to_string(),
            wait(j, j.recorded),
            wait(j, j.candidate),
        ]);
    }
    columns(rows)
}

/// Rows as left-aligned columns.
fn columns(rows: Vec<Vec<String>>) -> String {
    let n = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..n)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The table of recorded vs simulated figures, one pair of rows per channel.
pub fn table(
    recorded: &BTreeMap<Arc<str>, ChannelStats>,
    simulated: &BTreeMap<Arc<str>, ChannelStats>,
    label: &str,
) -> String {
    let header = [
        "CHANNEL",
        "RUN",
        "JOBS",
        "GRANTS",
        "WAIT p50",
        "p95",
        "p99",
        "max",
        "REJECTED",
        "QUOTA-HELD",
        "PEAK",
        "WAITING",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    let empty = ChannelStats::default();
    for (name, rec) in recorded {
        let sim = simulated.get(name).unwrap_or(&empty);
        for (first, run, s) in [(true, "recorded", rec), (false, label, sim)] {
            rows.push(vec![
                if first {
                    name.to_string()
                } else {
                    String::new()
                },
                run.to_string(),
                s.jobs.to_string(),
                s.grants.to_string(),
                human(s.wait_ms.p50),
                human(s.wait_ms.p95),
                human(s.wait_ms.p99),
                human(s.wait_ms.max),
                s.rejections.to_string(),
                human(Some(s.quota_held_ms)),
                s.peak_running.to_string(),
                s.waiting_at_end.to_string(),
            ]);
        }
    }
    columns(rows)
}
