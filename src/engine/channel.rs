//! One channel: its wait queue, running leases and quota windows.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::quota::Window;
use super::{ChannelOptions, ChannelState, Millis, Output, QuotaState, Registration, Time};

/// Queue order: highest priority first, then registration order (FIFO among equals).
type QueueKey = (Reverse<i64>, u64);

/// A job known to a channel, waiting or running.
#[derive(Debug)]
struct Job {
    /// Registration order within the channel; breaks ties and keys the lease index.
    seq: u64,
    /// Queue priority (0 unless a policy sets one).
    priority: i64,
    /// The job's own timeout; its lease lasts this plus the channel's `timeout_offset`.
    timeout: Millis,
    /// `Some(deadline)` once granted; `None` while waiting.
    deadline: Option<Time>,
    /// Extra registration fields (JSON object text), for policies.
    meta: Option<Box<str>>,
}

/// Everything the engine knows about one channel.
#[derive(Debug)]
pub(crate) struct Channel {
    /// The channel's name (second topic level).
    pub(crate) name: Arc<str>,
    /// Options resolved when the channel was first seen; `max_concurrent_jobs` changes at runtime.
    opts: ChannelOptions,
    /// Every job the channel knows, by uid. Invariant: a uid is here iff it is in exactly one of
    /// `queue` (deadline `None`) or `leases` (deadline `Some`).
    jobs: HashMap<Arc<str>, Job>,
    /// Waiting jobs in grant order.
    queue: BTreeMap<QueueKey, Arc<str>>,
    /// Running jobs by lease deadline; `running()` is its length.
    leases: BTreeMap<(Time, u64), Arc<str>>,
    /// The channel's quota windows, all checked on every grant.
    windows: Vec<Window>,
    /// Next registration sequence number.
    next_seq: u64,
    /// The deadline this channel currently has in the engine's timer set, if any.
    pub(crate) timer: Option<Time>,
}

impl Channel {
    pub(crate) fn new(name: Arc<str>, opts: ChannelOptions) -> Channel {
        let windows = opts.quotas.iter().cloned().map(Window::new).collect();
        Channel {
            name,
            opts,
            jobs: HashMap::new(),
            queue: BTreeMap::new(),
            leases: BTreeMap::new(),
            windows,
            next_seq: 0,
            timer: None,
        }
    }

    pub(crate) fn running(&self) -> usize {
        self.leases.len()
    }

    pub(crate) fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// Queues a new job. Returns false (and changes nothing) if the uid is already known.
    pub(crate) fn register(&mut self, reg: Registration) -> bool {
        if self.jobs.contains_key(reg.uid.as_str()) {
            return false;
        }
        let uid: Arc<str> = reg.uid.into();
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.insert((Reverse(reg.priority), seq), uid.clone());
        let job = Job {
            seq,
            priority: reg.priority,
            timeout: reg.timeout,
            deadline: None,
            meta: reg.meta,
        };
        self.jobs.insert(uid, job);
        true
    }

    /// Forgets a job, waiting or running. Returns `Some(was_running)` if it was known.
    pub(crate) fn remove(&mut self, uid: &str) -> Option<bool> {
        let job = self.jobs.remove(uid)?;
        match job.deadline {
            Some(deadline) => self.leases.remove(&(deadline, job.seq)),
            None => self.queue.remove(&(Reverse(job.priority), job.seq)),
        };
        Some(job.deadline.is_some())
    }

    /// Restarts a running job's lease at `now`, or changes a waiting job's timeout.
    /// Returns false if the uid is unknown.
    pub(crate) fn renew(&mut self, uid: &str, timeout: Millis, now: Time) -> bool {
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
            self.leases.insert((new, seq), key);
        }
        if let Some(job) = self.jobs.get_mut(uid) {
            job.timeout = timeout;
            job.deadline = new;
        }
        true
    }

    pub(crate) fn set_max(&mut self, max: u32) {
        self.opts.max_concurrent_jobs = max;
    }

    /// Ends every lease whose deadline is at or before `now`.
    pub(crate) fn expire(&mut self, now: Time, out: &mut impl Extend<Output>) {
        while let Some(entry) = self.leases.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let uid = entry.remove();
            self.jobs.remove(&uid);
            out.extend([Output::Expired {
                channel: self.name.clone(),
                uid,
            }]);
        }
    }

    /// Grants waiting jobs, oldest (highest priority) first, while a slot and every quota
    /// window allow. Returns when the next quota window opens if a quota stopped it.
    pub(crate) fn grant(&mut self, now: Time, out: &mut impl Extend<Output>) -> Option<Time> {
        while self.running() < self.opts.max_concurrent_jobs as usize && !self.queue.is_empty() {
            if let Some(open) = self.quota_opening(now) {
                return Some(open);
            }
            let Some((_, uid)) = self.queue.pop_first() else {
                break;
            };
            let offset = self.opts.timeout_offset;
            let Some(job) = self.jobs.get_mut(&uid) else {
                // Invariant: every queued uid has a job entry. Skip rather than panic.
                debug_assert!(false, "queued uid without a job");
                continue;
            };
            let deadline = now + job.timeout + offset;
            job.deadline = Some(deadline);
            self.leases.insert((deadline, job.seq), uid.clone());
            for w in &mut self.windows {
                w.record(now, &self.name);
            }
            out.extend([Output::Go {
                channel: self.name.clone(),
                uid,
            }]);
        }
        None
    }

    /// When the last full window reopens, if any window is full at `now`.
    fn quota_opening(&self, now: Time) -> Option<Time> {
        let mut opening = None;
        for w in &self.windows {
            if let Some(t) = w.blocked_until(now) {
                if w.spec.log != super::QuotaLog::Quiet {
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
        match (lease, quota_open) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(crate) fn state(&self, now: Time) -> ChannelState {
        let quotas: Vec<QuotaState> = self
            .windows
            .iter()
            .map(|w| QuotaState {
                name: w.spec.name.clone(),
                interval_ms: w.spec.interval.0,
                limit: w.spec.limit,
                used: w.used(now),
                next_opening: w.blocked_until(now),
            })
            .collect();
        let next_window_opening = quotas.iter().filter_map(|q| q.next_opening).max();
        ChannelState {
            channel: self.name.to_string(),
            max_concurrent_jobs: self.opts.max_concurrent_jobs,
            timeout_offset_ms: self.opts.timeout_offset.0,
            running: self.leases.values().map(|u| u.to_string()).collect(),
            running_count: self.running(),
            waiting: self.waiting(),
            quotas,
            next_window_opening,
            now,
        }
    }

    /// Extra registration fields of a known job.
    pub(crate) fn meta(&self, uid: &str) -> Option<&str> {
        self.jobs.get(uid)?.meta.as_deref()
    }

    /// Waiting uids in grant order (tests and snapshots).
    pub(crate) fn queued(&self) -> impl Iterator<Item = &Arc<str>> {
        self.queue.values()
    }

    /// Running uids with their lease deadlines.
    pub(crate) fn leases(&self) -> impl Iterator<Item = (&Arc<str>, Time)> {
        self.leases.iter().map(|((t, _), u)| (u, *t))
    }
}
