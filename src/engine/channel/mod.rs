//! One channel: its wait queue, running leases and quota windows.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use super::durable::{Change, ChangeLog, ChannelSnapshot, Exit, JobSnapshot};
use super::fencing::{Reply, RunningJob};
use super::policy::{Admission, ChannelView, Decision, JobEvent, JobInfo, Policies};
use super::progress::{
    HeldBy, Position, RunTimes, Simulation, Told, ETA_HORIZON, HEAD_POSITIONS, LISTED_JOBS,
    MAX_POSITIONS_PER_EVENT, PROGRESS_INTERVAL,
};
use super::quota::Window;
use super::{
    ChannelOptions, ChannelState, Millis, Output, QuotaState, Registration, RejectKind, Time,
};

/// How many jobs a policy may defer in one grant opportunity before the engine stops asking
/// until the next event. Bounds the cost of one event when a policy defers everything.
pub(crate) const MAX_DEFERRALS: usize = 64;

/// Queue order: highest priority first, then registration order (FIFO among equals).
type QueueKey = (Reverse<i64>, u64);

/// Bytes a waiting job costs beyond its uid and extra fields, for `[limits] max_waiting_bytes`.
/// Measured (BENCHMARKS.md section 3, counting allocator): 249 B requested per queued job at the
/// worst point (just after the job map doubled) with an 11-byte uid, so ~238 B of structure (the
/// map entry and its empty half, the queue B-tree entry, the uid's `Arc` header), plus glibc's
/// 8-16 B per allocation for the uid and the extra fields. Rounded up to 256.
pub const JOB_OVERHEAD_BYTES: usize = 256;

/// What a waiting job counts against `[limits] max_waiting_bytes`.
pub fn job_bytes(uid: &str, meta: Option<&str>) -> usize {
    JOB_OVERHEAD_BYTES + uid.len() + meta.map_or(0, str::len)
}

/// Bytes a waiting job that asked for progress costs on top of [`job_bytes`]: what it was last
/// told (a map entry of ~64 B: uid `Arc` 16, position 8, reason 32, time 8) at the worst load
/// of its hash table (just after doubling), rounded up. Estimated from the sizes, not measured.
pub const PROGRESS_BYTES: usize = 128;

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
    /// Extra registration fields (JSON object text), for policies. Shared with the journal's
    /// changes and snapshots, so exporting the state does not copy them.
    meta: Option<Arc<str>>,
    /// When it registered.
    registered_at: Time,
    /// When it was granted (`Some` iff `deadline` is).
    granted_at: Option<Time>,
    /// Whether the broker acknowledged its `go`: a restart or a lost broker session says `go`
    /// again only to running jobs without it.
    delivered: bool,
    /// The fencing token of its grant; 0 while waiting (and for a grant journaled before tokens
    /// existed). Never 0 once granted by this version.
    token: u64,
    /// How its `go` is published.
    reply: Reply,
    /// Units of concurrency it holds while running and counts in each quota window (>= 1).
    cost: u32,
    /// Whether it is told its position while it waits.
    progress: bool,
}

impl Job {
    fn info<'a>(&'a self, uid: &'a str) -> JobInfo<'a> {
        JobInfo {
            uid,
            timeout: self.timeout,
            registered_at: self.registered_at,
            meta: self.meta.as_deref(),
        }
    }

    /// What the job counts against `max_waiting_bytes` while it waits.
    fn bytes(&self, uid: &str) -> usize {
        job_bytes(uid, self.meta.as_deref()) + if self.progress { PROGRESS_BYTES } else { 0 }
    }
}

/// Bounds a registration must fit within to be queued.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Room {
    /// `max_waiting_per_channel`.
    pub(crate) max_waiting: usize,
    /// `max_waiting_bytes`.
    pub(crate) max_bytes: usize,
    /// Bytes of waiting jobs over all channels now.
    pub(crate) used_bytes: usize,
}

/// Everything the engine knows about one channel.
#[derive(Debug)]
pub(crate) struct Channel {
    /// The channel's name (second topic level).
    pub(crate) name: Arc<str>,
    /// Options resolved when the channel was first seen; `max_concurrent_jobs` changes at runtime.
    opts: ChannelOptions,
    /// `max_concurrent_jobs` as the config last said, so that a reload which does not change it
    /// keeps a runtime `concurrency/set`.
    configured_max: u32,
    /// Every job the channel knows, by uid. Invariant: a uid is here iff it is in exactly one of
    /// `queue` (deadline `None`) or `leases` (deadline `Some`).
    jobs: HashMap<Arc<str>, Job>,
    /// Waiting jobs in grant order.
    queue: BTreeMap<QueueKey, Arc<str>>,
    /// Sum of [`job_bytes`] over `queue`: changed wherever `queue` is.
    queued_bytes: usize,
    /// `queued_bytes` as the engine last added it to its daemon-wide total (see
    /// `Engine::settle`).
    pub(crate) counted_bytes: usize,
    /// Running jobs by lease deadline; `running()` is its length.
    leases: BTreeMap<(Time, u64), Arc<str>>,
    /// Sum of the costs of the jobs in `leases`: what `max_concurrent_jobs` bounds. Changed
    /// wherever `leases` gains or loses a job.
    running_units: u64,
    /// The channel's quota windows, all checked on every grant.
    windows: Vec<Window>,
    /// Next registration sequence number.
    next_seq: u64,
    /// The deadline this channel currently has in the engine's timer set, if any.
    pub(crate) timer: Option<Time>,
    /// Since when a quota has kept a waiting job from a free slot, if it does now.
    quota_blocked_since: Option<Time>,
    /// Time quotas held the channel back before `quota_blocked_since`.
    quota_held: Millis,
    /// The fencing token of the channel's latest grant (or the floor it started from): at least
    /// every token the channel ever handed out, so the next grant's `last_token + 1` is greater.
    last_token: u64,
    /// What keeps the queue from moving, as of the last grant pass; `None` iff it is empty.
    held: Option<HeldBy>,
    /// Waiting jobs that asked for progress (changed wherever such a job joins or leaves the
    /// queue): with none, positions cost nothing.
    watchers: usize,
    /// Jobs queued with progress since the last report, to be told their first position.
    untold: Vec<Arc<str>>,
    /// What each waiting watcher was last told (entries leave with the job's wait).
    told: HashMap<Arc<str>, Told>,
    /// When the whole queue was last swept for position changes.
    last_sweep: Option<Time>,
    /// When the next sweep is due, if a change may not have been told yet.
    sweep_at: Option<Time>,
    /// Recent run times, for ETAs.
    run_times: RunTimes,
}

impl Channel {
    pub(crate) fn new(name: Arc<str>, opts: ChannelOptions) -> Channel {
        let windows = opts.quotas.iter().cloned().map(Window::new).collect();
        Channel {
            configured_max: opts.max_concurrent_jobs,
            name,
            opts,
            jobs: HashMap::new(),
            queue: BTreeMap::new(),
            queued_bytes: 0,
            counted_bytes: 0,
            leases: BTreeMap::new(),
            running_units: 0,
            windows,
            next_seq: 0,
            timer: None,
            quota_blocked_since: None,
            quota_held: Millis(0),
            last_token: 0,
            held: None,
            watchers: 0,
            untold: Vec::new(),
            told: HashMap::new(),
            last_sweep: None,
            sweep_at: None,
            run_times: RunTimes::default(),
        }
    }

    /// The channel with its next grant's token at `last_token + 1`.
    pub(crate) fn with_last_token(mut self, last_token: u64) -> Channel {
        self.last_token = last_token;
        self
    }

    /// The token of the channel's latest grant (or the floor it started from).
    pub(crate) fn last_token(&self) -> u64 {
        self.last_token
    }

    /// `Some(live)` if `uid` is a known job and `token` is not its live grant's: `live` is that
    /// grant's token, or `None` while the job waits. `None` for an unknown uid or a match.
    pub(crate) fn stale(&self, uid: &str, token: u64) -> Option<Option<u64>> {
        let job = self.jobs.get(uid)?;
        let live = job.deadline.map(|_| job.token);
        (live != Some(token)).then_some(live)
    }

    pub(crate) fn running(&self) -> usize {
        self.leases.len()
    }

    pub(crate) fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// Bytes of the waiting jobs, as `max_waiting_bytes` counts them.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Puts a known job in the queue.
    fn enqueue(&mut self, key: QueueKey, uid: Arc<str>, bytes: usize) {
        self.queued_bytes += bytes;
        self.queue.insert(key, uid);
    }

    /// Takes a job out of the queue (it stays in `jobs` unless the caller removes it).
    fn dequeue(&mut self, key: &QueueKey) -> Option<Arc<str>> {
        let uid = self.queue.remove(key)?;
        let bytes = self.jobs.get(&uid).map_or(0, |j| j.bytes(&uid));
        self.queued_bytes = self.queued_bytes.saturating_sub(bytes);
        Some(uid)
    }

    /// Whether a job of `cost` registered now would be granted at once, never waiting: nothing
    /// waits before it, its units are free, every quota window has room for them, and no policy
    /// could defer it.
    fn starts_at_once(&self, now: Time, cost: u32) -> bool {
        self.queue.is_empty()
            && self.has_units(cost)
            && self.opts.policy.is_none()
            && self
                .windows
                .iter()
                .all(|w| w.admits_ever(cost) && w.blocked_until(now, cost).is_none())
    }

    /// Whether `cost` more units fit under `max_concurrent_jobs` now.
    fn has_units(&self, cost: u32) -> bool {
        self.running_units + u64::from(cost) <= u64::from(self.opts.max_concurrent_jobs)
    }

    /// Why a job of `cost` units could never run in this channel as configured, or `None`.
    /// A paused channel (limit 0) is measured by its configured limit, so that pausing does not
    /// turn jobs away.
    fn never_fits(&self, cost: u32) -> Option<String> {
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
    fn no_room(&self, reg: &Registration, now: Time, room: Room) -> Option<String> {
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

    /// Asks the policy again for the priority of every waiting job (after a policy swap).
    /// Jobs it now rejects leave the queue and are reported.
    pub(crate) fn readmit(
        &mut self,
        now: Time,
        hooks: &mut dyn Policies,
        out: &mut impl Extend<Output>,
        log: &mut ChangeLog,
    ) {
        if self.opts.policy.is_none() {
            return;
        }
        let waiting: Vec<_> = std::mem::take(&mut self.queue).into_iter().collect();
        self.queued_bytes = 0;
        for ((_, seq), uid) in waiting {
            let view = self.view(now);
            let Some(job) = self.jobs.get(&uid) else {
                continue;
            };
            match hooks.admit(&view, &job.info(&uid)) {
                Admission::Accept(p) => {
                    let mut bytes = 0;
                    if let Some(job) = self.jobs.get_mut(&uid) {
                        bytes = job.bytes(&uid);
                        if job.priority != p {
                            job.priority = p;
                            log.push(|| Change::Reprioritized {
                                channel: self.name.clone(),
                                uid: uid.clone(),
                                priority: p,
                            });
                        }
                    }
                    self.enqueue((Reverse(p), seq), uid, bytes);
                }
                Admission::Reject(reason) => {
                    if let Some(job) = self.jobs.remove(&uid) {
                        self.unwatch(&uid, &job);
                    }
                    log.push(|| self.removed(&uid, Exit::Rejected));
                    out.extend([self.policy_rejection(uid, reason)]);
                }
            }
        }
    }

    fn removed(&self, uid: &Arc<str>, why: Exit) -> Change {
        Change::Left {
            channel: self.name.clone(),
            uid: uid.clone(),
            why,
        }
    }

    /// `rejected/{uid}` on behalf of the channel's policy.
    fn policy_rejection(&self, uid: impl Into<Arc<str>>, reason: String) -> Output {
        Output::Rejected {
            kind: RejectKind::Policy,
            channel: self.name.clone(),
            uid: uid.into(),
            reason,
        }
    }

    /// The channel as shown to its policy.
    fn view(&self, now: Time) -> ChannelView<'_> {
        ChannelView {
            channel: &self.name,
            options: &self.opts,
            running: u32::try_from(self.running()).unwrap_or(u32::MAX),
            waiting: u32::try_from(self.waiting()).unwrap_or(u32::MAX),
            now,
        }
    }

    /// Tells the policy, if any, what happened to a job.
    fn notify(&self, now: Time, hooks: &mut dyn Policies, event: JobEvent, uid: &str, job: &Job) {
        if self.consults_hooks() {
            hooks.on_event(&self.view(now), event, &job.info(uid));
        }
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

    /// Takes new options from a config reload. Running jobs and their leases are kept (a lower
    /// limit revokes nothing); quota windows keep their grant history by name; the new offset
    /// applies to leases granted from now on. Returns what changed, for the log.
    pub(crate) fn reconfigure(&mut self, mut opts: ChannelOptions) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if opts.max_concurrent_jobs == self.configured_max {
            // The file did not change it: a runtime concurrency/set stays in force.
            opts.max_concurrent_jobs = self.opts.max_concurrent_jobs;
        } else {
            self.configured_max = opts.max_concurrent_jobs;
            changed.push("max_concurrent_jobs");
        }
        if opts.timeout_offset != self.opts.timeout_offset {
            changed.push("timeout_offset");
        }
        if opts.quotas != self.opts.quotas {
            changed.push("quotas");
            let mut old: HashMap<String, Window> = std::mem::take(&mut self.windows)
                .into_iter()
                .map(|w| (w.spec.name.clone(), w))
                .collect();
            self.windows = opts
                .quotas
                .iter()
                .map(|spec| match old.remove(&spec.name) {
                    Some(w) => w.respec(spec.clone()),
                    None => Window::new(spec.clone()),
                })
                .collect();
        }
        if opts.policy != self.opts.policy
            || opts.policy_config != self.opts.policy_config
            || opts.on_policy_error != self.opts.on_policy_error
        {
            changed.push("policy");
        }
        if opts.policy_shadow != self.opts.policy_shadow {
            changed.push("policy_shadow");
        }
        self.opts = opts;
        changed
    }

    pub(crate) fn set_max(&mut self, max: u32) {
        self.opts.max_concurrent_jobs = max;
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

    /// Tells the jobs that asked for progress what changed (the rule is in `progress.rs`): new
    /// jobs their first position, the head at once, the rest of the queue at the next sweep.
    fn report_positions(&mut self, now: Time, out: &mut impl Extend<Output>) {
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
    fn tell(&mut self, now: Time, uid: &Arc<str>, position: usize, out: &mut impl Extend<Output>) {
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

    fn position_output(
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
    fn scan(
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
    fn simulation(&self, now: Time) -> Option<Simulation> {
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

    /// Forgets a waiting job that leaves the queue without a grant, as a watcher.
    fn unwatch(&mut self, uid: &str, job: &Job) {
        if job.progress && job.deadline.is_none() {
            self.watchers = self.watchers.saturating_sub(1);
            self.told.remove(uid);
        }
    }

    /// Records how long a running job that just ended ran, for ETAs.
    fn ran(&mut self, job: &Job, now: Time) {
        if let Some(at) = job.granted_at {
            self.run_times.record(now - at);
        }
    }

    /// Time quotas have held the channel back, up to `now`.
    pub(crate) fn quota_held(&self, now: Time) -> Millis {
        self.quota_held
            + self
                .quota_blocked_since
                .map_or(Millis(0), |since| now - since)
    }

    fn grant_while_allowed(
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

    /// The policy's decision on granting `uid` now (always `Grant` without a policy).
    fn consult(&self, now: Time, hooks: &mut dyn Policies, uid: &str) -> Decision {
        match self.jobs.get(uid) {
            Some(job) if self.consults_hooks() => {
                hooks.before_grant(&self.view(now), &job.info(uid))
            }
            _ => Decision::Grant,
        }
    }

    /// Whether the hooks are called: the channel has a policy, or a shadow policy that sees
    /// the same calls (a channel with only a shadow gets the built-in decisions).
    fn consults_hooks(&self) -> bool {
        self.opts.policy.is_some() || self.opts.policy_shadow.is_some()
    }

    /// Gives a dequeued job its lease and counts it in every window.
    fn start(
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

    /// When the last window without room for `cost` units reopens enough, if any lacks room
    /// at `now`.
    fn quota_opening(&self, now: Time, cost: u32) -> Option<Time> {
        let mut opening = None;
        for w in &self.windows {
            if let Some(t) = w.blocked_until(now, cost) {
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
        [lease, quota_open, self.sweep_at]
            .into_iter()
            .flatten()
            .min()
    }

    pub(crate) fn state(&self, now: Time, hooks: &dyn Policies) -> ChannelState {
        let quotas: Vec<QuotaState> = self
            .windows
            .iter()
            .map(|w| QuotaState {
                name: w.spec.name.clone(),
                interval_ms: w.spec.interval.0,
                limit: w.spec.limit,
                used: w.used(now),
                next_opening: w.blocked_until(now, 1),
            })
            .collect();
        let next_window_opening = quotas.iter().filter_map(|q| q.next_opening).max();
        ChannelState {
            channel: self.name.to_string(),
            max_concurrent_jobs: self.opts.max_concurrent_jobs,
            timeout_offset_ms: self.opts.timeout_offset.0,
            running: self.leases.values().map(|u| u.to_string()).collect(),
            running_count: self.running(),
            running_units: (self.running_units != self.running() as u64)
                .then_some(self.running_units),
            running_jobs: self
                .leases
                .iter()
                .map(|((deadline, _), uid)| RunningJob {
                    uid: uid.to_string(),
                    token: self.jobs.get(uid).map_or(0, |j| j.token),
                    deadline: deadline.0,
                    cost: self.jobs.get(uid).map_or(1, |j| j.cost),
                })
                .collect(),
            waiting: self.waiting(),
            quotas,
            next_window_opening,
            policy: self.opts.policy.as_ref().map(|p| p.display().to_string()),
            quota_held_ms: self.quota_held(now).0,
            now,
            waiting_jobs: None,
            shadow: (self.opts.policy_shadow.as_ref())
                .and_then(|shadow| hooks.shadow_report(&self.name, shadow))
                .map(Box::new),
        }
    }

    /// Extra registration fields of a known job (the tests recount waiting bytes with it).
    #[cfg(test)]
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

    /// The limit the config last gave, before any runtime `concurrency/set`.
    pub(crate) fn configured_max(&self) -> u32 {
        self.configured_max
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
}
