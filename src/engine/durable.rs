//! The engine's durable state, as data: the [`Change`]s the engine reports while it runs and the
//! [`Snapshot`] they fold into. The journal (`crate::state`) stores both; on start the daemon
//! folds the journal into the last snapshot and hands the result to [`super::Engine::restore`].
//!
//! What is durable: waiting jobs (order and priority), running leases (wall-clock deadlines),
//! the recent grant times that quota windows count, runtime `concurrency/set` values, and
//! fencing tokens: each job's, each channel's last one, and a floor above the last token of every
//! channel a snapshot dropped. What is not: quota-held time (a metric), policy instances' own
//! memory (policies start fresh).
//!
//! Changes describe outcomes, not requests: replaying them needs neither the config nor the
//! policies that produced them, so a restart under an edited config or a swapped policy restores
//! exactly what the last run decided.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::fencing::Reply;
use super::{Millis, Time};

/// One change to durable state, in the order the engine made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A job joined the queue.
    Queued {
        /// Channel name.
        channel: Arc<str>,
        /// Job id.
        uid: Arc<str>,
        /// Registration order within the channel (breaks priority ties).
        seq: u64,
        /// Queue priority.
        priority: i64,
        /// The job's own timeout.
        timeout: Millis,
        /// When it registered.
        registered_at: Time,
        /// Extra registration fields, for policies.
        meta: Option<Arc<str>>,
    },
    /// A waiting job's priority changed (a policy swap re-ranked the queue).
    Reprioritized {
        /// Channel name.
        channel: Arc<str>,
        /// Job id.
        uid: Arc<str>,
        /// New priority.
        priority: i64,
    },
    /// A waiting job was granted: it runs until `deadline`, and `at` counts in every quota window.
    /// Written by format 2, read only: this version writes [`Change::GrantedWithToken`]. Folds
    /// into a job with token 0 (it never had one).
    Granted {
        /// Channel name.
        channel: Arc<str>,
        /// Job id.
        uid: Arc<str>,
        /// Grant time.
        at: Time,
        /// Lease end.
        deadline: Time,
    },
    /// `renew`: a new timeout, and for a running job a new lease end.
    Renewed {
        /// Channel name.
        channel: Arc<str>,
        /// Job id.
        uid: Arc<str>,
        /// New timeout.
        timeout: Millis,
        /// New lease end (`None` while waiting).
        deadline: Option<Time>,
    },
    /// A job left: finished, aborted, cancelled, expired, or rejected by its policy while queued.
    /// Written by formats 1 to 3, read only: this version writes [`Change::Left`].
    Removed {
        /// Channel name.
        channel: Arc<str>,
        /// Job id.
        uid: Arc<str>,
    },
    /// `concurrency/set`: the running limit `max` replaces the configured `configured`.
    Concurrency {
        /// Channel name.
        channel: Arc<str>,
        /// The limit the config gave when it was set; a restart under a config that says
        /// otherwise takes the config's value, as a reload would.
        configured: u32,
        /// The limit in force.
        max: u32,
    },
    /// The broker acknowledged (PUBACK) the `go` of the grant of job `seq`: a restart must not
    /// say `go` to it again. Appended last: the variant index is the journal format.
    Delivered {
        /// Channel name.
        channel: Arc<str>,
        /// Job id.
        uid: Arc<str>,
        /// The job's registration sequence number (tells this grant from a later one of a
        /// re-registered uid).
        seq: u64,
    },
    /// A waiting job was granted, with its fencing token (journal format 3; replaces
    /// `Granted`): it runs until `deadline`, `at` counts in every quota window, and `token` is
    /// the channel's last token from now on.
    GrantedWithToken {
        /// Channel name.
        channel: Arc<str>,
        /// Job id.
        uid: Arc<str>,
        /// Grant time.
        at: Time,
        /// Lease end.
        deadline: Time,
        /// The grant's fencing token.
        token: u64,
    },
    /// The job just queued asked for its `go` in another form than the plain uid (journal
    /// format 3; written only then, right after its `Queued`).
    Reply {
        /// Channel name.
        channel: Arc<str>,
        /// Job id.
        uid: Arc<str>,
        /// How its `go` is published.
        reply: Reply,
    },
    /// The engine time of the changes that follow, written before the first change of each
    /// new millisecond (journal format 4). Folds into nothing: it is for `replay`.
    Clock {
        /// Engine time (ms since the Unix epoch).
        at: Time,
    },
    /// The daemon started and restored its state (journal format 4), at the time of the
    /// `Clock` before it: nothing ran between the change before and this one. Folds into
    /// nothing: it is for `replay`.
    Started,
    /// A job left, and why (journal format 4; written instead of `Removed`, folds the same).
    Left {
        /// Channel name.
        channel: Arc<str>,
        /// Job id.
        uid: Arc<str>,
        /// How it left.
        why: Exit,
    },
    /// The limits a channel runs under from now on (journal format 4): written when the engine
    /// creates or restores the channel and when a reload changes them. Folds into nothing
    /// (a restart takes the config's limits): it is for `replay`.
    Limits {
        /// Channel name.
        channel: Arc<str>,
        /// Configured running limit (a later `Concurrency` overrides it).
        max_concurrent_jobs: u32,
        /// Added to each job's timeout to give its lease.
        timeout_offset: Millis,
        /// Quota windows: `(name, interval, limit)`.
        quotas: Vec<(String, Millis, u32)>,
        /// Whether a policy decided admission and order.
        policy: bool,
    },
    /// The job just queued costs more than one unit or asked for progress (journal format 5;
    /// written only then, right after its `Queued`, and after its `Reply` if it has one).
    JobOptions {
        /// Channel name.
        channel: Arc<str>,
        /// Job id.
        uid: Arc<str>,
        /// Units of concurrency and quota it takes when granted.
        cost: u32,
        /// Whether it is told its position while it waits.
        progress: bool,
    },
}

/// How a job left its channel ([`Change::Left`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Exit {
    /// `finished` while running.
    Finished,
    /// `aborted` while running.
    Aborted,
    /// `finished` or `aborted` while still waiting.
    Cancelled,
    /// Its lease ran out.
    Expired,
    /// Its policy rejected it while it waited (a veto, or a re-admission after a policy swap).
    Rejected,
}

/// Everything durable about every channel that has any.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Channels by name.
    pub channels: BTreeMap<Arc<str>, ChannelSnapshot>,
    /// At least the last fencing token of every channel not in `channels` (format 3): a
    /// channel that reappears starts above it, so its tokens never go back.
    pub token_floor: u64,
}

/// One channel's durable state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelSnapshot {
    /// A runtime `concurrency/set`: `(configured limit at the time, limit set)`.
    pub concurrency: Option<(u32, u32)>,
    /// Waiting and running jobs by registration sequence number.
    pub jobs: BTreeMap<u64, JobSnapshot>,
    /// Recent grants as `(time, units)`, oldest first; every quota window counts the most
    /// recent of them (units: format 5; older formats' grants count one each).
    pub grants: Vec<(Time, u32)>,
    /// The token of the channel's latest grant, or the floor it started from (format 3): the
    /// next grant's token is greater.
    pub last_token: u64,
    /// The sequence number of the channel's next registration (format 3), so that a restored
    /// engine numbers jobs as the original would have even when none is left. Lost with a
    /// dropped channel, which is harmless: a sequence number only has to tell grants apart
    /// within one run (acknowledgements do not cross a restart).
    pub next_seq: u64,
    /// Uid to sequence number; rebuilt, not stored.
    #[serde(skip)]
    index: HashMap<Arc<str>, u64>,
}

/// One job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSnapshot {
    /// Job id.
    pub uid: Arc<str>,
    /// Queue priority.
    pub priority: i64,
    /// The job's own timeout.
    pub timeout: Millis,
    /// When it registered.
    pub registered_at: Time,
    /// Lease end once granted; `None` while waiting.
    pub deadline: Option<Time>,
    /// Extra registration fields.
    pub meta: Option<Arc<str>>,
    /// Grant time once granted (journal format 2; `None` in a format-1 snapshot).
    pub granted_at: Option<Time>,
    /// Whether the broker acknowledged the grant's `go` (journal format 2).
    pub delivered: bool,
    /// The grant's fencing token (format 3; 0 while waiting, and for grants of older formats).
    pub token: u64,
    /// How its `go` is published (format 3; `Plain` in older formats).
    pub reply: Reply,
    /// Units of concurrency and quota it takes (format 5; 1 in older formats).
    pub cost: u32,
    /// Whether it is told its position while it waits (format 5; `false` in older formats).
    pub progress: bool,
}

impl ChannelSnapshot {
    /// A channel's state from its parts.
    pub fn new(
        concurrency: Option<(u32, u32)>,
        jobs: BTreeMap<u64, JobSnapshot>,
        grants: Vec<(Time, u32)>,
    ) -> ChannelSnapshot {
        let index = jobs.iter().map(|(seq, j)| (j.uid.clone(), *seq)).collect();
        let next_seq = jobs.keys().next_back().map_or(0, |s| s.saturating_add(1));
        ChannelSnapshot {
            concurrency,
            jobs,
            grants,
            last_token: 0,
            next_seq,
            index,
        }
    }

    /// The same, its next grant's token at `last_token + 1`.
    pub fn with_last_token(mut self, last_token: u64) -> ChannelSnapshot {
        self.last_token = last_token;
        self
    }
}

impl Snapshot {
    /// Folds one change in. Changes that name an unknown job change nothing (they cannot occur
    /// in a journal the engine wrote, and a damaged one must not panic the daemon).
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Queued {
                channel,
                uid,
                seq,
                priority,
                timeout,
                registered_at,
                meta,
            } => {
                let ch = self.channel(channel);
                ch.index.insert(uid.clone(), seq);
                ch.next_seq = ch.next_seq.max(seq.saturating_add(1));
                ch.jobs.insert(
                    seq,
                    JobSnapshot {
                        uid,
                        priority,
                        timeout,
                        registered_at,
                        deadline: None,
                        meta,
                        granted_at: None,
                        delivered: false,
                        token: 0,
                        reply: Reply::Plain,
                        cost: 1,
                        progress: false,
                    },
                );
            }
            Change::Reprioritized {
                channel,
                uid,
                priority,
            } => {
                if let Some(job) = self.job(&channel, &uid) {
                    job.priority = priority;
                }
            }
            Change::Granted {
                channel,
                uid,
                at,
                deadline,
            } => self.granted(&channel, &uid, at, deadline, 0),
            Change::GrantedWithToken {
                channel,
                uid,
                at,
                deadline,
                token,
            } => self.granted(&channel, &uid, at, deadline, token),
            Change::Reply {
                channel,
                uid,
                reply,
            } => {
                if let Some(job) = self.job(&channel, &uid) {
                    job.reply = reply;
                }
            }
            Change::JobOptions {
                channel,
                uid,
                cost,
                progress,
            } => {
                if let Some(job) = self.job(&channel, &uid) {
                    job.cost = cost.max(1);
                    job.progress = progress;
                }
            }
            Change::Renewed {
                channel,
                uid,
                timeout,
                deadline,
            } => {
                if let Some(job) = self.job(&channel, &uid) {
                    job.timeout = timeout;
                    job.deadline = deadline;
                }
            }
            Change::Removed { channel, uid } | Change::Left { channel, uid, .. } => {
                if let Some(ch) = self.channels.get_mut(&channel) {
                    if let Some(seq) = ch.index.remove(&uid) {
                        ch.jobs.remove(&seq);
                    }
                }
            }
            Change::Concurrency {
                channel,
                configured,
                max,
            } => {
                self.channel(channel).concurrency = Some((configured, max));
            }
            Change::Delivered { channel, uid, seq } => {
                let Some(ch) = self.channels.get_mut(&channel) else {
                    return;
                };
                if ch.index.get(&uid) == Some(&seq) {
                    if let Some(job) = ch.jobs.get_mut(&seq) {
                        job.delivered = job.deadline.is_some();
                    }
                }
            }
            Change::Clock { .. } | Change::Started | Change::Limits { .. } => {}
        }
    }

    /// A grant of `uid` with `token` (0: a format-2 grant, which had none).
    fn granted(&mut self, channel: &str, uid: &str, at: Time, deadline: Time, token: u64) {
        let mut units = 1;
        if let Some(job) = self.job(channel, uid) {
            job.deadline = Some(deadline);
            job.granted_at = Some(at);
            job.delivered = false;
            job.token = token;
            units = job.cost;
        }
        if let Some(ch) = self.channels.get_mut(channel) {
            ch.grants.push((at, units));
            ch.last_token = ch.last_token.max(token);
        }
    }

    /// The channel's entry, created above the floor if the snapshot has none: as the engine
    /// creates a channel it does not know, so its tokens go on above every earlier life's.
    fn channel(&mut self, name: Arc<str>) -> &mut ChannelSnapshot {
        let floor = self.token_floor;
        self.channels
            .entry(name)
            .or_insert_with(|| ChannelSnapshot::default().with_last_token(floor))
    }

    /// Rebuilds the uid indexes after deserializing.
    pub fn reindex(&mut self) {
        for ch in self.channels.values_mut() {
            ch.index = ch
                .jobs
                .iter()
                .map(|(seq, job)| (job.uid.clone(), *seq))
                .collect();
        }
    }

    /// Keeps, per channel, only the most recent grants that hold `keep(channel)` units (the
    /// largest quota limit the channel has: no window counts more), and drops channels left
    /// with nothing, keeping their last fencing tokens in the floor.
    pub fn trim(&mut self, keep: impl Fn(&str) -> usize) {
        for (name, ch) in &mut self.channels {
            let keep = keep(name) as u64;
            let mut held = 0u64;
            let kept = ch
                .grants
                .iter()
                .rev()
                .take_while(|(_, units)| {
                    let before = held;
                    held += u64::from(*units);
                    before < keep
                })
                .count();
            let excess = ch.grants.len() - kept;
            ch.grants.drain(..excess);
        }
        let floor = &mut self.token_floor;
        self.channels.retain(|_, ch| {
            let keep = !ch.jobs.is_empty() || !ch.grants.is_empty() || ch.concurrency.is_some();
            if !keep {
                *floor = (*floor).max(ch.last_token);
            }
            keep
        });
    }

    /// `(waiting, running)` jobs over all channels.
    pub fn counts(&self) -> (usize, usize) {
        let running = self
            .channels
            .values()
            .flat_map(|c| c.jobs.values())
            .filter(|j| j.deadline.is_some())
            .count();
        let all: usize = self.channels.values().map(|c| c.jobs.len()).sum();
        (all - running, running)
    }

    fn job(&mut self, channel: &str, uid: &str) -> Option<&mut JobSnapshot> {
        let ch = self.channels.get_mut(channel)?;
        let seq = ch.index.get(uid)?;
        ch.jobs.get_mut(seq)
    }
}

/// Changes the engine made since they were last taken; empty and free when recording is off.
#[derive(Debug, Default)]
pub(crate) struct ChangeLog {
    /// Whether changes are kept.
    pub(crate) enabled: bool,
    /// Changes not yet taken.
    pub(crate) changes: Vec<Change>,
    /// The engine time of the event being handled.
    now: Time,
    /// The time of the last [`Change::Clock`] recorded; a change made at another time is
    /// preceded by a new one, so every change has a time and an idle millisecond costs nothing.
    stamped: Option<Time>,
}

impl ChangeLog {
    /// Records the change `make` builds, if recording is on.
    pub(crate) fn push(&mut self, make: impl FnOnce() -> Change) {
        if self.enabled {
            if self.stamped != Some(self.now) {
                self.stamped = Some(self.now);
                self.changes.push(Change::Clock { at: self.now });
            }
            self.changes.push(make());
        }
    }

    /// Makes the next change start with a [`Change::Clock`] even within the same millisecond.
    pub(crate) fn restamp(&mut self) {
        self.stamped = None;
    }

    /// Sets the engine time of the changes that follow.
    pub(crate) fn at(&mut self, now: Time) {
        self.now = now;
    }
}
