//! Section 5 of `cargo bench --bench policy`: the JavaScript and Python policies
//! (`policies/js`, `policies/python`) next to the Rust `priority` policy. Run it alone with
//! `cargo bench --bench policy -- languages`.
//!
//! Per component: file size; `Compiler::compile` time; the first call on a new channel (store,
//! instantiate, `init`, then `admit`); the smallest `[policy_sandbox] max_memory` under which
//! that works (bisected over fresh hosts, in whole MiB: the linear memory the policy needs); and
//! the cost of each hook on a warm instance.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coordinosaur::config::PolicySandbox;
use coordinosaur::engine::{Admission, ChannelView, Decision, JobEvent, JobInfo, Policies};
use coordinosaur::policy::{Compiler, PolicyHost};

use super::policies::{language_policy_wasm, policy_wasm, Language};
use super::{ms, now, options, quantile, CHANNEL, JOB_TIMEOUT, META};

/// Compiles per component (they take seconds each for the language policies).
const COMPILES: usize = 3;
/// Warm calls timed per hook.
const SAMPLES: usize = 5_000;
const WARMUP: usize = 200;
/// The veto's config: no job of the bench is of this tenant, so every call grants.
const CONFIG: &str = r#"{"tenants":["evil"]}"#;

pub fn run(compiler: &Compiler) {
    let components = [
        ("Rust `priority`", policy_wasm("priority")),
        ("JavaScript", language_policy_wasm(Language::JavaScript)),
        ("Python", language_policy_wasm(Language::Python)),
    ];
    println!(
        "## 5. Policies in other languages (release; compile: median of {COMPILES}; hooks: {SAMPLES} warm calls each)"
    );
    println!(
        "| component | size KiB | compile ms | first call (instantiate + init + admit) ms | max_memory needed MiB | admit median / p99 us | before-grant median / p99 us | on-event median / p99 us |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, path) in &components {
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        let mut compiles: Vec<Duration> = (0..COMPILES)
            .map(|_| compiler.compile(path).expect("compile").compile_time)
            .collect();
        compiles.sort_unstable();
        let first = first_call(compiler, path, 64 << 20).expect("first call with 64 MiB");
        let memory = smallest_memory(compiler, path);
        let hooks = hook_costs(compiler, path);
        println!(
            "| {name} | {:.0} | {:.0} | {:.2} | {} | {} | {} | {} |",
            size as f64 / 1024.0,
            ms(compiles[COMPILES / 2]),
            ms(first),
            memory >> 20,
            hooks[0],
            hooks[1],
            hooks[2],
        );
    }
    println!();
}

/// A host allowing `max_memory` bytes, with `path` compiled.
fn host(compiler: &Compiler, path: &Path, max_memory: usize) -> PolicyHost {
    let sandbox = PolicySandbox {
        max_memory,
        ..PolicySandbox::default()
    };
    let mut host = PolicyHost::new(compiler.clone(), &sandbox);
    host.preload(&[Arc::from(path)])
        .expect("compile the policy");
    host
}

/// Time of the first `admit` on a new channel (instantiate + init + call); `None` if it failed.
fn first_call(compiler: &Compiler, path: &Path, max_memory: usize) -> Option<Duration> {
    let mut host = host(compiler, path, max_memory);
    let opts = options(Some(path), 64, CONFIG);
    let view = view(&opts, 0);
    let info = job_info("first", 0);
    let t0 = Instant::now();
    let admission = host.admit(&view, &info);
    let took = t0.elapsed();
    (host.stats().failures == 0 && admission == Admission::Accept(3)).then_some(took)
}

/// The smallest `max_memory`, in whole MiB up to 64, under which the first call succeeds.
/// (Each try compiles the component again for a fresh host: seconds for the language policies.)
fn smallest_memory(compiler: &Compiler, path: &Path) -> usize {
    const STEP: usize = 1 << 20;
    let (mut fails, mut works) = (0usize, 64usize << 20);
    while works - fails > STEP {
        let mid = (fails + works) / 2 / STEP * STEP;
        if first_call(compiler, path, mid).is_some() {
            works = mid;
        } else {
            fails = mid;
        }
    }
    works
}

/// "median / p99" in microseconds of admit, before-grant and on-event on a warm instance.
fn hook_costs(compiler: &Compiler, path: &Path) -> [String; 3] {
    let mut host = host(compiler, path, PolicySandbox::default().max_memory);
    let opts = options(Some(path), 64, CONFIG);
    let mut samples: [Vec<Duration>; 3] = Default::default();
    for n in 0..WARMUP + SAMPLES {
        let uid = format!("job-{n:07}");
        let view = view(&opts, n as u64);
        let info = job_info(&uid, n as u64);
        let t0 = Instant::now();
        let a = host.admit(&view, &info);
        let t1 = Instant::now();
        let d = host.before_grant(&view, &info);
        let t2 = Instant::now();
        host.on_event(&view, JobEvent::Finished, &info);
        let t3 = Instant::now();
        assert_eq!(a, Admission::Accept(3));
        assert_eq!(d, Decision::Grant);
        if n >= WARMUP {
            samples[0].push(t1 - t0);
            samples[1].push(t2 - t1);
            samples[2].push(t3 - t2);
        }
    }
    assert_eq!(host.stats().failures, 0, "no call failed");
    samples.map(|mut s| {
        s.sort_unstable();
        format!("{:.1} / {:.1}", quantile(&s, 0.5), quantile(&s, 0.99))
    })
}

fn view<'a>(opts: &'a coordinosaur::engine::ChannelOptions, i: u64) -> ChannelView<'a> {
    ChannelView {
        channel: CHANNEL,
        options: opts,
        running: 10,
        waiting: 5,
        now: now(i),
    }
}

fn job_info(uid: &str, i: u64) -> JobInfo<'_> {
    JobInfo {
        uid,
        timeout: JOB_TIMEOUT,
        registered_at: now(i),
        meta: Some(META),
    }
}
