//! Granting: the pass over the queue that starts jobs while a slot, every quota window and
//! the policy allow, and the channel's next deadline.

use std::ops::Bound;
use std::sync::Arc;

use super::{Channel, QueueKey, MAX_DEFERRALS};
use crate::engine::durable::{Change, ChangeLog, Exit};
use crate::engine::policy::{Decision, JobEvent, Policies};
use crate::engine::progress::HeldBy;
use crate::engine::{Millis, Output, QuotaLog, Time};

impl Channel {
    /// Grants waiting jobs, highest priority then oldest first, while a slot and every quota
    /// window allow and the policy agrees. Returns when the next quota window opens if a quota
    /// stopped it. A job the policy defers keeps its place; the next one is offered instead.
    pub(crate) fn grant(
        &mut self,
        now: Time,
        hooks: &mut dyn Policies,
        out: &mut impl Extend<Output>,
        log: &mut ChangeLog,
    ) -> Option<Time> {
        let open = self.grant_while_allowed(now, hooks, out, log);
        self.report_positions(now, out);
        match (open, self.quota_blocked_since) {
            (Some(_), None) => self.quota_blocked_since = Some(now),
            (None, Some(since)) => {
                self.quota_held = self.quota_held + (now - since);
                self.quota_blocked_since = None;
            }
            _ => {}
        }
        open
    }

    pub(super) fn grant_while_allowed(
        &mut self,
        now: Time,
        hooks: &mut dyn Policies,
        out: &mut impl Extend<Output>,
        log: &mut ChangeLog,
    ) -> Option<Time> {
        let mut cursor: Option<QueueKey> = None;
        let mut deferred = 0;
        self.held = None;
        loop {
            let next = match cursor {
                None => self.queue.first_key_value(),
                Some(k) => self
                    .queue
                    .range((Bound::Excluded(k), Bound::Unbounded))
                    .next(),
            };
            let Some((&key, uid)) = next else {
                if cursor.is_some() {
                    self.held = Some(HeldBy::Policy);
                }
                break;
            };
            let uid = uid.clone();
            // Head of line: the job offered next is granted or nothing behind it is (unless a
            // policy defers it), so lighter jobs never starve a heavy one by overtaking it.
            let cost = self.jobs.get(&uid).map_or(1, |j| j.cost);
            if let Some(w) = self.windows.iter().find(|w| !w.admits_ever(cost)) {
                // Waits for a reload to raise the window's limit above its cost.
                self.held = Some(HeldBy::Quota(w.spec.name.clone()));
                break;
            }
            if !self.has_units(cost) {
                // Waits for running jobs to end, or for a limit raised above its cost.
                self.held = Some(match self.opts.max_concurrent_jobs {
                    0 => HeldBy::Paused,
                    _ => HeldBy::Concurrency,
                });
                break;
            }
            if let Some(open) = self.quota_opening(now, cost) {
                let name = self
                    .windows
                    .iter()
                    .find(|w| w.blocked_until(now, cost) == Some(open))
                    .map(|w| w.spec.name.clone())
                    .unwrap_or_default();
                self.held = Some(HeldBy::Quota(name));
                return Some(open);
            }
            match self.consult(now, hooks, &uid) {
                Decision::Grant => {}
                Decision::Defer => {
                    deferred += 1;
                    if deferred >= MAX_DEFERRALS {
                        self.held = Some(HeldBy::Policy);
                        break;
                    }
                    cursor = Some(key);
                    continue;
                }
                Decision::Veto(reason) => {
                    self.dequeue(&key);
                    if let Some(job) = self.jobs.remove(&uid) {
                        self.unwatch(&uid, &job);
                    }
                    log.push(|| self.removed(&uid, Exit::Rejected));
                    out.extend([self.policy_rejection(uid, reason)]);
                    continue;
                }
            }
            self.dequeue(&key);
            self.start(uid, now, hooks, out, log);
        }
        None
    }

    /// Gives a dequeued job its lease and counts it in every window.
    pub(super) fn start(
        &mut self,
        uid: Arc<str>,
        now: Time,
        hooks: &mut dyn Policies,
        out: &mut impl Extend<Output>,
        log: &mut ChangeLog,
    ) {
        let offset = self.opts.timeout_offset;
        let Some(job) = self.jobs.get_mut(&uid) else {
            // Invariant: every queued uid has a job entry. Skip rather than panic.
            debug_assert!(false, "queued uid without a job");
            return;
        };
        let deadline = now + job.timeout + offset;
        // Saturating: only a hand-edited state file comes anywhere near u64::MAX.
        self.last_token = self.last_token.saturating_add(1);
        let token = self.last_token;
        job.deadline = Some(deadline);
        job.granted_at = Some(now);
        job.delivered = false;
        job.token = token;
        let (seq, reply, cost) = (job.seq, job.reply, job.cost);
        if job.progress {
            self.watchers = self.watchers.saturating_sub(1);
            self.told.remove(&uid);
        }
        self.leases.insert((deadline, seq), uid.clone());
        self.running_units += u64::from(cost);
        log.push(|| Change::GrantedWithToken {
            channel: self.name.clone(),
            uid: uid.clone(),
            at: now,
            deadline,
            token,
        });
        for w in &mut self.windows {
            w.record(now, cost, &self.name);
        }
        if let Some(job) = self.jobs.get(&uid) {
            self.notify(now, hooks, JobEvent::Granted, &uid, job);
        }
        let waited = self
            .jobs
            .get(&uid)
            .map_or(Millis(0), |j| now - j.registered_at);
        out.extend([Output::Go {
            channel: self.name.clone(),
            uid,
            seq,
            at: now,
            waited,
            token,
            deadline,
            reply,
        }]);
    }

    /// Whether `cost` more units fit under `max_concurrent_jobs` now.
    pub(super) fn has_units(&self, cost: u32) -> bool {
        self.running_units + u64::from(cost) <= u64::from(self.opts.max_concurrent_jobs)
    }

    /// When the last window without room for `cost` units reopens enough, if any lacks room
    /// at `now`.
    pub(super) fn quota_opening(&self, now: Time, cost: u32) -> Option<Time> {
        let mut opening = None;
        for w in &self.windows {
            if let Some(t) = w.blocked_until(now, cost) {
                if w.spec.log != QuotaLog::Quiet {
                    tracing::info!(channel = %self.name, quota = %w.spec.name, until = t.0, "quota holds a job back");
                }
                opening = opening.max(Some(t));
            }
        }
        opening
    }

    /// The channel's next deadline: its earliest lease end, or `quota_open` if a quota is what
    /// keeps a waiting job from a free slot.
    pub(crate) fn next_deadline(&self, quota_open: Option<Time>) -> Option<Time> {
        let lease = self.leases.first_key_value().map(|((t, _), _)| *t);
        [lease, quota_open, self.sweep_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Time quotas have held the channel back, up to `now`.
    pub(crate) fn quota_held(&self, now: Time) -> Millis {
        self.quota_held
            + self
                .quota_blocked_since
                .map_or(Millis(0), |since| now - since)
    }
}
