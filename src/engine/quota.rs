//! Sliding-window quotas counted at grant time, in units: a job of cost k counts k.

use std::collections::VecDeque;

use super::{Millis, QuotaLog, QuotaSpec, Time};

/// One window of a channel and the grants that still count against it.
#[derive(Debug)]
pub(crate) struct Window {
    /// The configured limit, in units; `spec.limit == 0` disables the window entirely.
    pub(crate) spec: QuotaSpec,
    /// Grants as `(time, units)`, oldest first. Only the most recent grants that together hold
    /// `spec.limit` units can decide whether the next one fits (a grant older than those can
    /// only have left the window before them), so older ones are dropped on push: the entries
    /// never number more than `spec.limit`, whatever the costs.
    grants: VecDeque<(Time, u32)>,
    /// Sum of the units in `grants`.
    units: u64,
}

impl Window {
    pub(crate) fn new(spec: QuotaSpec) -> Window {
        Window {
            spec,
            grants: VecDeque::new(),
            units: 0,
        }
    }

    /// The same window under a new spec, keeping the grants that still matter under the new
    /// limit (older grants can never count again).
    pub(crate) fn respec(mut self, spec: QuotaSpec) -> Window {
        self.spec = spec;
        self.drop_irrelevant();
        self
    }

    fn enabled(&self) -> bool {
        self.spec.limit > 0
    }

    fn interval(&self) -> Millis {
        self.spec.interval
    }

    /// A grant at `granted_at` counts while `now <= granted_at + interval` (as in the original):
    /// the window reopens strictly after that, i.e. one millisecond later.
    fn counts_at(&self, granted_at: Time, now: Time) -> bool {
        now <= granted_at + self.interval()
    }

    /// Units that count against the window at `now`.
    pub(crate) fn used(&self, now: Time) -> u32 {
        let stale: u64 = self
            .grants
            .iter()
            .take_while(|(g, _)| !self.counts_at(*g, now))
            .map(|(_, u)| u64::from(*u))
            .sum();
        u32::try_from(self.units - stale).unwrap_or(u32::MAX)
    }

    /// Whether a job of `cost` units can ever fit in the window (its limit is at least the
    /// cost, or the window is disabled).
    pub(crate) fn admits_ever(&self, cost: u32) -> bool {
        !self.enabled() || cost <= self.spec.limit
    }

    /// `None` if a grant of `cost` units fits at `now` (or never can: see
    /// [`Window::admits_ever`]); otherwise the first instant at which it will.
    pub(crate) fn blocked_until(&self, now: Time, cost: u32) -> Option<Time> {
        let limit = u64::from(self.spec.limit);
        if !self.admits_ever(cost) || self.units + u64::from(cost) <= limit {
            return None;
        }
        // The oldest grants must leave the window until `need` units are free; the last of
        // them to leave decides. Those already out count as free now.
        let need = self.units + u64::from(cost) - limit;
        let mut freed = 0;
        for &(t, u) in &self.grants {
            freed += u64::from(u);
            if freed >= need {
                return self
                    .counts_at(t, now)
                    .then(|| t + self.interval() + Millis(1));
            }
        }
        None
    }

    /// Counts a grant of `units` made at `now`.
    pub(crate) fn record(&mut self, now: Time, units: u32, channel: &str) {
        if !self.enabled() || units == 0 {
            return;
        }
        self.grants.push_back((now, units));
        self.units += u64::from(units);
        self.drop_irrelevant();
        if self.spec.log == QuotaLog::VeryVerbose {
            tracing::debug!(channel, quota = %self.spec.name, used = self.used(now), limit = self.spec.limit, "grant counted");
        }
    }

    /// Drops the oldest grants while the newer ones alone hold the whole limit.
    fn drop_irrelevant(&mut self) {
        let limit = u64::from(self.spec.limit);
        while let Some(&(_, u)) = self.grants.front() {
            if self.units - u64::from(u) < limit {
                break;
            }
            self.grants.pop_front();
            self.units -= u64::from(u);
        }
    }

    /// Grants still held, `(time, units)` (for state reports and the journal).
    pub(crate) fn grants(&self) -> impl ExactSizeIterator<Item = (Time, u32)> + '_ {
        self.grants.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(limit: u32, interval: u64) -> Window {
        Window::new(QuotaSpec {
            name: "w".into(),
            interval: Millis(interval),
            limit,
            log: QuotaLog::Quiet,
        })
    }

    #[test]
    fn disabled_window_never_blocks() {
        let mut w = window(0, 1000);
        for t in 0..10 {
            w.record(Time(t), 1, "c");
            assert_eq!(w.blocked_until(Time(t), 1), None);
        }
        assert_eq!(w.grants().count(), 0);
    }

    #[test]
    fn reopens_one_ms_after_the_interval() {
        let mut w = window(2, 1000);
        w.record(Time(100), 1, "c");
        w.record(Time(400), 1, "c");
        assert_eq!(w.blocked_until(Time(400), 1), Some(Time(1101)));
        assert_eq!(w.blocked_until(Time(1100), 1), Some(Time(1101)));
        assert_eq!(w.blocked_until(Time(1101), 1), None);
        assert_eq!(w.used(Time(1100)), 2);
        assert_eq!(w.used(Time(1101)), 1);
        w.record(Time(1101), 1, "c");
        assert_eq!(w.blocked_until(Time(1101), 1), Some(Time(1401)));
        assert_eq!(
            w.grants().count(),
            2,
            "only the last `limit` grants are kept"
        );
    }

    #[test]
    fn a_cost_counts_its_units_and_waits_for_enough_to_leave() {
        let mut w = window(5, 1000);
        w.record(Time(100), 2, "c");
        w.record(Time(200), 2, "c");
        assert_eq!(w.used(Time(200)), 4);
        assert_eq!(w.blocked_until(Time(200), 1), None);
        // Three units need the grant of 100 gone (4 + 3 - 5 = 2 units to free).
        assert_eq!(w.blocked_until(Time(200), 3), Some(Time(1101)));
        // Five need both grants gone.
        assert_eq!(w.blocked_until(Time(200), 5), Some(Time(1201)));
        assert_eq!(w.blocked_until(Time(1101), 3), None);
        assert_eq!(w.blocked_until(Time(1101), 4), Some(Time(1201)));
        assert!(!w.admits_ever(6));
        assert_eq!(w.blocked_until(Time(200), 6), None, "never: not a deadline");
    }

    #[test]
    fn only_grants_that_can_still_decide_are_kept() {
        let mut w = window(4, 1000);
        for t in 0..10 {
            w.record(Time(t), 3, "c");
        }
        // The last two (6 units) hold the limit alone; nothing older can matter.
        assert_eq!(w.grants().count(), 2);
        assert_eq!(w.used(Time(9)), 6);
        assert_eq!(w.blocked_until(Time(9), 1), Some(Time(1009)));
        let w = w.respec(QuotaSpec {
            name: "w".into(),
            interval: Millis(1000),
            limit: 2,
            log: QuotaLog::Quiet,
        });
        assert_eq!(w.grants().collect::<Vec<_>>(), [(Time(9), 3)]);
    }
}
