//! Queue position, ETA and the reason a job waits (`"progress": true` on `register`).
//!
//! A job that asks gets [`Output::Position`](super::Output::Position) messages: one when it is
//! queued, then one whenever its position or the reason the queue is held changes. A long queue
//! must not turn one grant into thousands of publishes, so the rule is:
//!
//! - **At most one message a second per job** ([`PROGRESS_INTERVAL`]); a change within the second
//!   is sent, as it then stands, when the second is over.
//! - **The first [`HEAD_POSITIONS`] positions hear of a change at once** (subject to the rule
//!   above): after every event the channel looks at that many jobs at the head of its queue.
//! - **The rest of the queue is swept at most once a second per channel**: one pass over the
//!   queue that tells every job whose position or reason changed.
//! - **At most [`MAX_POSITIONS_PER_EVENT`] messages per event** (head look or sweep), plus the
//!   new job's own first message on `register`; what the cap holds back goes out in the next
//!   sweep, a second later.
//!
//! An ETA change alone sends nothing. ETAs come from a simulation of the queue's head ahead of
//! the job (at most [`ETA_HORIZON`] jobs deep; deeper jobs get `null`): quota windows are
//! replayed exactly, and running jobs are expected to take the channel's mean recent run time
//! ([`RUN_TIMES`] last runs, grant to end), capped by their lease. Without run times, when the
//! wait depends on running jobs ending, the ETA is `null`; so it is while the channel is paused
//! or its policy deferred the job.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;

use super::{Millis, Time};

/// Shortest time between two position messages to one job, and between two sweeps of one
/// channel's queue.
pub const PROGRESS_INTERVAL: Millis = Millis(1_000);
/// Positions at the head of a queue told of a change at once, after each event.
pub const HEAD_POSITIONS: usize = 16;
/// Most position messages one event (or one sweep) causes, besides a new job's first.
pub const MAX_POSITIONS_PER_EVENT: usize = 64;
/// Deepest position that gets an ETA: bounds the simulation behind one message.
pub const ETA_HORIZON: usize = 1_024;
/// Recent run times (grant to end) a channel keeps for its ETA estimate.
pub const RUN_TIMES: usize = 32;
/// Most waiting jobs listed in a `state` reply asked for with `{"jobs": true}`.
pub const LISTED_JOBS: usize = 100;

/// What keeps a channel's queue from moving: the head of the queue waits for it, and every job
/// behind the head waits for the head.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HeldBy {
    /// Not enough units of `max_concurrent_jobs` are free for the head.
    Concurrency,
    /// The named quota window has no room for the head (the one that opens last).
    Quota(String),
    /// The channel's policy deferred the jobs it was offered.
    Policy,
    /// `max_concurrent_jobs` is 0.
    Paused,
}

impl fmt::Display for HeldBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeldBy::Concurrency => f.write_str("concurrency"),
            HeldBy::Quota(name) => write!(f, "quota:{name}"),
            HeldBy::Policy => f.write_str("policy"),
            HeldBy::Paused => f.write_str("paused"),
        }
    }
}

impl serde::Serialize for HeldBy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A waiting job's place, as published on `position/{uid}` and listed by `state` with jobs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Position {
    /// Job id.
    pub uid: String,
    /// 1 = next to be granted.
    pub position: usize,
    /// Jobs waiting in the channel.
    pub waiting: usize,
    /// Why the queue does not move now.
    pub held_by: HeldBy,
    /// When it is expected to be granted (ms since the Unix epoch), if that can be told.
    #[serde(rename = "eta_ms")]
    pub eta: Option<Time>,
}

/// What a job that asked for progress was last told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Told {
    /// Its position then.
    pub(crate) position: usize,
    /// The reason then.
    pub(crate) held_by: HeldBy,
    /// When.
    pub(crate) at: Time,
}

impl Told {
    /// Whether a message about `position` and `held_by` would say something new.
    pub(crate) fn differs(&self, position: usize, held_by: &HeldBy) -> bool {
        self.position != position || self.held_by != *held_by
    }

    /// Whether the job may be told again at `now`.
    pub(crate) fn may_tell(&self, now: Time) -> bool {
        now >= self.at + PROGRESS_INTERVAL
    }
}

/// A channel's recent run times, for its ETA estimate.
#[derive(Debug, Default)]
pub(crate) struct RunTimes {
    /// The last [`RUN_TIMES`] runs, oldest first.
    recent: VecDeque<Millis>,
    /// Their sum.
    sum: u64,
}

impl RunTimes {
    /// Records a run that lasted `ran`.
    pub(crate) fn record(&mut self, ran: Millis) {
        if self.recent.len() == RUN_TIMES {
            if let Some(old) = self.recent.pop_front() {
                self.sum -= old.0;
            }
        }
        self.recent.push_back(ran);
        self.sum += ran.0;
    }

    /// Mean of the recent runs, if there were any.
    pub(crate) fn mean(&self) -> Option<Millis> {
        let n = self.recent.len() as u64;
        (n > 0).then(|| Millis(self.sum / n))
    }
}

/// A quota window as a simulation sees it: `(interval, limit, grants (time, units) oldest
/// first)`.
pub(crate) type SimWindow = (Millis, u64, VecDeque<(Time, u64)>);

/// The running limit and quota windows, as a simulation of grants to come sees them.
pub(crate) struct Simulation {
    /// Simulated time: grants come in queue order, never earlier than the one before.
    t: Time,
    /// `max_concurrent_jobs`.
    max: u64,
    /// Units free at `t`.
    free: u64,
    /// Expected ends of running (and simulated) jobs: `(end, units)`, earliest first; `None`
    /// ends are unknown (no run-time history).
    ends: BinaryHeap<Reverse<(Time, u64)>>,
    /// Units held by jobs whose end cannot be estimated.
    unknown: u64,
    /// Each enabled window.
    windows: Vec<SimWindow>,
    /// Mean run time, if known.
    mean: Option<Millis>,
    /// Set once a job cannot be given an ETA: every job behind it cannot either.
    lost: bool,
}

impl Simulation {
    /// A simulation from `now`: `running` is `(granted_at, lease end, units)` of each running
    /// job, `windows` each enabled quota window's `(interval, limit, grants)`.
    pub(crate) fn new(
        now: Time,
        max: u32,
        running: impl Iterator<Item = (Option<Time>, Time, u32)>,
        windows: Vec<SimWindow>,
        mean: Option<Millis>,
    ) -> Simulation {
        let mut sim = Simulation {
            t: now,
            max: u64::from(max),
            free: u64::from(max),
            ends: BinaryHeap::new(),
            unknown: 0,
            windows,
            mean,
            lost: false,
        };
        for (granted_at, deadline, units) in running {
            let units = u64::from(units);
            sim.free = sim.free.saturating_sub(units);
            match (mean, granted_at) {
                (Some(mean), Some(at)) => {
                    let end = (at + mean).min(deadline).max(now);
                    sim.ends.push(Reverse((end, units)));
                }
                _ => sim.unknown += units,
            }
        }
        sim
    }

    /// The time the next job in queue order, of `cost` units, is expected to be granted, or
    /// `None` if that cannot be told (and then for every later job too).
    pub(crate) fn next(&mut self, cost: u32) -> Option<Time> {
        let cost64 = u64::from(cost);
        if self.lost || cost64 > self.max || self.windows.iter().any(|w| cost64 > w.1) {
            self.lost = true;
            return None;
        }
        while self.free < cost64 {
            let Some(Reverse((end, units))) = self.ends.pop() else {
                // The units it needs are held by jobs whose end is unknown.
                self.lost = true;
                return None;
            };
            self.t = self.t.max(end);
            self.free += units;
        }
        for (interval, limit, grants) in &self.windows {
            if let Some(open) = opening(grants, *interval, *limit, self.t, cost64) {
                self.t = self.t.max(open);
            }
        }
        let at = self.t;
        self.free -= cost64;
        match self.mean {
            Some(mean) => self.ends.push(Reverse((at + mean, cost64))),
            None => self.unknown += cost64,
        }
        for (_, _, grants) in &mut self.windows {
            grants.push_back((at, cost64));
        }
        Some(at)
    }
}

/// When a window with `grants` next has room for `cost` units at or after `t`, if it lacks it
/// at `t` (the rule of the engine's quota windows).
fn opening(
    grants: &VecDeque<(Time, u64)>,
    interval: Millis,
    limit: u64,
    t: Time,
    cost: u64,
) -> Option<Time> {
    let counts = |g: Time| t <= g + interval;
    let used: u64 = grants
        .iter()
        .filter(|(g, _)| counts(*g))
        .map(|(_, u)| *u)
        .sum();
    let need = (used + cost).checked_sub(limit).filter(|n| *n > 0)?;
    let mut freed = 0;
    for &(g, u) in grants.iter().filter(|(g, _)| counts(*g)) {
        freed += u;
        if freed >= need {
            return Some(g + interval + Millis(1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_times_keep_a_mean_of_the_last_runs() {
        let mut r = RunTimes::default();
        assert_eq!(r.mean(), None);
        for ms in 0..RUN_TIMES as u64 + 8 {
            r.record(Millis(ms));
        }
        // The last 32 of 0..40: 8..40, mean 23.5 -> 23.
        assert_eq!(r.mean(), Some(Millis(23)));
    }

    #[test]
    fn a_simulation_replays_quota_windows_exactly() {
        // 2 per 1 s, both used at 0 and 500; plenty of concurrency.
        let windows = vec![(
            Millis(1_000),
            2,
            VecDeque::from([(Time(0), 1), (Time(500), 1)]),
        )];
        let mut sim = Simulation::new(Time(600), 10, std::iter::empty(), windows, None);
        assert_eq!(sim.next(1), Some(Time(1_001)));
        assert_eq!(sim.next(1), Some(Time(1_501)));
        assert_eq!(sim.next(1), Some(Time(2_002)));
        assert_eq!(sim.next(3), None, "over the window's limit");
        assert_eq!(sim.next(1), None, "and nothing after it");
    }

    #[test]
    fn a_simulation_estimates_from_run_times_and_gives_up_without_them() {
        // One unit, held by a job granted at 0; runs take 300 ms on average.
        let running = [(Some(Time(0)), Time(10_000), 1)];
        let mut sim = Simulation::new(
            Time(100),
            1,
            running.into_iter(),
            Vec::new(),
            Some(Millis(300)),
        );
        assert_eq!(sim.next(1), Some(Time(300)));
        assert_eq!(sim.next(1), Some(Time(600)));
        let mut blind = Simulation::new(Time(100), 1, running.into_iter(), Vec::new(), None);
        assert_eq!(blind.next(1), None);
        // A free unit needs no estimate.
        let mut free = Simulation::new(Time(100), 2, running.into_iter(), Vec::new(), None);
        assert_eq!(free.next(1), Some(Time(100)));
        assert_eq!(free.next(1), None);
    }

    #[test]
    fn held_by_reads_as_the_protocol_says() {
        assert_eq!(HeldBy::Quota("minute".into()).to_string(), "quota:minute");
        let p = Position {
            uid: "a".into(),
            position: 2,
            waiting: 5,
            held_by: HeldBy::Concurrency,
            eta: None,
        };
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"uid":"a","position":2,"waiting":5,"held_by":"concurrency","eta_ms":null}"#
        );
    }
}
