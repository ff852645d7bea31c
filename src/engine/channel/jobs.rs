//! Jobs coming and going: `register` with the limits it must fit, `finished`/`aborted`,
//! `renew`, and the end of a lease.

use std::cmp::Reverse;
use std::sync::Arc;

use super::{job_bytes, Channel, Job, Room, JOB_OVERHEAD_BYTES, PROGRESS_BYTES};
use crate::engine::durable::{Change, ChangeLog, Exit};
use crate::engine::fencing::Reply;
use crate::engine::policy::{Admission, JobEvent, JobInfo, Policies};
use crate::engine::{Millis, Output, Registration, RejectKind, Time};

impl Channel {
    /// Queues a new job, asking the channel's policy for its priority.
    /// Returns false (and changes nothing) if the uid is already known, the job does not fit in
    /// `room`, or the policy refused it; the last two are reported as `Rejected`.
    pub(crate) fn register(
        &mut self,
        reg: Registration,
        now: Time,
        room: Room,
        hooks: &mut dyn Policies,
        out: &mut impl Extend<Output>,
        log: &mut ChangeLog,
    ) -> bool {
        if self.jobs.contains_key(reg.uid.as_str()) {
            tracing::debug!(channel = %self.name, uid = reg.uid, "duplicate register ignored");
            return false;
        }
        // Before the policy: a job that cannot be queued must not reach `admit`.
        if let Some(reason) = self
            .never_fits(reg.cost)
            .or_else(|| self.no_room(&reg, now, room))
        {
            out.extend([Output::Rejected {
                kind: RejectKind::Limit,
                channel: self.name.clone(),
                uid: reg.uid.into(),
                reason,
            }]);
            return false;
        }
        let mut priority = reg.priority;
        if self.consults_hooks() {
            let job = JobInfo {
                uid: &reg.uid,
                timeout: reg.timeout,
                registered_at: now,
                meta: reg.meta.as_deref(),
            };
            match hooks.admit(&self.view(now), &job) {
                Admission::Accept(p) => priority = p,
                Admission::Reject(reason) => {
                    out.extend([self.policy_rejection(reg.uid, reason)]);
                    return false;
                }
            }
        }
        let uid: Arc<str> = reg.uid.into();
        let meta: Option<Arc<str>> = reg.meta.map(Arc::from);
        let seq = self.next_seq;
        self.next_seq += 1;
        let progress_bytes = if reg.progress { PROGRESS_BYTES } else { 0 };
        let bytes = job_bytes(&uid, meta.as_deref()) + progress_bytes;
        self.enqueue((Reverse(priority), seq), uid.clone(), bytes);
        tracing::debug!(channel = %self.name, %uid, "queued");
        log.push(|| Change::Queued {
            channel: self.name.clone(),
            uid: uid.clone(),
            seq,
            priority,
            timeout: reg.timeout,
            registered_at: now,
            meta: meta.clone(),
        });
        if reg.reply != Reply::Plain {
            log.push(|| Change::Reply {
                channel: self.name.clone(),
                uid: uid.clone(),
                reply: reg.reply,
            });
        }
        if reg.cost != 1 || reg.progress {
            log.push(|| Change::JobOptions {
                channel: self.name.clone(),
                uid: uid.clone(),
                cost: reg.cost,
                progress: reg.progress,
            });
        }
        let job = Job {
            seq,
            priority,
            timeout: reg.timeout,
            deadline: None,
            meta,
            registered_at: now,
            granted_at: None,
            delivered: false,
            token: 0,
            reply: reg.reply,
            cost: reg.cost,
            progress: reg.progress,
        };
        if reg.progress {
            self.watchers += 1;
            self.untold.push(uid.clone());
        }
        self.jobs.insert(uid, job);
        true
    }

    /// Why `reg` cannot be queued, naming the `[limits]` key, or `None` if it fits. A job that
    /// starts at once never waits, so `max_waiting_bytes` does not stop it: a flood of waiting
    /// jobs on one channel then leaves channels with free slots serving.
    pub(super) fn no_room(&self, reg: &Registration, now: Time, room: Room) -> Option<String> {
        let max = room.max_waiting;
        if self.queue.len() >= max {
            return Some(format!(
                "max_waiting_per_channel: {max} jobs already wait in this channel, the limit \
                 ([limits] max_waiting_per_channel = {max}); retry later"
            ));
        }
        let progress_bytes = if reg.progress { PROGRESS_BYTES } else { 0 };
        let bytes = job_bytes(&reg.uid, reg.meta.as_deref()) + progress_bytes;
        let (used, max) = (room.used_bytes, room.max_bytes);
        if used.saturating_add(bytes) > max && !self.starts_at_once(now, reg.cost) {
            return Some(format!(
                "max_waiting_bytes: waiting jobs already hold {used} bytes and this one needs \
                 {bytes} (uid, extra fields and {JOB_OVERHEAD_BYTES} bytes of bookkeeping), over \
                 the limit ([limits] max_waiting_bytes = {max}); retry later"
            ));
        }
        None
    }

    /// Why a job of `cost` units could never run in this channel as configured, or `None`.
    /// A paused channel (limit 0) is measured by its configured limit, so that pausing does not
    /// turn jobs away.
    pub(super) fn never_fits(&self, cost: u32) -> Option<String> {
        let max = match self.opts.max_concurrent_jobs {
            0 => self.configured_max,
            max => max,
        };
        if max > 0 && cost > max {
            return Some(format!(
                "cost: {cost} units is more than this channel's max_concurrent_jobs ({max}); \
                 it could never run"
            ));
        }
        let w = self.windows.iter().find(|w| !w.admits_ever(cost))?;
        Some(format!(
            "cost: {cost} units is more than the limit of quota `{}` ({} per {} ms); it could \
             never run",
            w.spec.name, w.spec.limit, w.spec.interval.0
        ))
    }

    /// Whether a job of `cost` registered now would be granted at once, never waiting: nothing
    /// waits before it, its units are free, every quota window has room for them, and no policy
    /// could defer it.
    pub(super) fn starts_at_once(&self, now: Time, cost: u32) -> bool {
        self.queue.is_empty()
            && self.has_units(cost)
            && self.opts.policy.is_none()
            && self
                .windows
                .iter()
                .all(|w| w.admits_ever(cost) && w.blocked_until(now, cost).is_none())
    }

    /// Forgets a job, waiting or running, on `finished` or `aborted`.
    /// Returns `Some(was_running)` if it was known.
    pub(crate) fn remove(
        &mut self,
        uid: &str,
        aborted: bool,
        now: Time,
        hooks: &mut dyn Policies,
        log: &mut ChangeLog,
    ) -> Option<bool> {
        let (uid, job) = self.jobs.remove_entry(uid)?;
        let was_running = job.deadline.is_some();
        let why = match (was_running, aborted) {
            (false, _) => Exit::Cancelled,
            (true, false) => Exit::Finished,
            (true, true) => Exit::Aborted,
        };
        log.push(|| self.removed(&uid, why));
        match job.deadline {
            Some(deadline) => {
                self.running_units = self.running_units.saturating_sub(u64::from(job.cost));
                self.ran(&job, now);
                self.leases.remove(&(deadline, job.seq))
            }
            None => {
                self.unwatch(&uid, &job);
                self.queued_bytes = self.queued_bytes.saturating_sub(job.bytes(&uid));
                self.queue.remove(&(Reverse(job.priority), job.seq))
            }
        };
        let event = match (was_running, aborted) {
            (false, _) => JobEvent::Cancelled,
            (true, false) => JobEvent::Finished,
            (true, true) => JobEvent::Aborted,
        };
        self.notify(now, hooks, event, &uid, &job);
        Some(was_running)
    }

    /// Restarts a running job's lease at `now`, or changes a waiting job's timeout.
    /// Returns false if the uid is unknown.
    pub(crate) fn renew(
        &mut self,
        uid: &str,
        timeout: Millis,
        now: Time,
        log: &mut ChangeLog,
    ) -> bool {
        let offset = self.opts.timeout_offset;
        let Some((key, job)) = self.jobs.get_key_value(uid) else {
            return false;
        };
        let key = key.clone();
        let seq = job.seq;
        let old = job.deadline;
        let new = old.map(|_| now + timeout + offset);
        if let (Some(old), Some(new)) = (old, new) {
            self.leases.remove(&(old, seq));
            self.leases.insert((new, seq), key.clone());
        }
        if let Some(job) = self.jobs.get_mut(uid) {
            job.timeout = timeout;
            job.deadline = new;
        }
        log.push(|| Change::Renewed {
            channel: self.name.clone(),
            uid: key,
            timeout,
            deadline: new,
        });
        true
    }

    /// Ends every lease whose deadline is at or before `now`.
    pub(crate) fn expire(
        &mut self,
        now: Time,
        hooks: &mut dyn Policies,
        out: &mut impl Extend<Output>,
        log: &mut ChangeLog,
    ) {
        while let Some(entry) = self.leases.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let uid = entry.remove();
            log.push(|| self.removed(&uid, Exit::Expired));
            if let Some(job) = self.jobs.remove(&uid) {
                self.running_units = self.running_units.saturating_sub(u64::from(job.cost));
                self.ran(&job, now);
                self.notify(now, hooks, JobEvent::Expired, &uid, &job);
            }
            out.extend([Output::Expired {
                channel: self.name.clone(),
                uid,
            }]);
        }
    }
}
