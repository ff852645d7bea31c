//! Sliding-window quotas counted at grant time.

use std::collections::VecDeque;

use super::{Millis, QuotaLog, QuotaSpec, Time};

/// One window of a channel and the grant times that still count against it.
#[derive(Debug)]
pub(crate) struct Window {
    /// The configured limit; `spec.limit == 0` disables the window entirely.
    pub(crate) spec: QuotaSpec,
    /// Grant times, oldest first. Holds at most `spec.limit` entries: only the most recent
    /// `limit` grants can decide whether the next one fits, so older ones are dropped on push.
    grants: VecDeque<Time>,
}

impl Window {
    pub(crate) fn new(spec: QuotaSpec) -> Window {
        Window {
            spec,
            grants: VecDeque::new(),
        }
    }

    /// The same window under a new spec, keeping the grants that still matter: at most the new
    /// limit of the most recent ones (older grants can never count again).
    pub(crate) fn respec(mut self, spec: QuotaSpec) -> Window {
        while self.grants.len() > spec.limit as usize {
            self.grants.pop_front();
        }
        self.spec = spec;
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

    /// Grants that count against the window at `now`.
    pub(crate) fn used(&self, now: Time) -> u32 {
        let stale = self
            .grants
            .iter()
            .take_while(|g| !self.counts_at(**g, now))
            .count();
        u32::try_from(self.grants.len() - stale).unwrap_or(u32::MAX)
    }

    /// `None` if a grant at `now` fits; otherwise the first instant at which one will.
    pub(crate) fn blocked_until(&self, now: Time) -> Option<Time> {
        if !self.enabled() || self.grants.len() < self.spec.limit as usize {
            return None;
        }
        // Full: the oldest of the last `limit` grants must fall out first.
        let oldest = *self.grants.front()?;
        if self.counts_at(oldest, now) {
            Some(oldest + self.interval() + Millis(1))
        } else {
            None
        }
    }

    /// Counts a grant made at `now`.
    pub(crate) fn record(&mut self, now: Time, channel: &str) {
        if !self.enabled() {
            return;
        }
        if self.grants.len() == self.spec.limit as usize {
            self.grants.pop_front();
        }
        self.grants.push_back(now);
        if self.spec.log == QuotaLog::VeryVerbose {
            tracing::debug!(channel, quota = %self.spec.name, used = self.used(now), limit = self.spec.limit, "grant counted");
        }
    }

    /// Grant times still held (for state reports and the journal).
    pub(crate) fn grants(&self) -> impl ExactSizeIterator<Item = Time> + '_ {
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
            w.record(Time(t), "c");
            assert_eq!(w.blocked_until(Time(t)), None);
        }
        assert_eq!(w.grants().count(), 0);
    }

    #[test]
    fn reopens_one_ms_after_the_interval() {
        let mut w = window(2, 1000);
        w.record(Time(100), "c");
        w.record(Time(400), "c");
        assert_eq!(w.blocked_until(Time(400)), Some(Time(1101)));
        assert_eq!(w.blocked_until(Time(1100)), Some(Time(1101)));
        assert_eq!(w.blocked_until(Time(1101)), None);
        assert_eq!(w.used(Time(1100)), 2);
        assert_eq!(w.used(Time(1101)), 1);
        w.record(Time(1101), "c");
        assert_eq!(w.blocked_until(Time(1101)), Some(Time(1401)));
        assert_eq!(
            w.grants().count(),
            2,
            "only the last `limit` grants are kept"
        );
    }
}
