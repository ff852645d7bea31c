//! Progress: telling waiting jobs that asked for it where they stand (the rules are in
//! `engine/progress.rs`), and the positions `infos` lists.

use std::cmp::Reverse;
use std::sync::Arc;

use super::Channel;
use crate::engine::progress::{
    HeldBy, Position, Simulation, Told, ETA_HORIZON, HEAD_POSITIONS, LISTED_JOBS,
    MAX_POSITIONS_PER_EVENT, PROGRESS_INTERVAL,
};
use crate::engine::{Output, Time};

impl Channel {
    /// Tells the jobs that asked for progress what changed (the rule is in `progress.rs`): new
    /// jobs their first position, the head at once, the rest of the queue at the next sweep.
    pub(super) fn report_positions(&mut self, now: Time, out: &mut impl Extend<Output>) {
        for uid in std::mem::take(&mut self.untold) {
            let Some(job) = self.jobs.get(&uid).filter(|j| j.deadline.is_none()) else {
                continue;
            };
            let key = (Reverse(job.priority), job.seq);
            // Usually the new job is last (FIFO); only a policy's priority puts it elsewhere.
            let position = match self.queue.last_key_value() {
                Some((last, _)) if *last == key => self.queue.len(),
                _ => self.queue.range(..key).count() + 1,
            };
            self.tell(now, &uid, position, out);
        }
        if self.watchers == 0 || self.held.is_none() {
            self.sweep_at = None;
            return;
        }
        match self.last_sweep {
            Some(last) if now < last + PROGRESS_INTERVAL => {
                let due = last + PROGRESS_INTERVAL;
                self.sweep_at = match self.scan(now, HEAD_POSITIONS, out) {
                    // Every watcher was seen: sweep only for what is left untold.
                    (again, true) => again.map(|t| t.max(due)),
                    (_, false) => Some(due),
                };
            }
            _ => {
                self.last_sweep = Some(now);
                let (again, _) = self.scan(now, usize::MAX, out);
                self.sweep_at = again.map(|t| t.max(now + PROGRESS_INTERVAL));
            }
        }
    }

    /// Tells `uid`, at `position`, where it stands (its first message: no cap, no rate).
    pub(super) fn tell(
        &mut self,
        now: Time,
        uid: &Arc<str>,
        position: usize,
        out: &mut impl Extend<Output>,
    ) {
        let Some(held_by) = self.held.clone() else {
            return;
        };
        let mut sim = self.simulation(now);
        let mut eta = None;
        if position <= ETA_HORIZON {
            for (i, other) in self.queue.values().take(position).enumerate() {
                let cost = self.jobs.get(other).map_or(1, |j| j.cost);
                let at = sim.as_mut().and_then(|s| s.next(cost));
                if i + 1 == position {
                    eta = at;
                }
            }
        }
        let told = Told {
            position,
            held_by: held_by.clone(),
            at: now,
        };
        self.told.insert(uid.clone(), told);
        out.extend([self.position_output(uid, position, held_by, eta)]);
    }

    pub(super) fn position_output(
        &self,
        uid: &str,
        position: usize,
        held_by: HeldBy,
        eta: Option<Time>,
    ) -> Output {
        Output::Position {
            channel: self.name.clone(),
            position: Position {
                uid: uid.to_owned(),
                position,
                waiting: self.queue.len(),
                held_by,
                eta,
            },
        }
    }

    /// Looks at the first `depth` waiting jobs and tells those that asked for progress, whose
    /// position or reason changed, and that may be told now, at most
    /// [`MAX_POSITIONS_PER_EVENT`] of them. Returns when a change that could not be told yet
    /// may be (if any), and whether every watcher was seen.
    pub(super) fn scan(
        &mut self,
        now: Time,
        depth: usize,
        out: &mut impl Extend<Output>,
    ) -> (Option<Time>, bool) {
        let Some(held_by) = self.held.clone() else {
            return (None, true);
        };
        let mut sim = self.simulation(now);
        let mut told = Vec::new();
        let mut again: Option<Time> = None;
        let mut watched = 0;
        for (i, uid) in self.queue.values().take(depth).enumerate() {
            if watched == self.watchers {
                break; // every watcher seen: the rest of the queue has none
            }
            let Some(job) = self.jobs.get(uid) else {
                continue;
            };
            let position = i + 1;
            let eta = match sim.as_mut() {
                Some(s) if position <= ETA_HORIZON => s.next(job.cost),
                _ => None,
            };
            if !job.progress {
                continue;
            }
            watched += 1;
            let last = self.told.get(uid);
            if last.is_some_and(|t| !t.differs(position, &held_by)) {
                continue;
            }
            if let Some(t) = last.filter(|t| !t.may_tell(now)) {
                // Told less than a second ago: a second after that.
                let at = t.at + PROGRESS_INTERVAL;
                again = Some(again.map_or(at, |a| a.min(at)));
                continue;
            }
            if told.len() == MAX_POSITIONS_PER_EVENT {
                // The cap is reached and more is to be told: the next sweep goes on.
                again = Some(now);
                break;
            }
            told.push((uid.clone(), position, eta));
        }
        for (uid, position, eta) in told {
            let last = Told {
                position,
                held_by: held_by.clone(),
                at: now,
            };
            self.told.insert(uid.clone(), last);
            out.extend([self.position_output(&uid, position, held_by.clone(), eta)]);
        }
        (again, watched == self.watchers)
    }

    /// The grants to come, as far as they can be foreseen: `None` while paused or held by the
    /// policy (nothing can be told), or with nothing waiting.
    pub(super) fn simulation(&self, now: Time) -> Option<Simulation> {
        match self.held.as_ref()? {
            HeldBy::Paused | HeldBy::Policy => return None,
            HeldBy::Concurrency | HeldBy::Quota(_) => {}
        }
        let running = self.leases.iter().map(|((deadline, _), uid)| {
            let job = self.jobs.get(uid);
            (
                job.and_then(|j| j.granted_at),
                *deadline,
                job.map_or(1, |j| j.cost),
            )
        });
        let windows = self
            .windows
            .iter()
            .filter(|w| w.spec.limit > 0)
            .map(|w| {
                let grants = w.grants().map(|(t, u)| (t, u64::from(u))).collect();
                (w.spec.interval, u64::from(w.spec.limit), grants)
            })
            .collect();
        Some(Simulation::new(
            now,
            self.opts.max_concurrent_jobs,
            running,
            windows,
            self.run_times.mean(),
        ))
    }

    /// The first [`LISTED_JOBS`] waiting jobs with their positions, as `state` lists them.
    pub(crate) fn waiting_jobs(&self, now: Time) -> Vec<Position> {
        let Some(held_by) = self.held.clone() else {
            return Vec::new();
        };
        let mut sim = self.simulation(now);
        self.queue
            .values()
            .take(LISTED_JOBS)
            .enumerate()
            .map(|(i, uid)| {
                let cost = self.jobs.get(uid).map_or(1, |j| j.cost);
                Position {
                    uid: uid.to_string(),
                    position: i + 1,
                    waiting: self.queue.len(),
                    held_by: held_by.clone(),
                    eta: sim.as_mut().and_then(|s| s.next(cost)),
                }
            })
            .collect()
    }
}
