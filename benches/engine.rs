//! In-process benchmarks of the rules engine: no I/O, no clock, no MQTT.
//!
//! Run with `cargo bench --bench engine`. Prints three tables:
//! 1. grant cycles per second (register -> go -> finished) with 1 and 64 slots; then with each
//!    `go` encoded for the wire, as the original protocol's plain uid and as the JSON reply with
//!    its fencing token;
//! 2. cost of one grant cycle against queue depth (target: flat);
//! 3. live heap bytes per queued job, counted by a global allocator wrapper (target < 300 B);
//! 4. durable state: journal size, and start-up (fold the journal, write the new generation,
//!    restore the engine) for 10k / 100k queued jobs, in a temp dir on the machine's disk;
//! 5. job cost and progress on vs off: grant cycles with costs above 1, and 10,000 waiting jobs
//!    under churn with every job asking for its position (position messages per grant).
//!
//! Engine time is a counter advanced by hand; uids look like real ones (`job-0001234`) and are
//! formatted per message, as the daemon decodes a fresh `String` from every payload.

use std::hint::black_box;
use std::time::{Duration, Instant};

use coordinosaur::engine::{
    ChannelOptions, Engine, EngineLimits, Input, Millis, Output, Registration, Reply, Time,
};

#[global_allocator]
static ALLOC: counting_alloc::Counting = counting_alloc::Counting::new();

/// Channel used by every measurement.
const CHANNEL: &str = "bench";
/// Job timeout: long enough that no lease ever expires during a run.
const JOB_TIMEOUT: Millis = Millis(3_600_000);

fn main() {
    // `cargo bench` passes `--bench`; a filter or other flags are not supported and ignored.
    println!("coordinosaur engine benchmarks (release profile, single thread)\n");
    grant_cycles();
    encoded_cycles();
    depth_scaling();
    bytes_per_job();
    restore_time();
    cost_cycles();
    progress_churn();
}

/// Section 5a: grant cycles with four units, full: four jobs of cost 1 in flight, or two of
/// cost 2 (each cycle finishes the oldest and registers one that is granted at once).
fn cost_cycles() {
    const CYCLES: u64 = 2_000_000;
    println!("## 5a. Job cost: grant cycles with max_concurrent_jobs = 4, {CYCLES} cycles");
    println!("| cost per job | jobs in flight | cycles/s | ns/cycle |");
    println!("|---:|---:|---:|---:|");
    for cost in [1u32, 2] {
        let mut e = engine(4);
        let w = u64::from(4 / cost);
        let mut gos = 0;
        for i in 0..w {
            e.handle(now(i), register_job(uid(i), cost, false));
            gos += drain_gos(&mut e);
        }
        assert_eq!(gos, w);
        let start = Instant::now();
        gos = 0;
        for i in w..w + CYCLES {
            e.handle(now(i), finished(uid(i - w)));
            gos += drain_gos(&mut e);
            e.handle(now(i), register_job(uid(i), cost, false));
            gos += drain_gos(&mut e);
        }
        let elapsed = start.elapsed();
        assert_eq!(gos, CYCLES, "one Go per cycle");
        black_box(&e);
        println!(
            "| {cost} | {w} | {:.0} | {:.0} |",
            CYCLES as f64 / elapsed.as_secs_f64(),
            per(elapsed, CYCLES)
        );
    }
    println!();
}

/// Section 5b: one running job and 10,000 waiting; each cycle finishes the running job (the
/// head is granted) and registers a new one at the tail, `gap` of engine time apart, every
/// output encoded for the wire. With progress every job asks for its position: the table
/// counts the position messages (each one MQTT publish) per grant.
fn progress_churn() {
    const DEPTH: u64 = 10_000;
    const CYCLES: u64 = 200_000;
    println!(
        "## 5b. Progress: {DEPTH} waiting jobs under churn (max_concurrent_jobs = 1), {CYCLES} cycles"
    );
    println!("| progress | grants per second of engine time | cycles/s | ns/cycle | position messages per grant | position bytes per grant |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (progress, gap_us) in [
        (false, 1_000u64),
        (true, 1_000),
        (true, 100_000),
        (true, 10),
    ] {
        let mut e = engine(1);
        // Engine time in microseconds of the run, rounded down to the engine's milliseconds.
        let at = |i: u64| Time(1_700_000_000_000 + i * gap_us / 1_000);
        for i in 0..=DEPTH {
            e.handle(at(0), register_job(uid(i), 1, progress));
        }
        let mut positions = 0u64;
        let mut bytes = 0u64;
        let mut gos = 0u64;
        let mut encode = |e: &mut Engine, positions: &mut u64, bytes: &mut u64| {
            while let Some(out) = e.poll_output() {
                let is_position = matches!(out, Output::Position { .. });
                gos += u64::from(matches!(out, Output::Go { .. }));
                for (topic, payload) in coordinosaur::protocol::encode("coordinosaur", &out) {
                    if is_position {
                        *positions += 1;
                        *bytes += (topic.len() + payload.len()) as u64;
                    }
                    black_box((topic, payload));
                }
            }
        };
        encode(&mut e, &mut positions, &mut bytes);
        let (mut positions, mut bytes) = (0, 0);
        let start = Instant::now();
        for i in 0..CYCLES {
            let t = at(i + 1);
            if e.next_deadline().is_some_and(|d| d <= t) {
                e.handle_timeout(t);
            }
            e.handle(t, finished(uid(i)));
            e.handle(t, register_job(uid(DEPTH + 1 + i), 1, progress));
            encode(&mut e, &mut positions, &mut bytes);
        }
        let elapsed = start.elapsed();
        black_box(&e);
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} |",
            if progress { "on" } else { "off" },
            1e6 / gap_us as f64,
            CYCLES as f64 / elapsed.as_secs_f64(),
            per(elapsed, CYCLES),
            positions as f64 / CYCLES as f64,
            bytes as f64 / CYCLES as f64,
        );
    }
    println!();
}

fn register_job(uid: String, cost: u32, progress: bool) -> Input {
    Input::Register(Registration {
        channel: CHANNEL.to_owned(),
        uid,
        timeout: JOB_TIMEOUT,
        priority: 0,
        meta: None,
        reply: Reply::Plain,
        cost,
        progress,
    })
}

/// Section 4: a daemon's start-up with `n` waiting jobs (and 1 running) in its journal: how long
/// `state::open` takes (read and fold the journal, write the new snapshot and journal) and how
/// long `Engine::restore` takes, median of 3.
fn restore_time() {
    use coordinosaur::engine::{Change, NoPolicies};
    use coordinosaur::state::{self, Durability};
    println!("## 4. Durable state: start-up with N queued jobs (durability = os, median of 3)");
    println!("| queued jobs | journal bytes | bytes/job | state::open (fold + new generation) | Engine::restore | total |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for n in [10_000u64, 100_000] {
        let mut opens = Vec::new();
        let mut restores = Vec::new();
        let mut journal_bytes = 0;
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            {
                let mut e = engine(1);
                e.record_changes(true);
                let (_, _, mut journal) =
                    state::open(dir.path(), Durability::Os, |_| 0).expect("open state");
                let mut changes: Vec<Change> = Vec::new();
                for i in 0..n {
                    e.handle(now(i), register(uid(i)));
                    drain_gos(&mut e);
                    e.take_changes(&mut changes);
                    // One batch per event, as the driver submits them.
                    journal.submit(&changes);
                    changes.clear();
                }
                journal.close(Duration::from_secs(30));
                journal_bytes =
                    std::fs::metadata(dir.path().join("journal.0")).map_or(0, |m| m.len());
            }
            let started = Instant::now();
            let (snapshot, _, journal) =
                state::open(dir.path(), Durability::Os, |_| 0).expect("reopen state");
            opens.push(started.elapsed());
            let started = Instant::now();
            let mut e = engine(1);
            e.restore(now(n), snapshot, &mut NoPolicies);
            restores.push(started.elapsed());
            assert_eq!(e.waiting(CHANNEL).len() as u64, n - 1, "restored queue");
            drop(journal);
        }
        opens.sort();
        restores.sort();
        let (open, restore) = (opens[1], restores[1]);
        println!(
            "| {n} | {journal_bytes} | {:.1} | {:.1} ms | {:.1} ms | {:.1} ms |",
            journal_bytes as f64 / n as f64,
            open.as_secs_f64() * 1e3,
            restore.as_secs_f64() * 1e3,
            (open + restore).as_secs_f64() * 1e3
        );
    }
    println!();
}

/// An engine whose every channel allows `max` running jobs and has no quota, and whose waiting
/// limits are above the deepest queue measured (the defaults, 100,000 jobs and 256 MiB, would
/// refuse the rest).
fn engine(max: u32) -> Engine {
    let limits = EngineLimits {
        max_waiting_per_channel: 2_000_000,
        max_waiting_bytes: usize::MAX,
        ..EngineLimits::default()
    };
    Engine::with_limits(
        Box::new(move |_| ChannelOptions {
            max_concurrent_jobs: max,
            ..ChannelOptions::default()
        }),
        limits,
    )
}

fn uid(i: u64) -> String {
    format!("job-{i:07}")
}

fn register(uid: String) -> Input {
    register_with(uid, Reply::Plain)
}

fn register_with(uid: String, reply: Reply) -> Input {
    Input::Register(Registration {
        channel: CHANNEL.to_owned(),
        uid,
        timeout: JOB_TIMEOUT,
        priority: 0,
        meta: None,
        reply,
        cost: 1,
        progress: false,
    })
}

fn finished(uid: String) -> Input {
    Input::Finished {
        channel: CHANNEL.to_owned(),
        uid,
        token: None,
    }
}

/// Takes every pending output and returns how many were `Go`.
fn drain_gos(engine: &mut Engine) -> u64 {
    let mut gos = 0;
    while let Some(out) = engine.poll_output() {
        if matches!(out, Output::Go { .. }) {
            gos += 1;
        }
        black_box(out);
    }
    gos
}

/// Engine time for iteration `i`: one millisecond every 1,000 inputs.
fn now(i: u64) -> Time {
    Time(1_700_000_000_000 + i / 1_000)
}

/// Section 1: register -> Go -> finished, with `slots` jobs in flight (1 and 64).
fn grant_cycles() {
    const CYCLES: u64 = 2_000_000;
    println!("## 1. Grant cycles (register -> go -> finished), {CYCLES} cycles");
    println!("| max_concurrent_jobs | jobs in flight | cycles/s | ns/cycle |");
    println!("|---:|---:|---:|---:|");
    for slots in [1u32, 64] {
        let mut e = engine(slots);
        let w = u64::from(slots);
        // Warm-up: create the channel and size its maps.
        let mut gos = 0;
        for i in 0..w {
            e.handle(now(i), register(uid(i)));
            gos += drain_gos(&mut e);
        }
        assert_eq!(gos, w, "every warm-up register must be granted at once");
        let start = Instant::now();
        gos = 0;
        // Keep `slots` jobs in flight: finish the oldest, register a new one (granted at once).
        for i in w..w + CYCLES {
            e.handle(now(i), finished(uid(i - w)));
            gos += drain_gos(&mut e);
            e.handle(now(i), register(uid(i)));
            gos += drain_gos(&mut e);
        }
        let elapsed = start.elapsed();
        assert_eq!(gos, CYCLES, "one Go per cycle");
        black_box(&e);
        println!(
            "| {slots} | {slots} | {:.0} | {:.0} |",
            CYCLES as f64 / elapsed.as_secs_f64(),
            per(elapsed, CYCLES)
        );
    }
    println!();
}

/// Section 1b: as section 1 with one slot, but every output is encoded into its topic and
/// payload as the MQTT sink does: the `go` as the plain uid, or as the JSON reply.
fn encoded_cycles() {
    const CYCLES: u64 = 2_000_000;
    println!("## 1b. Grant cycles with each go encoded (max_concurrent_jobs = 1), {CYCLES} cycles");
    println!("| reply | cycles/s | ns/cycle | go payload bytes |");
    println!("|---|---:|---:|---:|");
    for (name, reply) in [("plain (uid)", Reply::Plain), ("json (token)", Reply::Json)] {
        let mut e = engine(1);
        let mut bytes = 0;
        let mut encode = |e: &mut Engine| {
            let mut gos = 0;
            while let Some(out) = e.poll_output() {
                for (topic, payload) in coordinosaur::protocol::encode("coordinosaur", &out) {
                    if matches!(out, Output::Go { .. }) {
                        gos += 1;
                        bytes = payload.len();
                    }
                    black_box((topic, payload));
                }
            }
            gos
        };
        e.handle(now(0), register_with(uid(0), reply));
        assert_eq!(encode(&mut e), 1);
        let start = Instant::now();
        let mut gos = 0;
        for i in 1..=CYCLES {
            e.handle(now(i), finished(uid(i - 1)));
            gos += encode(&mut e);
            e.handle(now(i), register_with(uid(i), reply));
            gos += encode(&mut e);
        }
        let elapsed = start.elapsed();
        assert_eq!(gos, CYCLES, "one Go per cycle");
        println!(
            "| {name} | {:.0} | {:.0} | {bytes} |",
            CYCLES as f64 / elapsed.as_secs_f64(),
            per(elapsed, CYCLES)
        );
    }
    println!();
}

/// Section 2: one running job and `depth` waiting; each cycle finishes the running job (the
/// queue head is granted) and registers a new job at the tail, so the depth stays constant.
fn depth_scaling() {
    const CYCLES: u64 = 500_000;
    println!("## 2. Cost per grant vs queue depth (max_concurrent_jobs = 1, {CYCLES} cycles each)");
    println!("| waiting jobs | fill time | ns/cycle (finished -> go + register) | cycles/s |");
    println!("|---:|---:|---:|---:|");
    for depth in [10u64, 1_000, 100_000, 1_000_000] {
        let mut e = engine(1);
        let fill = Instant::now();
        // Job 0 runs; jobs 1..=depth wait.
        for i in 0..=depth {
            e.handle(now(i), register(uid(i)));
        }
        let fill = fill.elapsed();
        assert_eq!(drain_gos(&mut e), 1);
        let start = Instant::now();
        let mut gos = 0;
        for i in 0..CYCLES {
            let t = now(depth + i);
            e.handle(t, finished(uid(i)));
            gos += drain_gos(&mut e);
            e.handle(t, register(uid(depth + 1 + i)));
            gos += drain_gos(&mut e);
        }
        let elapsed = start.elapsed();
        assert_eq!(gos, CYCLES, "one Go per cycle");
        let state = e.channel_state(CHANNEL).expect("channel exists");
        assert_eq!(state.waiting as u64, depth, "depth stays constant");
        black_box(&e);
        println!(
            "| {depth} | {:.0} ms | {:.0} | {:.0} |",
            fill.as_secs_f64() * 1e3,
            per(elapsed, CYCLES),
            CYCLES as f64 / elapsed.as_secs_f64()
        );
    }
    println!();
}

/// Section 3: live heap bytes per waiting job, by the counting allocator (requested sizes; the
/// system allocator adds its own rounding and headers on top). RSS is not used: it reuses memory
/// freed by the earlier sections and understates the growth.
fn bytes_per_job() {
    println!("## 3. Memory per queued job (max_concurrent_jobs = 1, uids like \"job-0001234\")");
    println!("| queued jobs | heap bytes/job (counted) | allocations/job |");
    println!("|---:|---:|---:|");
    // 900k sits just below a hash table doubling, 1M just above it: the range shows the step.
    for jobs in [900_000u64, 1_000_000] {
        let mut e = engine(1);
        // The channel exists and one job runs before the measurement starts.
        e.handle(now(0), register(uid(0)));
        drain_gos(&mut e);
        let heap0 = ALLOC.live_bytes();
        let allocs0 = ALLOC.allocations();
        for i in 1..=jobs {
            e.handle(now(i), register(uid(i)));
        }
        let gos = drain_gos(&mut e);
        assert_eq!(gos, 0, "nothing is granted while the slot is taken");
        let heap = ALLOC.live_bytes() - heap0;
        let allocs = ALLOC.allocations() - allocs0;
        println!(
            "| {jobs} | {:.1} | {:.2} |",
            heap as f64 / jobs as f64,
            allocs as f64 / jobs as f64,
        );
        black_box(&e);
        drop(e);
    }
    println!("\nTarget: < 300 bytes per queued job.");
}

fn per(elapsed: Duration, n: u64) -> f64 {
    elapsed.as_nanos() as f64 / n as f64
}
