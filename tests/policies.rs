//! Policies end to end: a real Mosquitto, the real `coordinosaur` binary with `policy = ...`
//! channels, and MQTT test clients. Policy files live in a temp folder of the test (absolute
//! paths in the config), so tests can replace, break or delete them while the daemon runs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::policies::{language_policy_wasm, policy_wasm, policy_wasm_wasip2, Language};
use common::{
    free_port, topic, unique_id, Client, Daemon, DaemonOptions, TestBroker, DEFAULT_TIMEOUT,
};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::time::Instant;

/// Span of every "nothing arrives" check.
const QUIET: Duration = Duration::from_millis(400);

/// Bound on loading a policy (start-up, hot swap): the JavaScript and Python components take
/// 15-25 s to compile in the debug daemon on a busy 2-core machine (the Rust ones, milliseconds).
const LOAD_TIMEOUT: Duration = Duration::from_secs(180);

/// A broker, a daemon, a client subscribed to `go/+` and `rejected/+` of some channels, and the
/// folder holding the policy files the config names.
struct Setup {
    _broker: TestBroker,
    daemon: Daemon,
    client: Client,
    policies: TempDir,
}

impl Setup {
    /// Copies each `(file name, crate)` component into a fresh folder, then starts a daemon
    /// with `toml`, in which `{dir}` stands for that folder.
    async fn start(files: &[(&str, &str)], toml: &str, channels: &[&str]) -> Setup {
        let files: Vec<(&str, PathBuf)> = files.iter().map(|(f, k)| (*f, policy_wasm(k))).collect();
        Setup::start_with(&files, toml, channels).await
    }

    /// [`Setup::start`] with components given by path (`(file name, component)`).
    async fn start_with(files: &[(&str, PathBuf)], toml: &str, channels: &[&str]) -> Setup {
        let policies = tempfile::Builder::new()
            .prefix("coordinosaur-policies-")
            .tempdir()
            .expect("temp dir for policies");
        for (file, component) in files {
            std::fs::copy(component, policies.path().join(file)).expect("copy a policy");
        }
        let toml = expand(toml, policies.path());
        let broker = TestBroker::start();
        let options = DaemonOptions {
            ready_timeout: Some(LOAD_TIMEOUT),
            ..DaemonOptions::default()
        };
        let daemon = Daemon::start_with_options(broker.port(), &toml, options).await;
        let client = Client::connect(broker.port(), &unique_id("worker")).await;
        for channel in channels {
            for action in ["go/+", "rejected/+"] {
                client.subscribe(&topic(channel, action)).await;
            }
        }
        Setup {
            _broker: broker,
            daemon,
            client,
            policies,
        }
    }

    /// Replaces the daemon's config with `toml` (expanded as in `start`, keeping its `[mqtt]`
    /// table), atomically, as an operator editing it would.
    fn reconfigure(&self, toml: &str) {
        let path = self.daemon.config_path();
        let current = std::fs::read_to_string(&path).expect("read the config");
        let mqtt = &current[current.find("[mqtt]").expect("the config has [mqtt]")..];
        let toml = expand(toml, self.policies.path());
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{toml}\n\n{mqtt}")).expect("write the config");
        std::fs::rename(&tmp, &path).expect("rename the config into place");
    }

    fn path(&self, file: &str) -> PathBuf {
        self.policies.path().join(file)
    }

    /// `register` with extra registration fields (`priority`, `tenant`, ...).
    async fn register(&self, channel: &str, uid: &str, fields: Value) {
        self.client.register_with(channel, uid, 300.0, fields).await;
    }

    async fn next_go(&mut self, channel: &str) -> String {
        self.client.next_go(channel).await
    }

    /// The reason of the next `rejected/{uid}`.
    async fn rejected(&mut self, channel: &str, uid: &str) -> String {
        self.client.rejection_reason(channel, uid).await
    }

    /// Polls `infos` until `channel` has `waiting` queued jobs.
    async fn wait_waiting(&mut self, channel: &str, waiting: u64) {
        let deadline = Instant::now() + DEFAULT_TIMEOUT;
        loop {
            let state = self.client.state(channel).await;
            if state["waiting"] == waiting {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{channel}: waiting is {} after {DEFAULT_TIMEOUT:?}, expected {waiting}",
                state["waiting"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Finishes the running job `running`, repeatedly, and returns the order of the `n` grants.
    async fn drain_one_by_one(
        &mut self,
        channel: &str,
        mut running: String,
        n: usize,
    ) -> Vec<String> {
        let mut order = Vec::new();
        for _ in 0..n {
            self.client.finished(channel, &running).await;
            running = self.next_go(channel).await;
            order.push(running.clone());
        }
        order
    }

    /// Number of log lines containing `needle`.
    fn log_count(&self, needle: &str) -> usize {
        self.daemon
            .log()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until the log has more than `before` lines containing `needle`; returns when it
    /// saw them (polled every 5 ms).
    async fn wait_log_count(&self, needle: &str, before: usize) -> Instant {
        self.wait_log_count_within(needle, before, DEFAULT_TIMEOUT)
            .await
    }

    /// [`Setup::wait_log_count`], waiting up to `timeout`.
    async fn wait_log_count_within(
        &self,
        needle: &str,
        before: usize,
        timeout: Duration,
    ) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_count(needle) > before {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "no new {needle:?} in the daemon log within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// `toml` with `{dir}` standing for `dir`, and a generous call budget unless it sets one.
fn expand(toml: &str, dir: &Path) -> String {
    let toml = toml.replace("{dir}", &dir.display().to_string());
    if toml.contains("[policy_sandbox]") {
        return toml;
    }
    // Tests of behaviour, not of the budget: a debug build on a loaded 2-core machine can take
    // longer than the 10 ms default per call, and a fallback would change the result.
    format!("[policy_sandbox]\ncall_timeout = \"5s\"\n\n{toml}")
}

/// Replaces `path` atomically with the component of `krate`: copy to a temp name in the same
/// folder, then rename over it.
fn replace_atomically(path: &Path, krate: &str) {
    replace_with(path, &policy_wasm(krate));
}

/// Replaces `path` atomically with a copy of `component`.
fn replace_with(path: &Path, component: &Path) {
    let tmp = path.with_extension("wasm.tmp");
    std::fs::copy(component, &tmp).expect("copy the new policy");
    std::fs::rename(&tmp, path).expect("rename the new policy into place");
}

/// A `[[channels]]` entry using `{dir}/file`.
fn channel_rule(pattern: &str, file: &str, max: u32, extra: &str) -> String {
    format!(
        "[[channels]]\npattern = \"{pattern}\"\nmax_concurrent_jobs = {max}\npolicy = \"{{dir}}/{file}\"\n{extra}\n"
    )
}

// ---------------------------------------------------------------------------------------------
// Example policies

#[tokio::test]
async fn priority_orders_grants_and_rejects_non_integer_priorities() {
    let toml = channel_rule("prio", "priority.wasm", 1, "");
    let mut s = Setup::start(&[("priority.wasm", "priority")], &toml, &["prio"]).await;
    s.register("prio", "hold", json!({})).await;
    assert_eq!(s.next_go("prio").await, "hold");
    for (uid, fields) in [
        ("a", json!({"priority": 1})),
        ("b", json!({"priority": 5})),
        ("c", json!({"priority": 1})),
        ("d", json!({"tenant": "x"})),
        ("e", json!({"priority": "high"})),
    ] {
        s.register("prio", uid, fields).await;
    }
    let reason = s.rejected("prio", "e").await;
    assert!(
        reason.contains("\"priority\""),
        "reason names the field: {reason}"
    );
    let order = s.drain_one_by_one("prio", "hold".into(), 4).await;
    assert_eq!(order, ["b", "a", "c", "d"]);
}

#[tokio::test]
async fn fair_share_caps_tenants_per_channel_independently() {
    // Two channels match the rule, so both use the same file with their own instance.
    let toml = channel_rule(
        "fs-",
        "fair_share.wasm",
        2,
        "policy_config = { max_running_per_tenant = 1 }",
    );
    let mut s = Setup::start(
        &[("fair_share.wasm", "fair-share")],
        &toml,
        &["fs-x", "fs-y"],
    )
    .await;
    s.register("fs-x", "x1", json!({"tenant": "a"})).await;
    assert_eq!(s.next_go("fs-x").await, "x1");
    // Tenant a runs one job on fs-x, none on fs-y.
    s.register("fs-y", "y1", json!({"tenant": "a"})).await;
    assert_eq!(s.next_go("fs-y").await, "y1");
    // At its cap on fs-x: deferred although a slot is free; tenant b takes it.
    s.register("fs-x", "x2", json!({"tenant": "a"})).await;
    s.register("fs-x", "x3", json!({"tenant": "b"})).await;
    assert_eq!(s.next_go("fs-x").await, "x3");
    s.client.expect_none(&topic("fs-x", "go/+"), QUIET).await;
    s.client.finished("fs-x", "x1").await;
    assert_eq!(s.next_go("fs-x").await, "x2");
}

#[tokio::test]
async fn fair_share_alternates_tenants() {
    let toml = channel_rule(
        "rr",
        "fair_share.wasm",
        1,
        "policy_config = { max_running_per_tenant = 10 }",
    );
    let mut s = Setup::start(&[("fair_share.wasm", "fair-share")], &toml, &["rr"]).await;
    s.register("rr", "hold", json!({"tenant": "z"})).await;
    assert_eq!(s.next_go("rr").await, "hold");
    for (uid, tenant) in [
        ("a1", "a"),
        ("a2", "a"),
        ("a3", "a"),
        ("b1", "b"),
        ("b2", "b"),
        ("c1", "c"),
    ] {
        s.register("rr", uid, json!({"tenant": tenant})).await;
    }
    s.wait_waiting("rr", 6).await;
    let order = s.drain_one_by_one("rr", "hold".into(), 6).await;
    assert_eq!(order, ["a1", "b1", "c1", "a2", "b2", "a3"]);
}

#[tokio::test]
async fn deny_rejects_listed_tenants_with_the_reason() {
    let toml = channel_rule(
        "deny",
        "deny.wasm",
        10,
        "policy_config = { tenants = [\"evil\"] }",
    );
    let mut s = Setup::start(&[("deny.wasm", "deny")], &toml, &["deny"]).await;
    s.register("deny", "e1", json!({"tenant": "evil"})).await;
    assert_eq!(
        s.rejected("deny", "e1").await,
        r#"tenant "evil" is denied by policy"#
    );
    s.register("deny", "g1", json!({"tenant": "good"})).await;
    assert_eq!(s.next_go("deny").await, "g1");
    s.client.expect_none(&topic("deny", "go/e1"), QUIET).await;
}

// ---------------------------------------------------------------------------------------------
// Hostile fixtures

/// A channel using fixture `krate` under `sandbox`, plus a channel without a policy: every job on
/// both gets `go`, one after the other, and the daemon logs the failures.
async fn contained(krate: &str, sandbox: &str) {
    let file = format!("{}.wasm", krate.replace('-', "_"));
    let toml = format!(
        "[policy_sandbox]\n{sandbox}\n\n{}",
        channel_rule("hostile", &file, 1, "")
    );
    let mut s = Setup::start(&[(&file, krate)], &toml, &["hostile", "plain"]).await;
    let started = Instant::now();
    let mut running: Option<String> = None;
    for i in 0..5 {
        let uid = format!("h{i}");
        s.register("hostile", &uid, json!({})).await;
        if let Some(previous) = running.take() {
            s.client.finished("hostile", &previous).await;
        }
        assert_eq!(s.next_go("hostile").await, uid);
        running = Some(uid);
    }
    eprintln!(
        "{krate}: 5 jobs through a failing policy in {:?}",
        started.elapsed()
    );
    s.client.register("plain", "p", 30.0).await;
    assert_eq!(s.next_go("plain").await, "p");
    s.daemon.wait_log("policy call failed").await;
    assert!(s.daemon.is_running(), "the daemon survived {krate}");
}

#[tokio::test]
async fn spin_is_interrupted_and_the_channel_keeps_granting() {
    contained("spin", "call_timeout = \"5ms\"").await;
}

#[tokio::test]
async fn grow_hits_the_memory_cap_and_the_channel_keeps_granting() {
    contained("grow", "max_memory = 2097152").await;
}

#[tokio::test]
async fn trap_falls_back_and_the_channel_keeps_granting() {
    contained("trap", "").await;
}

#[tokio::test]
async fn start_up_with_a_wrong_interface_policy_fails_naming_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("wrong_interface.wasm");
    std::fs::copy(policy_wasm("wrong-interface"), &policy).expect("copy the fixture");
    let config = dir.path().join("coordinosaur.toml");
    // Policies load before the MQTT connection: no broker is needed to see the failure.
    let toml = format!(
        "{}\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\n",
        channel_rule("w", "wrong_interface.wasm", 1, "")
            .replace("{dir}", &dir.path().display().to_string()),
        free_port()
    );
    std::fs::write(&config, toml).expect("write the config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_coordinosaur"))
        .arg("--config")
        .arg(&config)
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn coordinosaur");
    let deadline = Instant::now() + DEFAULT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("coordinosaur kept running with a wrong-interface policy");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(!status.success(), "exit status {status}; stderr:\n{stderr}");
    assert!(
        stderr.contains(&policy.display().to_string()) && stderr.contains("coordinosaur:policy"),
        "stderr names the file and the world:\n{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// Hot reload

#[tokio::test]
async fn hot_swap_keeps_every_queued_job_and_changes_behaviour() {
    const JOBS: usize = 1_000;
    let deny_reason = r#"tenant "evil" is denied by policy"#;
    // priority ignores the config; deny, swapped in later, reads it.
    let toml = channel_rule(
        "swap",
        "policy.wasm",
        1,
        "policy_config = { tenants = [\"evil\"] }",
    );
    let mut s = Setup::start(&[("policy.wasm", "priority")], &toml, &["swap"]).await;
    s.register("swap", "hold", json!({})).await;
    assert_eq!(s.next_go("swap").await, "hold");
    let evil = |i: usize| i.is_multiple_of(10);
    let uids: Vec<String> = (0..JOBS).map(|i| format!("j{i:04}")).collect();
    for (i, uid) in uids.iter().enumerate() {
        let tenant = if evil(i) { "evil" } else { "good" };
        s.register("swap", uid, json!({"priority": i, "tenant": tenant}))
            .await;
    }
    s.wait_waiting("swap", JOBS as u64).await;

    let swaps_before = s.log_count("policy swapped");
    let renamed_at = Instant::now();
    replace_atomically(&s.path("policy.wasm"), "deny");
    // The first decision of the new policy: readmit rejects the evil jobs.
    let (first, _) = s
        .client
        .expect_match(&topic("swap", "rejected/+"), DEFAULT_TIMEOUT)
        .await;
    let first_decision = renamed_at.elapsed();
    let logged_at = s.wait_log_count("policy swapped", swaps_before).await;
    let log_line = logged_at - renamed_at;
    let line = s
        .daemon
        .log()
        .lines()
        .find(|l| l.contains("policy swapped"))
        .map(str::to_owned)
        .unwrap_or_default();
    eprintln!(
        "reload of {JOBS} queued jobs: rename -> \"policy swapped\" log line {log_line:?}, \
         rename -> first decision by the new policy {first_decision:?}\n  {line}"
    );
    assert!(first_decision < Duration::from_secs(10));

    // Every evil job is rejected with deny's reason (the first one already taken above).
    let mut rejected = vec![first.rsplit('/').next().unwrap_or_default().to_owned()];
    while rejected.len() < JOBS / 10 {
        let (t, payload) = s
            .client
            .expect_match(&topic("swap", "rejected/+"), DEFAULT_TIMEOUT)
            .await;
        let body: Value = serde_json::from_slice(&payload).expect("JSON");
        assert_eq!(body["reason"], deny_reason);
        rejected.push(t.rsplit('/').next().unwrap_or_default().to_owned());
    }
    let evil_uids: Vec<String> = (0..JOBS)
        .filter(|i| evil(*i))
        .map(|i| uids[i].clone())
        .collect();
    rejected.sort();
    assert_eq!(rejected, evil_uids);

    // None lost: with room for everyone, every other job gets go, now in FIFO order (deny
    // accepts at 0) instead of priority order.
    s.client.set_concurrency("swap", 10_000).await;
    let mut granted = Vec::new();
    while granted.len() < JOBS - JOBS / 10 {
        granted.push(s.next_go("swap").await);
    }
    let good: Vec<String> = (0..JOBS)
        .filter(|i| !evil(*i))
        .map(|i| uids[i].clone())
        .collect();
    assert_eq!(granted, good);
    s.client
        .expect_none(&topic("swap", "rejected/+"), QUIET)
        .await;

    // New registrations follow deny.
    s.register("swap", "late-evil", json!({"tenant": "evil"}))
        .await;
    assert_eq!(s.rejected("swap", "late-evil").await, deny_reason);
    s.register(
        "swap",
        "late-good",
        json!({"tenant": "good", "priority": "not checked"}),
    )
    .await;
    assert_eq!(s.next_go("swap").await, "late-good");
}

/// A channel using `policy.wasm` (priority) with one slot, held by `hold`.
async fn priority_channel() -> Setup {
    let toml = channel_rule("prio", "policy.wasm", 1, "");
    let mut s = Setup::start(&[("policy.wasm", "priority")], &toml, &["prio"]).await;
    s.register("prio", "hold", json!({})).await;
    assert_eq!(s.next_go("prio").await, "hold");
    s
}

/// priority still decides: `low{n}`(1) then `high{n}`(9) queue behind `running`, and `high{n}`
/// goes first. Returns the job left running (`low{n}`).
async fn assert_priority_still_decides(s: &mut Setup, running: &str, n: u32) -> String {
    let (low, high) = (format!("low{n}"), format!("high{n}"));
    s.register("prio", &low, json!({"priority": 1})).await;
    s.register("prio", &high, json!({"priority": 9})).await;
    s.wait_waiting("prio", 2).await;
    let order = s.drain_one_by_one("prio", running.into(), 2).await;
    assert_eq!(order, [high, low.clone()]);
    low
}

#[tokio::test]
async fn a_broken_file_is_refused_and_the_old_policy_keeps_deciding() {
    let mut s = priority_channel().await;
    let path = s.path("policy.wasm");
    let bytes = std::fs::read(&path).expect("read the policy");
    // Written in place: truncated, then garbage.
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate the policy");
    s.wait_log_count("policy reload failed", 0).await;
    let failures = s.log_count("policy reload failed");
    std::fs::write(&path, b"this is not a wasm component").expect("write garbage");
    s.wait_log_count("policy reload failed", failures).await;
    assert_eq!(s.log_count("policy swapped"), 0);
    assert_priority_still_decides(&mut s, "hold", 0).await;
}

#[tokio::test]
async fn a_deleted_file_keeps_the_last_good_policy_and_warns() {
    let mut s = priority_channel().await;
    let path = s.path("policy.wasm");
    std::fs::remove_file(&path).expect("delete the policy");
    s.wait_log_count("policy reload failed", 0).await;
    let line = s
        .daemon
        .log()
        .lines()
        .find(|l| l.contains("policy reload failed"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(line.contains("WARN"), "a warning: {line}");
    let running = assert_priority_still_decides(&mut s, "hold", 0).await;
    // The folder is still watched: a file put back is picked up.
    replace_atomically(&path, "priority");
    s.wait_log_count("policy swapped", 0).await;
    assert_priority_still_decides(&mut s, &running, 1).await;
}

#[tokio::test]
async fn a_swap_refused_by_init_keeps_the_old_policy() {
    // The channel has no policy_config: priority accepts that, deny's init refuses it.
    let mut s = priority_channel().await;
    s.register("prio", "queued-low", json!({"priority": 1}))
        .await;
    s.register("prio", "queued-high", json!({"priority": 9}))
        .await;
    s.wait_waiting("prio", 2).await;
    replace_atomically(&s.path("policy.wasm"), "deny");
    s.daemon.wait_log("new policy refused").await;
    // The queued jobs keep priority's order, and priority still decides new ones.
    let order = s.drain_one_by_one("prio", "hold".into(), 2).await;
    assert_eq!(order, ["queued-high", "queued-low"]);
    let running = assert_priority_still_decides(&mut s, "queued-low", 0).await;
    s.register("prio", "bad", json!({"priority": "x"})).await;
    let reason = s.rejected("prio", "bad").await;
    assert!(reason.contains("\"priority\""), "{reason}");
    s.client.finished("prio", &running).await;
}

// ---------------------------------------------------------------------------------------------
// Shadow policies and automatic rollback

#[tokio::test]
async fn a_shadow_policy_is_compared_and_shown_by_status_but_never_decides() {
    // FIFO decides; priority runs beside it as the candidate.
    let toml = "[[channels]]\npattern = \"shad\"\nmax_concurrent_jobs = 1\npolicy_shadow = \"{dir}/candidate.wasm\"\n";
    let mut s = Setup::start(&[("candidate.wasm", "priority")], toml, &["shad"]).await;
    s.register("shad", "hold", json!({})).await;
    assert_eq!(s.next_go("shad").await, "hold");
    for (uid, p) in [("low", 1), ("high", 9), ("plain", 0)] {
        s.register("shad", uid, json!({ "priority": p })).await;
    }
    s.wait_waiting("shad", 3).await;
    let order = s.drain_one_by_one("shad", "hold".into(), 3).await;
    assert_eq!(order, ["low", "high", "plain"], "the shadow never decides");
    let state = s.client.state("shad").await;
    let shadow = &state["shadow"];
    assert_eq!(
        shadow["admit"],
        json!({"compared": 4, "disagreed": 2}),
        "{state}"
    );
    assert_eq!(shadow["before_grant"]["disagreed"], 0, "{state}");
    assert_eq!(shadow["failures"], 0, "{state}");
    let broker = format!("127.0.0.1:{}", s.daemon.broker_port());
    let (code, out, err) = common::run_binary(&["status", "--broker", &broker, "shad"]).await;
    assert_eq!(code, Some(0), "{err}");
    // 4 admits (2 agree) and 4 before-grants (all agree): 6 of 8.
    assert!(
        out.contains("built-in (shadow candidate.wasm: 75.0% of 8 agree)"),
        "{out}"
    );
    s.client.finished("shad", "plain").await;
}

#[tokio::test]
async fn a_hot_swapped_policy_that_keeps_failing_is_rolled_back_and_not_retried() {
    let mut s = priority_channel().await;
    let path = s.path("policy.wasm");
    replace_atomically(&path, "trap");
    s.wait_log_count("policy swapped", 0).await;
    // Every admit of the new version traps: the fallback accepts at 0 (FIFO). The third failure
    // within 60 s of the swap ([policy_rollback] defaults) brings priority back, which re-ranks
    // the queue.
    for (uid, p) in [("a", 1), ("b", 5), ("c", 9)] {
        s.register("prio", uid, json!({ "priority": p })).await;
    }
    s.wait_log_count("policy rolled back", 0).await;
    s.wait_waiting("prio", 3).await;
    let order = s.drain_one_by_one("prio", "hold".into(), 3).await;
    assert_eq!(order, ["c", "b", "a"], "priority's order again");
    let running = assert_priority_still_decides(&mut s, "a", 0).await;
    // The failed content copied again is not tried; a changed file is.
    replace_atomically(&path, "trap");
    s.wait_log_count("unchanged since its version was rolled back", 0)
        .await;
    let running = assert_priority_still_decides(&mut s, &running, 1).await;
    replace_with(&path, &policy_wasm_wasip2("priority"));
    s.wait_log_count("policy swapped", 1).await;
    assert_priority_still_decides(&mut s, &running, 2).await;
    assert_eq!(s.log_count("policy rolled back"), 1);
}

// ---------------------------------------------------------------------------------------------
// Config reload

#[tokio::test]
async fn a_config_reload_refused_by_init_keeps_the_previous_policy_and_config() {
    let deny_reason = r#"tenant "evil" is denied by policy"#;
    // Closed: a channel left without a working instance would reject every job.
    let deny = |config: &str| {
        channel_rule(
            "deny",
            "deny.wasm",
            10,
            &format!("policy_config = {config}\non_policy_error = \"closed\""),
        )
    };
    let mut s = Setup::start(
        &[("deny.wasm", "deny")],
        &deny(r#"{ tenants = ["evil"] }"#),
        &["deny"],
    )
    .await;
    s.register("deny", "e1", json!({"tenant": "evil"})).await;
    assert_eq!(s.rejected("deny", "e1").await, deny_reason);

    // deny's init refuses a `tenants` that is not a list.
    s.reconfigure(&deny("{ tenants = 7 }"));
    s.daemon.wait_log("channel reconfigured").await;
    s.register("deny", "e2", json!({"tenant": "evil"})).await;
    assert_eq!(s.rejected("deny", "e2").await, deny_reason);
    s.register("deny", "g1", json!({"tenant": "good"})).await;
    assert_eq!(s.next_go("deny").await, "g1");
    let line = s
        .daemon
        .log()
        .lines()
        .find(|l| l.contains("keeps its previous policy"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        line.contains("WARN") && line.contains("tenants"),
        "a warning with init's reason: {line:?}"
    );
}

/// The daemon's default `[policy_cache]` (inside `[state] dir`): the first start compiles and
/// writes the entry, a restart loads it from there and the policy decides as before.
#[tokio::test]
async fn a_restart_loads_the_policy_from_the_cache_in_the_state_dir() {
    let toml = channel_rule("prio", "priority.wasm", 1, "");
    let mut s = Setup::start(&[("priority.wasm", "priority")], &toml, &["prio"]).await;
    let loads = |log: String| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("policy loaded"))
            .map(str::to_owned)
            .collect()
    };
    let first = loads(s.daemon.log());
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].contains("cached=false"), "{first:?}");
    assert!(s.daemon.dir().join("state/policy-cache/key").exists());
    s.daemon.spawn_again().await;
    let both = loads(s.daemon.log());
    assert_eq!(both.len(), 2, "{both:?}");
    assert!(both[1].contains("cached=true"), "{both:?}");
    s.register("prio", "bad", json!({"priority": "high"})).await;
    assert_eq!(
        s.rejected("prio", "bad").await,
        r#"field "priority" must be an integer, got "high""#
    );
}

#[tokio::test]
async fn a_config_reload_naming_a_new_policy_file_uses_it() {
    let prio = channel_rule("prio", "priority.wasm", 1, "");
    let mut s = Setup::start(
        &[("priority.wasm", "priority"), ("deny.wasm", "deny")],
        &prio,
        &["prio", "deny"],
    )
    .await;
    let deny = channel_rule(
        "deny",
        "deny.wasm",
        10,
        "policy_config = { tenants = [\"evil\"] }",
    );
    s.reconfigure(&format!("{prio}\n{deny}"));
    s.daemon.wait_log("config applied").await;
    let line = s
        .daemon
        .log()
        .lines()
        .find(|l| l.contains("policy loaded") && l.contains("deny.wasm"))
        .map(str::to_owned);
    assert!(line.is_some(), "deny.wasm compiled with the config");
    s.register("deny", "e1", json!({"tenant": "evil"})).await;
    assert_eq!(
        s.rejected("deny", "e1").await,
        r#"tenant "evil" is denied by policy"#
    );
    s.register("deny", "g1", json!({"tenant": "good"})).await;
    assert_eq!(s.next_go("deny").await, "g1");
}

#[tokio::test]
async fn a_config_reload_naming_a_broken_policy_keeps_the_old_config() {
    let prio = |max: u32| channel_rule("prio", "policy.wasm", max, "");
    let mut s = Setup::start(&[("policy.wasm", "priority")], &prio(1), &["prio"]).await;
    s.register("prio", "hold", json!({})).await;
    assert_eq!(s.next_go("prio").await, "hold");
    std::fs::write(s.path("broken.wasm"), b"not a component").expect("write a broken policy");
    // Raises prio's limit and names the broken file for another channel: none of it applies.
    let other = channel_rule("other", "broken.wasm", 1, "");
    s.reconfigure(&format!("{}\n{other}", prio(3)));
    s.daemon.wait_log("config reload failed").await;
    let line = s
        .daemon
        .log()
        .lines()
        .find(|l| l.contains("config reload failed"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        line.contains("WARN") && line.contains("broken.wasm") && line.contains("compile"),
        "a warning naming the file and the cause: {line}"
    );
    s.register("prio", "q1", json!({})).await;
    s.client.expect_none(&topic("prio", "go/+"), QUIET).await;
    assert_eq!(s.client.state("prio").await["max_concurrent_jobs"], 1);
    assert_eq!(s.log_count("channel reconfigured"), 0);
}

// ---------------------------------------------------------------------------------------------
// Policies in JavaScript and Python (policies/js, policies/python): `priority` at admit, plus a
// veto at grant time for the tenants in `policy_config.tenants`.

const EVIL_REASON: &str = r#"tenant "evil" is denied by policy"#;

/// A channel `lang` with one slot, running the `language` policy with `tenants = ["evil"]`,
/// under the default `[policy_sandbox]` except the call budget (see `expand`).
async fn language_channel(language: Language) -> Setup {
    let toml = channel_rule(
        "lang",
        "policy.wasm",
        1,
        "policy_config = { tenants = [\"evil\"] }",
    );
    let files = [("policy.wasm", language_policy_wasm(language))];
    Setup::start_with(&files, &toml, &["lang"]).await
}

async fn language_policy_orders_by_priority(language: Language) {
    let mut s = language_channel(language).await;
    s.register("lang", "hold", json!({})).await;
    assert_eq!(s.next_go("lang").await, "hold");
    for (uid, fields) in [
        ("a", json!({"priority": 1})),
        ("b", json!({"priority": 5})),
        ("c", json!({"priority": 1})),
        ("d", json!({"tenant": "x"})),
        ("n", json!({"priority": -3})),
        ("e", json!({"priority": "high"})),
        ("f", json!({"priority": 1.5})),
    ] {
        s.register("lang", uid, fields).await;
    }
    assert_eq!(
        s.rejected("lang", "e").await,
        r#"field "priority" must be an integer, got "high""#
    );
    let reason = s.rejected("lang", "f").await;
    assert!(reason.contains("\"priority\""), "{language:?}: {reason}");
    let order = s.drain_one_by_one("lang", "hold".into(), 5).await;
    assert_eq!(order, ["b", "a", "c", "d", "n"], "{language:?}");
}

async fn language_policy_vetoes_listed_tenants(language: Language) {
    let mut s = language_channel(language).await;
    // A free slot: offered at once, vetoed at once.
    s.register("lang", "e0", json!({"tenant": "evil"})).await;
    assert_eq!(s.rejected("lang", "e0").await, EVIL_REASON);
    s.register("lang", "hold", json!({"tenant": "good"})).await;
    assert_eq!(s.next_go("lang").await, "hold");
    // Queued first by priority, vetoed when its turn comes; the next job takes the slot.
    s.register("lang", "e1", json!({"tenant": "evil", "priority": 9}))
        .await;
    s.register("lang", "g1", json!({"tenant": "good", "priority": 1}))
        .await;
    s.wait_waiting("lang", 2).await;
    s.client
        .expect_none(&topic("lang", "rejected/+"), QUIET)
        .await;
    s.client.finished("lang", "hold").await;
    assert_eq!(s.rejected("lang", "e1").await, EVIL_REASON);
    assert_eq!(s.next_go("lang").await, "g1");
    // Other tenants, and jobs without one, are granted.
    s.register("lang", "t", json!({"tenant": "Evil"})).await;
    s.register("lang", "u", json!({})).await;
    let order = s.drain_one_by_one("lang", "g1".into(), 2).await;
    assert_eq!(order, ["t", "u"], "{language:?}");
}

/// Starts on the Rust `priority` policy with `JOBS` queued, swaps the file for the `language`
/// policy: none of the queued jobs is lost, the evil ones are vetoed by the new policy, the others
/// run in priority order.
async fn language_policy_hot_swaps_in_with_jobs_queued(language: Language) {
    const JOBS: usize = 50;
    let component = language_policy_wasm(language);
    let toml = channel_rule(
        "swap",
        "policy.wasm",
        1,
        "policy_config = { tenants = [\"evil\"] }",
    );
    let files = [("policy.wasm", policy_wasm("priority"))];
    let mut s = Setup::start_with(&files, &toml, &["swap"]).await;
    s.register("swap", "hold", json!({})).await;
    assert_eq!(s.next_go("swap").await, "hold");
    let evil = |i: usize| i.is_multiple_of(10);
    let priority = |i: usize| (i % 7) as i64;
    let uids: Vec<String> = (0..JOBS).map(|i| format!("j{i:04}")).collect();
    for (i, uid) in uids.iter().enumerate() {
        let tenant = if evil(i) { "evil" } else { "good" };
        s.register(
            "swap",
            uid,
            json!({"priority": priority(i), "tenant": tenant}),
        )
        .await;
    }
    s.wait_waiting("swap", JOBS as u64).await;

    let swaps_before = s.log_count("policy swapped");
    replace_with(&s.path("policy.wasm"), &component);
    s.wait_log_count_within("policy swapped", swaps_before, LOAD_TIMEOUT)
        .await;
    s.client.set_concurrency("swap", 10_000).await;

    // Highest priority first, FIFO among equals; the evil jobs vetoed on their turn.
    let mut expected: Vec<usize> = (0..JOBS).filter(|i| !evil(*i)).collect();
    expected.sort_by_key(|i| std::cmp::Reverse(priority(*i)));
    let expected: Vec<String> = expected.into_iter().map(|i| uids[i].clone()).collect();
    let mut granted = Vec::new();
    while granted.len() < expected.len() {
        granted.push(s.next_go("swap").await);
    }
    assert_eq!(granted, expected, "{language:?}");
    let mut vetoed = Vec::new();
    while vetoed.len() < JOBS / 10 {
        let (t, payload) = s
            .client
            .expect_match(&topic("swap", "rejected/+"), DEFAULT_TIMEOUT)
            .await;
        let body: Value = serde_json::from_slice(&payload).expect("JSON");
        assert_eq!(body["reason"], EVIL_REASON);
        vetoed.push(t.rsplit('/').next().unwrap_or_default().to_owned());
    }
    vetoed.sort();
    let evil_uids: Vec<String> = (0..JOBS)
        .filter(|i| evil(*i))
        .map(|i| uids[i].clone())
        .collect();
    assert_eq!(vetoed, evil_uids, "{language:?}");
    assert_eq!(s.client.state("swap").await["waiting"], 0);
}

#[tokio::test]
async fn javascript_policy_orders_by_priority() {
    language_policy_orders_by_priority(Language::JavaScript).await;
}

#[tokio::test]
async fn python_policy_orders_by_priority() {
    language_policy_orders_by_priority(Language::Python).await;
}

#[tokio::test]
async fn javascript_policy_vetoes_listed_tenants() {
    language_policy_vetoes_listed_tenants(Language::JavaScript).await;
}

#[tokio::test]
async fn python_policy_vetoes_listed_tenants() {
    language_policy_vetoes_listed_tenants(Language::Python).await;
}

#[tokio::test]
async fn javascript_policy_hot_swaps_in_with_jobs_queued() {
    language_policy_hot_swaps_in_with_jobs_queued(Language::JavaScript).await;
}

#[tokio::test]
async fn python_policy_hot_swaps_in_with_jobs_queued() {
    language_policy_hot_swaps_in_with_jobs_queued(Language::Python).await;
}

/// Under a memory cap too small for its runtime, the policy cannot start: the channel falls back
/// (`open`: the job still gets `go`) and the warning names the setting to raise.
async fn language_policy_over_the_memory_cap_names_the_setting(language: Language) {
    let toml = format!(
        "[policy_sandbox]\ncall_timeout = \"5s\"\nmax_memory = {}\n\n{}",
        1 << 20,
        channel_rule("lang", "policy.wasm", 1, "")
    );
    let files = [("policy.wasm", language_policy_wasm(language))];
    let mut s = Setup::start_with(&files, &toml, &["lang"]).await;
    s.register("lang", "j", json!({"priority": 1})).await;
    assert_eq!(s.next_go("lang").await, "j");
    s.daemon.wait_log("policy call failed").await;
    let line = s
        .daemon
        .log()
        .lines()
        .find(|l| l.contains("policy call failed"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        line.contains("WARN") && line.contains("[policy_sandbox] max_memory, now 1048576 bytes"),
        "{language:?}: a warning naming the setting: {line}"
    );
}

#[tokio::test]
async fn javascript_policy_over_the_memory_cap_names_the_setting() {
    language_policy_over_the_memory_cap_names_the_setting(Language::JavaScript).await;
}

#[tokio::test]
async fn python_policy_over_the_memory_cap_names_the_setting() {
    language_policy_over_the_memory_cap_names_the_setting(Language::Python).await;
}
