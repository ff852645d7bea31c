//! In-process benchmarks of the policy host: wasmtime components behind the engine's hooks.
//!
//! Run with `cargo bench --bench policy`. Builds the guest policies of `policies/` first (as the
//! tests do: `policies/target/wasm32-unknown-unknown/release/*.wasm`), then prints:
//! 1. the cost of one hook call of `priority` (`admit`, `before-grant`, `on-event`) through
//!    [`PolicyHost`] and the [`Policies`] trait, median / p99 / p99.9 over many samples, plus
//!    `admit` with a larger `meta` (what the guest's JSON parse and the string copies cost);
//! 2. engine-only grant cycles (register -> go -> finished) through `Engine::handle_with` with
//!    the `priority` policy against `NoPolicies`;
//! 3. hot reload: `Compiler::compile` of each example component, and `PolicyHost::swap` +
//!    `Engine::readmit_channels` with 1,000 waiting jobs (the driver's reload path),
//!    and (3c) cold vs cached loads through the on-disk [`PolicyCache`] (compile + write the
//!    entry, then verify + deserialize it), for each example component and, when they are
//!    built, the JavaScript and Python policies (`policies/js`, `policies/python`);
//! 4. section 1 again with the Prometheus recorder installed (as with `[metrics] listen`), since
//!    every call records a histogram;
//! 5. the JavaScript and Python policies next to `priority` (`policy/languages.rs`; alone with
//!    `cargo bench --bench policy -- languages`).
//!
//! `cargo bench --bench policy -- cycles` stops after sections 1 and 2 (e.g. under `perf record`).
//!
//! No I/O or clock in the measured loops; engine time is a counter advanced by hand.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coordinosaur::config::PolicySandbox;
use coordinosaur::engine::{
    Admission, ChannelOptions, ChannelView, Decision, Engine, Input, JobEvent, JobInfo, Millis,
    NoPolicies, Output, Policies, Registration, Time,
};
use coordinosaur::policy::{Compiler, PolicyCache, PolicyHost};

#[path = "policy/languages.rs"]
mod languages;
#[path = "../tests/common/policies.rs"]
#[allow(
    dead_code,
    reason = "shared with the tests; the bench uses only policy_wasm and language_policy_wasm"
)]
mod policies;

/// Channel used by every measurement.
const CHANNEL: &str = "bench";
/// Job timeout: no lease ever expires during a run.
const JOB_TIMEOUT: Millis = Millis(3_600_000);
/// Hook calls timed per hook (after the warm-up).
const HOOK_SAMPLES: usize = 50_000;
const HOOK_WARMUP: usize = 2_000;
/// A registration's extra fields, as the load generator of `benches/mqtt.rs` sends them.
const META: &str = r#"{"priority":3}"#;
/// The example components of `policies/` (crate names).
const EXAMPLES: [&str; 3] = ["priority", "fair-share", "deny"];

fn main() {
    println!("coordinosaur policy benchmarks (release profile, single thread)\n");
    // Failed calls (e.g. a call preempted past its epoch deadline) are logged here at warn.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("warn")
        .init();
    eprintln!("building the guest policies (cd policies && cargo build --release) ...");
    let started = Instant::now();
    let priority = policies::policy_wasm("priority");
    eprintln!("policies built in {:.1} s", started.elapsed().as_secs_f64());
    let compiler = Compiler::new().expect("wasmtime engine");
    if std::env::args().any(|a| a == "languages") {
        languages::run(&compiler);
        return;
    }

    hook_costs(&compiler, &priority, "without a metrics recorder");
    engine_cycles(&compiler, &priority);
    if std::env::args().any(|a| a == "cycles") {
        return;
    }
    reload(&compiler);
    languages::run(&compiler);
    cache_loads();
    // The daemon's own exporter (buckets included), on a free loopback port.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let _guard = rt.enter();
    coordinosaur::metrics::install(([127, 0, 0, 1], 0).into()).expect("install the exporter");
    hook_costs(
        &compiler,
        &priority,
        "with the Prometheus recorder installed ([metrics] listen)",
    );
}

/// Options of a channel running `policy`.
fn options(policy: Option<&Path>, max: u32, config: &str) -> ChannelOptions {
    ChannelOptions {
        max_concurrent_jobs: max,
        policy: policy.map(Arc::from),
        policy_config: Arc::from(config),
        ..ChannelOptions::default()
    }
}

fn host(compiler: &Compiler, preload: &[&Path]) -> PolicyHost {
    let mut host = PolicyHost::new(compiler.clone(), &PolicySandbox::default());
    let paths: Vec<Arc<Path>> = preload.iter().map(|p| Arc::from(*p)).collect();
    host.preload(&paths).expect("compile the policy");
    host
}

/// Engine time for iteration `i`: one millisecond every 1,000 inputs.
fn now(i: u64) -> Time {
    Time(1_700_000_000_000 + i / 1_000)
}

// ---------------------------------------------------------------------------------------------
// 1. Hook call cost

/// Times `HOOK_SAMPLES` calls of each hook, interleaved (admit, before-grant, on-event, ...)
/// so that drifting load from other processes hits them alike.
fn hook_costs(compiler: &Compiler, priority: &Path, label: &str) {
    let mut host = host(compiler, &[priority]);
    let opts = options(Some(priority), 64, "{}");
    let big_meta = big_meta();
    let metas: [(&str, &str); 2] = [("admit", META), ("admit, 1 KiB meta", &big_meta)];
    // Hooks: admit (small meta), admit (big meta), before-grant, on-event, timer alone.
    let mut samples: [Vec<Duration>; 5] = Default::default();
    let names = [
        metas[0].0,
        metas[1].0,
        "before-grant (not declared by `priority` 0.2.0: no call)",
        "on-event (finished) (not declared: no call)",
        "(timer overhead: Instant::now pair)",
    ];
    for (i, s) in samples.iter_mut().enumerate() {
        s.reserve(if i < 4 { HOOK_SAMPLES } else { 0 });
    }
    let mut fallbacks = 0u64;
    for n in 0..HOOK_WARMUP + HOOK_SAMPLES {
        let record = n >= HOOK_WARMUP;
        let uid = format!("job-{n:07}");
        let t = now(n as u64);
        let view = ChannelView {
            channel: CHANNEL,
            options: &opts,
            running: 10,
            waiting: 5,
            now: t,
        };
        for (k, (_, meta)) in metas.iter().enumerate() {
            let info = JobInfo {
                uid: &uid,
                timeout: JOB_TIMEOUT,
                registered_at: t,
                meta: Some(meta),
            };
            let t0 = Instant::now();
            let a = host.admit(&view, &info);
            let d = t0.elapsed();
            // Anything else is the fallback of a failed call (counted in the stats).
            fallbacks += u64::from(a != Admission::Accept(3));
            if record {
                samples[k].push(d);
            }
        }
        let info = JobInfo {
            uid: &uid,
            timeout: JOB_TIMEOUT,
            registered_at: t,
            meta: Some(META),
        };
        let t0 = Instant::now();
        let d = host.before_grant(&view, &info);
        let e = t0.elapsed();
        assert_eq!(d, Decision::Grant, "priority and the fallback both grant");
        let t0 = Instant::now();
        host.on_event(&view, JobEvent::Finished, &info);
        let f = t0.elapsed();
        let t0 = Instant::now();
        let g = t0.elapsed();
        if record {
            samples[2].push(e);
            samples[3].push(f);
            samples[4].push(g);
        }
    }
    let stats = host.stats();
    println!(
        "## 1. Hook call cost, policy `priority` through PolicyHost ({label}); {HOOK_SAMPLES} samples each after {HOOK_WARMUP} warm-up, interleaved"
    );
    println!("| hook | median us | p99 us | p99.9 us | mean us |");
    println!("|---|---:|---:|---:|---:|");
    for (name, s) in names.iter().zip(samples.iter_mut()) {
        let mean = s.iter().sum::<Duration>().as_secs_f64() * 1e6 / s.len() as f64;
        s.sort_unstable();
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {mean:.2} |",
            quantile(s, 0.5),
            quantile(s, 0.99),
            quantile(s, 0.999)
        );
    }
    println!(
        "(calls: {}, failed calls: {} (admit fallbacks seen: {fallbacks}), instances created: {})\n",
        stats.calls, stats.failures, stats.instantiations
    );
}

/// A `meta` of about 1 KiB: the priority field plus padding fields the policy must skip.
fn big_meta() -> String {
    let mut s = String::from(r#"{"priority":3"#);
    let mut i = 0;
    while s.len() < 1_000 {
        s.push_str(&format!(r#","field{i:02}":"value-{i:04}-abcdefghij""#));
        i += 1;
    }
    s.push('}');
    s
}

/// Microseconds at quantile `q` of sorted `v`.
fn quantile(v: &[Duration], q: f64) -> f64 {
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i].as_secs_f64() * 1e6
}

// ---------------------------------------------------------------------------------------------
// 2. Engine cycles with and without a policy

fn register(uid: String, priority: i64) -> Input {
    Input::Register(Registration {
        channel: CHANNEL.to_owned(),
        uid,
        timeout: JOB_TIMEOUT,
        priority,
        meta: Some(META.into()),
        reply: Default::default(),
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

/// `cycles` register -> go -> finished cycles with 64 jobs in flight; returns the elapsed time.
fn run_cycles(engine: &mut Engine, hooks: &mut dyn Policies, first: u64, cycles: u64) -> Duration {
    const SLOTS: u64 = 64;
    let uid = |i: u64| format!("job-{i:07}");
    let mut gos = 0;
    for i in first..first + SLOTS {
        engine.handle_with(now(i), register(uid(i), 0), hooks);
        gos += drain_gos(engine);
    }
    assert_eq!(gos, SLOTS, "every warm-up register is granted at once");
    gos = 0;
    let start = Instant::now();
    for i in first + SLOTS..first + SLOTS + cycles {
        engine.handle_with(now(i), finished(uid(i - SLOTS)), hooks);
        gos += drain_gos(engine);
        engine.handle_with(now(i), register(uid(i), 0), hooks);
        gos += drain_gos(engine);
    }
    let elapsed = start.elapsed();
    assert_eq!(gos, cycles, "one Go per cycle");
    // Leave the channel empty for the next run.
    for i in first + cycles..first + cycles + SLOTS {
        engine.handle_with(now(i), finished(uid(i)), hooks);
        drain_gos(engine);
    }
    elapsed
}

fn engine_cycles(compiler: &Compiler, priority: &Path) {
    const CYCLES: u64 = 100_000;
    const ROUNDS: usize = 5;
    println!(
        "## 2. Engine-only grant cycles (register -> go -> finished, 64 in flight, meta {META}); {ROUNDS} interleaved rounds x {CYCLES} cycles"
    );
    let path = priority.to_owned();
    let mut with = Engine::new(Box::new(move |_| options(Some(&path), 64, "{}")));
    let mut without = Engine::new(Box::new(|_| options(None, 64, "{}")));
    // The same policy as its own shadow: every call made twice, every answer compared.
    let path = priority.to_owned();
    let mut shadowed = Engine::new(Box::new(move |_| ChannelOptions {
        policy_shadow: Some(Arc::from(path.as_path())),
        ..options(Some(&path), 64, "{}")
    }));
    let mut host = host(compiler, &[priority]);
    let mut shadow_host = self::host(compiler, &[priority]);
    let (mut t_with, mut t_without, mut t_shadowed) = (Vec::new(), Vec::new(), Vec::new());
    // Warm-up round, not recorded.
    run_cycles(&mut with, &mut host, 0, CYCLES / 10);
    run_cycles(&mut without, &mut NoPolicies, 0, CYCLES / 10);
    run_cycles(&mut shadowed, &mut shadow_host, 0, CYCLES / 10);
    let calls0 = host.stats().calls;
    for round in 0..ROUNDS {
        let first = (round as u64 + 1) * 10 * CYCLES;
        t_with.push(run_cycles(&mut with, &mut host, first, CYCLES));
        t_without.push(run_cycles(&mut without, &mut NoPolicies, first, CYCLES));
        t_shadowed.push(run_cycles(&mut shadowed, &mut shadow_host, first, CYCLES));
    }
    let stats = host.stats();
    let rate = |d: &Duration| CYCLES as f64 / d.as_secs_f64();
    let summary = |ts: &[Duration]| {
        let total: Duration = ts.iter().sum();
        let rates: Vec<f64> = ts.iter().map(rate).collect();
        let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = rates.iter().copied().fold(0.0, f64::max);
        let per_s = CYCLES as f64 * ts.len() as f64 / total.as_secs_f64();
        (per_s, lo, hi)
    };
    let (w, wlo, whi) = summary(&t_with);
    let (n, nlo, nhi) = summary(&t_without);
    let (sh, shlo, shhi) = summary(&t_shadowed);
    println!("| hooks | cycles/s | per round, min-max | us/cycle | hook calls/cycle |");
    println!("|---|---:|---:|---:|---:|");
    // Includes each round's 64 extra registers and finishes (0.1 % of the calls).
    let calls_per_cycle = (stats.calls - calls0) as f64 / (ROUNDS as u64 * CYCLES) as f64;
    println!(
        "| priority (PolicyHost) | {w:.0} | {wlo:.0}-{whi:.0} | {:.2} | {calls_per_cycle:.1} |",
        1e6 / w
    );
    println!(
        "| priority + priority as policy_shadow | {sh:.0} | {shlo:.0}-{shhi:.0} | {:.2} | {:.1} |",
        1e6 / sh,
        2.0 * calls_per_cycle
    );
    println!(
        "| NoPolicies | {n:.0} | {nlo:.0}-{nhi:.0} | {:.2} | 0 |",
        1e6 / n
    );
    println!(
        "\nRatio with / without policy: {:.3} (policy cost per cycle {:.2} us); failed calls: {} of {}\n",
        w / n,
        1e6 / w - 1e6 / n,
        stats.failures,
        stats.calls
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Hot reload

fn reload(compiler: &Compiler) {
    const COMPILES: usize = 10;
    const WAITING: usize = 1_000;
    const SWAPS: usize = 10;
    println!("## 3a. Compile time (Compiler::compile: read + compile + type-check), {COMPILES} runs each");
    println!("| component | target | size KiB | median ms | min-max ms |");
    println!("|---|---|---:|---:|---:|");
    for name in EXAMPLES {
        for (target, path) in [
            ("wasm32-unknown-unknown", policies::policy_wasm(name)),
            ("wasm32-wasip2", policies::policy_wasm_wasip2(name)),
        ] {
            let size = std::fs::metadata(&path).map_or(0, |m| m.len());
            let mut times: Vec<Duration> = (0..COMPILES)
                .map(|_| {
                    let t0 = Instant::now();
                    let c = compiler.compile(&path).expect("compile");
                    let d = t0.elapsed();
                    black_box(c);
                    d
                })
                .collect();
            times.sort_unstable();
            println!(
                "| {name} | {target} | {:.1} | {:.1} | {:.1}-{:.1} |",
                size as f64 / 1024.0,
                ms(times[COMPILES / 2]),
                ms(times[0]),
                ms(times[COMPILES - 1])
            );
        }
    }

    // One channel, one running job, WAITING queued jobs; the policy file alternates between
    // priority and deny (deny's tenants list names nobody queued, so no job is rejected).
    let dir = tempfile::Builder::new()
        .prefix("coordinosaur-policy-bench-")
        .tempdir()
        .expect("temp dir");
    let active: PathBuf = dir.path().join("active.wasm");
    let versions: Vec<PathBuf> = ["priority", "deny"]
        .iter()
        .map(|name| {
            let p = dir.path().join(format!("{name}.wasm"));
            std::fs::copy(policies::policy_wasm(name), &p).expect("copy a policy");
            p
        })
        .collect();
    std::fs::copy(&versions[0], &active).expect("copy the first policy");
    let config = r#"{"tenants":["evil"]}"#;
    let path = active.clone();
    let mut engine = Engine::new(Box::new(move |_| options(Some(&path), 1, config)));
    let mut host = host(compiler, &[&active]);
    for i in 0..=WAITING as u64 {
        let reg = Input::Register(Registration {
            channel: CHANNEL.to_owned(),
            uid: format!("job-{i:07}"),
            timeout: JOB_TIMEOUT,
            priority: 0,
            meta: Some(format!(r#"{{"priority":{},"tenant":"t{}"}}"#, i % 10, i % 8).into()),
            reply: Default::default(),
            cost: 1,
            progress: false,
        });
        engine.handle_with(now(i), reg, &mut host);
    }
    assert_eq!(drain_gos(&mut engine), 1);
    assert_eq!(
        engine.counts(CHANNEL).map(|(_, w)| w),
        Some(WAITING),
        "all queued"
    );
    let (mut compile, mut swap, mut readmit) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..SWAPS {
        let next = &versions[(n + 1) % 2];
        std::fs::copy(next, &active).expect("replace the policy");
        let t0 = Instant::now();
        let compiled = compiler.compile(&active).expect("compile");
        let t1 = Instant::now();
        let moved = host.swap(compiled, now(WAITING as u64 + n as u64));
        let t2 = Instant::now();
        engine.readmit_channels(now(WAITING as u64 + n as u64), &moved, &mut host);
        let t3 = Instant::now();
        assert_eq!(moved.len(), 1, "the channel moved to the new version");
        assert!(
            engine.poll_output().is_none(),
            "nothing granted or rejected"
        );
        compile.push(t1 - t0);
        swap.push(t2 - t1);
        readmit.push(t3 - t2);
    }
    let failures = host.stats().failures;
    assert_eq!(engine.counts(CHANNEL).map(|(_, w)| w), Some(WAITING));
    println!(
        "\n## 3b. Swap with {WAITING} waiting jobs (1 channel; priority <-> deny alternately), {SWAPS} swaps"
    );
    println!("| step | median ms | min-max ms |");
    println!("|---|---:|---:|");
    let total: Vec<Duration> = (0..SWAPS).map(|i| swap[i] + readmit[i]).collect();
    for (name, mut v) in [
        ("Compiler::compile (off the driver, in the daemon)", compile),
        ("PolicyHost::swap (instantiate + init)", swap),
        (
            "Engine::readmit_channels (1,000 admit calls + re-rank)",
            readmit,
        ),
        ("swap + readmit (the driver's pause)", total),
    ] {
        v.sort_unstable();
        println!(
            "| {name} | {:.3} | {:.3}-{:.3} |",
            ms(v[SWAPS / 2]),
            ms(v[0]),
            ms(v[SWAPS - 1])
        );
    }
    println!("(failed calls during the swaps: {failures})\n");
}

/// Components built outside `policies/`'s Cargo workspace, measured when present.
const OTHER_LANGUAGES: [(&str, &str); 2] = [
    ("js", "policies/js/policy.wasm"),
    ("python", "policies/python/policy.wasm"),
];

/// Section 3c: `Compiler::compile` through a [`PolicyCache`]: cold (empty cache: compile and
/// write the entry) and cached (verify the entry's HMAC and deserialize), each from a new
/// compiler, as after a restart.
fn cache_loads() {
    const RUNS: usize = 10;
    println!("## 3c. Cold vs cached load (Compiler::compile with [policy_cache]; new Compiler each run), {RUNS} runs each");
    println!("| component | size KiB | entry KiB | cold median ms (min-max) | cached median ms (min-max) |");
    println!("|---|---:|---:|---:|---:|");
    let mut components: Vec<(String, PathBuf)> = EXAMPLES
        .iter()
        .flat_map(|name| {
            [
                (
                    format!("{name} (wasm32-unknown-unknown)"),
                    policies::policy_wasm(name),
                ),
                (
                    format!("{name} (wasm32-wasip2)"),
                    policies::policy_wasm_wasip2(name),
                ),
            ]
        })
        .collect();
    for (name, path) in OTHER_LANGUAGES {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        if path.exists() {
            components.push((name.to_owned(), path));
        } else {
            println!("| {name} | not built ({}) | | | |", path.display());
        }
    }
    for (name, path) in components {
        let dir = tempfile::tempdir().expect("temp dir");
        let compiler = || {
            let cache = PolicyCache::open(dir.path(), u64::MAX).expect("cache");
            Compiler::new().expect("wasmtime engine").with_cache(cache)
        };
        let entries = || -> Vec<PathBuf> {
            std::fs::read_dir(dir.path())
                .expect("cache dir")
                .map(|e| e.expect("entry").path())
                .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
                .collect()
        };
        let (mut cold, mut cached) = (Vec::new(), Vec::new());
        let mut entry_size = 0;
        for _ in 0..RUNS {
            for e in entries() {
                std::fs::remove_file(e).expect("empty the cache");
            }
            let c = compiler();
            let t0 = Instant::now();
            let compiled = c.compile(&path).expect("compile");
            cold.push(t0.elapsed());
            assert!(!compiled.from_cache);
            entry_size = entries()
                .iter()
                .map(|e| e.metadata().map_or(0, |m| m.len()))
                .sum();
            let c = compiler();
            let t0 = Instant::now();
            let compiled = c.compile(&path).expect("load");
            cached.push(t0.elapsed());
            assert!(compiled.from_cache);
        }
        cold.sort_unstable();
        cached.sort_unstable();
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        println!(
            "| {name} | {:.1} | {:.1} | {:.2} ({:.2}-{:.2}) | {:.3} ({:.3}-{:.3}) |",
            size as f64 / 1024.0,
            entry_size as f64 / 1024.0,
            ms(cold[RUNS / 2]),
            ms(cold[0]),
            ms(cold[RUNS - 1]),
            ms(cached[RUNS / 2]),
            ms(cached[0]),
            ms(cached[RUNS - 1]),
        );
    }
    println!();
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
