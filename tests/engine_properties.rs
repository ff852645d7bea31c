//! Property tests for the rules engine, through the public API of the library only.
//!
//! Random step sequences (register, finished, aborted, concurrency/set, renew, infos, and moving
//! the clock) are fed to an [`Engine`], sometimes with a small `max_waiting_bytes`. A checker follows the engine's outputs and asserts its
//! rules after every step. The checker is not a second engine: it only records what the engine
//! said (who waits in which order, who runs until when, every grant time) and holds each new
//! decision and each query answer against the rules.
//!
//! Time moves in two ways. `Advance` wakes the engine at every `next_deadline()` on the way, as
//! the driver does, so leases must end exactly on their deadline. `Skip` jumps past deadlines and
//! hands in the next input directly; the engine must catch up by itself. A twin engine, fed the
//! same inputs but woken with an explicit `handle_timeout(now)` before each input, tells which
//! outputs of a `handle` call are the catch-up and which are the input's own effect.
//!
//! Job cost: a `register` costs 1 to 3 units (mostly 1); the checker counts units, not jobs,
//! against `max_concurrent_jobs` and every quota window, holds the head of the queue to be
//! granted first whatever its cost (no overtaking), and expects a cost that could never run to
//! be rejected.
//!
//! Progress: half the registers ask for `position/{uid}` messages. Each must name a job that
//! waits and asked, with its position and the channel's waiting count as the checker sees them,
//! `paused` exactly while the channel's limit is 0; a job is told at most once a second; and a
//! watcher whose position changed is told within a second (the engine's next deadline says so).
//!
//! Fencing tokens: `finished`, `aborted` and `renew` carry no token, or a small one that is
//! sometimes the live grant's and mostly not; a stale one must be reported and change nothing.
//! Every channel's grant tokens strictly increase, also after a restore from a snapshot that
//! dropped the channel.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use coordinosaur::engine::{
    job_bytes, ChannelOptions, ChannelState, EndReason, Engine, EngineLimits, HeldBy, Input,
    JobSnapshot, Millis, NoPolicies, Output, QuotaLog, QuotaSpec, Registration, RejectKind, Reply,
    Resolver, Snapshot, StaleAction, Time, PROGRESS_BYTES, PROGRESS_INTERVAL,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Engine time at the start of every run.
const T0: Time = Time(1_000_000);
/// Uids come from `u0..u{UIDS}` per channel, so duplicates and re-registrations are common.
const UIDS: u8 = 5;
/// Longer than any lease (timeout < 5 s, offset < 1 s): after it, every lease has ended.
const DRAIN_MS: u64 = 60_000;

type Check = Result<(), TestCaseError>;

// ---------------------------------------------------------------------------------------------
// Inputs

/// One engine input, by channel index and uid number.
#[derive(Debug, Clone)]
enum Op {
    /// `meta`: 0 for no extra fields, else [`meta_text`] of it. `cost`: units (>= 1).
    Register {
        ch: usize,
        uid: u8,
        timeout: u64,
        meta: u8,
        cost: u32,
        progress: bool,
    },
    Finished {
        ch: usize,
        uid: u8,
        token: Option<u64>,
    },
    Aborted {
        ch: usize,
        uid: u8,
        token: Option<u64>,
    },
    SetConcurrency {
        ch: usize,
        max: u32,
    },
    Renew {
        ch: usize,
        uid: u8,
        timeout: u64,
        token: Option<u64>,
    },
    Infos {
        ch: usize,
    },
}

/// One step of a run.
#[derive(Debug, Clone)]
enum Step {
    /// Apply an input at the current time.
    Input(Op),
    /// Move the clock forward by this many ms, waking the engine at each deadline on the way.
    Advance(u64),
    /// Move the clock forward without waking the engine, then apply an input.
    Skip(u64, Op),
}

fn channel_name(ch: usize) -> String {
    format!("c{ch}")
}

fn uid_name(uid: u8) -> String {
    format!("u{uid}")
}

/// Extra registration fields of `16 * n` bytes of padding, or none for 0.
fn meta_text(n: u8) -> Option<String> {
    (n > 0).then(|| format!("{{\"m\":\"{}\"}}", "x".repeat(16 * n as usize)))
}

/// An engine for a run: channel options from `table`, waiting bytes up to `max_bytes`.
fn new_engine(table: &[ChannelOptions], max_bytes: usize) -> Engine {
    let limits = EngineLimits {
        max_waiting_bytes: max_bytes,
        ..EngineLimits::default()
    };
    Engine::with_limits(resolver(table.to_vec()), limits)
}

fn options(max: u32, offset_ms: u64, quotas: &[(u64, u32)]) -> ChannelOptions {
    ChannelOptions {
        max_concurrent_jobs: max,
        timeout_offset: Millis(offset_ms),
        quotas: quotas
            .iter()
            .enumerate()
            .map(|(i, &(interval, limit))| QuotaSpec {
                name: format!("q{i}"),
                interval: Millis(interval),
                limit,
                log: QuotaLog::Quiet,
            })
            .collect(),
        ..ChannelOptions::default()
    }
}

/// Channel `c{i}` gets `table[i]`; any other name gets the defaults.
fn resolver(table: Vec<ChannelOptions>) -> Resolver {
    Box::new(move |name| {
        name.strip_prefix('c')
            .and_then(|i| i.parse::<usize>().ok())
            .and_then(|i| table.get(i).cloned())
            .unwrap_or_default()
    })
}

/// The engine input for `op`, with the channel index reduced to the `n` channels of the run.
fn to_input(op: &Op, n: usize) -> Input {
    match *op {
        Op::Register {
            ch,
            uid,
            timeout,
            meta,
            cost,
            progress,
        } => Input::Register(Registration {
            meta: meta_text(meta).map(Into::into),
            cost,
            progress,
            ..Registration::new(channel_name(ch % n), uid_name(uid), Millis(timeout))
        }),
        Op::Finished { ch, uid, token } => Input::Finished {
            channel: channel_name(ch % n),
            uid: uid_name(uid),
            token,
        },
        Op::Aborted { ch, uid, token } => Input::Aborted {
            channel: channel_name(ch % n),
            uid: uid_name(uid),
            token,
        },
        Op::SetConcurrency { ch, max } => Input::SetConcurrency {
            channel: channel_name(ch % n),
            max,
        },
        Op::Renew {
            ch,
            uid,
            timeout,
            token,
        } => Input::Renew {
            channel: channel_name(ch % n),
            uid: uid_name(uid),
            timeout: Millis(timeout),
            token,
        },
        Op::Infos { ch } => Input::Infos {
            channel: channel_name(ch % n),
        },
    }
}

fn drain(engine: &mut Engine) -> Vec<Output> {
    std::iter::from_fn(|| engine.poll_output()).collect()
}

// ---------------------------------------------------------------------------------------------
// Rules that do not depend on the engine

/// When a window `(interval, limit)` next has room for `cost` units, if it lacks it at `at`,
/// given every grant `(time, units)` so far (ascending). A grant of `cost` at `t` is allowed iff
/// the units of the grants `g` with `t <= g + interval`, plus `cost`, are at most `limit`; a grant
/// stops counting one millisecond after `g + interval`, oldest first. `None` too for a cost the
/// window can never admit (such a job is rejected, or waits for a limit change).
fn window_opening(
    interval: u64,
    limit: u32,
    gos: &[(Time, u32)],
    at: Time,
    cost: u32,
) -> Option<Time> {
    if limit == 0 || cost > limit {
        return None;
    }
    let counting: Vec<(Time, u32)> = gos
        .iter()
        .copied()
        .filter(|(g, _)| at <= *g + Millis(interval))
        .collect();
    let used: u64 = counting.iter().map(|(_, u)| u64::from(*u)).sum();
    let need = (used + u64::from(cost))
        .checked_sub(u64::from(limit))
        .filter(|n| *n > 0)?;
    let mut freed = 0;
    for (g, u) in counting {
        freed += u64::from(u);
        if freed >= need {
            return Some(g + Millis(interval) + Millis(1));
        }
    }
    None
}

/// Units counting against a window at `at`, as the state report shows them.
fn window_used(interval: u64, limit: u32, gos: &[(Time, u32)], at: Time) -> u32 {
    let counting: u64 = gos
        .iter()
        .filter(|(g, _)| at <= *g + Millis(interval))
        .map(|(_, u)| u64::from(*u))
        .sum();
    u32::try_from(counting.min(u64::from(limit))).unwrap_or(u32::MAX)
}

/// The most units granted in any `[g_i, g_i + interval]` over the whole history.
fn busiest_window(interval: u64, gos: &[(Time, u32)]) -> u64 {
    let mut best = 0;
    for (i, (g, _)) in gos.iter().enumerate() {
        let units: u64 = gos[i..]
            .iter()
            .take_while(|(t, _)| *t <= *g + Millis(interval))
            .map(|(_, u)| u64::from(*u))
            .sum();
        best = best.max(units);
    }
    best
}

// ---------------------------------------------------------------------------------------------
// The checker

/// A job the engine has accepted and not yet granted.
#[derive(Debug)]
struct Waiting {
    uid: String,
    /// The job's own timeout (renew of a waiting job replaces it).
    timeout: u64,
    /// What it counts against `max_waiting_bytes`.
    bytes: usize,
    /// Its units.
    cost: u32,
    /// Whether it asked for progress.
    progress: bool,
    /// What it was last told (position, reason, when), if anything.
    told: Option<(usize, HeldBy, Time)>,
}

/// What the outputs say about one channel.
#[derive(Debug)]
struct Chan {
    name: String,
    opts: ChannelOptions,
    /// Current running limit.
    max: u32,
    /// Accepted, not granted, not cancelled; in registration order.
    waiting: Vec<Waiting>,
    /// Granted and not ended, with the lease deadline the rules give.
    running: HashMap<String, Time>,
    /// The fencing token of each running job's grant.
    tokens: HashMap<String, u64>,
    /// The cost of each running job.
    costs: HashMap<String, u32>,
    /// The token of the latest grant (0 before any).
    last_token: u64,
    /// Every grant `(time, units)`, ascending.
    gos: Vec<(Time, u32)>,
    /// Whether a job was granted since the last `concurrency/set`.
    go_since_set: bool,
}

impl Chan {
    /// `Some(was_running)` if the uid is known.
    fn status(&self, uid: &str) -> Option<bool> {
        if self.running.contains_key(uid) {
            Some(true)
        } else if self.waiting.iter().any(|w| w.uid == uid) {
            Some(false)
        } else {
            None
        }
    }

    fn forget(&mut self, uid: &str) {
        self.running.remove(uid);
        self.tokens.remove(uid);
        self.costs.remove(uid);
        self.waiting.retain(|w| w.uid != uid);
    }

    /// `Some(live)` if a request for the known `uid` with `token` must be fenced off: `live`
    /// is the running grant's token, `None` if the uid waits.
    fn stale(&self, uid: &str, token: Option<u64>) -> Option<Option<u64>> {
        let token = token?;
        self.status(uid)?;
        let live = self.tokens.get(uid).copied();
        (live != Some(token)).then_some(live)
    }

    /// When every window has room for `cost` units again, if any lacks it at `at`.
    fn quota_opening(&self, at: Time, cost: u32) -> Option<Time> {
        self.opts
            .quotas
            .iter()
            .filter_map(|q| window_opening(q.interval.0, q.limit, &self.gos, at, cost))
            .max()
    }

    /// What holds the queue at `at`, as the rules say: the head's lack of units (`paused` at
    /// limit 0) or the quota window that opens last for it.
    fn held_by(&self, at: Time) -> Option<HeldBy> {
        let cost = self.waiting.first()?.cost;
        if self.running_units() + u64::from(cost) > u64::from(self.max) {
            return Some(if self.max == 0 {
                HeldBy::Paused
            } else {
                HeldBy::Concurrency
            });
        }
        let open = self.quota_opening(at, cost)?;
        let q =
            self.opts.quotas.iter().find(|q| {
                window_opening(q.interval.0, q.limit, &self.gos, at, cost) == Some(open)
            })?;
        Some(HeldBy::Quota(q.name.clone()))
    }

    /// Whether a watcher has a change it was not told yet.
    fn untold(&self, at: Time) -> bool {
        let held = self.held_by(at);
        self.waiting.iter().enumerate().any(|(i, w)| {
            w.progress
                && w.told
                    .as_ref()
                    .is_none_or(|(p, h, _)| *p != i + 1 || Some(h) != held.as_ref())
        })
    }

    /// Units the running jobs hold.
    fn running_units(&self) -> u64 {
        self.costs.values().map(|c| u64::from(*c)).sum()
    }

    /// Whether `cost` fits every window's limit and the running limit now (not whether there is
    /// room at this moment).
    fn fits_limits(&self, cost: u32) -> bool {
        u64::from(cost) <= u64::from(self.max)
            && self
                .opts
                .quotas
                .iter()
                .all(|q| q.limit == 0 || cost <= q.limit)
    }

    /// Whether the engine must reject a job of `cost` at `register`: more than the running
    /// limit (the configured one while paused) or than a window's limit.
    fn never_fits(&self, cost: u32) -> bool {
        let max = if self.max == 0 {
            self.opts.max_concurrent_jobs
        } else {
            self.max
        };
        (max > 0 && cost > max)
            || self
                .opts
                .quotas
                .iter()
                .any(|q| q.limit > 0 && cost > q.limit)
    }

    fn offset(&self) -> Millis {
        self.opts.timeout_offset
    }

    /// Whether a job of `cost` registered at `at` is granted at once, never waiting.
    fn starts_at_once(&self, at: Time, cost: u32) -> bool {
        self.waiting.is_empty()
            && self.running_units() + u64::from(cost) <= u64::from(self.max)
            && self.fits_limits(cost)
            && self.quota_opening(at, cost).is_none()
    }
}

/// One call made into the engine, for replaying.
#[derive(Debug, Clone)]
enum Call {
    Handle(Time, Input),
    Timeout(Time),
}

struct Checker {
    engine: Engine,
    /// Same inputs, but with an explicit `handle_timeout(now)` before each one.
    twin: Engine,
    now: Time,
    chans: Vec<Chan>,
    /// Every call made to `engine` with the outputs it produced.
    calls: Vec<(Call, Vec<Output>)>,
    /// Number of `Go` outputs so far.
    grants: usize,
    /// Number of `Expired` and `Ended { was_running: true }` outputs so far.
    lease_ends: usize,
    /// `max_waiting_bytes` of the run.
    max_bytes: usize,
}

impl Checker {
    fn new(table: &[ChannelOptions], max_bytes: usize) -> Checker {
        let chans = table
            .iter()
            .enumerate()
            .map(|(i, o)| Chan {
                name: channel_name(i),
                opts: o.clone(),
                max: o.max_concurrent_jobs,
                waiting: Vec::new(),
                running: HashMap::new(),
                tokens: HashMap::new(),
                costs: HashMap::new(),
                last_token: 0,
                gos: Vec::new(),
                go_since_set: false,
            })
            .collect();
        Checker {
            engine: new_engine(table, max_bytes),
            twin: new_engine(table, max_bytes),
            now: T0,
            chans,
            calls: Vec::new(),
            grants: 0,
            lease_ends: 0,
            max_bytes,
        }
    }

    fn chan_index(&self, name: &str) -> Result<usize, TestCaseError> {
        self.chans
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| TestCaseError::fail(format!("output for unknown channel {name}")))
    }

    fn run(&mut self, steps: &[Step]) -> Check {
        self.check_invariants()?;
        for step in steps {
            self.step(step)?;
        }
        self.settle_everything()
    }

    fn step(&mut self, step: &Step) -> Check {
        match step {
            Step::Input(op) => self.apply(op, true)?,
            Step::Advance(ms) => self.advance(*ms)?,
            Step::Skip(ms, op) => {
                self.now = self.now + Millis(*ms);
                self.apply(op, false)?;
            }
        }
        self.check_invariants()
    }

    /// Wakes both engines at each deadline up to `now + ms`, then moves the clock there.
    fn advance(&mut self, ms: u64) -> Check {
        let target = self.now + Millis(ms);
        loop {
            let deadline = self.engine.next_deadline();
            prop_assert_eq!(deadline, self.twin.next_deadline());
            let Some(d) = deadline.filter(|d| *d <= target) else {
                break;
            };
            prop_assert!(d >= self.now, "deadline {:?} before now {:?}", d, self.now);
            self.now = d;
            self.engine.handle_timeout(d);
            self.twin.handle_timeout(d);
            let out = drain(&mut self.engine);
            prop_assert_eq!(&out, &drain(&mut self.twin));
            for o in &out {
                self.observe(o, true)?;
            }
            self.calls.push((Call::Timeout(d), out));
            let after = self.engine.next_deadline();
            prop_assert!(
                after.is_none_or(|a| a > d),
                "handle_timeout({d:?}) left a deadline at {after:?}"
            );
            self.check_invariants()?;
        }
        self.now = target;
        Ok(())
    }

    /// Hands `op` to the engine at `now`. `exact`: every deadline before `now` was delivered.
    fn apply(&mut self, op: &Op, exact: bool) -> Check {
        let input = to_input(op, self.chans.len());
        let now = self.now;
        self.twin.handle_timeout(now);
        let catch_up = drain(&mut self.twin);
        self.twin.handle(now, input.clone());
        let effect = drain(&mut self.twin);
        self.engine.handle(now, input.clone());
        let out = drain(&mut self.engine);
        let expected: Vec<Output> = catch_up.iter().chain(&effect).cloned().collect();
        prop_assert_eq!(
            &out,
            &expected,
            "handle(now, input) must equal handle_timeout(now) then the input"
        );
        for o in &catch_up {
            self.observe(o, exact)?;
        }
        self.apply_effect(op, &effect)?;
        self.calls.push((Call::Handle(now, input), out));
        Ok(())
    }

    /// Checks what an input did after the catch-up, and records it.
    fn apply_effect(&mut self, op: &Op, effect: &[Output]) -> Check {
        let n = self.chans.len();
        let now = self.now;
        let held = self.waiting_bytes();
        match *op {
            Op::Register {
                ch,
                uid,
                timeout,
                meta,
                cost,
                progress,
            } => {
                let c = &mut self.chans[ch % n];
                let uid = uid_name(uid);
                let progress_bytes = if progress { PROGRESS_BYTES } else { 0 };
                let bytes = job_bytes(&uid, meta_text(meta).as_deref()) + progress_bytes;
                if c.status(&uid).is_some() {
                    prop_assert!(
                        effect.is_empty(),
                        "duplicate register of {} had effects {:?}",
                        uid,
                        effect
                    );
                } else if c.never_fits(cost) {
                    prop_assert!(
                        matches!(effect, [Output::Rejected { channel, uid: u, kind: RejectKind::Limit, reason }]
                            if **channel == *c.name && **u == *uid && reason.starts_with("cost:")),
                        "register of {} at cost {} (max {}, quotas {:?}) should be refused, got {:?}",
                        uid,
                        cost,
                        c.max,
                        c.opts.quotas,
                        effect
                    );
                    return Ok(());
                } else if held + bytes > self.max_bytes && !c.starts_at_once(now, cost) {
                    prop_assert!(
                        matches!(effect, [Output::Rejected { channel, uid: u, kind: RejectKind::Limit, reason }]
                            if **channel == *c.name && **u == *uid && reason.contains("max_waiting_bytes")),
                        "register of {} ({} bytes, {} held, limit {}) should be refused, got {:?}",
                        uid,
                        bytes,
                        held,
                        self.max_bytes,
                        effect
                    );
                    return Ok(());
                } else {
                    c.waiting.push(Waiting {
                        uid,
                        timeout,
                        bytes,
                        cost,
                        progress,
                        told: None,
                    });
                }
                self.observe_all(effect)
            }
            Op::Finished { ch, uid, token } => {
                if self.fenced(ch % n, uid, token, StaleAction::Finished, effect)? {
                    return Ok(());
                }
                self.end(ch % n, &uid_name(uid), EndReason::Finished, effect)
            }
            Op::Aborted { ch, uid, token } => {
                if self.fenced(ch % n, uid, token, StaleAction::Aborted, effect)? {
                    return Ok(());
                }
                self.end(ch % n, &uid_name(uid), EndReason::Aborted, effect)
            }
            Op::SetConcurrency { ch, max } => {
                let c = &mut self.chans[ch % n];
                c.max = max;
                c.go_since_set = false;
                self.observe_all(effect)
            }
            Op::Renew {
                ch,
                uid,
                timeout,
                token,
            } => {
                if self.fenced(ch % n, uid, token, StaleAction::Renew, effect)? {
                    return Ok(());
                }
                let c = &mut self.chans[ch % n];
                let uid = uid_name(uid);
                match c.status(&uid) {
                    None => {
                        prop_assert!(
                            matches!(effect, [Output::Rejected { channel, uid: u, .. }]
                                if **channel == *c.name && **u == *uid),
                            "renew of unknown {} should be rejected, got {:?}",
                            uid,
                            effect
                        );
                        return Ok(());
                    }
                    Some(true) => {
                        let deadline = now + Millis(timeout) + c.offset();
                        c.running.insert(uid, deadline);
                    }
                    Some(false) => {
                        if let Some(w) = c.waiting.iter_mut().find(|w| w.uid == uid) {
                            w.timeout = timeout;
                        }
                    }
                }
                self.observe_all(effect)
            }
            Op::Infos { ch } => {
                let [Output::State(s)] = effect else {
                    return Err(TestCaseError::fail(format!(
                        "infos should give exactly one state, got {effect:?}"
                    )));
                };
                prop_assert_eq!(s.now, now);
                self.check_state(ch % n, s)
            }
        }
    }

    /// Bytes of every waiting job, as the outputs so far say.
    fn waiting_bytes(&self) -> usize {
        self.chans
            .iter()
            .flat_map(|c| &c.waiting)
            .map(|w| w.bytes)
            .sum()
    }

    /// Whether a request with `token` is fenced off: then its whole effect must be the
    /// `Stale` report (after a `rejected` for a renew), and nothing changes.
    fn fenced(
        &mut self,
        ch: usize,
        uid: u8,
        token: Option<u64>,
        action: StaleAction,
        effect: &[Output],
    ) -> Result<bool, TestCaseError> {
        let c = &self.chans[ch];
        let uid = uid_name(uid);
        let Some(live) = c.stale(&uid, token) else {
            return Ok(false);
        };
        let stale = Output::Stale {
            channel: Arc::from(c.name.as_str()),
            uid: Arc::from(uid.as_str()),
            action,
            token: token.unwrap_or_default(),
            live,
        };
        match action {
            StaleAction::Renew => prop_assert!(
                matches!(effect, [Output::Rejected { uid: u, .. }, s] if **u == *uid && *s == stale),
                "stale renew of {} should be rejected and reported, got {:?}",
                uid,
                effect
            ),
            _ => prop_assert_eq!(effect, &[stale][..]),
        }
        Ok(true)
    }

    /// Checks `finished`/`aborted` of `uid`: one `Ended` first if the uid is known, else nothing.
    fn end(&mut self, ch: usize, uid: &str, reason: EndReason, effect: &[Output]) -> Check {
        let c = &mut self.chans[ch];
        let Some(was_running) = c.status(uid) else {
            prop_assert!(
                effect.is_empty(),
                "end of unknown {} had effects {:?}",
                uid,
                effect
            );
            return Ok(());
        };
        let expected = Output::Ended {
            channel: Arc::from(c.name.as_str()),
            uid: Arc::from(uid),
            reason,
            was_running,
        };
        prop_assert_eq!(effect.first(), Some(&expected));
        c.forget(uid);
        if was_running {
            self.lease_ends += 1;
        }
        self.observe_all(&effect[1..])
    }

    fn observe_all(&mut self, outputs: &[Output]) -> Check {
        outputs.iter().try_for_each(|o| self.observe(o, true))
    }

    /// Checks a grant or an expiry at `now` and records it. `exact`: a lease must end on the dot.
    fn observe(&mut self, o: &Output, exact: bool) -> Check {
        let now = self.now;
        match o {
            Output::Go {
                channel,
                uid,
                token,
                deadline,
                ..
            } => {
                let idx = self.chan_index(channel)?;
                let c = &mut self.chans[idx];
                prop_assert!(
                    *token > c.last_token,
                    "{}: token {} of {} after token {}",
                    c.name,
                    token,
                    uid,
                    c.last_token
                );
                c.last_token = *token;
                c.tokens.insert(uid.to_string(), *token);
                let pos = c.waiting.iter().position(|w| *w.uid == **uid);
                prop_assert!(pos.is_some(), "Go for {} which is not waiting", uid);
                prop_assert_eq!(
                    pos,
                    Some(0),
                    "Go for {} out of FIFO order; waiting: {:?}",
                    uid,
                    c.waiting
                );
                let cost = c.waiting[0].cost;
                prop_assert!(
                    c.running_units() + u64::from(cost) <= u64::from(c.max),
                    "Go for {} of cost {} with {} units running and max {}",
                    uid,
                    cost,
                    c.running_units(),
                    c.max
                );
                for q in &c.opts.quotas {
                    prop_assert!(
                        q.limit == 0 || cost <= q.limit,
                        "Go for {} over quota {}",
                        uid,
                        q.name
                    );
                    let open = window_opening(q.interval.0, q.limit, &c.gos, now, cost);
                    prop_assert!(
                        open.is_none(),
                        "Go for {} at {:?} but quota {} is full until {:?}",
                        uid,
                        now,
                        q.name,
                        open
                    );
                }
                let job = c.waiting.remove(0);
                let lease_end = now + Millis(job.timeout) + c.offset();
                prop_assert_eq!(*deadline, lease_end, "deadline in the go of {}", uid);
                c.costs.insert(job.uid.clone(), job.cost);
                c.running.insert(job.uid, lease_end);
                c.gos.push((now, job.cost));
                c.go_since_set = true;
                self.grants += 1;
            }
            Output::Position { channel, position } => {
                let idx = self.chan_index(channel)?;
                let c = &mut self.chans[idx];
                let waiting = c.waiting.len();
                let held = c.held_by(now);
                let at = c.waiting.iter().position(|w| w.uid == position.uid);
                prop_assert!(
                    at.is_some(),
                    "position for {} which does not wait",
                    position.uid
                );
                let at = at.unwrap_or_default();
                let w = &mut c.waiting[at];
                prop_assert!(w.progress, "position for {} which did not ask", w.uid);
                prop_assert_eq!(position.position, at + 1, "position of {}", w.uid);
                prop_assert_eq!(position.waiting, waiting);
                prop_assert_eq!(
                    Some(&position.held_by),
                    held.as_ref(),
                    "held_by of {}",
                    w.uid
                );
                if let Some((_, _, last)) = w.told {
                    prop_assert!(
                        now >= last + PROGRESS_INTERVAL,
                        "{} told at {:?} and again at {:?}",
                        w.uid,
                        last,
                        now
                    );
                }
                w.told = Some((at + 1, position.held_by.clone(), now));
            }
            Output::Expired { channel, uid } => {
                let idx = self.chan_index(channel)?;
                let c = &mut self.chans[idx];
                let deadline = c.running.remove(&**uid);
                c.tokens.remove(&**uid);
                c.costs.remove(&**uid);
                prop_assert!(
                    deadline.is_some(),
                    "Expired for {} which is not running",
                    uid
                );
                let deadline = deadline.unwrap_or(now);
                if exact {
                    prop_assert_eq!(deadline, now, "lease of {} ended off its deadline", uid);
                } else {
                    prop_assert!(deadline <= now, "lease of {} ended early", uid);
                }
                self.lease_ends += 1;
            }
            other => return Err(TestCaseError::fail(format!("unexpected output {other:?}"))),
        }
        Ok(())
    }

    /// A state report must agree with the outputs so far, at the report's own time.
    fn check_state(&self, ch: usize, s: &ChannelState) -> Check {
        let c = &self.chans[ch];
        prop_assert_eq!(&s.channel, &c.name);
        prop_assert_eq!(s.max_concurrent_jobs, c.max);
        prop_assert_eq!(s.timeout_offset_ms, c.opts.timeout_offset.0);
        let mut running = s.running.clone();
        running.sort();
        let mut expected: Vec<String> = c.running.keys().cloned().collect();
        expected.sort();
        prop_assert_eq!(running, expected);
        prop_assert_eq!(s.running_count, c.running.len());
        let units = s.running_units.unwrap_or(s.running_count as u64);
        prop_assert_eq!(units, c.running_units());
        prop_assert_eq!(s.running_units.is_some(), units != s.running_count as u64);
        let jobs: Vec<(String, u64, Time, u32)> = s
            .running_jobs
            .iter()
            .map(|j| (j.uid.clone(), j.token, Time(j.deadline), j.cost))
            .collect();
        let listed: Vec<(String, u64, Time, u32)> = s
            .running
            .iter()
            .map(|u| {
                let token = c.tokens.get(u).copied().unwrap_or_default();
                let cost = c.costs.get(u).copied().unwrap_or_default();
                (
                    u.clone(),
                    token,
                    c.running.get(u).copied().unwrap_or(T0),
                    cost,
                )
            })
            .collect();
        prop_assert_eq!(jobs, listed, "running_jobs of {}", c.name);
        prop_assert_eq!(s.waiting, c.waiting.len());
        prop_assert_eq!(s.quotas.len(), c.opts.quotas.len());
        for (q, spec) in s.quotas.iter().zip(&c.opts.quotas) {
            let (interval, limit) = (spec.interval.0, spec.limit);
            prop_assert_eq!(q.used, window_used(interval, limit, &c.gos, s.now));
            prop_assert_eq!(
                q.next_opening,
                window_opening(interval, limit, &c.gos, s.now, 1)
            );
        }
        prop_assert_eq!(s.next_window_opening, c.quota_opening(s.now, 1));
        Ok(())
    }

    /// The rules that must hold between steps.
    fn check_invariants(&self) -> Check {
        let now = self.now;
        let next = self.engine.next_deadline();
        prop_assert!(
            next.is_none_or(|d| d >= now),
            "next_deadline {next:?} before now {now:?}"
        );
        let mut expected_next: Option<Time> = None;
        let mut earliest = |t: Time| {
            expected_next = Some(expected_next.map_or(t, |e| e.min(t)));
        };
        for (i, c) in self.chans.iter().enumerate() {
            let waiting: Vec<String> = self
                .engine
                .waiting(&c.name)
                .iter()
                .map(|u| u.to_string())
                .collect();
            let tracked: Vec<String> = c.waiting.iter().map(|w| w.uid.clone()).collect();
            prop_assert_eq!(&waiting, &tracked, "waiting queue of {}", c.name);
            let mut running: Vec<(String, Time)> = self
                .engine
                .running(&c.name)
                .into_iter()
                .map(|(u, t)| (u.to_string(), t))
                .collect();
            running.sort();
            let mut tracked: Vec<(String, Time)> =
                c.running.iter().map(|(u, t)| (u.clone(), *t)).collect();
            tracked.sort();
            prop_assert_eq!(&running, &tracked, "leases of {}", c.name);
            for (u, _) in &running {
                prop_assert!(!waiting.contains(u), "{} both waiting and running", u);
            }
            prop_assert!(
                c.running_units() <= u64::from(c.max) || !c.go_since_set,
                "{}: {} units running over max {} after a grant",
                c.name,
                c.running_units(),
                c.max
            );
            for (u, d) in &c.running {
                prop_assert!(*d >= now, "lease of {} due at {:?} still running", u, d);
                earliest(*d);
            }
            // A watcher whose position or reason changed is told within a second.
            if c.untold(now) {
                prop_assert!(
                    next.is_some_and(|d| d <= now + PROGRESS_INTERVAL),
                    "{}: a change untold; next deadline {:?} at {:?}; waiting {:?}",
                    c.name,
                    next,
                    now,
                    c.waiting
                );
            }
            // Head of line: only the head's cost matters; nothing behind it may go first.
            let head = c.waiting.first().map(|w| w.cost);
            if let Some(cost) = head.filter(|cost| {
                c.fits_limits(*cost) && c.running_units() + u64::from(*cost) <= u64::from(c.max)
            }) {
                let opening = c.quota_opening(now, cost);
                prop_assert!(
                    opening.is_some(),
                    "{}: {} waiting, head of cost {}, {} of {} units used, quotas have room at {:?}: should have granted",
                    c.name,
                    c.waiting.len(),
                    cost,
                    c.running_units(),
                    c.max,
                    now
                );
                if let Some(o) = opening {
                    prop_assert!(
                        next.is_some_and(|d| d <= o),
                        "{}: quota opens at {:?} but next_deadline is {:?}",
                        c.name,
                        o,
                        next
                    );
                    earliest(o);
                }
            }
            match self.engine.channel_state(&c.name) {
                Some(s) => {
                    prop_assert!(s.now <= now);
                    self.check_state(i, &s)?;
                }
                None => prop_assert!(
                    c.waiting.is_empty() && c.running.is_empty() && c.gos.is_empty(),
                    "{} has jobs but the engine does not know it",
                    c.name
                ),
            }
        }
        // Position sweeps add deadlines, within a second, only while a watcher has a change
        // to be told; otherwise the deadline is exactly a lease end or a quota opening.
        let untold = self.chans.iter().any(|c| c.untold(now));
        if untold && next != expected_next {
            prop_assert!(
                next.is_some_and(|d| d <= now + PROGRESS_INTERVAL)
                    && expected_next.is_none_or(|e| next.is_some_and(|d| d < e)),
                "next_deadline {:?}: neither {:?} nor a sweep within a second of {:?}",
                next,
                expected_next,
                now
            );
        } else {
            prop_assert_eq!(
                next,
                expected_next,
                "next_deadline should be the earliest lease end or quota opening"
            );
        }
        prop_assert_eq!(
            self.engine.waiting_bytes(),
            self.waiting_bytes(),
            "waiting bytes"
        );
        Ok(())
    }

    /// Pauses every channel and lets every lease run out: each grant must then have ended once.
    fn settle_everything(&mut self) -> Check {
        for ch in 0..self.chans.len() {
            self.step(&Step::Input(Op::SetConcurrency { ch, max: 0 }))?;
        }
        self.step(&Step::Advance(DRAIN_MS))?;
        prop_assert_eq!(self.engine.next_deadline(), None);
        for c in &self.chans {
            prop_assert!(
                c.running.is_empty(),
                "{} still running {:?}",
                c.name,
                c.running
            );
            for q in &c.opts.quotas {
                if q.limit > 0 {
                    let busiest = busiest_window(q.interval.0, &c.gos);
                    prop_assert!(
                        busiest <= u64::from(q.limit),
                        "{}: {} units in one window of quota {}",
                        c.name,
                        busiest,
                        q.name
                    );
                }
            }
        }
        prop_assert_eq!(self.grants, self.lease_ends);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies

fn timeout() -> impl Strategy<Value = u64> {
    prop_oneof![1 => Just(0u64), 4 => 0..5_000u64]
}

/// No token (the original protocol), or a small one: a channel hands out a few dozen in a run,
/// so some match the live grant and most do not.
fn token() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![2 => Just(None), 1 => (1..16u64).prop_map(Some)]
}

fn op() -> impl Strategy<Value = Op> {
    let ch = 0..3usize;
    let uid = 0..UIDS;
    prop_oneof![
        5 => (ch.clone(), uid.clone(), timeout(), prop_oneof![Just(0u8), 0..5u8], prop_oneof![3 => Just(1u32), 1 => 1..4u32], any::<bool>())
            .prop_map(|(ch, uid, timeout, meta, cost, progress)| Op::Register { ch, uid, timeout, meta, cost, progress }),
        3 => (ch.clone(), uid.clone(), token())
            .prop_map(|(ch, uid, token)| Op::Finished { ch, uid, token }),
        1 => (ch.clone(), uid.clone(), token())
            .prop_map(|(ch, uid, token)| Op::Aborted { ch, uid, token }),
        1 => (ch.clone(), 0..4u32).prop_map(|(ch, max)| Op::SetConcurrency { ch, max }),
        1 => (ch.clone(), uid, timeout(), token())
            .prop_map(|(ch, uid, timeout, token)| Op::Renew { ch, uid, timeout, token }),
        1 => ch.prop_map(|ch| Op::Infos { ch }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => op().prop_map(Step::Input),
        3 => prop_oneof![Just(0u64), Just(1), 0..3_000u64].prop_map(Step::Advance),
        1 => (1..3_000u64, op()).prop_map(|(ms, op)| Step::Skip(ms, op)),
    ]
}

fn channel_options() -> impl Strategy<Value = ChannelOptions> {
    let quota = (prop_oneof![Just(1u64), 1..20u64, 1..3_000u64], 0..4u32);
    (
        1..=3u32,
        prop_oneof![Just(0u64), 0..1_000u64],
        prop::collection::vec(quota, 0..=2),
    )
        .prop_map(|(max, offset, quotas)| options(max, offset, &quotas))
}

/// Channel options, steps, and `max_waiting_bytes`: mostly unlimited, sometimes room for a
/// handful of jobs (each takes 258 to 330 bytes).
fn scenario() -> impl Strategy<Value = (Vec<ChannelOptions>, Vec<Step>, usize)> {
    (
        prop::collection::vec(channel_options(), 2..=3),
        prop::collection::vec(step(), 1..=200),
        prop_oneof![2 => Just(usize::MAX), 1 => 300..2_000usize],
    )
}

// ---------------------------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every rule holds after every step, and every grant ends exactly once.
    #[test]
    fn engine_keeps_its_rules((table, steps, max_bytes) in scenario()) {
        Checker::new(&table, max_bytes).run(&steps)?;
    }

    /// Replaying the same calls into a fresh engine gives the same outputs and the same state.
    #[test]
    fn replay_is_deterministic((table, steps, max_bytes) in scenario()) {
        let mut first = Checker::new(&table, max_bytes);
        first.run(&steps)?;
        let mut replay = new_engine(&table, max_bytes);
        for (call, outputs) in &first.calls {
            match call {
                Call::Handle(now, input) => replay.handle(*now, input.clone()),
                Call::Timeout(now) => replay.handle_timeout(*now),
            }
            prop_assert_eq!(&drain(&mut replay), outputs, "after {:?}", call);
        }
        prop_assert_eq!(replay.next_deadline(), first.engine.next_deadline());
        prop_assert_eq!(replay.channel_count(), first.engine.channel_count());
        prop_assert_eq!(replay.waiting_bytes(), first.engine.waiting_bytes());
        for c in &first.chans {
            prop_assert_eq!(replay.channel_state(&c.name), first.engine.channel_state(&c.name));
            prop_assert_eq!(replay.waiting(&c.name), first.engine.waiting(&c.name));
            prop_assert_eq!(replay.running(&c.name), first.engine.running(&c.name));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Edge cases, deterministic

fn register(engine: &mut Engine, now: Time, uid: &str, timeout: u64) {
    engine.handle(
        now,
        Input::Register(Registration::new("c0", uid, Millis(timeout))),
    );
}

fn go(uid: &str) -> Output {
    Output::Go {
        channel: "c0".into(),
        uid: uid.into(),
        seq: 0,
        at: Time(0),
        waited: Millis(0),
        token: 0,
        deadline: Time(0),
        reply: Reply::Plain,
    }
}

/// Outputs with queue waits, grant times, sequence numbers, tokens and deadlines zeroed, to
/// compare against `go(..)`.
fn unwaited(outputs: Vec<Output>) -> Vec<Output> {
    outputs
        .into_iter()
        .map(|o| match o {
            Output::Go { channel, uid, .. } => Output::Go {
                channel,
                uid,
                seq: 0,
                at: Time(0),
                waited: Millis(0),
                token: 0,
                deadline: Time(0),
                reply: Reply::Plain,
            },
            other => other,
        })
        .collect()
}

fn expired(uid: &str) -> Output {
    Output::Expired {
        channel: "c0".into(),
        uid: uid.into(),
    }
}

#[test]
fn zero_timeout_lease_ends_at_its_grant_time() {
    let mut e = Engine::new(resolver(vec![options(1, 0, &[])]));
    register(&mut e, T0, "a", 0);
    assert_eq!(unwaited(drain(&mut e)), [go("a")]);
    // The lease is due now: the engine asks to be woken now, not later.
    assert_eq!(e.next_deadline(), Some(T0));
    // The next input at the same time ends it first, then queues and grants b.
    register(&mut e, T0, "b", 0);
    assert_eq!(unwaited(drain(&mut e)), [expired("a"), go("b")]);
    e.handle_timeout(T0);
    assert_eq!(unwaited(drain(&mut e)), [expired("b")]);
    assert_eq!(e.next_deadline(), None);
}

#[test]
fn zero_timeout_with_offset_lasts_the_offset() {
    let mut e = Engine::new(resolver(vec![options(1, 250, &[])]));
    register(&mut e, T0, "a", 0);
    assert_eq!(e.running("c0"), [(Arc::from("a"), T0 + Millis(250))]);
    assert_eq!(e.next_deadline(), Some(T0 + Millis(250)));
}

#[test]
fn lowering_concurrency_to_zero_keeps_running_jobs_and_grants_nothing() {
    let mut e = Engine::new(resolver(vec![options(2, 0, &[])]));
    register(&mut e, T0, "a", 1_000);
    register(&mut e, T0, "b", 2_000);
    register(&mut e, T0, "c", 1_000);
    assert_eq!(unwaited(drain(&mut e)), [go("a"), go("b")]);
    let set = |max| Input::SetConcurrency {
        channel: "c0".into(),
        max,
    };
    e.handle(T0, set(0));
    assert!(drain(&mut e).is_empty(), "nothing is revoked");
    assert_eq!(e.running("c0").len(), 2);
    e.handle(
        T0 + Millis(10),
        Input::Finished {
            channel: "c0".into(),
            uid: "a".into(),
            token: None,
        },
    );
    assert!(matches!(
        &drain(&mut e)[..],
        [Output::Ended {
            was_running: true,
            ..
        }]
    ));
    // Only b's lease is left to wake for: a paused channel does not wait on a quota.
    assert_eq!(e.next_deadline(), Some(T0 + Millis(2_000)));
    e.handle_timeout(T0 + Millis(2_000));
    assert_eq!(unwaited(drain(&mut e)), [expired("b")]);
    assert_eq!(e.next_deadline(), None);
    assert_eq!(e.waiting("c0"), [Arc::from("c")]);
    e.handle(T0 + Millis(3_000), set(1));
    assert_eq!(unwaited(drain(&mut e)), [go("c")]);
}

#[test]
fn quota_of_one_per_millisecond_grants_every_other_millisecond() {
    // A grant at t counts while now <= t + 1, so the next one can come at t + 2.
    let mut e = Engine::new(resolver(vec![options(3, 0, &[(1, 1)])]));
    for u in ["a", "b", "c"] {
        register(&mut e, T0, u, 10_000);
    }
    assert_eq!(unwaited(drain(&mut e)), [go("a")]);
    assert_eq!(e.next_deadline(), Some(T0 + Millis(2)));
    e.handle_timeout(T0 + Millis(1));
    assert!(drain(&mut e).is_empty());
    e.handle_timeout(T0 + Millis(2));
    assert_eq!(unwaited(drain(&mut e)), [go("b")]);
    assert_eq!(e.next_deadline(), Some(T0 + Millis(4)));
    // Skipping past the opening: the next input catches up and grants at its own time.
    e.handle(
        T0 + Millis(7),
        Input::Infos {
            channel: "c0".into(),
        },
    );
    let out = unwaited(drain(&mut e));
    assert_eq!(out[0], go("c"));
    assert!(
        matches!(&out[1], Output::State(s) if s.quotas[0].next_opening == Some(T0 + Millis(9)))
    );
}

#[test]
fn window_helpers_agree_with_the_rule() {
    let gos = [
        (Time(0), 1),
        (Time(0), 1),
        (Time(1_000), 1),
        (Time(1_001), 1),
    ];
    assert_eq!(busiest_window(1_000, &gos), 3);
    assert_eq!(busiest_window(999, &gos), 2);
    assert_eq!(
        window_opening(1_000, 2, &gos[..2], Time(1_000), 1),
        Some(Time(1_001))
    );
    assert_eq!(window_opening(1_000, 2, &gos[..2], Time(1_001), 1), None);
    assert_eq!(window_opening(1_000, 0, &gos, Time(0), 1), None);
    assert_eq!(window_used(1_000, 2, &gos, Time(1_001)), 2);
    // Units: 2 + 1 counted at 1_000; a cost of 2 in a limit of 4 needs the first grant gone.
    let heavy = [(Time(0), 2), (Time(500), 1)];
    assert_eq!(busiest_window(1_000, &heavy), 3);
    assert_eq!(window_used(1_000, 4, &heavy, Time(1_000)), 3);
    assert_eq!(window_opening(1_000, 4, &heavy, Time(1_000), 1), None);
    assert_eq!(
        window_opening(1_000, 4, &heavy, Time(1_000), 2),
        Some(Time(1_001))
    );
    assert_eq!(
        window_opening(1_000, 4, &heavy, Time(1_000), 4),
        Some(Time(1_501))
    );
    assert_eq!(window_opening(1_000, 4, &heavy, Time(1_000), 5), None);
}

// ---------------------------------------------------------------------------------------------
// Durable state: what the journal records, folded, is what the engine holds; and an engine
// restored from it at any point behaves like the original from there on.

/// A call made to the original engine, to be made to the restored one too.
enum Replay {
    Handle(Time, Input),
    Timeout(Time),
}

/// Runs one step on `engine` the way the driver would, returning the calls it made.
/// `step` with every register's `progress` off.
fn without_progress(step: &Step) -> Step {
    let quiet = |op: &Op| match op {
        Op::Register { .. } => {
            let mut op = op.clone();
            if let Op::Register { progress, .. } = &mut op {
                *progress = false;
            }
            op
        }
        other => other.clone(),
    };
    match step {
        Step::Input(op) => Step::Input(quiet(op)),
        Step::Skip(ms, op) => Step::Skip(*ms, quiet(op)),
        Step::Advance(ms) => Step::Advance(*ms),
    }
}

fn drive(engine: &mut Engine, now: &mut Time, step: &Step, n: usize) -> Vec<Replay> {
    let mut calls = Vec::new();
    let mut input = |engine: &mut Engine, now: Time, op: &Op| {
        let i = to_input(op, n);
        engine.handle(now, i.clone());
        calls.push(Replay::Handle(now, i));
    };
    match step {
        Step::Input(op) => input(engine, *now, op),
        Step::Skip(ms, op) => {
            *now = *now + Millis(*ms);
            input(engine, *now, op);
        }
        Step::Advance(ms) => {
            let target = *now + Millis(*ms);
            while let Some(d) = engine.next_deadline().filter(|d| *d <= target) {
                engine.handle_timeout(d);
                calls.push(Replay::Timeout(d));
            }
            *now = target;
        }
    }
    calls
}

/// Outputs per channel in order, without the non-durable quota-held time; the order across
/// channels may differ after a restore (channel ids break timer ties). Grants keep their
/// sequence numbers and tokens: both are journaled, so a restored engine numbers as before.
fn by_channel(outputs: Vec<Output>) -> std::collections::BTreeMap<String, Vec<Output>> {
    let mut map: std::collections::BTreeMap<String, Vec<Output>> = Default::default();
    for o in outputs {
        let o = match o {
            Output::State(mut s) => {
                s.quota_held_ms = 0;
                Output::State(s)
            }
            Output::AllStates(mut all) => {
                for s in &mut all {
                    s.quota_held_ms = 0;
                }
                Output::AllStates(all)
            }
            o => o,
        };
        let key = o.channel().unwrap_or("").to_owned();
        map.entry(key).or_default().push(o);
    }
    map
}

/// A snapshot as comparable data: per channel, the runtime concurrency if it differs from the
/// configured one, the jobs in registration order (sequence numbers are internal), and the last
/// `grants` grant times.
type Comparable = Vec<(
    String,
    Option<(u32, u32)>,
    Vec<JobSnapshot>,
    Vec<(Time, u32)>,
)>;

fn comparable(s: &Snapshot, grants_of: &Snapshot) -> Comparable {
    s.channels
        .iter()
        .filter_map(|(name, ch)| {
            let keep = grants_of.channels.get(name).map_or(0, |c| c.grants.len());
            let grants = ch.grants[ch.grants.len().saturating_sub(keep)..].to_vec();
            let concurrency = ch.concurrency.filter(|(configured, max)| configured != max);
            let jobs: Vec<JobSnapshot> = ch.jobs.values().cloned().collect();
            (concurrency.is_some() || !jobs.is_empty() || !grants.is_empty())
                .then(|| (name.to_string(), concurrency, jobs, grants))
        })
        .collect()
}

/// Fencing tokens and job numbering in the fold and in the export agree: a channel both keep
/// has the same last token and next sequence number; one the export left out (nothing durable)
/// is covered by its floor.
fn tokens_agree(folded: &Snapshot, exported: &Snapshot) -> Check {
    for (name, ch) in &folded.channels {
        match exported.channels.get(name) {
            Some(e) => {
                prop_assert_eq!(ch.last_token, e.last_token, "last token of {}", name);
                prop_assert_eq!(ch.next_seq, e.next_seq, "next sequence number of {}", name);
            }
            None => prop_assert!(
                ch.last_token <= exported.token_floor,
                "{}: last token {} above the floor {}",
                name,
                ch.last_token,
                exported.token_floor
            ),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// After every step, the recorded changes folded into a snapshot equal what `export`
    /// reports. The broker acknowledges two grants in three. At a random step the engine
    /// "crashes": a fresh engine restored from the folded changes says `go` again for exactly
    /// the live leases whose `go` was not acknowledged and nothing else, then answers every
    /// later call exactly as the original does, and holds the same state. A third engine,
    /// restored from the same state with every droppable channel dropped (as a restart's
    /// compaction does), gets the same calls and must never hand a channel a token at or below
    /// one it had before.
    #[test]
    fn journal_folds_to_export_and_restore_behaves_like_the_original(
        (table, steps, max_bytes) in scenario(),
        crash in any::<prop::sample::Index>(),
    ) {
        let n = table.len();
        // A restart tells watching jobs their position again, and position sweeps add
        // deadlines of their own, by design: the original and the restored engine compare
        // without them (progress survives restarts: `engine::progress_tests`).
        let steps: Vec<Step> = steps.iter().map(without_progress).collect();
        let mut engine = new_engine(&table, max_bytes);
        engine.record_changes(true);
        let mut folded = Snapshot::default();
        let mut changes = Vec::new();
        let mut now = T0;
        let crash_at = crash.index(steps.len());
        let mut restored: Option<Engine> = None;
        // Per (channel, uid): the sequence number, time and token of its latest grant.
        let mut granted: HashMap<(String, Arc<str>), (u64, Time, u64)> = HashMap::new();
        // Per channel: the highest token granted so far by the original engine.
        let mut high: HashMap<String, u64> = HashMap::new();
        // An engine restored from the same state with every droppable channel dropped, as a
        // restart's compaction does, and the highest token each channel had before the crash.
        let mut trimmed: Option<(Engine, HashMap<String, u64>)> = None;
        // Grants whose `go` the broker acknowledged (every grant but each third).
        let mut acknowledged: HashSet<(String, Arc<str>, u64)> = HashSet::new();
        for (i, step) in steps.iter().enumerate() {
            let mut calls = drive(&mut engine, &mut now, step, n);
            let mut original_out = drain(&mut engine);
            // An acknowledgement first ends the leases due by now, which can grant again: those
            // grants are recorded (and acknowledged) too.
            let mut next = 0;
            while let Some(o) = original_out.get(next).cloned() {
                next += 1;
                if let Output::Go { channel, uid, seq, at, token, .. } = o {
                    granted.insert((channel.to_string(), uid.clone()), (seq, at, token));
                    high.insert(channel.to_string(), token);
                    if seq % 3 != 2 {
                        acknowledged.insert((channel.to_string(), uid.clone(), seq));
                        let input = Input::Delivered { channel, uid, seq };
                        engine.handle(now, input.clone());
                        calls.push(Replay::Handle(now, input));
                        original_out.extend(drain(&mut engine));
                    }
                }
            }
            engine.take_changes(&mut changes);
            for c in changes.drain(..) {
                folded.apply(c);
            }
            let exported = engine.export();
            prop_assert_eq!(comparable(&folded, &exported), comparable(&exported, &exported), "after step {}", i);
            tokens_agree(&folded, &exported)?;
            if let Some((t, before)) = trimmed.as_mut() {
                for call in &calls {
                    match call {
                        Replay::Handle(at, input) => t.handle(*at, input.clone()),
                        Replay::Timeout(at) => t.handle_timeout(*at),
                    }
                }
                for o in drain(t) {
                    if let Output::Go { channel, token, .. } = o {
                        let last = before.entry(channel.to_string()).or_default();
                        prop_assert!(token > *last, "{}: token {} after {} (trimmed restore)", channel, token, last);
                        *last = token;
                    }
                }
            }

            if let Some(r) = restored.as_mut() {
                // The broker acknowledges the replica's own grants: each acknowledgement names
                // the sequence number the replica gave that grant (its numbering may differ).
                // A channel's outputs match in order (checked below), so the k-th grant of a
                // channel in the step is the same grant in both.
                let gos = |out: &[Output], ch: &str| -> Vec<(Arc<str>, u64)> {
                    out.iter()
                        .filter_map(|o| match o { Output::Go { channel, uid, seq, .. } if &**channel == ch => Some((uid.clone(), *seq)), _ => None })
                        .collect()
                };
                let mut replica_out = Vec::new();
                for call in calls {
                    match call {
                        Replay::Handle(t, Input::Delivered { channel, uid, seq }) => {
                            replica_out.extend(drain(r));
                            let k = gos(&original_out, &channel).iter().position(|g| *g == (uid.clone(), seq));
                            if let Some((_, own)) = k.and_then(|k| gos(&replica_out, &channel).get(k).cloned()) {
                                r.handle(t, Input::Delivered { channel, uid, seq: own });
                            }
                        }
                        Replay::Handle(t, input) => r.handle(t, input),
                        Replay::Timeout(t) => r.handle_timeout(t),
                    }
                }
                replica_out.extend(drain(r));
                prop_assert_eq!(by_channel(replica_out), by_channel(original_out), "after step {}", i);
                prop_assert_eq!(r.next_deadline(), engine.next_deadline());
                prop_assert_eq!(r.waiting_bytes(), engine.waiting_bytes());
                let mine = r.export();
                prop_assert_eq!(comparable(&mine, &mine), comparable(&exported, &exported));
            }
            if i == crash_at {
                let mut r = new_engine(&table, max_bytes);
                r.record_changes(true);
                r.restore(now, folded.clone(), &mut NoPolicies);
                r.redeliver();
                // As the driver would: a deadline at `now` (zero-length leases granted by the
                // restore) is handled at once, cascading like the original's catch-up below.
                if r.next_deadline().is_some_and(|d| d <= now) {
                    r.handle_timeout(now);
                }
                let mut again: Vec<Output> = drain(&mut r);
                let mut expected: Vec<Output> = (0..n)
                    .flat_map(|c| {
                        engine.running(&channel_name(c)).into_iter().filter(|(_, t)| *t > now).filter_map(|(uid, _)| {
                            let (seq, at, token) = granted[&(channel_name(c), uid.clone())];
                            let deadline = engine.running(&channel_name(c)).into_iter().find(|(u, _)| *u == uid).map_or(now, |(_, t)| t);
                            (!acknowledged.contains(&(channel_name(c), uid.clone(), seq))).then(|| Output::GoAgain {
                                channel: channel_name(c).into(),
                                uid,
                                seq,
                                granted_at: Some(at),
                                token,
                                deadline,
                                remaining: deadline - now,
                                reply: Reply::Plain,
                            })
                        }).collect::<Vec<_>>()
                    })
                    .collect();
                // A lease may end exactly now (timeout 0) and wait for the next call to expire:
                // the restored engine expires it (and fills the slot) at once, so the original
                // catches up here too.
                if engine.next_deadline().is_some_and(|d| d <= now) {
                    engine.handle_timeout(now);
                    expected.extend(drain(&mut engine));
                    engine.take_changes(&mut changes);
                    for c in changes.drain(..) {
                        folded.apply(c);
                    }
                }
                let key = |o: &Output| format!("{o:?}");
                again.sort_by_key(key);
                expected.sort_by_key(key);
                prop_assert_eq!(again, expected, "restore at step {}", i);
                prop_assert_eq!(r.next_deadline(), engine.next_deadline());
                prop_assert_eq!(r.waiting_bytes(), engine.waiting_bytes());
                for c in 0..n {
                    let name = channel_name(c);
                    prop_assert_eq!(r.waiting(&name), engine.waiting(&name));
                    prop_assert_eq!(r.running(&name), engine.running(&name));
                }
                restored = Some(r);
                let mut dropped = folded.clone();
                dropped.trim(|_| 0);
                let mut t = Engine::new(resolver(table.clone()));
                t.restore(now, dropped, &mut NoPolicies);
                let mut before = high.clone();
                for o in drain(&mut t) {
                    if let Output::Go { channel, token, .. } = o {
                        let last = before.entry(channel.to_string()).or_default();
                        prop_assert!(token > *last, "{}: token {} after {} (trimmed restore)", channel, token, last);
                        *last = token;
                    }
                }
                trimmed = Some((t, before));
            }
        }
    }
}
