//! When failures end a policy version's run: pure counting in engine time, no wasmtime.
//!
//! - A hot-swapped version is on probation for `[policy_rollback] window` after the swap: its
//!   `failures`-th failed call in that span rolls the file back to the previous version
//!   ([`Breaker::probation`]). After the span the version is trusted like any other.
//! - A shadow policy failing `failures` times within any span of `window` is suspended
//!   ([`Breaker::sliding`]): it costs the driver's thread up to a call budget per failed call,
//!   so a broken candidate must not keep taxing the channels it watches.

use std::collections::VecDeque;

use crate::config::PolicyRollback;
use crate::engine::{Millis, Time};

/// Counts failures and says when there were too many. `failures = 0` never trips.
#[derive(Debug, Clone)]
pub(super) struct Breaker {
    limit: u32,
    window: Millis,
    /// `Some(t)`: only failures before `t + window` count (probation after a swap at `t`);
    /// `None`: any `window`-long span.
    since: Option<Time>,
    /// Failure times still counted, oldest first; never more than `limit`.
    failures: VecDeque<Time>,
}

impl Breaker {
    /// Probation of a version swapped in at `swapped_at`.
    pub(super) fn probation(settings: PolicyRollback, swapped_at: Time) -> Breaker {
        Breaker::new(settings, Some(swapped_at))
    }

    /// A breaker over any `window`-long span (for shadows).
    pub(super) fn sliding(settings: PolicyRollback) -> Breaker {
        Breaker::new(settings, None)
    }

    fn new(settings: PolicyRollback, since: Option<Time>) -> Breaker {
        Breaker {
            limit: settings.failures,
            window: settings.window,
            since,
            failures: VecDeque::new(),
        }
    }

    /// Whether a probation is over at `now` (failures no longer count; the entry can go).
    pub(super) fn expired(&self, now: Time) -> bool {
        self.since.is_some_and(|t| now >= t + self.window)
    }

    /// Records a failure at `now`; `true` when it is one too many (the caller rolls back or
    /// suspends). A probation that is over never trips.
    pub(super) fn record(&mut self, now: Time) -> bool {
        if self.limit == 0 || self.expired(now) {
            return false;
        }
        if self.since.is_none() {
            while self
                .failures
                .front()
                .is_some_and(|&t| t + self.window <= now)
            {
                self.failures.pop_front();
            }
        }
        self.failures.push_back(now);
        if self.failures.len() > self.limit as usize {
            self.failures.pop_front();
        }
        self.failures.len() >= self.limit as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(failures: u32, window_ms: u64) -> PolicyRollback {
        PolicyRollback {
            failures,
            window: Millis(window_ms),
        }
    }

    #[test]
    fn probation_trips_on_the_nth_failure_within_the_window_after_the_swap() {
        let mut b = Breaker::probation(settings(3, 60_000), Time(1_000));
        assert!(!b.record(Time(1_000)));
        assert!(!b.record(Time(30_000)));
        assert!(b.record(Time(60_999)), "third failure, 1 ms before the end");
    }

    #[test]
    fn failures_after_the_probation_never_trip() {
        let mut b = Breaker::probation(settings(2, 10_000), Time(0));
        assert!(!b.record(Time(9_999)));
        assert!(b.expired(Time(10_000)));
        assert!(!b.record(Time(10_000)), "the window is over: trusted");
        assert!(!b.record(Time(10_001)));
    }

    #[test]
    fn a_probation_counts_failures_spread_over_its_whole_window() {
        // Not a sliding window: failures at the start and the end of the probation add up.
        let mut b = Breaker::probation(settings(2, 10_000), Time(0));
        assert!(!b.record(Time(1)));
        assert!(b.record(Time(9_999)));
    }

    #[test]
    fn sliding_forgets_failures_older_than_the_window() {
        let mut b = Breaker::sliding(settings(3, 1_000));
        assert!(!b.record(Time(0)));
        assert!(!b.record(Time(500)));
        // The failure at 0 is 1,000 ms old: gone, so this is the second, not the third.
        assert!(!b.record(Time(1_000)));
        assert!(b.record(Time(1_200)), "500, 1,000 and 1,200 within 1 s");
        assert!(
            !b.expired(Time(u64::MAX / 2)),
            "a sliding breaker never expires"
        );
    }

    #[test]
    fn zero_failures_turns_it_off() {
        let mut p = Breaker::probation(settings(0, 60_000), Time(0));
        let mut s = Breaker::sliding(settings(0, 60_000));
        for t in 0..100 {
            assert!(!p.record(Time(t)));
            assert!(!s.record(Time(t)));
        }
    }

    #[test]
    fn one_failure_limit_trips_at_once_and_memory_stays_bounded() {
        let mut b = Breaker::sliding(settings(1, 60_000));
        assert!(b.record(Time(5)));
        let mut b = Breaker::sliding(settings(4, u64::MAX / 4));
        for t in 0..10_000 {
            b.record(Time(t));
        }
        assert_eq!(b.failures.len(), 4, "never more than `failures` times kept");
    }
}
