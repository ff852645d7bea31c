//! One channel: its wait queue, running leases and quota windows.
//!
//! This file holds the channel's data, with the invariants each field keeps, and the small
//! helpers every part uses to keep them (`enqueue`, `dequeue`, `unwatch`, ...). The channel's
//! work is split by what it answers to:
//! - [`jobs`]: jobs coming and going (`register`, `finished`/`aborted`, `renew`, lease ends);
//! - [`grant`]: the grant pass and the channel's next deadline;
//! - [`consult`]: what the channel asks of and tells its policy;
//! - [`positions`]: progress reports to waiting jobs;
//! - [`report`]: `state` and the engine's read-only views;
//! - [`recovery`]: journaled limits, snapshot export/restore, and unacknowledged `go`s.
//!
//! Methods take the effects they may have as separate arguments (`now`, `hooks`, `out`, `log`)
//! rather than one context value: a signature then says whether a step can call the policy,
//! publish or journal (`renew` only journals; `state` only reads).

mod consult;
mod grant;
mod jobs;
mod positions;
mod recovery;
mod report;

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::durable::{Change, Exit};
use super::fencing::Reply;
use super::policy::JobInfo;
use super::progress::{HeldBy, RunTimes, Told};
use super::quota::Window;
use super::{ChannelOptions, Millis, Time};

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

    /// The journal's record of `uid` leaving the channel, for `why`.
    fn removed(&self, uid: &Arc<str>, why: Exit) -> Change {
        Change::Left {
            channel: self.name.clone(),
            uid: uid.clone(),
            why,
        }
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

    /// The limit the config last gave, before any runtime `concurrency/set`.
    pub(crate) fn configured_max(&self) -> u32 {
        self.configured_max
    }
}
