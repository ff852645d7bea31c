//! The policy host in-process: real components from `policies/` behind the engine's hooks, no
//! MQTT. Each test drives an [`Engine`] with [`Engine::handle_with`] and a [`PolicyHost`], and
//! reads the decisions from `poll_output`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::policies::{policy_crates_on_disk, policy_wasm, policy_wasm_wasip2, POLICY_CRATES};
use coordinosaur::config::{PolicyRollback, PolicySandbox};
use coordinosaur::engine::{
    ChannelOptions, Engine, Input, Millis, OnPolicyError, Output, Registration, ShadowReport, Time,
};
use coordinosaur::policy::{Compiler, PolicyError, PolicyHost};
use serde_json::json;

/// The reason the host gives when a failing policy rejects (`on_policy_error = "closed"`).
const CLOSED_REASON: &str = "policy error (on_policy_error = closed)";

/// A hostile call must be stopped this fast; the budget is milliseconds, so this only catches
/// "not interrupted at all" while staying reliable on a loaded machine.
const FAR_ABOVE_BUDGET: Duration = Duration::from_secs(2);

/// Every policy crate and a test that exercises it: naming the test function makes a crate
/// without a test a compile error here, and `every_policy_crate_has_a_test` fails when a crate
/// is added on disk without an entry (as wasmtime's `assert_test_exists!`).
const COVERAGE: &[(&str, fn())] = &[
    ("priority", priority_orders_by_field_fifo_among_equals),
    ("fair-share", fair_share_defers_a_tenant_at_its_cap),
    ("deny", deny_rejects_listed_tenants_with_the_reason),
    ("spin", spin_is_interrupted_within_the_budget_open),
    ("grow", grow_hits_the_memory_cap_and_falls_back),
    ("trap", trap_falls_back_and_the_instance_is_rebuilt),
    (
        "wrong-interface",
        wrong_interface_fails_to_compile_naming_the_world,
    ),
    ("random", random_is_seeded_per_channel_and_replays),
    ("world-0-1", world_0_1_components_keep_working),
];

#[test]
fn every_policy_crate_has_a_test() {
    let mut covered: Vec<String> = COVERAGE.iter().map(|(n, _)| (*n).to_owned()).collect();
    covered.sort();
    let mut known: Vec<String> = POLICY_CRATES.iter().map(|n| (*n).to_owned()).collect();
    known.sort();
    assert_eq!(
        policy_crates_on_disk(),
        covered,
        "every crate under policies/ (examples and fixtures) needs an entry in COVERAGE"
    );
    assert_eq!(known, covered, "POLICY_CRATES and COVERAGE disagree");
}

// ---------------------------------------------------------------------------------------------
// Harness

/// One channel rule for the resolver.
#[derive(Clone)]
struct Rule {
    policy: Option<PathBuf>,
    config: serde_json::Value,
    on_error: OnPolicyError,
    max: u32,
    shadow: Option<PathBuf>,
}

fn rule(policy: &Path, config: serde_json::Value) -> Rule {
    Rule {
        policy: Some(policy.to_owned()),
        config,
        on_error: OnPolicyError::Open,
        max: 1,
        shadow: None,
    }
}

impl Rule {
    fn max(mut self, max: u32) -> Rule {
        self.max = max;
        self
    }

    fn closed(mut self) -> Rule {
        self.on_error = OnPolicyError::Closed;
        self
    }

    /// `shadow` as the channel's `policy_shadow`.
    fn shadow(mut self, shadow: &Path) -> Rule {
        self.shadow = Some(shadow.to_owned());
        self
    }

    /// No deciding policy (the built-in decisions), e.g. beside a shadow.
    fn without_policy(mut self) -> Rule {
        self.policy = None;
        self
    }

    fn options(&self) -> ChannelOptions {
        let path = |p: &Option<PathBuf>| p.as_deref().map(Arc::<Path>::from);
        ChannelOptions {
            max_concurrent_jobs: self.max,
            policy: path(&self.policy),
            policy_config: Arc::from(self.config.to_string().as_str()),
            on_policy_error: self.on_error,
            policy_shadow: path(&self.shadow),
            ..ChannelOptions::default()
        }
    }

    /// Every file the rule names, for `preload`.
    fn files(&self) -> Vec<Arc<Path>> {
        [&self.policy, &self.shadow]
            .into_iter()
            .flatten()
            .map(|p| Arc::from(p.as_path()))
            .collect()
    }
}

/// An engine whose every channel uses `rule`, a host with `sandbox`, and engine time.
struct Rig {
    engine: Engine,
    host: PolicyHost,
    /// The host's compiler: a policy to swap in must come from the same wasmtime engine.
    compiler: Compiler,
    now: u64,
}

impl Rig {
    fn new(rule: Rule) -> Rig {
        // Tests of behaviour, not of the budget: a debug build on a loaded machine can exceed the
        // 10 ms default per call, and a fallback would change the result.
        let sandbox = PolicySandbox {
            call_timeout: Millis(5_000),
            ..PolicySandbox::default()
        };
        Rig::with_sandbox(rule, sandbox)
    }

    fn with_sandbox(rule: Rule, sandbox: PolicySandbox) -> Rig {
        let compiler = Compiler::new().expect("policy runtime");
        let mut host = PolicyHost::new(compiler.clone(), &sandbox);
        host.preload(&rule.files()).expect("preload the policy");
        let engine = Engine::new(Box::new(move |_| rule.options()));
        Rig {
            engine,
            host,
            compiler,
            now: 1_000_000,
        }
    }

    /// Applies `input` one millisecond after the previous one; returns what the engine decided.
    fn handle(&mut self, input: Input) -> Vec<String> {
        self.now += 1;
        self.engine
            .handle_with(Time(self.now), input, &mut self.host);
        self.drain()
    }

    fn drain(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.engine.poll_output())
            .filter_map(|o| match o {
                Output::Go { uid, .. } => Some(format!("go {uid}")),
                Output::Rejected { uid, reason, .. } => Some(format!("rejected {uid}: {reason}")),
                Output::Expired { uid, .. } => Some(format!("expired {uid}")),
                _ => None,
            })
            .collect()
    }

    fn register(&mut self, channel: &str, uid: &str, meta: serde_json::Value) -> Vec<String> {
        self.handle(Input::Register(Registration {
            channel: channel.into(),
            uid: uid.into(),
            timeout: Millis(60_000),
            priority: 0,
            meta: Some(meta.to_string().into()),
            reply: Default::default(),
            cost: 1,
            progress: false,
        }))
    }

    fn finish(&mut self, channel: &str, uid: &str) -> Vec<String> {
        self.handle(Input::Finished {
            channel: channel.into(),
            uid: uid.into(),
            token: None,
        })
    }

    fn set_max(&mut self, channel: &str, max: u32) -> Vec<String> {
        self.handle(Input::SetConcurrency {
            channel: channel.into(),
            max,
        })
    }

    /// Applies a reloaded config in which every channel uses `rule`, as the driver does;
    /// returns the decisions it caused.
    fn reconfigure(&mut self, rule: Rule) -> Vec<String> {
        self.now += 1;
        self.engine.reconfigure(
            Time(self.now),
            Box::new(move |_| rule.options()),
            &mut self.host,
        );
        self.drain()
    }

    fn waiting(&self, channel: &str) -> Vec<String> {
        self.engine
            .waiting(channel)
            .iter()
            .map(|u| u.to_string())
            .collect()
    }
}

/// A sandbox with the default time budget and `max_memory` bytes of memory.
fn sandbox(call_timeout_ms: u64, max_memory: usize) -> PolicySandbox {
    PolicySandbox {
        call_timeout: Millis(call_timeout_ms),
        max_memory,
    }
}

/// A temp folder holding a copy of `from` as `policy.wasm`, for tests that replace the file.
fn policy_copy(from: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("policy.wasm");
    std::fs::copy(from, &path).expect("copy the policy");
    (dir, path)
}

// ---------------------------------------------------------------------------------------------
// Example policies

/// `hold` takes the only slot; then `a`(1) `b`(5) `c`(1) `d`(none) queue and `e`("high") is
/// rejected naming the field. Finishing one job at a time grants b, a, c, d.
fn priority_scenario(wasm: &Path) {
    let mut rig = Rig::new(rule(wasm, json!({})));
    assert_eq!(rig.register("ch", "hold", json!({})), ["go hold"]);
    assert!(rig.register("ch", "a", json!({"priority": 1})).is_empty());
    assert!(rig.register("ch", "b", json!({"priority": 5})).is_empty());
    assert!(rig.register("ch", "c", json!({"priority": 1})).is_empty());
    assert!(rig.register("ch", "d", json!({"tenant": "x"})).is_empty());
    let rejected = rig.register("ch", "e", json!({"priority": "high"}));
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(
        rejected[0].starts_with("rejected e: ") && rejected[0].contains("\"priority\""),
        "the reason names the field: {rejected:?}"
    );
    assert_eq!(rig.waiting("ch"), ["b", "a", "c", "d"]);
    let mut order = Vec::new();
    let mut running = "hold".to_owned();
    for _ in 0..4 {
        let out = rig.finish("ch", &running);
        assert_eq!(out.len(), 1, "{out:?}");
        running = out[0].strip_prefix("go ").expect("a grant").to_owned();
        order.push(running.clone());
    }
    assert_eq!(order, ["b", "a", "c", "d"]);
    assert_eq!(rig.host.stats().failures, 0);
}

#[test]
fn priority_orders_by_field_fifo_among_equals() {
    priority_scenario(&policy_wasm("priority"));
}

#[test]
fn priority_declares_only_admit_and_nothing_else_is_called() {
    let mut rig = Rig::new(rule(&policy_wasm("priority"), json!({})));
    assert_eq!(rig.register("ch", "hold", json!({})), ["go hold"]);
    let padded = json!({"priority": 1, "padding": "x".repeat(1_000)});
    assert!(rig.register("ch", "a", padded).is_empty());
    assert!(rig.register("ch", "b", json!({"priority": 5})).is_empty());
    assert_eq!(rig.finish("ch", "hold"), ["go b"]);
    assert_eq!(rig.finish("ch", "b"), ["go a"]);
    // Three registrations, three `admit` calls; the three grants and two ends call nothing.
    assert_eq!(rig.host.stats().calls, 3);
    assert_eq!(rig.host.stats().failures, 0);
}

/// A 0.1.0 component (built against `wit/policy.wit`) next to the SDK's 0.2.0 ones: every
/// hook is called, with the channel's name and the whole registration.
#[test]
fn world_0_1_components_keep_working() {
    let mut rig = Rig::new(rule(&policy_wasm("world-0-1"), json!({})));
    assert_eq!(rig.register("ch", "hold", json!({})), ["go hold"]);
    assert!(rig.register("ch", "low", json!({"priority": 1})).is_empty());
    assert!(rig
        .register("ch", "high", json!({"priority": 7}))
        .is_empty());
    let vetoed = json!({"priority": 9, "veto": true});
    assert!(rig.register("ch", "bad", vetoed).is_empty());
    assert_eq!(rig.waiting("ch"), ["bad", "high", "low"]);
    assert_eq!(
        rig.finish("ch", "hold"),
        ["rejected bad: vetoed by world 0.1.0 on ch / ch", "go high"]
    );
    // 4 admit, 3 before-grant (hold, bad, high), 3 on-event (granted, finished, granted).
    assert_eq!(rig.host.stats().calls, 10);
    assert_eq!(rig.host.stats().failures, 0);
}

#[test]
fn priority_built_for_wasip2_behaves_the_same() {
    priority_scenario(&policy_wasm_wasip2("priority"));
}

#[test]
fn fair_share_defers_a_tenant_at_its_cap() {
    let wasm = policy_wasm("fair-share");
    let mut rig = Rig::new(rule(&wasm, json!({"max_running_per_tenant": 1})).max(2));
    assert_eq!(rig.register("ch", "a1", json!({"tenant": "a"})), ["go a1"]);
    // A slot is free, but tenant a is at its cap: deferred.
    assert!(rig.register("ch", "a2", json!({"tenant": "a"})).is_empty());
    assert_eq!(rig.waiting("ch"), ["a2"]);
    // Another tenant's job takes the free slot.
    assert_eq!(rig.register("ch", "b1", json!({"tenant": "b"})), ["go b1"]);
    // a1 ends: a2 fits the cap again.
    assert_eq!(rig.finish("ch", "a1"), ["go a2"]);
    assert_eq!(rig.host.stats().failures, 0);
}

#[test]
fn fair_share_alternates_tenants() {
    let wasm = policy_wasm("fair-share");
    let mut rig = Rig::new(rule(&wasm, json!({"max_running_per_tenant": 10})));
    assert_eq!(
        rig.register("ch", "hold", json!({"tenant": "z"})),
        ["go hold"]
    );
    for (uid, tenant) in [
        ("a1", "a"),
        ("a2", "a"),
        ("a3", "a"),
        ("b1", "b"),
        ("b2", "b"),
        ("c1", "c"),
    ] {
        assert!(rig
            .register("ch", uid, json!({"tenant": tenant}))
            .is_empty());
    }
    assert_eq!(rig.waiting("ch"), ["a1", "b1", "c1", "a2", "b2", "a3"]);
    let mut order = Vec::new();
    let mut running = "hold".to_owned();
    for _ in 0..6 {
        let out = rig.finish("ch", &running);
        running = out[0].strip_prefix("go ").expect("a grant").to_owned();
        order.push(running.clone());
    }
    assert_eq!(order, ["a1", "b1", "c1", "a2", "b2", "a3"]);
}

#[test]
fn fair_share_without_config_fails_init_and_falls_back_open() {
    let wasm = policy_wasm("fair-share");
    let mut rig = Rig::new(rule(&wasm, json!({})).max(2));
    // No cap: both of tenant a's jobs run, as without a policy.
    assert_eq!(rig.register("ch", "a1", json!({"tenant": "a"})), ["go a1"]);
    assert_eq!(rig.register("ch", "a2", json!({"tenant": "a"})), ["go a2"]);
    let stats = rig.host.stats();
    assert!(stats.failures >= 2, "{stats:?}");
    // A failed init is remembered, not retried on every call.
    assert_eq!(stats.instantiations, 1, "{stats:?}");
}

#[test]
fn fair_share_without_config_fails_init_and_falls_back_closed() {
    let wasm = policy_wasm("fair-share");
    let mut rig = Rig::new(rule(&wasm, json!({})).max(2).closed());
    assert_eq!(
        rig.register("ch", "a1", json!({"tenant": "a"})),
        [format!("rejected a1: {CLOSED_REASON}")]
    );
}

#[test]
fn deny_rejects_listed_tenants_with_the_reason() {
    let wasm = policy_wasm("deny");
    let mut rig = Rig::new(rule(&wasm, json!({"tenants": ["evil"]})).max(10));
    assert_eq!(
        rig.register("ch", "e1", json!({"tenant": "evil"})),
        [r#"rejected e1: tenant "evil" is denied by policy"#]
    );
    assert_eq!(
        rig.register("ch", "g1", json!({"tenant": "good"})),
        ["go g1"]
    );
    assert_eq!(rig.register("ch", "n1", json!({})), ["go n1"]);
}

#[test]
fn two_channels_using_one_policy_keep_separate_state() {
    let wasm = policy_wasm("fair-share");
    let mut rig = Rig::new(rule(&wasm, json!({"max_running_per_tenant": 1})).max(2));
    assert_eq!(rig.register("x", "x1", json!({"tenant": "a"})), ["go x1"]);
    // Tenant a has one job running on x, none on y: y's instance counts its own.
    assert_eq!(rig.register("y", "y1", json!({"tenant": "a"})), ["go y1"]);
    assert!(rig.register("x", "x2", json!({"tenant": "a"})).is_empty());
    assert!(rig.register("y", "y2", json!({"tenant": "a"})).is_empty());
    assert_eq!(rig.finish("y", "y1"), ["go y2"]);
    assert_eq!(rig.waiting("x"), ["x2"]);
    assert_eq!(rig.host.stats().instantiations, 2);
}

// ---------------------------------------------------------------------------------------------
// Hostile fixtures

/// Registers `uid` and returns the decisions and the wall time of the call.
fn timed_register(rig: &mut Rig, uid: &str) -> (Vec<String>, Duration) {
    let started = Instant::now();
    let out = rig.register("ch", uid, json!({}));
    (out, started.elapsed())
}

#[test]
fn spin_is_interrupted_within_the_budget_open() {
    let wasm = policy_wasm("spin");
    // 200 ms: far above what the fixture's other hooks need even in a debug build on a loaded
    // machine (so only before_grant fails), far below FAR_ABOVE_BUDGET.
    let mut rig = Rig::with_sandbox(rule(&wasm, json!({})), sandbox(200, 16 << 20));
    let mut previous = rig.host.stats();
    for i in 0..5 {
        let uid = format!("j{i}");
        let (out, took) = timed_register(&mut rig, &uid);
        eprintln!("spin (open, 200 ms budget): register -> go took {took:?}");
        assert!(took < FAR_ABOVE_BUDGET, "not interrupted: {took:?}");
        assert_eq!(out, [format!("go {uid}")]);
        let stats = rig.host.stats();
        assert_eq!(stats.failures, previous.failures + 1, "{stats:?}");
        // The interrupted instance is dropped; the next call builds a new one.
        assert!(stats.instantiations > previous.instantiations, "{stats:?}");
        previous = stats;
        rig.finish("ch", &uid);
    }
}

#[test]
fn spin_is_interrupted_within_the_budget_closed() {
    let wasm = policy_wasm("spin");
    let mut rig = Rig::with_sandbox(rule(&wasm, json!({})).closed(), sandbox(200, 16 << 20));
    for i in 0..3 {
        let uid = format!("j{i}");
        let (out, took) = timed_register(&mut rig, &uid);
        assert!(took < FAR_ABOVE_BUDGET, "not interrupted: {took:?}");
        assert_eq!(out, [format!("rejected {uid}: {CLOSED_REASON}")]);
    }
    assert_eq!(rig.host.stats().failures, 3);
}

#[test]
fn grow_hits_the_memory_cap_and_falls_back() {
    let wasm = policy_wasm("grow");
    let cap = 2 << 20;
    let mut open = Rig::with_sandbox(rule(&wasm, json!({})).max(10), sandbox(1_000, cap));
    for i in 0..3 {
        let uid = format!("g{i}");
        let (out, took) = timed_register(&mut open, &uid);
        eprintln!("grow (open, 2 MiB cap): register -> go took {took:?}");
        assert!(took < FAR_ABOVE_BUDGET, "{took:?}");
        // admit trapped (accepted at 0); before_grant is the SDK default on a fresh instance.
        assert_eq!(out, [format!("go {uid}")]);
    }
    let stats = open.host.stats();
    assert_eq!(stats.failures, 3, "one failed admit per job: {stats:?}");
    let mut closed = Rig::with_sandbox(rule(&wasm, json!({})).closed(), sandbox(1_000, cap));
    let (out, _) = timed_register(&mut closed, "g");
    assert_eq!(out, [format!("rejected g: {CLOSED_REASON}")]);
}

#[test]
fn trap_falls_back_and_the_instance_is_rebuilt() {
    let wasm = policy_wasm("trap");
    let mut rig = Rig::new(rule(&wasm, json!({})).max(10));
    for i in 0..3u64 {
        let uid = format!("t{i}");
        assert_eq!(rig.register("ch", &uid, json!({})), [format!("go {uid}")]);
        let stats = rig.host.stats();
        // admit and before_grant both trap, and each trapped instance is replaced by a new one
        // (before_grant's, and the one on_event(granted) runs on).
        assert_eq!(stats.failures, 2 * (i + 1), "{stats:?}");
        assert!(stats.instantiations > 2 * i + 1, "{stats:?}");
    }
    let mut closed = Rig::new(rule(&wasm, json!({})).closed());
    assert_eq!(
        closed.register("ch", "t", json!({})),
        [format!("rejected t: {CLOSED_REASON}")]
    );
}

/// On the daemon's driver thread, inside the tokio runtime: a wasip2 panic writes its message to
/// stderr first, and wasmtime-wasi's blocking WASI functions panic the host there.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn trap_built_for_wasip2_is_contained_inside_the_runtime() {
    let wasm = policy_wasm_wasip2("trap");
    let mut rig = Rig::new(rule(&wasm, json!({})).max(10));
    for i in 0..3u64 {
        let uid = format!("t{i}");
        assert_eq!(rig.register("ch", &uid, json!({})), [format!("go {uid}")]);
    }
    let stats = rig.host.stats();
    assert_eq!(
        stats.failures, 6,
        "admit and before_grant fail each time: {stats:?}"
    );
}

/// A daemon without policies keeps a compiler for the ones a reload may add; its epoch ticker
/// (a thread waking every millisecond) starts with the first policy compiled, not before.
#[test]
fn the_epoch_ticker_starts_with_the_first_policy() {
    let compiler = Compiler::new().expect("policy runtime");
    assert!(!compiler.ticking(), "no policy, no ticker");
    let shared = compiler.clone();
    shared
        .compile(&policy_wasm("priority"))
        .expect("compile the policy");
    assert!(compiler.ticking(), "clones share the ticker");
}

#[test]
fn wrong_interface_fails_to_compile_naming_the_world() {
    let wasm = policy_wasm("wrong-interface");
    let compiler = Compiler::new().expect("policy runtime");
    let err = compiler
        .compile(&wasm)
        .expect_err("a component of another world must not load");
    assert!(matches!(err, PolicyError::Interface { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("coordinosaur:policy") && text.contains("wrong_interface.wasm"),
        "the message names the world and the file: {text}"
    );
}

// ---------------------------------------------------------------------------------------------
// Swapping policies

/// The config of the swap tests: priority ignores it, deny needs it.
fn deny_evil() -> serde_json::Value {
    json!({"tenants": ["evil"]})
}

#[test]
fn swap_keeps_every_queued_job_and_changes_behaviour() {
    const JOBS: usize = 1_000;
    let (_dir, path) = policy_copy(&policy_wasm("priority"));
    let mut rig = Rig::new(rule(&path, deny_evil()));
    assert_eq!(rig.register("ch", "hold", json!({})), ["go hold"]);
    let uids: Vec<String> = (0..JOBS).map(|i| format!("j{i:04}")).collect();
    let evil = |i: usize| i.is_multiple_of(10);
    let started = Instant::now();
    for (i, uid) in uids.iter().enumerate() {
        let tenant = if evil(i) { "evil" } else { "good" };
        // Later jobs get higher priorities: priority order is the reverse of FIFO.
        let out = rig.register("ch", uid, json!({"priority": i, "tenant": tenant}));
        assert!(out.is_empty(), "{out:?}");
    }
    let per_register = started.elapsed() / JOBS as u32;
    eprintln!("priority: {JOBS} registrations through the engine, {per_register:?} each (one admit call; the slot is held)");
    let reversed: Vec<String> = uids.iter().rev().cloned().collect();
    assert_eq!(rig.waiting("ch"), reversed);

    // Replace the file with deny and swap it in, as the driver does on a reload.
    std::fs::copy(policy_wasm("deny"), &path).expect("replace the policy file");
    let compiled = rig.compiler.compile(&path).expect("deny compiles");
    let started = Instant::now();
    let moved = rig.host.swap(compiled, Time(rig.now));
    assert_eq!(moved, [Arc::<str>::from("ch")]);
    rig.now += 1;
    rig.engine
        .readmit_channels(Time(rig.now), &moved, &mut rig.host);
    eprintln!(
        "swap priority -> deny + readmit of {JOBS} waiting jobs: {:?}",
        started.elapsed()
    );
    let mut out = rig.drain();
    // In the old queue's order; compared as sets.
    out.sort();
    let expected_rejections: Vec<String> = (0..JOBS)
        .filter(|i| evil(*i))
        .map(|i| format!(r#"rejected {}: tenant "evil" is denied by policy"#, uids[i]))
        .collect();
    assert_eq!(out, expected_rejections);
    // deny accepts at 0: the rest queue in registration order now.
    let good: Vec<String> = (0..JOBS)
        .filter(|i| !evil(*i))
        .map(|i| uids[i].clone())
        .collect();
    assert_eq!(rig.waiting("ch"), good);
    // None lost: every good job is granted once there is room.
    let grants = rig.set_max("ch", 10_000);
    let expected: Vec<String> = good.iter().map(|u| format!("go {u}")).collect();
    assert_eq!(grants, expected);
    assert_eq!(expected_rejections.len() + grants.len(), JOBS);
    // New registrations follow deny.
    assert_eq!(
        rig.register("ch", "late", json!({"tenant": "evil"})),
        [r#"rejected late: tenant "evil" is denied by policy"#]
    );
    assert_eq!(rig.host.stats().failures, 0);
}

#[test]
fn swap_whose_init_fails_keeps_the_old_policy() {
    let (_dir, path) = policy_copy(&policy_wasm("priority"));
    // priority ignores the config; deny refuses `{}` (`tenants is required`).
    let mut rig = Rig::new(rule(&path, json!({})));
    assert_eq!(rig.register("ch", "hold", json!({})), ["go hold"]);
    std::fs::copy(policy_wasm("deny"), &path).expect("replace the policy file");
    let compiled = rig.compiler.compile(&path).expect("deny compiles");
    assert!(
        rig.host.swap(compiled, Time(rig.now)).is_empty(),
        "init must refuse"
    );
    // priority still decides, on every later call.
    for (uid, p) in [("low", 1), ("high", 9), ("mid", 5)] {
        assert!(rig.register("ch", uid, json!({"priority": p})).is_empty());
    }
    assert_eq!(rig.waiting("ch"), ["high", "mid", "low"]);
    assert_eq!(
        rig.register("ch", "bad", json!({"priority": "x"})).len(),
        1,
        "priority still rejects non-integers"
    );
}

#[test]
fn broken_file_fails_to_compile_and_nothing_changes() {
    let (_dir, path) = policy_copy(&policy_wasm("priority"));
    let mut rig = Rig::new(rule(&path, json!({})));
    assert_eq!(rig.register("ch", "hold", json!({})), ["go hold"]);
    let bytes = std::fs::read(&path).expect("read the policy");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate the policy");
    let err = rig
        .compiler
        .compile(&path)
        .expect_err("a truncated component must not compile");
    assert!(matches!(err, PolicyError::Compile { .. }), "{err:?}");
    let before = rig.host.stats();
    for (uid, p) in [("low", 1), ("high", 9)] {
        assert!(rig.register("ch", uid, json!({"priority": p})).is_empty());
    }
    assert_eq!(rig.waiting("ch"), ["high", "low"]);
    let after = rig.host.stats();
    assert_eq!((after.swaps, after.failures), (before.swaps, 0));
}

// ---------------------------------------------------------------------------------------------
// Config reloads

#[test]
fn reconfig_whose_init_fails_keeps_the_previous_instance_and_config() {
    let wasm = policy_wasm("deny");
    let evil = r#"tenant "evil" is denied by policy"#;
    // Closed: were the channel left without a working instance, every job would be rejected.
    let mut rig = Rig::new(rule(&wasm, deny_evil()).max(10).closed());
    assert_eq!(
        rig.register("ch", "e1", json!({"tenant": "evil"})),
        [format!("rejected e1: {evil}")]
    );
    let before = rig.host.stats();
    // deny's init refuses a list that is not a list.
    assert!(rig
        .reconfigure(rule(&wasm, json!({"tenants": 7})).max(10).closed())
        .is_empty());
    for i in 0..3 {
        assert_eq!(
            rig.register("ch", &format!("e{i}x"), json!({"tenant": "evil"})),
            [format!("rejected e{i}x: {evil}")],
            "the previous instance, with its config, still decides"
        );
        assert_eq!(
            rig.register("ch", &format!("g{i}"), json!({"tenant": "good"})),
            [format!("go g{i}")]
        );
    }
    let after = rig.host.stats();
    assert_eq!(after.failures, before.failures, "no fallback: {after:?}");
    // One attempt at the refused config, not one per call.
    assert_eq!(after.instantiations, before.instantiations + 1, "{after:?}");
    // A later config that init accepts takes over.
    assert!(rig
        .reconfigure(rule(&wasm, json!({"tenants": ["good"]})).max(10).closed())
        .is_empty());
    assert_eq!(
        rig.register("ch", "e9", json!({"tenant": "evil"})),
        ["go e9"]
    );
    assert_eq!(
        rig.register("ch", "g9", json!({"tenant": "good"})),
        [r#"rejected g9: tenant "good" is denied by policy"#]
    );
}

#[test]
fn the_host_never_compiles_a_file_it_was_not_handed() {
    let deny = policy_wasm("deny");
    let mut rig = Rig::new(rule(&policy_wasm("priority"), json!({})).max(10).closed());
    assert_eq!(rig.register("ch", "p1", json!({})), ["go p1"]);
    // A reload names deny, whose compiled version the config task did not hand over. The host
    // runs on the driver's thread: it must not compile it there.
    rig.reconfigure(rule(&deny, deny_evil()).max(10).closed());
    let evil = json!({"tenant": "evil"});
    assert_eq!(
        rig.register("ch", "e1", evil.clone()),
        ["go e1"],
        "ch keeps priority"
    );
    assert_eq!(
        rig.register("new", "e2", evil.clone()),
        [format!("rejected e2: {CLOSED_REASON}")],
        "a channel with no previous policy falls back"
    );
    // Handed over (as the driver does with a reloaded config), it is used at once.
    let compiled = rig.compiler.compile(&deny).expect("deny compiles");
    rig.host.install(vec![compiled]);
    let reason = r#"tenant "evil" is denied by policy"#;
    assert_eq!(
        rig.register("ch", "e3", evil.clone()),
        [format!("rejected e3: {reason}")]
    );
    assert_eq!(
        rig.register("new", "e4", evil),
        [format!("rejected e4: {reason}")]
    );
}

// ---------------------------------------------------------------------------------------------
// Determinism

/// What fixture `random` draws on `channel` for `n` registrations, in a new host (as after a
/// restart): one line per registration, as its rejection reason.
fn draws(wasm: &Path, channel: &str, n: usize) -> Vec<String> {
    let mut rig = Rig::new(rule(wasm, json!({})));
    (0..n)
        .map(|i| {
            let out = rig.register(channel, &format!("j{i}"), json!({}));
            assert_eq!(out.len(), 1, "{out:?}");
            let prefix = format!("rejected j{i}: ");
            out[0]
                .strip_prefix(&prefix)
                .expect("a rejection")
                .to_owned()
        })
        .collect()
}

/// The value after `name` in a line of fixture `random`.
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let mut words = line.split(' ');
    words.find(|w| *w == name);
    words.next().unwrap_or_default()
}

/// Random numbers and clocks a wasip2 guest can reach come from the channel and the engine,
/// not the OS.
#[test]
fn random_is_seeded_per_channel_and_replays() {
    let wasm = policy_wasm_wasip2("random");
    let a = draws(&wasm, "a", 3);
    eprintln!("channel a draws {a:#?}");
    // Another host, as after a restart: the same sequence, so nothing came from the OS.
    assert_eq!(draws(&wasm, "a", 3), a);
    // The generators advance; the seed is one value per instance.
    assert_ne!(a[0], a[1]);
    assert_eq!(field(&a[0], "seed"), field(&a[1], "seed"));
    // Both clocks read the engine time of the call (the first register is at 1_000_001 ms,
    // the next one 1 ms later).
    assert_eq!(field(&a[0], "wall"), "1000001");
    assert_eq!(field(&a[1], "wall"), "1000002");
    assert_eq!(field(&a[1], "monotonic"), "1000000");
    // Each source has its own stream, and another channel gets other numbers from each.
    assert_ne!(field(&a[0], "random"), field(&a[0], "insecure"));
    let b = draws(&wasm, "b", 1);
    for source in ["random", "insecure", "seed"] {
        assert_ne!(field(&a[0], source), field(&b[0], source), "{source}");
    }
    // A rebuilt instance (a swap of the same file) starts the channel's sequence again.
    let mut rig = Rig::new(rule(&wasm, json!({})));
    let numbers = |line: &str| line.split(" wall").next().unwrap_or_default().to_owned();
    let first = numbers(&a[0]);
    assert_eq!(
        numbers(&rig.register("a", "x", json!({}))[0]),
        format!("rejected x: {first}")
    );
    let compiled = rig.compiler.compile(&wasm).expect("random compiles");
    assert_eq!(
        rig.host.swap(compiled, Time(rig.now)),
        [Arc::<str>::from("a")]
    );
    assert_eq!(
        numbers(&rig.register("a", "y", json!({}))[0]),
        format!("rejected y: {first}")
    );
}

// ---------------------------------------------------------------------------------------------
// Shadow policies and automatic rollback

impl Rig {
    /// The channel's shadow report, from a `state` reply as clients get it.
    fn shadow_report(&mut self, channel: &str) -> ShadowReport {
        self.now += 1;
        let input = Input::Infos {
            channel: channel.into(),
        };
        self.engine
            .handle_with(Time(self.now), input, &mut self.host);
        std::iter::from_fn(|| self.engine.poll_output())
            .find_map(|o| match o {
                Output::State(state) => state.shadow.map(|report| *report),
                _ => None,
            })
            .expect("a state reply with a shadow report")
    }

    /// What the driver does after each event: re-rank the queues of rolled-back channels.
    fn readmit_rolled_back(&mut self) -> Vec<Arc<str>> {
        let moved = self.host.take_rolled_back();
        self.engine
            .readmit_channels(Time(self.now), &moved, &mut self.host);
        moved
    }

    /// Replaces the channel's policy file with `component` and swaps it in, as a reload does.
    fn swap_file(&mut self, path: &Path, component: &Path) -> Vec<Arc<str>> {
        std::fs::copy(component, path).expect("replace the policy file");
        let compiled = self
            .compiler
            .compile(path)
            .expect("the new version compiles");
        self.host.swap(compiled, Time(self.now))
    }
}

#[test]
fn a_shadow_gets_every_call_and_never_decides() {
    // Built-in FIFO decides; `priority` watches as the candidate.
    let shadow = policy_wasm("priority");
    let mut rig = Rig::new(rule(&shadow, json!({})).without_policy().shadow(&shadow));
    assert_eq!(rig.register("ch", "hold", json!({})), ["go hold"]);
    for (uid, p) in [("low", json!(1)), ("zero", json!(0)), ("high", json!(9))] {
        assert!(rig.register("ch", uid, json!({ "priority": p })).is_empty());
    }
    // The shadow would reject this one; the built-in behaviour accepts it.
    assert!(rig
        .register("ch", "bad", json!({"priority": "x"}))
        .is_empty());
    assert_eq!(rig.waiting("ch"), ["low", "zero", "high", "bad"], "FIFO");
    let report = rig.shadow_report("ch");
    assert_eq!(report.policy, shadow.display().to_string());
    // hold and zero agree (priority 0); low, high (other priorities) and bad (reject) do not.
    assert_eq!((report.admit.compared, report.admit.disagreed), (5, 3));
    // priority declares only `admit`: its built-in `grant` agrees with the channel's.
    assert_eq!(
        (report.before_grant.compared, report.before_grant.disagreed),
        (1, 0)
    );
    assert_eq!(report.failures, 0);
    assert_eq!(report.agreement_rate(), Some(3.0 / 6.0));
    assert_eq!(rig.finish("ch", "hold"), ["go low"]);
    assert_eq!(rig.shadow_report("ch").before_grant.compared, 2);
    assert_eq!(rig.host.stats().failures, 0);
}

#[test]
fn a_shadow_beside_a_policy_is_compared_with_the_policys_answers() {
    // The same file on both sides agrees on everything.
    let priority = policy_wasm("priority");
    let mut rig = Rig::new(rule(&priority, json!({})).shadow(&priority));
    rig.register("ch", "hold", json!({}));
    for (uid, p) in [("a", 3), ("b", 7)] {
        rig.register("ch", uid, json!({ "priority": p }));
    }
    assert_eq!(rig.waiting("ch"), ["b", "a"], "priority decides");
    let report = rig.shadow_report("ch");
    assert_eq!((report.admit.compared, report.admit.disagreed), (3, 0));
    assert_eq!(report.agreement_rate(), Some(1.0));
}

#[test]
fn a_failing_shadow_never_affects_the_channel_and_is_suspended() {
    let (_dir, shadow) = policy_copy(&policy_wasm("trap"));
    let mut rig = Rig::new(rule(&policy_wasm("priority"), json!({})).shadow(&shadow));
    // trap fails `admit` and `before-grant`: two failures for hold, one for low.
    assert_eq!(rig.register("ch", "hold", json!({})), ["go hold"]);
    assert!(rig.register("ch", "low", json!({"priority": 1})).is_empty());
    let report = rig.shadow_report("ch");
    assert_eq!(report.failures, 3);
    assert_eq!(report.admit.compared, 0, "a failed call is not compared");
    let reason = report
        .suspended
        .expect("three failures within 60 s suspend it");
    assert!(reason.contains("suspended until its file"), "{reason}");
    // From now on the shadow is not called: no more failures, and the policy decides alone.
    for (uid, p) in [("high", 9), ("mid", 5)] {
        assert!(rig.register("ch", uid, json!({ "priority": p })).is_empty());
    }
    assert_eq!(rig.waiting("ch"), ["high", "mid", "low"]);
    assert_eq!(rig.finish("ch", "hold"), ["go high"]);
    assert_eq!(rig.shadow_report("ch").failures, 3);
    assert_eq!(
        rig.host.stats().failures,
        3,
        "only the shadow's calls failed"
    );
    // A new version of the shadow file runs again, with fresh counts.
    assert!(
        rig.swap_file(&shadow, &policy_wasm("priority")).is_empty(),
        "no channel decides with it"
    );
    let report = rig.shadow_report("ch");
    assert_eq!((report.failures, report.suspended), (0, None));
    assert!(rig
        .register("ch", "again", json!({"priority": 2}))
        .is_empty());
    let report = rig.shadow_report("ch");
    assert_eq!((report.admit.compared, report.admit.disagreed), (1, 0));
}

#[test]
fn a_swapped_version_that_keeps_failing_is_rolled_back_and_not_retried() {
    let (dir, mut rig) = trap_swapped_in(PolicyRollback::default());
    let path = dir.path().join("policy.wasm");
    // Each admit traps: the fallback accepts at 0 (FIFO). The third failure within the
    // default 60 s of the swap brings priority back.
    for (uid, p) in [("a", 1), ("b", 5)] {
        assert!(rig.register("ch", uid, json!({ "priority": p })).is_empty());
        assert!(rig.host.take_rolled_back().is_empty(), "not yet");
    }
    assert!(rig.register("ch", "c", json!({"priority": 9})).is_empty());
    assert_eq!(rig.host.stats().rollbacks, 1);
    assert_eq!(rig.host.stats().failures, 3);
    assert_eq!(rig.waiting("ch"), ["a", "b", "c"], "the fallback's FIFO");
    // The driver re-ranks the rolled-back channel with the restored version.
    assert_eq!(rig.readmit_rolled_back(), [Arc::<str>::from("ch")]);
    assert_eq!(rig.waiting("ch"), ["c", "b", "a"]);
    assert!(rig.register("ch", "d", json!({"priority": 7})).is_empty());
    assert_eq!(rig.waiting("ch"), ["c", "d", "b", "a"]);
    // The same failed content again (a touch, a re-copy): not tried.
    assert!(rig.swap_file(&path, &policy_wasm("trap")).is_empty());
    assert!(rig.register("ch", "e", json!({"priority": 8})).is_empty());
    assert_eq!(rig.waiting("ch"), ["c", "e", "d", "b", "a"]);
    assert_eq!(rig.host.stats().failures, 3);
    // A changed file is swapped in again.
    let moved = rig.swap_file(&path, &policy_wasm_wasip2("priority"));
    assert_eq!(moved, [Arc::<str>::from("ch")]);
    assert_eq!(rig.host.stats().rollbacks, 1);
}

/// A `priority` channel with `hold` running, then `trap` swapped in under `rollback`.
fn trap_swapped_in(rollback: PolicyRollback) -> (tempfile::TempDir, Rig) {
    let (dir, path) = policy_copy(&policy_wasm("priority"));
    let mut rig = Rig::new(rule(&path, json!({})));
    rig.host.set_rollback(rollback);
    assert_eq!(rig.register("ch", "hold", json!({})), ["go hold"]);
    let moved = rig.swap_file(&path, &policy_wasm("trap"));
    assert_eq!(moved, [Arc::<str>::from("ch")]);
    (dir, rig)
}

#[test]
fn failures_after_the_probation_do_not_roll_back() {
    let (_dir, mut rig) = trap_swapped_in(PolicyRollback {
        failures: 2,
        window: Millis(1_000),
    });
    assert!(rig.register("ch", "a", json!({})).is_empty(), "failure 1");
    rig.now += 1_000;
    // Past the window: the version is trusted, its failures are only fallbacks.
    for uid in ["b", "c", "d"] {
        assert!(rig.register("ch", uid, json!({})).is_empty());
    }
    assert_eq!(rig.host.stats().failures, 4);
    assert_eq!(rig.host.stats().rollbacks, 0);
    assert!(rig.host.take_rolled_back().is_empty());
}

#[test]
fn rollback_off_keeps_a_failing_version() {
    let (_dir, mut rig) = trap_swapped_in(PolicyRollback {
        failures: 0,
        ..PolicyRollback::default()
    });
    for uid in ["a", "b", "c", "d", "e"] {
        rig.register("ch", uid, json!({}));
    }
    assert_eq!(rig.host.stats().failures, 5);
    assert_eq!(rig.host.stats().rollbacks, 0);
}
