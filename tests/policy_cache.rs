//! The compiled-policy cache with real components from `policies/`: a second load (a restart,
//! a new `Compiler` on the same folder) skips the compile; a damaged or foreign entry is
//! ignored and rebuilt; a swap back to a version seen before is a hit. Loaded components are
//! run through an engine, so a cache hit is shown to decide like a compile.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::policies::policy_wasm;
use coordinosaur::config::PolicySandbox;
use coordinosaur::engine::{ChannelOptions, Engine, Input, Millis, Output, Registration, Time};
use coordinosaur::policy::{CompiledPolicy, Compiler, PolicyCache, PolicyHost};

/// A compiler on the cache in `dir`, as the daemon builds one at start-up.
fn compiler(dir: &Path) -> Compiler {
    let cache = PolicyCache::open(dir, 1 << 30).expect("open the cache");
    Compiler::new().expect("policy runtime").with_cache(cache)
}

/// The cache's entries (the key file and temporary files excluded).
fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("cache dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    found.sort();
    found
}

/// The order in which `compiled` (the `priority` policy) grants three jobs registered while a
/// fourth holds the only slot.
fn grant_order(compiler: &Compiler, compiled: CompiledPolicy) -> Vec<String> {
    let path: Arc<Path> = Arc::from(compiled.path.as_path());
    let sandbox = PolicySandbox {
        call_timeout: Millis(5_000),
        ..PolicySandbox::default()
    };
    let mut host = PolicyHost::new(compiler.clone(), &sandbox);
    host.install(vec![compiled]);
    let options = ChannelOptions {
        max_concurrent_jobs: 1,
        policy: Some(path),
        ..ChannelOptions::default()
    };
    let mut engine = Engine::new(Box::new(move |_| options.clone()));
    let mut now = 1_000;
    let mut step = |engine: &mut Engine, input: Input| {
        now += 1;
        engine.handle_with(Time(now), input, &mut host);
        std::iter::from_fn(|| engine.poll_output())
            .filter_map(|o| match o {
                Output::Go { uid, .. } => Some(uid.to_string()),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let mut order = Vec::new();
    for (uid, priority) in [("first", 0), ("low", 1), ("high", 9), ("mid", 5)] {
        order.extend(step(
            &mut engine,
            Input::Register(Registration {
                meta: Some(format!(r#"{{"priority":{priority}}}"#).into()),
                ..Registration::new("c", uid, Millis(60_000))
            }),
        ));
    }
    for _ in 0..4 {
        let running = order.last().cloned().expect("a job runs");
        order.extend(step(
            &mut engine,
            Input::Finished {
                channel: "c".into(),
                uid: running.as_str().into(),
                token: None,
            },
        ));
    }
    order
}

const EXPECTED: [&str; 4] = ["first", "high", "mid", "low"];

#[test]
fn a_second_load_skips_the_compile_and_decides_the_same() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = policy_wasm("priority");
    let cold = compiler(dir.path());
    let first = cold.compile(&wasm).expect("compile");
    assert!(!first.from_cache, "an empty cache cannot hit");
    assert_eq!(entries(dir.path()).len(), 1);
    assert_eq!(grant_order(&cold, first), EXPECTED);
    // A restart: a new engine and compiler on the same folder.
    let warm = compiler(dir.path());
    let second = warm.compile(&wasm).expect("load");
    assert!(
        second.from_cache,
        "the entry written by the first load is used"
    );
    assert_eq!(grant_order(&warm, second), EXPECTED);
}

#[test]
fn damaged_or_foreign_entries_are_rebuilt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = policy_wasm("priority");
    compiler(dir.path()).compile(&wasm).expect("compile");
    let [entry] = entries(dir.path()).try_into().expect("one entry");
    let good = std::fs::read(&entry).expect("read the entry");
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    // Another host's cache: a valid entry for the same file and engine, under another key.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    compiler(elsewhere.path())
        .compile(&wasm)
        .expect("compile elsewhere");
    let [theirs] = entries(elsewhere.path()).try_into().expect("one entry");
    let foreign = std::fs::read(theirs).expect("read theirs");
    assert_ne!(foreign, good, "another key gives another tag");
    let cases: [(&str, &[u8]); 4] = [
        ("truncated", &good[..good.len() / 3]),
        ("corrupted", &flipped),
        ("foreign", &foreign),
        ("empty", b""),
    ];
    for (what, bytes) in cases {
        std::fs::write(&entry, bytes).expect("damage the entry");
        let loaded = compiler(dir.path()).compile(&wasm).expect("compile again");
        assert!(!loaded.from_cache, "{what}: must not be trusted");
        assert_eq!(
            std::fs::read(&entry).expect("rewritten"),
            good,
            "{what}: rebuilt"
        );
        let again = compiler(dir.path());
        let reloaded = again.compile(&wasm).expect("load");
        assert!(reloaded.from_cache, "{what}: the rebuilt entry is used");
        assert_eq!(grant_order(&again, reloaded), EXPECTED, "{what}");
    }
}

#[test]
fn a_swap_back_to_a_known_version_hits_the_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = tempfile::tempdir().expect("policy folder");
    let file = live.path().join("policy.wasm");
    let compiler = compiler(dir.path());
    let versions = [policy_wasm("priority"), policy_wasm("fair-share")];
    let mut seen = Vec::new();
    for (round, version) in versions.iter().chain(versions.iter()).enumerate() {
        std::fs::copy(version, &file).expect("install a version");
        seen.push(compiler.compile(&file).expect("load").from_cache);
        assert_eq!(entries(dir.path()).len(), round.min(1) + 1);
    }
    assert_eq!(seen, [false, false, true, true]);
}
