//! Unit tests of the simulation: a workload of workers (fixed run times, some giving up, some
//! renewing, some never finishing) is played against the engine with the journal on, exactly
//! as the daemon would record it; the recorded history is then replayed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use proptest::prelude::*;

use super::sim::{simulate, Setup};
use super::stats;
use super::trace::Trace;
use crate::engine::{
    Admission, ChannelOptions, ChannelView, Decision, Engine, EngineLimits, Input, JobEvent,
    JobInfo, Millis, NoPolicies, Output, Policies, QuotaLog, QuotaSpec, Registration, Reply, Time,
};
use crate::state::read::History;

const T0: u64 = 1_800_000_000_000;

/// One worker: registers at `arrival` (ms after T0), runs `run` ms once granted (never
/// finishes if `None`: its lease expires), gives up waiting after `give_up` ms, renews once
/// `renew` ms after its grant with a timeout of twice its own.
#[derive(Debug, Clone)]
struct Worker {
    channel: &'static str,
    uid: String,
    arrival: u64,
    timeout: u64,
    run: Option<u64>,
    give_up: Option<u64>,
    renew: Option<u64>,
    priority: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Arrive(usize),
    GiveUp(usize),
    Renew(usize),
    Finish(usize),
    Set(usize),
}

/// Plays `workers` and the operator's `sets` (`(ms after T0, channel, max)`) against an engine
/// resolving options with `opts`, recording its changes. Returns the history and each worker's
/// grant time.
fn record(
    workers: &[Worker],
    opts: fn(&str) -> ChannelOptions,
    sets: &[(u64, &'static str, u32)],
    hooks: &mut dyn Policies,
) -> (History, Vec<Option<Time>>) {
    record_with_outage(workers, opts, sets, hooks, None)
}

/// [`record`], with the daemon down from `outage.0` to `outage.1` (ms after T0): it stops
/// after its last change before, and starts again restoring what it exported, as the daemon
/// does; what workers send meanwhile reaches it when it is back (the broker queues it).
fn record_with_outage(
    workers: &[Worker],
    opts: fn(&str) -> ChannelOptions,
    sets: &[(u64, &'static str, u32)],
    hooks: &mut dyn Policies,
    mut outage: Option<(u64, u64)>,
) -> (History, Vec<Option<Time>>) {
    let mut engine = Engine::new(Box::new(opts));
    engine.record_changes(true);
    engine.restore(Time(T0), crate::engine::Snapshot::default(), hooks);
    let mut events: BTreeMap<(u64, usize, Ev), ()> = BTreeMap::new();
    let mut n = 0usize;
    let mut push = |events: &mut BTreeMap<(u64, usize, Ev), ()>, t: u64, e: Ev| {
        n += 1;
        events.insert((t, n, e), ());
    };
    for (i, w) in workers.iter().enumerate() {
        push(&mut events, T0 + w.arrival, Ev::Arrive(i));
        if let Some(g) = w.give_up {
            push(&mut events, T0 + w.arrival + g, Ev::GiveUp(i));
        }
    }
    for (i, (t, _, _)) in sets.iter().enumerate() {
        push(&mut events, T0 + t, Ev::Set(i));
    }
    let mut granted: Vec<Option<Time>> = vec![None; workers.len()];
    let mut changes = Vec::new();
    let by_uid: HashMap<(&str, &str), usize> = (workers.iter().enumerate())
        .map(|(i, w)| ((w.channel, w.uid.as_str()), i))
        .collect();
    loop {
        let next = events.keys().next().map(|k| k.0);
        let first = [engine.next_deadline().map(|d| d.0), next]
            .into_iter()
            .flatten()
            .min();
        if let Some((down, up)) = outage.filter(|(down, _)| first.is_some_and(|t| t >= T0 + down)) {
            outage = None;
            let snapshot = engine.export();
            engine.take_changes(&mut changes);
            engine = Engine::new(Box::new(opts));
            engine.record_changes(true);
            let delayed: Vec<_> = (events.keys()).filter(|k| k.0 < T0 + up).copied().collect();
            for key in delayed {
                events.remove(&key);
                events.insert((T0 + up, key.1, key.2), ());
            }
            engine.restore(Time(T0 + up), snapshot, hooks);
            let _ = down;
        }
        let next = events.keys().next().map(|k| k.0);
        match (engine.next_deadline(), next) {
            (Some(d), e) if e.is_none_or(|e| d.0 < e) => engine.handle_timeout_with(d, hooks),
            (_, Some(_)) => {
                let ((t, _, ev), ()) = events.pop_first().unwrap();
                let w = |i: usize| &workers[i];
                let input = match ev {
                    Ev::Arrive(i) => Some(Input::Register(Registration {
                        channel: w(i).channel.into(),
                        uid: w(i).uid.clone(),
                        timeout: Millis(w(i).timeout),
                        priority: 0,
                        meta: Some(format!("{{\"p\":{}}}", w(i).priority).into()),
                        reply: Reply::Plain,
                        cost: 1,
                        progress: false,
                    })),
                    Ev::GiveUp(i) if granted[i].is_none() => Some(Input::Aborted {
                        channel: w(i).channel.into(),
                        uid: w(i).uid.clone(),
                        token: None,
                    }),
                    Ev::Renew(i) => Some(Input::Renew {
                        channel: w(i).channel.into(),
                        uid: w(i).uid.clone(),
                        timeout: Millis(w(i).timeout * 2),
                        token: None,
                    }),
                    Ev::Finish(i) => Some(Input::Finished {
                        channel: w(i).channel.into(),
                        uid: w(i).uid.clone(),
                        token: None,
                    }),
                    Ev::Set(k) => Some(Input::SetConcurrency {
                        channel: sets[k].1.into(),
                        max: sets[k].2,
                    }),
                    Ev::GiveUp(_) => None,
                };
                if let Some(input) = input {
                    engine.handle_with(Time(t), input, hooks);
                }
            }
            _ => break,
        }
        while let Some(out) = engine.poll_output() {
            if let Output::Go {
                channel, uid, at, ..
            } = out
            {
                let i = by_uid[&(&*channel, &*uid)];
                granted[i] = Some(at);
                if let Some(r) = workers[i].renew {
                    push(&mut events, at.0 + r, Ev::Renew(i));
                }
                if let Some(r) = workers[i].run {
                    push(&mut events, at.0 + r, Ev::Finish(i));
                }
            }
        }
        engine.take_changes(&mut changes);
    }
    let history = History {
        generations: vec![0],
        changes,
        ..History::default()
    };
    (history, granted)
}

/// Each worker's grant time in a replay of `history` under the recorded limits.
fn replayed(history: History, workers: &[Worker]) -> Vec<Option<Time>> {
    let trace = Trace::from_history(history);
    let none = HashMap::new();
    let out = simulate(
        &trace,
        Setup::Recorded(&none),
        EngineLimits::default(),
        None,
        trace.begin,
        trace.end,
    );
    by_worker(&trace, &out.granted, workers)
}

fn by_worker(trace: &Trace, granted: &[Option<Time>], workers: &[Worker]) -> Vec<Option<Time>> {
    let index: HashMap<(&str, &str), usize> = (trace.jobs.iter().enumerate())
        .map(|(i, j)| ((&*j.channel, &*j.uid), i))
        .collect();
    (workers.iter())
        .map(|w| {
            index
                .get(&(w.channel, w.uid.as_str()))
                .and_then(|&i| granted[i])
        })
        .collect()
}

fn worker(channel: &'static str, uid: &str, arrival: u64, run: Option<u64>) -> Worker {
    Worker {
        channel,
        uid: uid.into(),
        arrival,
        timeout: 5_000,
        run,
        give_up: None,
        renew: None,
        priority: 0,
    }
}

fn two_slots_and_a_quota(_: &str) -> ChannelOptions {
    ChannelOptions {
        max_concurrent_jobs: 2,
        timeout_offset: Millis(100),
        quotas: vec![QuotaSpec {
            name: "burst".into(),
            interval: Millis(1_000),
            limit: 3,
            log: QuotaLog::Quiet,
        }],
        ..ChannelOptions::default()
    }
}

/// Every kind of recorded history: queueing behind the slots and the quota, a worker giving
/// up, a renewal, a lease that expires, and an operator's `concurrency/set`.
fn mixed_workload() -> (Vec<Worker>, Vec<(u64, &'static str, u32)>) {
    let mut workers: Vec<Worker> = (0..12)
        .map(|i| worker("a", &format!("j{i}"), i * 150, Some(400 + (i * 97) % 700)))
        .collect();
    workers[3].run = None; // expires at its lease end
    workers[3].timeout = 600;
    workers[5].renew = Some(200);
    workers[5].run = Some(9_000);
    workers[9].give_up = Some(250);
    workers.push(worker("b", "solo", 500, Some(100)));
    (workers, vec![(2_000, "a", 1), (4_000, "a", 3)])
}

#[test]
fn the_recorded_limits_reproduce_every_recorded_grant_time() {
    let (workers, sets) = mixed_workload();
    let (history, recorded) = record(&workers, two_slots_and_a_quota, &sets, &mut NoPolicies);
    assert!(recorded.iter().filter(|g| g.is_some()).count() >= 10);
    assert!(recorded[9].is_none(), "j9 gave up before its grant");
    assert_eq!(replayed(history, &workers), recorded);
}

/// A restart in the middle: a lease ends and a worker's `finished` is sent while the daemon is
/// down; both take effect when it is back, and the replay waits for that too.
#[test]
fn a_restart_inside_the_period_is_replayed_exactly() {
    let (workers, sets) = mixed_workload();
    let outage = Some((1_700, 2_600));
    let (history, recorded) = record_with_outage(
        &workers,
        two_slots_and_a_quota,
        &sets,
        &mut NoPolicies,
        outage,
    );
    assert!(
        history
            .changes
            .iter()
            .filter(|c| matches!(c, crate::engine::Change::Started))
            .count()
            == 2
    );
    let trace = Trace::from_history(History {
        changes: history.changes.clone(),
        ..History::default()
    });
    assert_eq!(trace.downtimes.len(), 1, "{:?}", trace.downtimes);
    assert!(
        recorded.contains(&Some(Time(T0 + 2_600))),
        "something was granted at the restart: {recorded:?}"
    );
    assert_eq!(replayed(history, &workers), recorded);
}

#[test]
fn a_lower_limit_makes_jobs_wait_longer() {
    let (workers, sets) = mixed_workload();
    let (history, _) = record(&workers, two_slots_and_a_quota, &sets, &mut NoPolicies);
    let trace = Trace::from_history(history);
    let none = HashMap::new();
    let (from, until) = (trace.begin, trace.end);
    let limits = EngineLimits::default();
    let base = simulate(&trace, Setup::Recorded(&none), limits, None, from, until);
    let one = |_: &str| ChannelOptions {
        max_concurrent_jobs: 1,
        ..two_slots_and_a_quota("a")
    };
    let cand = simulate(&trace, Setup::Candidate(&one), limits, None, from, until);
    let rec = stats::recorded(&trace, from, until, &base);
    let sim = stats::simulated(&trace, from, until, &cand);
    let (r, s) = (&rec["a"], &sim["a"]);
    assert_eq!(r.jobs, s.jobs);
    assert!(r.peak_running >= 2 && s.peak_running == 1, "{r:?} {s:?}");
    assert!(s.wait_ms.max > r.wait_ms.max, "{r:?} {s:?}");
    assert!(s.wait_ms.p50 >= r.wait_ms.p50, "{r:?} {s:?}");
    // The channel nobody changed is not affected.
    assert_eq!(rec["b"].wait_ms, sim["b"].wait_ms);
}

#[test]
fn a_higher_limit_without_quota_grants_everyone_at_arrival() {
    let (workers, sets) = mixed_workload();
    let (history, _) = record(&workers, two_slots_and_a_quota, &sets, &mut NoPolicies);
    let trace = Trace::from_history(history);
    let wide = |_: &str| ChannelOptions {
        max_concurrent_jobs: 100,
        ..ChannelOptions::default()
    };
    let (from, until) = (trace.begin, trace.end);
    let out = simulate(
        &trace,
        Setup::Candidate(&wide),
        EngineLimits::default(),
        None,
        from,
        until,
    );
    let sim = stats::simulated(&trace, from, until, &out);
    assert_eq!(sim["a"].wait_ms.max, Some(0), "{:?}", sim["a"]);
    assert_eq!(sim["a"].grants, 12, "j9 is granted at once too");
}

/// Priorities from the job's `p` field; uids starting with `bad` are vetoed at grant.
struct TestPolicy;

impl Policies for TestPolicy {
    fn admit(&mut self, _: &ChannelView<'_>, job: &JobInfo<'_>) -> Admission {
        let p = (job.meta)
            .and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok())
            .and_then(|v| v["p"].as_i64())
            .unwrap_or(0);
        Admission::Accept(p)
    }
    fn before_grant(&mut self, _: &ChannelView<'_>, job: &JobInfo<'_>) -> Decision {
        if job.uid.starts_with("bad") {
            Decision::Veto("bad".into())
        } else {
            Decision::Grant
        }
    }
    fn on_event(&mut self, _: &ChannelView<'_>, _: JobEvent, _: &JobInfo<'_>) {}
}

fn one_slot_with_policy(_: &str) -> ChannelOptions {
    ChannelOptions {
        max_concurrent_jobs: 1,
        policy: Some(Arc::from(std::path::Path::new("test.wasm"))),
        ..ChannelOptions::default()
    }
}

#[test]
fn recorded_policy_priorities_and_vetoes_are_replayed() {
    let mut workers: Vec<Worker> = (0..8)
        .map(|i| worker("p", &format!("j{i}"), i * 10, Some(300)))
        .collect();
    workers[2].uid = "bad2".into();
    for (i, w) in workers.iter_mut().enumerate() {
        w.priority = (i as i64 * 7) % 5;
    }
    let (history, recorded) = record(&workers, one_slot_with_policy, &[], &mut TestPolicy);
    // The policy reordered the queue: grants are not in arrival order.
    let mut order: Vec<usize> = (0..workers.len())
        .filter(|&i| recorded[i].is_some())
        .collect();
    order.sort_by_key(|&i| recorded[i]);
    assert_ne!(
        order,
        (0..workers.len()).filter(|&i| i != 2).collect::<Vec<_>>()
    );
    assert!(recorded[2].is_none());
    let trace = Trace::from_history(history);
    assert!(trace.limits["p"].policy);
    let rec = stats::recorded(&trace, trace.begin, trace.end, &Default::default());
    assert_eq!(rec["p"].rejections, 1);
    let replay = {
        let none = HashMap::new();
        let (from, until) = (trace.begin, trace.end);
        let out = simulate(
            &trace,
            Setup::Recorded(&none),
            EngineLimits::default(),
            None,
            from,
            until,
        );
        let sim = stats::simulated(&trace, from, until, &out);
        assert_eq!(sim["p"].rejections, 1);
        by_worker(&trace, &out.granted, &workers)
    };
    assert_eq!(replay, recorded);
}

#[test]
fn waits_are_nearest_rank_percentiles() {
    let w = stats::Waits::of((1..=100).rev().collect());
    assert_eq!(
        (w.p50, w.p95, w.p99, w.max),
        (Some(50), Some(95), Some(99), Some(100))
    );
    assert_eq!(stats::Waits::of(vec![]).p50, None);
    assert_eq!(stats::Waits::of(vec![7]).p99, Some(7));
}

#[test]
fn time_arguments_take_epoch_milliseconds_or_rfc3339() {
    use super::parse_time;
    assert_eq!(
        parse_time(Some("1700000000123"), "--from").unwrap(),
        Some(Time(1_700_000_000_123))
    );
    assert_eq!(
        parse_time(Some("2023-11-14T22:13:20Z"), "--from").unwrap(),
        Some(Time(1_700_000_000_000))
    );
    let e = parse_time(Some("yesterday"), "--to")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--to yesterday") && e.contains("RFC 3339"),
        "{e}"
    );
}

fn arb_worker(channel: &'static str, i: usize) -> impl Strategy<Value = Worker> {
    (
        0u64..6_000,
        100u64..3_000,
        prop::option::weighted(0.85, 1u64..2_500),
        prop::option::weighted(0.2, 0u64..1_500),
        prop::option::weighted(0.2, 0u64..800),
    )
        .prop_map(move |(arrival, timeout, run, give_up, renew)| Worker {
            channel,
            uid: format!("{channel}{i}"),
            arrival,
            timeout,
            run,
            give_up,
            renew,
            priority: 0,
        })
}

fn arb_workload() -> impl Strategy<Value = (Vec<Worker>, Vec<(u64, &'static str, u32)>)> {
    let a = (0..40usize).map(|i| arb_worker("a", i)).collect::<Vec<_>>();
    let b = (0..15usize).map(|i| arb_worker("b", i)).collect::<Vec<_>>();
    let sets = prop::collection::vec(
        (0u64..6_000, prop::sample::select(vec!["a", "b"]), 0u32..4),
        0..4,
    );
    (a, b, sets).prop_map(|(mut a, b, sets)| {
        a.extend(b);
        (a, sets)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the workload (slots, a quota, give-ups, renewals, expiries, operators'
    /// `concurrency/set`, a daemon restart), the recorded limits reproduce every grant time.
    #[test]
    fn replay_under_the_recorded_limits_is_exact(
        (workers, sets) in arb_workload(),
        outage in prop::option::of((0u64..6_000, 1u64..3_000)),
    ) {
        let outage = outage.map(|(down, len)| (down, down + len));
        let (history, recorded) =
            record_with_outage(&workers, two_slots_and_a_quota, &sets, &mut NoPolicies, outage);
        prop_assert_eq!(replayed(history, &workers), recorded);
    }
}

/// `--from` and `--to`: only jobs registered in the window count; the run under the recorded
/// limits stops at its end and still reproduces every grant up to there.
#[test]
fn a_window_counts_its_registrations_and_stops_at_its_end() {
    let (workers, sets) = mixed_workload();
    let (history, recorded) = record(&workers, two_slots_and_a_quota, &sets, &mut NoPolicies);
    let trace = Trace::from_history(history);
    let (from, until) = (Time(T0 + 1_000), Time(T0 + 3_000));
    let none = HashMap::new();
    let out = simulate(
        &trace,
        Setup::Recorded(&none),
        EngineLimits::default(),
        None,
        from,
        until,
    );
    let replayed = by_worker(&trace, &out.granted, &workers);
    for (i, w) in workers.iter().enumerate() {
        match recorded[i] {
            Some(g) if g <= until => assert_eq!(replayed[i], Some(g), "{}", w.uid),
            _ => assert_eq!(replayed[i], None, "{}: granted after the window", w.uid),
        }
    }
    let rec = stats::recorded(&trace, from, until, &out);
    let in_window = |c: &str| {
        (workers.iter())
            .filter(|w| w.channel == c && (1_000..=3_000).contains(&w.arrival))
            .count()
    };
    assert_eq!(rec["a"].jobs, in_window("a"));
    assert_eq!(rec.get("b").map_or(0, |s| s.jobs), in_window("b"));
}

/// A generation begun by compaction starts with every channel's limits (the driver calls
/// `journal_limits` right after `compact`), so a replay of it alone knows them, and it
/// reproduces the grants from the snapshot on.
#[test]
fn a_generation_begun_by_compaction_knows_every_channels_limits() {
    let (workers, sets) = mixed_workload();
    let (history, _) = record(&workers, two_slots_and_a_quota, &sets, &mut NoPolicies);
    // Cut the history where a compaction could have happened: fold the first part into a
    // snapshot, as `compact(engine.export())` writes it, and keep the rest as the new journal.
    let cut = history.changes.len() / 2;
    let mut snapshot = crate::engine::Snapshot::default();
    let mut at = Time(0);
    for change in &history.changes[..cut] {
        if let crate::engine::Change::Clock { at: t } = change {
            at = *t;
        }
        snapshot.apply(change.clone());
    }
    let mut engine = Engine::new(Box::new(two_slots_and_a_quota));
    engine.record_changes(true);
    engine.restore(at, snapshot.clone(), &mut NoPolicies);
    let mut limits = Vec::new();
    engine.take_changes(&mut limits);
    engine.journal_limits();
    limits.clear();
    engine.take_changes(&mut limits);
    assert!(
        matches!(limits[0], crate::engine::Change::Clock { .. }),
        "{limits:?}"
    );
    let channels: Vec<&str> = (limits.iter())
        .filter_map(|c| match c {
            crate::engine::Change::Limits { channel, .. } => Some(&**channel),
            _ => None,
        })
        .collect();
    assert_eq!(channels, ["a", "b"]);
    let mut changes = limits;
    changes.extend(history.changes[cut..].iter().cloned());
    let trace = Trace::from_history(History {
        start: snapshot,
        generations: vec![1],
        changes,
        warnings: Vec::new(),
    });
    assert!(
        trace.unknown_limits.is_empty(),
        "{:?}",
        trace.unknown_limits
    );
    assert_eq!(trace.limits["a"].max_concurrent_jobs, 2);
    let none = HashMap::new();
    let out = simulate(
        &trace,
        Setup::Recorded(&none),
        EngineLimits::default(),
        None,
        trace.begin,
        trace.end,
    );
    for (i, job) in trace.jobs.iter().enumerate() {
        if !job.running_at_start {
            assert_eq!(out.granted[i], job.granted, "{}", job.uid);
        }
    }
}
