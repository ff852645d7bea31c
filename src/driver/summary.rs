//! The operator's view of a busy daemon, cheaply: one `info` line per period with activity
//! (grants, ends, expiries, rejections, the busiest channels), instead of one line per job at
//! `info` (a formatted, written log line per grant cost ~14 us of CPU, more than the rest of a
//! grant cycle). Per-job lines stay available at `debug`. A pure part with injected time: the
//! period starts at the first counted output, so an idle daemon wakes for nothing.

use std::collections::HashMap;
use std::sync::Arc;

use crate::engine::{Millis, Output, Time};

/// Length of one summary period.
pub const SUMMARY_EVERY: Millis = Millis(10_000);

/// How many of the busiest channels a summary names.
const BUSIEST: usize = 3;

/// Counts of the current period.
#[derive(Debug, Default)]
pub struct Summary {
    /// Start of the current period: the first output counted since the last summary.
    since: Option<Time>,
    /// Grants per channel (at most one entry per channel, cleared every period).
    grants: HashMap<Arc<str>, u64>,
    /// `go` said again.
    again: u64,
    /// Jobs ended by `finished` / `aborted` (running or waiting).
    ended: u64,
    /// Leases that ran out.
    expired: u64,
    /// Requests refused.
    rejected: u64,
}

/// One period's activity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Length of the period.
    pub period: Millis,
    /// Grants over all channels.
    pub grants: u64,
    /// `go` said again.
    pub again: u64,
    /// Jobs ended by their workers.
    pub ended: u64,
    /// Leases that ran out.
    pub expired: u64,
    /// Requests refused.
    pub rejected: u64,
    /// The channels with the most grants, most first (ties by name), at most three.
    pub busiest: Vec<(Arc<str>, u64)>,
}

impl Summary {
    /// Counts an output published at `now`.
    pub fn handle_output(&mut self, now: Time, out: &Output) {
        match out {
            Output::Go { channel, .. } => {
                *self.grants.entry(channel.clone()).or_default() += 1;
            }
            Output::GoAgain { .. } => self.again += 1,
            Output::Ended { .. } => self.ended += 1,
            Output::Expired { .. } => self.expired += 1,
            Output::Rejected { .. } => self.rejected += 1,
            Output::State(_)
            | Output::AllStates(_)
            | Output::Stale { .. }
            | Output::Position { .. } => return,
        }
        self.since.get_or_insert(now);
    }

    /// When the current period ends, if anything was counted.
    pub fn next_deadline(&self) -> Option<Time> {
        self.since.map(|t| t + SUMMARY_EVERY)
    }

    /// The period's report once it has ended; counting starts afresh.
    pub fn poll_report(&mut self, now: Time) -> Option<Report> {
        let since = self.since?;
        if now < since + SUMMARY_EVERY {
            return None;
        }
        let mut busiest: Vec<(Arc<str>, u64)> = self.grants.drain().collect();
        let grants = busiest.iter().map(|(_, n)| n).sum();
        busiest.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        busiest.truncate(BUSIEST);
        let report = Report {
            period: now - since,
            grants,
            again: self.again,
            ended: self.ended,
            expired: self.expired,
            rejected: self.rejected,
            busiest,
        };
        *self = Summary::default();
        Some(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EndReason, RejectKind};

    fn go(channel: &str) -> Output {
        Output::Go {
            channel: channel.into(),
            uid: "u".into(),
            seq: 0,
            at: Time(0),
            waited: Millis(0),
            token: 1,
            deadline: Time(0),
            reply: crate::engine::Reply::Plain,
        }
    }

    #[test]
    fn an_idle_daemon_has_no_deadline() {
        let mut s = Summary::default();
        assert_eq!(s.next_deadline(), None);
        s.handle_output(Time(5), &Output::AllStates(Vec::new()));
        assert_eq!(s.next_deadline(), None, "replies are not activity");
    }

    #[test]
    fn one_report_per_period_of_activity_with_the_busiest_channels() {
        let mut s = Summary::default();
        let t0 = Time(1_000);
        for (i, ch) in ["a", "b", "b", "c", "c", "c", "d"].iter().enumerate() {
            s.handle_output(t0 + Millis(i as u64), &go(ch));
        }
        s.handle_output(
            t0,
            &Output::Expired {
                channel: "a".into(),
                uid: "u".into(),
            },
        );
        s.handle_output(
            t0,
            &Output::Ended {
                channel: "a".into(),
                uid: "u".into(),
                reason: EndReason::Finished,
                was_running: true,
            },
        );
        s.handle_output(
            t0,
            &Output::Rejected {
                channel: "a".into(),
                uid: "u".into(),
                kind: RejectKind::Limit,
                reason: "full".into(),
            },
        );
        assert_eq!(s.next_deadline(), Some(t0 + SUMMARY_EVERY));
        assert_eq!(s.poll_report(t0 + Millis(9_999)), None);
        let r = s.poll_report(t0 + SUMMARY_EVERY).expect("due");
        assert_eq!(r.grants, 7);
        assert_eq!((r.ended, r.expired, r.rejected), (1, 1, 1));
        assert_eq!(
            r.busiest,
            [("c".into(), 3), ("b".into(), 2), ("a".into(), 1)]
        );
        assert_eq!(s.next_deadline(), None, "counting starts afresh");
        s.handle_output(t0 + Millis(20_000), &go("a"));
        assert_eq!(s.next_deadline(), Some(t0 + Millis(30_000)));
    }
}
