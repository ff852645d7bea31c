//! The invariants of a fault run, checked over what a monitor client saw on `coordinosaur/#`.
//!
//! The monitor is one MQTT client subscribed to everything at QoS 1. Mosquitto keeps each
//! subscriber's messages in the order it handled them, so the monitor's log is the broker's order:
//! a worker's `finished` comes before any `go` the daemon sent in reaction to it, and the daemon's
//! own messages keep its publish order. The checker replays that log:
//!
//! - **running**: per channel, jobs granted (`go`) and not yet ended (`finished`, `aborted`,
//!   `expired`) never exceed `max_concurrent_jobs`;
//! - **quota**: per quota, no `limit + 1` grants fall in one window. Exactly, on the grant times
//!   the daemon logged ([`CheckOptions::decided`]), which the engine's rule is about; arrival
//!   times only bound them from above, and delivery delays under load (a first fsync, a backlog
//!   at start-up) reach well past 100 ms, so judging by arrivals raises false alarms. Each
//!   logged time is cross-checked against its arrival: a decision logged later than the monitor
//!   saw its `go` is a violation (the log would not be trustworthy). Without logged times the
//!   check falls back to arrivals with a slack (see [`CheckOptions::slack`]);
//! - **one grant per job**: every job the broker accepted a `register` for ends with exactly one
//!   grant or with an explicit `rejected`/`expired`. Another `go` for a job that is still running
//!   is the same grant published again (the daemon re-publishes running grants after a restart):
//!   allowed and counted. A `go` for a job that already ended is a violation.
//! - **accounted**: at the end no job is still waiting or running, and every register a worker
//!   sent reached the broker.
//!
//! The checker is pure (no I/O, no clock): `tests/fault_checker.rs` feeds it hand-written logs.

use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::time::Duration;

use super::PREFIX;

/// How many violations of each kind the report prints.
const SHOWN_PER_KIND: usize = 8;

/// One message as the monitor received it.
#[derive(Debug, Clone)]
pub struct Record {
    /// Arrival time, from the start of the monitor.
    pub at: Duration,
    /// Full topic.
    pub topic: String,
    /// Raw payload.
    pub payload: Vec<u8>,
    /// The broker's DUP flag: set when it sends the same message to this client again (after a
    /// reconnect, when the first copy was not acknowledged).
    pub dup: bool,
}

/// A channel's limits as configured in the daemon.
#[derive(Debug, Clone)]
pub struct ChannelRule {
    /// Channel name (one topic level).
    pub name: String,
    /// `max_concurrent_jobs`.
    pub max_running: usize,
    /// Sliding-window quotas: (limit, interval).
    pub quotas: Vec<(usize, Duration)>,
}

/// How to read the log.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Arrival times are not grant times: a `go` reaches the monitor some time after the daemon
    /// decided it, and that delay varies. So a quota of `limit` per `interval` is checked over
    /// windows of `interval - slack` of arrival times: a violation needs `limit + 1` grants whose
    /// arrivals span less than `interval - slack`. With a 100 ms slack, a delivery delay jitter
    /// under 100 ms cannot raise a false alarm, and a daemon that forgets its quota history still
    /// shows as `limit` grants and more within well under a window.
    pub slack: Duration,
    /// Periods (from, until) in which messages may have been held back by an outage (a broker
    /// restart): a grant that arrived in one may have been decided as early as `from`, so for the
    /// quota check its time is taken as `from`. Order checks are unaffected.
    pub outages: Vec<(Duration, Duration)>,
    /// `go`s a restarted daemon said again for grants it had journaled before it was killed
    /// (its log's "go again" lines), by uid: `(decided by, killed at)`. Such a grant was decided
    /// by the first time (the quota check dates it there, not at its late arrival); `killed at`
    /// is the kill before the restart that said it again (a `finished` published after it may
    /// cross the repeated `go`).
    pub redelivered: std::collections::HashMap<String, (Duration, Duration)>,
    /// Grant times as the daemon decided them (engine time, ms since the Unix epoch), by
    /// (channel, uid), from its log ([`grant_times`]). When every grant of a channel has one,
    /// its quotas are checked on these, exactly and without slack.
    pub decided: HashMap<(String, String), u64>,
    /// Wall-clock time of the monitor's time zero (ms since the Unix epoch), to cross-check
    /// `decided` against arrivals.
    pub monitor_epoch_ms: Option<u64>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            slack: Duration::from_millis(100),
            outages: Vec::new(),
            redelivered: std::collections::HashMap::new(),
            decided: HashMap::new(),
            monitor_epoch_ms: None,
        }
    }
}

/// How much later than the monitor's arrival time a logged grant time may be: the two clocks
/// are one (the machine's wall clock) read at slightly different moments, and the engine
/// truncates to whole milliseconds.
const CLOCK_TOLERANCE_MS: u64 = 5;

/// The grant times in a daemon's log: every `go` line (`channel=C uid=U ... granted_at=T`) and
/// every `go again` line of every process that appended to it, by (channel, uid).
pub fn grant_times(log: &str) -> HashMap<(String, String), u64> {
    let mut times = HashMap::new();
    for line in log.lines() {
        let is_go = line.contains("coordinosaur::driver: go ");
        if !is_go {
            continue;
        }
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .map(str::to_owned)
        };
        let (Some(channel), Some(uid), Some(at)) =
            (field("channel="), field("uid="), field("granted_at="))
        else {
            continue;
        };
        if let Ok(at) = at.parse::<u64>() {
            times.insert((channel, uid), at);
        }
    }
    times
}

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// More jobs running in a channel than its limit, right after a `go`.
    OverLimit {
        /// Channel.
        channel: String,
        /// The job whose `go` went over.
        uid: String,
        /// Arrival of that `go`.
        at: Duration,
        /// Jobs running after it.
        running: usize,
        /// The limit.
        max: usize,
    },
    /// `limit + 1` grants within less than a window.
    QuotaExceeded {
        /// Channel.
        channel: String,
        /// The quota's limit.
        limit: usize,
        /// The quota's interval.
        interval: Duration,
        /// First and last grant of the run of `limit + 1` (uid, arrival).
        first: (String, Duration),
        /// See `first`.
        last: (String, Duration),
    },
    /// A `go` after the job ended (or a second grant): a worker may run the job twice.
    GoAfterEnd {
        /// Channel.
        channel: String,
        /// Job.
        uid: String,
        /// Arrival of the late `go`.
        at: Duration,
        /// How the job had ended.
        ended: End,
        /// When it ended.
        ended_at: Duration,
        /// Whether the job had been granted before: then the late `go` repeats that grant (a
        /// grant re-published after the worker finished), else it is a grant that should never
        /// have been made.
        was_granted: bool,
    },
    /// The daemon logged a grant time later than the monitor received that grant's `go`: the
    /// logged times cannot be trusted for the quota check.
    DecidedAfterArrival {
        /// Channel.
        channel: String,
        /// Job.
        uid: String,
        /// Logged grant time, in the monitor's time base.
        decided: Duration,
        /// Arrival.
        at: Duration,
    },
    /// A `go` for a job the broker never saw a `register` for.
    GoUnregistered {
        /// Channel.
        channel: String,
        /// Job.
        uid: String,
        /// Arrival.
        at: Duration,
    },
    /// `rejected` for a job that was granted and is running.
    RejectedWhileRunning {
        /// Channel.
        channel: String,
        /// Job.
        uid: String,
        /// Arrival.
        at: Duration,
    },
    /// A job still waiting or running when the run was checked.
    Unaccounted {
        /// Channel.
        channel: String,
        /// Job.
        uid: String,
        /// `waiting` (registered, never granted) or `running` (granted, never ended).
        state: &'static str,
        /// Arrival of its register or of its grant.
        since: Duration,
    },
    /// A worker sent a register that the monitor never saw (lost between worker and broker: a
    /// harness or broker fault, not the daemon's).
    RegisterNeverSeen {
        /// Channel.
        channel: String,
        /// Job.
        uid: String,
    },
}

impl Violation {
    /// Short name of the kind, for grouping in the report.
    pub fn kind(&self) -> &'static str {
        match self {
            Violation::OverLimit { .. } => "over the running limit",
            Violation::QuotaExceeded { .. } => "quota window exceeded",
            Violation::GoAfterEnd { .. } => "go after the job ended",
            Violation::GoUnregistered { .. } => "go for a job never registered",
            Violation::DecidedAfterArrival { .. } => "grant logged after its go arrived",
            Violation::RejectedWhileRunning { .. } => "rejected while running",
            Violation::Unaccounted { .. } => "job not accounted for (no outcome)",
            Violation::RegisterNeverSeen { .. } => "register sent but never reached the broker",
        }
    }

    /// Whether the daemon granted more than it may (over a running limit or a quota).
    pub fn is_over_grant(&self) -> bool {
        matches!(
            self,
            Violation::OverLimit { .. } | Violation::QuotaExceeded { .. }
        )
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::OverLimit {
                channel,
                uid,
                at,
                running,
                max,
            } => write!(
                f,
                "{channel}: go/{uid} at {} made {running} running (max {max})",
                secs(*at)
            ),
            Violation::QuotaExceeded {
                channel,
                limit,
                interval,
                first,
                last,
            } => write!(
                f,
                "{channel}: {} grants from go/{} at {} to go/{} at {} (limit {limit} per {interval:?})",
                limit + 1,
                first.0,
                secs(first.1),
                last.0,
                secs(last.1)
            ),
            Violation::GoAfterEnd {
                channel,
                uid,
                at,
                ended,
                ended_at,
                was_granted,
            } => write!(
                f,
                "{channel}: go/{uid} at {} after it ended ({ended:?} at {}; {})",
                secs(*at),
                secs(*ended_at),
                if *was_granted {
                    "repeats its earlier grant"
                } else {
                    "it was never granted before"
                }
            ),
            Violation::DecidedAfterArrival {
                channel,
                uid,
                decided,
                at,
            } => write!(
                f,
                "{channel}: go/{uid} logged as granted at {} but received at {}",
                secs(*decided),
                secs(*at)
            ),
            Violation::GoUnregistered { channel, uid, at } => {
                write!(f, "{channel}: go/{uid} at {} with no register", secs(*at))
            }
            Violation::RejectedWhileRunning { channel, uid, at } => {
                write!(f, "{channel}: rejected/{uid} at {} while running", secs(*at))
            }
            Violation::Unaccounted {
                channel,
                uid,
                state,
                since,
            } => write!(f, "{channel}: {uid} still {state} (since {})", secs(*since)),
            Violation::RegisterNeverSeen { channel, uid } => {
                write!(f, "{channel}: register of {uid} never reached the monitor")
            }
        }
    }
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The worker published `finished` (or `aborted`).
    Finished,
    /// The daemon published `expired`.
    Expired,
    /// The daemon published `rejected`.
    Rejected,
}

/// Where a job stands in the replay.
#[derive(Debug, Clone, Copy)]
enum JobState {
    /// Registered, no grant yet (since the register's arrival).
    Waiting(Duration),
    /// Granted at the given arrival, not ended.
    Running(Duration),
    /// Ended; `granted` says whether it had a `go`.
    Ended {
        how: End,
        at: Duration,
        granted: bool,
    },
}

/// Counts per channel, for the report.
#[derive(Debug, Clone, Default)]
pub struct ChannelStats {
    /// Distinct jobs registered.
    pub registered: usize,
    /// Jobs granted (first `go`).
    pub granted: usize,
    /// Jobs ended by `finished`/`aborted`.
    pub finished: usize,
    /// Jobs ended by `expired` after a grant.
    pub expired: usize,
    /// Jobs ended by `expired` without ever seeing a `go`.
    pub expired_without_go: usize,
    /// Jobs ended by `rejected`.
    pub rejected: usize,
    /// `go` messages repeated for a job that was still running (the same grant again).
    pub repeated_go: usize,
    /// `register` messages repeated for a job already known.
    pub repeated_register: usize,
    /// `expired` for a job whose `finished` the monitor saw first (the two crossed: harmless).
    pub expired_after_finished: usize,
    /// Highest number of jobs running at once.
    pub max_running_seen: usize,
    /// Per quota: the most grants in any window (of logged grant times, or of
    /// `interval - slack` of arrival times without them).
    pub max_in_window: Vec<usize>,
    /// Longest delay from a logged grant time to the monitor's arrival of its `go`, in ms.
    pub max_delivery_delay_ms: u64,
}

/// The result of a check.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Broken invariants, in the order found.
    pub violations: Vec<Violation>,
    /// Per channel, in rule order.
    pub stats: Vec<(String, ChannelStats)>,
    /// Messages the broker sent twice (DUP set, same topic and payload as one already seen) and
    /// that the replay skipped.
    pub redeliveries_skipped: usize,
    /// Notes from the run (kills, restarts, sessions lost), printed with the report.
    pub notes: Vec<String>,
}

impl Report {
    /// No invariant broken.
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    /// Every job has an outcome (only "unaccounted" and "never seen" count here), so the run is
    /// over from the monitor's point of view.
    pub fn all_accounted(&self) -> bool {
        !self.violations.iter().any(|v| {
            matches!(
                v,
                Violation::Unaccounted { .. } | Violation::RegisterNeverSeen { .. }
            )
        })
    }

    /// Violations of one kind.
    pub fn count(&self, kind: &str) -> usize {
        self.violations.iter().filter(|v| v.kind() == kind).count()
    }

    /// Whether any violation is an over-grant (running limit or quota).
    pub fn has_over_grant(&self) -> bool {
        self.violations.iter().any(Violation::is_over_grant)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kinds: Vec<&'static str> = Vec::new();
        for v in &self.violations {
            if !kinds.contains(&v.kind()) {
                kinds.push(v.kind());
            }
        }
        if self.violations.is_empty() {
            writeln!(f, "all invariants hold")?;
        } else {
            writeln!(f, "{} violation(s):", self.violations.len())?;
            for kind in kinds {
                let all: Vec<&Violation> = self
                    .violations
                    .iter()
                    .filter(|v| v.kind() == kind)
                    .collect();
                writeln!(f, "  {kind}: {}", all.len())?;
                for v in all.iter().take(SHOWN_PER_KIND) {
                    writeln!(f, "    {v}")?;
                }
                if all.len() > SHOWN_PER_KIND {
                    writeln!(f, "    ... and {} more", all.len() - SHOWN_PER_KIND)?;
                }
            }
        }
        writeln!(f, "per channel:")?;
        for (name, s) in &self.stats {
            let mut line = format!(
                "  {name}: registered {}, granted {}, finished {}, expired {} (+{} without go), \
                 rejected {}, max running {}",
                s.registered,
                s.granted,
                s.finished,
                s.expired,
                s.expired_without_go,
                s.rejected,
                s.max_running_seen
            );
            for (i, n) in s.max_in_window.iter().enumerate() {
                let _ = write!(line, ", quota {i}: max {n} per window");
            }
            let _ = write!(
                line,
                "; repeated go {}, repeated register {}, expired after finished {}, \
                 longest grant-to-arrival delay {} ms",
                s.repeated_go,
                s.repeated_register,
                s.expired_after_finished,
                s.max_delivery_delay_ms
            );
            writeln!(f, "{line}")?;
        }
        writeln!(
            f,
            "broker redeliveries skipped: {}",
            self.redeliveries_skipped
        )?;
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        Ok(())
    }
}

/// What a record means, for the channels under check.
enum Action<'a> {
    Register(String),
    Finished(String),
    Go(&'a str),
    Expired(&'a str),
    Rejected(&'a str),
}

/// Parses `PREFIX/channel/action[/uid]`; `None` for anything else (state, infos, ...).
fn parse(record: &Record) -> Option<(&str, Action<'_>)> {
    let rest = record.topic.strip_prefix(PREFIX)?.strip_prefix('/')?;
    let (channel, action) = rest.split_once('/')?;
    let text = || String::from_utf8_lossy(&record.payload).into_owned();
    let action = match action {
        "register" => {
            let body: serde_json::Value = serde_json::from_slice(&record.payload).ok()?;
            let uid = match &body["uid"] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                _ => return None,
            };
            Action::Register(uid)
        }
        "finished" | "aborted" => Action::Finished(text()),
        other => {
            if let Some(uid) = other.strip_prefix("go/") {
                Action::Go(uid)
            } else if let Some(uid) = other.strip_prefix("expired/") {
                Action::Expired(uid)
            } else if let Some(uid) = other.strip_prefix("rejected/") {
                Action::Rejected(uid)
            } else {
                return None;
            }
        }
    };
    Some((channel, action))
}

/// Replays `records` (in arrival order) against `rules`. `sent` lists the (channel, uid) of every
/// register a worker handed to its client; each must appear in the log.
pub fn check(
    rules: &[ChannelRule],
    records: &[Record],
    sent: &[(String, String)],
    options: &CheckOptions,
) -> Report {
    let mut report = Report::default();
    let index: HashMap<&str, usize> = rules
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.as_str(), i))
        .collect();
    let mut stats = vec![ChannelStats::default(); rules.len()];
    let mut running = vec![0usize; rules.len()];
    // Per channel, arrival times and uids of grants, in order.
    let mut grants: Vec<Vec<(Duration, String)>> = vec![Vec::new(); rules.len()];
    let mut jobs: HashMap<(usize, String), JobState> = HashMap::new();
    let mut seen: HashSet<(&str, &[u8])> = HashSet::new();

    for record in records {
        let first_copy = seen.insert((record.topic.as_str(), record.payload.as_slice()));
        if record.dup && !first_copy {
            report.redeliveries_skipped += 1;
            continue;
        }
        let Some((channel, action)) = parse(record) else {
            continue;
        };
        let Some(&ch) = index.get(channel) else {
            continue;
        };
        let at = record.at;
        let rule = &rules[ch];
        let s = &mut stats[ch];
        match action {
            Action::Register(uid) => match jobs.get(&(ch, uid.clone())) {
                Some(_) => s.repeated_register += 1,
                None => {
                    s.registered += 1;
                    jobs.insert((ch, uid), JobState::Waiting(at));
                }
            },
            Action::Go(uid) => match jobs.get_mut(&(ch, uid.to_owned())) {
                None => report.violations.push(Violation::GoUnregistered {
                    channel: rule.name.clone(),
                    uid: uid.to_owned(),
                    at,
                }),
                Some(state @ JobState::Waiting(_)) => {
                    *state = JobState::Running(at);
                    s.granted += 1;
                    running[ch] += 1;
                    s.max_running_seen = s.max_running_seen.max(running[ch]);
                    grants[ch].push((at, uid.to_owned()));
                    if running[ch] > rule.max_running {
                        report.violations.push(Violation::OverLimit {
                            channel: rule.name.clone(),
                            uid: uid.to_owned(),
                            at,
                            running: running[ch],
                            max: rule.max_running,
                        });
                    }
                }
                Some(JobState::Running(_)) => s.repeated_go += 1,
                // A restart says `go` again to the jobs it restored running once it has read what
                // was queued for it while down; a `finished` published after that (after the
                // kill) crosses it in flight: the same grant, delivered twice (at least once).
                // A `finished` from before the kill must have been read: that stays a violation.
                Some(JobState::Ended {
                    how: End::Finished,
                    at: ended_at,
                    granted: true,
                }) if options
                    .redelivered
                    .get(uid)
                    .is_some_and(|(_, killed_at)| *ended_at > *killed_at) =>
                {
                    s.repeated_go += 1;
                }
                Some(JobState::Ended {
                    how,
                    at: ended_at,
                    granted,
                }) => report.violations.push(Violation::GoAfterEnd {
                    channel: rule.name.clone(),
                    uid: uid.to_owned(),
                    at,
                    ended: *how,
                    ended_at: *ended_at,
                    was_granted: *granted,
                }),
            },
            Action::Finished(uid) => {
                if let Some(state) = jobs.get_mut(&(ch, uid)) {
                    match *state {
                        JobState::Running(_) => {
                            running[ch] -= 1;
                            s.finished += 1;
                            *state = JobState::Ended {
                                how: End::Finished,
                                at,
                                granted: true,
                            };
                        }
                        // A waiting job cancelled by its worker: ended without a grant.
                        JobState::Waiting(_) => {
                            s.finished += 1;
                            *state = JobState::Ended {
                                how: End::Finished,
                                at,
                                granted: false,
                            };
                        }
                        JobState::Ended { .. } => {}
                    }
                }
            }
            Action::Expired(uid) => {
                if let Some(state) = jobs.get_mut(&(ch, uid.to_owned())) {
                    match *state {
                        JobState::Running(_) => {
                            running[ch] -= 1;
                            s.expired += 1;
                            *state = JobState::Ended {
                                how: End::Expired,
                                at,
                                granted: true,
                            };
                        }
                        JobState::Waiting(_) => {
                            s.expired_without_go += 1;
                            *state = JobState::Ended {
                                how: End::Expired,
                                at,
                                granted: false,
                            };
                        }
                        JobState::Ended {
                            how: End::Finished, ..
                        } => s.expired_after_finished += 1,
                        JobState::Ended { .. } => {}
                    }
                }
            }
            Action::Rejected(uid) => {
                if let Some(state) = jobs.get_mut(&(ch, uid.to_owned())) {
                    match *state {
                        JobState::Waiting(_) => {
                            s.rejected += 1;
                            *state = JobState::Ended {
                                how: End::Rejected,
                                at,
                                granted: false,
                            };
                        }
                        JobState::Running(_) => {
                            report.violations.push(Violation::RejectedWhileRunning {
                                channel: rule.name.clone(),
                                uid: uid.to_owned(),
                                at,
                            });
                        }
                        JobState::Ended { .. } => {}
                    }
                }
            }
        }
    }

    for (ch, rule) in rules.iter().enumerate() {
        let decided = decided_times(rule, &grants[ch], options, &mut report, &mut stats[ch]);
        for &(limit, interval) in &rule.quotas {
            let (max_seen, violation) = match &decided {
                Some(times) => check_quota_exactly(rule, times, limit, interval, options),
                None => check_quota(rule, &grants[ch], limit, interval, options),
            };
            stats[ch].max_in_window.push(max_seen);
            report.violations.extend(violation);
        }
    }

    let mut left: Vec<(&(usize, String), &JobState)> = jobs
        .iter()
        .filter(|(_, s)| !matches!(s, JobState::Ended { .. }))
        .collect();
    left.sort_by_key(|(key, state)| (since(state), key.1.clone()));
    for ((ch, uid), state) in left {
        let (state, since) = match *state {
            JobState::Waiting(t) => ("waiting", t),
            JobState::Running(t) => ("running", t),
            JobState::Ended { .. } => continue,
        };
        report.violations.push(Violation::Unaccounted {
            channel: rules[*ch].name.clone(),
            uid: uid.clone(),
            state,
            since,
        });
    }
    for (channel, uid) in sent {
        let known = index
            .get(channel.as_str())
            .is_some_and(|&ch| jobs.contains_key(&(ch, uid.clone())));
        if !known {
            report.violations.push(Violation::RegisterNeverSeen {
                channel: channel.clone(),
                uid: uid.clone(),
            });
        }
    }
    report.stats = rules.iter().map(|r| r.name.clone()).zip(stats).collect();
    report
}

fn since(state: &JobState) -> Duration {
    match *state {
        JobState::Waiting(t) | JobState::Running(t) => t,
        JobState::Ended { at, .. } => at,
    }
}

/// The logged grant time (engine ms) of each of a channel's grants, if every one has one; each
/// is cross-checked against its arrival, and the longest delay is recorded.
fn decided_times(
    rule: &ChannelRule,
    grants: &[(Duration, String)],
    options: &CheckOptions,
    report: &mut Report,
    stats: &mut ChannelStats,
) -> Option<Vec<(u64, String)>> {
    let mut times = Vec::with_capacity(grants.len());
    for (at, uid) in grants {
        let decided = *options.decided.get(&(rule.name.clone(), uid.clone()))?;
        if let Some(epoch) = options.monitor_epoch_ms {
            let arrived = epoch + u64::try_from(at.as_millis()).unwrap_or(u64::MAX);
            if decided > arrived + CLOCK_TOLERANCE_MS {
                report.violations.push(Violation::DecidedAfterArrival {
                    channel: rule.name.clone(),
                    uid: uid.clone(),
                    decided: Duration::from_millis(decided.saturating_sub(epoch)),
                    at: *at,
                });
            }
            stats.max_delivery_delay_ms = stats
                .max_delivery_delay_ms
                .max(arrived.saturating_sub(decided));
        }
        times.push((decided, uid.clone()));
    }
    times.sort();
    Some(times)
}

/// One quota over a channel's logged grant times, as the engine applies it: a grant counts in
/// the window while `now <= granted_at + interval`, so `limit + 1` grants within `interval`
/// milliseconds (inclusive) are one too many. Returns the most grants in any window and the
/// first violation.
fn check_quota_exactly(
    rule: &ChannelRule,
    times: &[(u64, String)],
    limit: usize,
    interval: Duration,
    options: &CheckOptions,
) -> (usize, Option<Violation>) {
    let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
    let epoch = options.monitor_epoch_ms.unwrap_or(0);
    let monitor_time = |t: u64| Duration::from_millis(t.saturating_sub(epoch));
    let mut max_seen = 0;
    let mut start = 0;
    let mut violation = None;
    for (j, (t, uid)) in times.iter().enumerate() {
        while times[start].0 + interval_ms < *t {
            start += 1;
        }
        let in_window = j + 1 - start;
        max_seen = max_seen.max(in_window);
        if violation.is_none() && limit > 0 && in_window > limit {
            let first = &times[j - limit];
            violation = Some(Violation::QuotaExceeded {
                channel: rule.name.clone(),
                limit,
                interval,
                first: (first.1.clone(), monitor_time(first.0)),
                last: (uid.clone(), monitor_time(*t)),
            });
        }
    }
    (max_seen, violation)
}

/// One quota over a channel's grants: the most grants in any window of `interval - slack`, and
/// the first run of `limit + 1` grants that spans less than that (taking outage-delayed grants as
/// decided at the outage's start).
fn check_quota(
    rule: &ChannelRule,
    grants: &[(Duration, String)],
    limit: usize,
    interval: Duration,
    options: &CheckOptions,
) -> (usize, Option<Violation>) {
    let window = interval.saturating_sub(options.slack);
    // Earliest time each grant may have been decided, made non-decreasing so that the newest
    // of the `limit + 1` grants bounds the whole run.
    let mut earliest = Vec::with_capacity(grants.len());
    let mut floor = Duration::ZERO;
    for (at, uid) in grants {
        let held = options.redelivered.get(uid).map(|r| r.0).or_else(|| {
            options
                .outages
                .iter()
                .find(|(from, until)| at >= from && at <= until)
                .map(|(from, _)| *from)
        });
        floor = floor.max(held.unwrap_or(*at));
        earliest.push(floor);
    }
    let mut max_seen = 0;
    let mut start = 0;
    let mut violation = None;
    for (j, (at, _)) in grants.iter().enumerate() {
        while start < j && grants[start].0 + window <= *at {
            start += 1;
        }
        max_seen = max_seen.max(j + 1 - start);
        if violation.is_none() && limit > 0 && j >= limit {
            let i = j - limit;
            if *at < earliest[i] + window {
                violation = Some(Violation::QuotaExceeded {
                    channel: rule.name.clone(),
                    limit,
                    interval,
                    first: (grants[i].1.clone(), grants[i].0),
                    last: (grants[j].1.clone(), *at),
                });
            }
        }
    }
    (max_seen, violation)
}

/// `1.234 s`.
fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}
