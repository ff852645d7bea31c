//! The CPU-time budget of a hook call, without a system call per call.
//!
//! The budget counts the CPU time a call really used (a descheduled thread on a loaded host
//! must not fail a correct policy), read from the thread's CPU clock. That clock is a system
//! call here (582 ns in the KVM guest of BENCHMARKS.md section 11, against 24 ns for the
//! monotonic clock): a third of a whole `admit`. So a call does not read it: it takes the
//! thread's last sample if that is at most [`REFRESH`] old (reading the clock only otherwise),
//! and when the epoch deadline fires, the CPU used since the call started is bounded from below
//! by what the clock says now minus the sample minus the wall time between the sample and the
//! call's start (a thread cannot use more CPU than wall time). A call is therefore never charged
//! more than it used, and a spinning guest is stopped at most [`REFRESH`] of CPU after its
//! budget, within the deadline's own resolution (one epoch tick).

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Oldest thread CPU-clock sample a call may start from: one epoch tick.
pub(crate) const REFRESH: Duration = super::compile::EPOCH_TICK;

/// A reading of the thread's CPU clock and when it was taken.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    cpu: Duration,
    at: Instant,
}

/// When a call started, for its budget.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallStart {
    sample: Sample,
    wall: Instant,
}

thread_local! {
    static LAST: Cell<Option<Sample>> = const { Cell::new(None) };
}

impl CallStart {
    /// A call starting now on this thread: the thread's last CPU sample, refreshed if older
    /// than [`REFRESH`].
    pub(crate) fn now() -> CallStart {
        let wall = Instant::now();
        let sample = LAST.with(|last| match last.get() {
            Some(s) if wall.saturating_duration_since(s.at) <= REFRESH => s,
            _ => {
                let s = Sample {
                    cpu: thread_cpu_time(),
                    at: wall,
                };
                last.set(Some(s));
                s
            }
        });
        CallStart { sample, wall }
    }

    /// CPU time used since the call started, given the thread's CPU clock now: never more than
    /// really used, at most the sample's age less.
    pub(crate) fn cpu_used(&self, cpu_now: Duration) -> Duration {
        let age = self.wall.saturating_duration_since(self.sample.at);
        cpu_now.saturating_sub(self.sample.cpu).saturating_sub(age)
    }

    /// Wall time since the call started.
    pub(crate) fn elapsed(&self) -> Duration {
        self.wall.elapsed()
    }
}

/// CPU time used by the current thread (zero where the clock is unavailable, which leaves only
/// the wall-clock cap).
pub(crate) fn thread_cpu_time() -> Duration {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(Duration::ZERO, Duration::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(cpu_ms: u64, sample_age: Duration) -> CallStart {
        let wall = Instant::now();
        CallStart {
            sample: Sample {
                cpu: Duration::from_millis(cpu_ms),
                at: wall - sample_age,
            },
            wall,
        }
    }

    #[test]
    fn a_fresh_sample_charges_exactly_what_the_clock_moved() {
        let s = start(100, Duration::ZERO);
        assert_eq!(
            s.cpu_used(Duration::from_millis(107)),
            Duration::from_millis(7)
        );
    }

    #[test]
    fn an_older_sample_never_overcharges() {
        // Sampled 800 us before the call: up to 800 us of the clock's move may predate it.
        let s = start(100, Duration::from_micros(800));
        assert_eq!(
            s.cpu_used(Duration::from_millis(110)),
            Duration::from_micros(9_200)
        );
        // A descheduled call that used nothing is charged nothing.
        assert_eq!(s.cpu_used(Duration::from_micros(100_500)), Duration::ZERO);
        assert_eq!(s.cpu_used(Duration::from_millis(90)), Duration::ZERO);
    }

    #[test]
    fn calls_reuse_a_recent_sample_and_refresh_an_old_one() {
        let first = CallStart::now();
        let second = CallStart::now();
        assert_eq!(first.sample.at, second.sample.at, "within one tick: reused");
        std::thread::sleep(REFRESH * 2);
        let third = CallStart::now();
        assert!(
            third.sample.at > first.sample.at,
            "older than a tick: read again"
        );
        // The clock only moves forward, and what a call is charged is bounded by it.
        let now = thread_cpu_time();
        assert!(third.cpu_used(now) <= now.saturating_sub(third.sample.cpu));
    }
}
