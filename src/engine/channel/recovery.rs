//! The channel's durable side: its limits as journaled, export and restore of its snapshot,
//! and the `go`s the broker has not acknowledged.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::{job_bytes, Channel, Job, PROGRESS_BYTES};
use crate::engine::durable::{Change, ChangeLog, ChannelSnapshot, JobSnapshot};
use crate::engine::{Output, Time};

impl Channel {
    /// The limits in force, as journaled for `replay`.
    pub(crate) fn limits_change(&self) -> Change {
        Change::Limits {
            channel: self.name.clone(),
            max_concurrent_jobs: self.opts.max_concurrent_jobs,
            timeout_offset: self.opts.timeout_offset,
            quotas: (self.opts.quotas.iter())
                .map(|q| (q.name.clone(), q.interval, q.limit))
                .collect(),
            policy: self.opts.policy.is_some(),
        }
    }

    /// The channel's durable state, or `None` if it has none worth keeping.
    pub(crate) fn export(&self) -> Option<ChannelSnapshot> {
        let max = self.opts.max_concurrent_jobs;
        let concurrency = (max != self.configured_max).then_some((self.configured_max, max));
        let jobs: BTreeMap<u64, JobSnapshot> = self
            .jobs
            .iter()
            .map(|(uid, job)| {
                let snap = JobSnapshot {
                    uid: uid.clone(),
                    priority: job.priority,
                    timeout: job.timeout,
                    registered_at: job.registered_at,
                    deadline: job.deadline,
                    meta: job.meta.clone(),
                    granted_at: job.granted_at,
                    delivered: job.delivered,
                    token: job.token,
                    reply: job.reply,
                    cost: job.cost,
                    progress: job.progress,
                };
                (job.seq, snap)
            })
            .collect();
        // Every window records every grant (newer windows from a reload hold fewer), so the
        // longest history holds all the others.
        let grants: Vec<(Time, u32)> = self
            .windows
            .iter()
            .max_by_key(|w| w.grants().len())
            .map(|w| w.grants().collect())
            .unwrap_or_default();
        if jobs.is_empty() && grants.is_empty() && concurrency.is_none() {
            // Its last token goes into the snapshot's floor (`Engine::export`).
            return None;
        }
        let mut snap =
            ChannelSnapshot::new(concurrency, jobs, grants).with_last_token(self.last_token);
        snap.next_seq = self.next_seq;
        Some(snap)
    }

    /// Takes back durable state into a channel that has none yet: jobs keep their order and
    /// leases their deadlines (overdue ones end at the next `expire`), quota windows count the
    /// grants again, and a runtime concurrency stays if the config still gives the limit it
    /// replaced; fencing tokens go on above the snapshot's last one. Returns the running jobs
    /// whose lease has not ended by `now`, with their sequence numbers, unless the broker had
    /// acknowledged their `go`.
    pub(crate) fn restore(&mut self, snap: ChannelSnapshot, now: Time) -> Vec<(Arc<str>, u64)> {
        self.last_token = self.last_token.max(snap.last_token);
        self.next_seq = self.next_seq.max(snap.next_seq);
        if let Some((configured, max)) = snap.concurrency {
            if configured == self.configured_max {
                self.opts.max_concurrent_jobs = max;
            }
        }
        for w in &mut self.windows {
            for &(t, units) in &snap.grants {
                w.record(t, units, &self.name);
            }
        }
        let mut live = Vec::new();
        for (seq, job) in snap.jobs {
            if self.jobs.contains_key(&job.uid) {
                continue;
            }
            match job.deadline {
                None => {
                    let progress_bytes = if job.progress { PROGRESS_BYTES } else { 0 };
                    let bytes = job_bytes(&job.uid, job.meta.as_deref()) + progress_bytes;
                    self.enqueue((Reverse(job.priority), seq), job.uid.clone(), bytes);
                }
                Some(deadline) => {
                    if deadline > now && !job.delivered {
                        live.push((job.uid.clone(), seq));
                    }
                    self.leases.insert((deadline, seq), job.uid.clone());
                    self.running_units += u64::from(job.cost.max(1));
                }
            }
            self.next_seq = self.next_seq.max(seq.saturating_add(1));
            let restored = Job {
                seq,
                priority: job.priority,
                timeout: job.timeout,
                deadline: job.deadline,
                meta: job.meta,
                registered_at: job.registered_at,
                // `None` for a running job of a format-1 snapshot, which did not record it.
                granted_at: job.granted_at,
                delivered: job.delivered,
                token: job.token,
                reply: job.reply,
                cost: job.cost.max(1),
                // Told again by the next sweep (not all at once: the cap applies).
                progress: job.progress,
            };
            if job.progress && job.deadline.is_none() {
                self.watchers += 1;
                self.sweep_at = Some(now);
            }
            // A snapshot the engine wrote never holds a token above its channel's last one;
            // a hand-edited or damaged one must still not make tokens go back.
            self.last_token = self.last_token.max(job.token);
            self.jobs.insert(job.uid, restored);
        }
        live
    }

    /// Running uids whose `go` the broker has not acknowledged, with their sequence numbers.
    pub(crate) fn undelivered_jobs(&self) -> impl Iterator<Item = (Arc<str>, u64)> + '_ {
        self.leases
            .iter()
            .filter(|(_, uid)| self.jobs.get(*uid).is_some_and(|j| !j.delivered))
            .map(|((_, seq), uid)| (uid.clone(), *seq))
    }

    /// The `go` to say again at `now` if `uid` runs as job `seq` and the broker has not
    /// acknowledged its `go` yet: same token, the lease as it stands now.
    pub(crate) fn go_again(&self, uid: Arc<str>, seq: u64, now: Time) -> Option<Output> {
        let job = self
            .jobs
            .get(&uid)
            .filter(|j| j.seq == seq && !j.delivered)?;
        let deadline = job.deadline?;
        Some(Output::GoAgain {
            channel: self.name.clone(),
            uid,
            seq,
            granted_at: job.granted_at,
            token: job.token,
            deadline,
            remaining: deadline - now,
            reply: job.reply,
        })
    }

    /// Records that the broker acknowledged the `go` of job `seq` (ignored if `uid` no longer
    /// runs as that job). Returns whether anything changed.
    pub(crate) fn mark_delivered(&mut self, uid: &str, seq: u64, log: &mut ChangeLog) -> bool {
        let Some(job) = self.jobs.get_mut(uid) else {
            return false;
        };
        if job.seq != seq || job.deadline.is_none() || job.delivered {
            return false;
        }
        job.delivered = true;
        log.push(|| Change::Delivered {
            channel: self.name.clone(),
            uid: uid.into(),
            seq,
        });
        true
    }
}
