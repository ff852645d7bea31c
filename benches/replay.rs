//! What `coordinosaur replay` costs, and what journal format 4 adds to the journal.
//!
//! Run with `cargo bench --bench replay`. A one-channel workload (4 slots, a 350-per-second
//! quota; each job registers 3 ms after the previous one and runs 10 ms) is played against the
//! engine with recording on and journaled into a temp dir, one batch per event as the driver
//! submits them. Then:
//! 1. journal bytes per job, as written (format 4) and with the changes format 3 could express
//!    (no `Clock`, `Started` or `Limits`; `Left` as `Removed`), journaled the same way;
//! 2. the replay of that dir: read the history, build the trace, run the recorded limits, and a
//!    candidate with 2 slots (median of 3).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use coordinosaur::engine::{
    Change, ChannelOptions, Engine, EngineLimits, Input, Millis, NoPolicies, Output, QuotaLog,
    QuotaSpec, Registration, Reply, Snapshot, Time,
};
use coordinosaur::replay::sim::{simulate, Setup};
use coordinosaur::replay::trace::Trace;
use coordinosaur::state::{self, read::read_history, Durability};

const T0: u64 = 1_800_000_000_000;

fn options(max: u32) -> ChannelOptions {
    ChannelOptions {
        max_concurrent_jobs: max,
        quotas: vec![QuotaSpec {
            name: "second".into(),
            interval: Millis(1_000),
            limit: 350,
            log: QuotaLog::Quiet,
        }],
        ..ChannelOptions::default()
    }
}

/// Plays `n` jobs and returns every batch of changes, one per event.
fn record(n: u64) -> Vec<Vec<Change>> {
    let mut engine = Engine::with_limits(
        Box::new(|_| options(4)),
        EngineLimits {
            max_waiting_per_channel: usize::MAX,
            max_waiting_bytes: usize::MAX,
            ..EngineLimits::default()
        },
    );
    engine.record_changes(true);
    engine.restore(Time(T0), Snapshot::default(), &mut NoPolicies);
    let mut batches = Vec::new();
    let take = |engine: &mut Engine, batches: &mut Vec<Vec<Change>>| {
        let mut changes = Vec::new();
        engine.take_changes(&mut changes);
        if !changes.is_empty() {
            batches.push(changes);
        }
    };
    take(&mut engine, &mut batches);
    // Finishes due, by time.
    let mut ends: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut next = 0u64;
    loop {
        let arrival = (next < n).then(|| T0 + next * 3);
        let end = ends.keys().next().map(|k| k.0);
        let deadline = engine.next_deadline().map(|d| d.0);
        let Some(t) = [arrival, end, deadline].into_iter().flatten().min() else {
            break;
        };
        if deadline == Some(t) && arrival != Some(t) && end != Some(t) {
            engine.handle_timeout(Time(t));
        } else if end == Some(t) {
            let (_, uid) = ends.pop_first().expect("an end is due");
            engine.handle(
                Time(t),
                Input::Finished {
                    channel: "bench".into(),
                    uid,
                    token: None,
                },
            );
        } else {
            engine.handle(
                Time(t),
                Input::Register(Registration {
                    channel: "bench".into(),
                    uid: format!("job-{next:07}"),
                    timeout: Millis(60_000),
                    priority: 0,
                    meta: None,
                    reply: Reply::Plain,
                    cost: 1,
                    progress: false,
                }),
            );
            next += 1;
        }
        while let Some(out) = engine.poll_output() {
            if let Output::Go { uid, at, seq, .. } = out {
                ends.insert((at.0 + 10, seq), uid.to_string());
            }
        }
        take(&mut engine, &mut batches);
    }
    batches
}

/// What format 3 would have journaled of the same batches.
fn as_format_3(batches: &[Vec<Change>]) -> Vec<Vec<Change>> {
    (batches.iter())
        .map(|b| {
            (b.iter())
                .filter_map(|c| match c {
                    Change::Clock { .. } | Change::Started | Change::Limits { .. } => None,
                    Change::Left { channel, uid, .. } => Some(Change::Removed {
                        channel: channel.clone(),
                        uid: uid.clone(),
                    }),
                    other => Some(other.clone()),
                })
                .collect::<Vec<_>>()
        })
        .filter(|b| !b.is_empty())
        .collect()
}

/// Journals `batches` into a new state dir; returns it and the journal's size.
fn journal(batches: &[Vec<Change>]) -> (tempfile::TempDir, u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_, _, mut journal) = state::open(dir.path(), Durability::Os, |_| 0).expect("open");
    for b in batches {
        journal.submit(b);
    }
    journal.close(Duration::from_secs(60));
    let bytes = std::fs::metadata(dir.path().join("journal.0")).map_or(0, |m| m.len());
    (dir, bytes)
}

fn main() {
    println!("coordinosaur replay benchmark (release profile, single thread)\n");
    println!("| jobs | journal bytes, format 4 | per job | same events as format 3 | per job | replay: read + trace | recorded limits | candidate (2 slots) | reproduced |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in [10_000u64, 100_000] {
        let batches = record(n);
        let (dir, bytes4) = journal(&batches);
        let (_old, bytes3) = journal(&as_format_3(&batches));
        let (mut reads, mut recs, mut cands) = (Vec::new(), Vec::new(), Vec::new());
        let mut reproduced = (0, 0);
        for _ in 0..3 {
            let started = Instant::now();
            let trace = Trace::from_history(read_history(dir.path()).expect("read"));
            reads.push(started.elapsed());
            let none = HashMap::new();
            let limits = EngineLimits {
                max_waiting_per_channel: usize::MAX,
                max_waiting_bytes: usize::MAX,
                ..EngineLimits::default()
            };
            let (from, until) = (trace.begin, trace.end);
            let started = Instant::now();
            let out = simulate(&trace, Setup::Recorded(&none), limits, None, from, until);
            recs.push(started.elapsed());
            let granted: Vec<usize> = (0..trace.jobs.len())
                .filter(|&i| trace.jobs[i].granted.is_some())
                .collect();
            let exact = (granted.iter())
                .filter(|&&i| out.granted[i] == trace.jobs[i].granted)
                .count();
            reproduced = (exact, granted.len());
            let two = |_: &str| options(2);
            let started = Instant::now();
            std::hint::black_box(simulate(
                &trace,
                Setup::Candidate(&two),
                limits,
                None,
                from,
                until,
            ));
            cands.push(started.elapsed());
        }
        let median = |v: &mut Vec<Duration>| {
            v.sort();
            v[1].as_secs_f64() * 1e3
        };
        println!(
            "| {n} | {bytes4} | {:.1} | {bytes3} | {:.1} | {:.1} ms | {:.1} ms | {:.1} ms | {} of {} |",
            bytes4 as f64 / n as f64,
            bytes3 as f64 / n as f64,
            median(&mut reads),
            median(&mut recs),
            median(&mut cands),
            reproduced.0,
            reproduced.1,
        );
    }
}
