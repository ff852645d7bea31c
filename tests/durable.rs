//! Durable state end to end: the real binary killed with SIGKILL and started again on the same
//! `[state] dir`, damaged state files, a second daemon on the same dir, a full disk. A real
//! Mosquitto per test.
//!
//! Before every kill the test asks for the channel's `state`: the daemon holds a reply until the
//! changes of every earlier event are committed, so the answer means they are on disk. That
//! includes the broker's acknowledgement of each `go` already seen (the broker acknowledges a
//! `go` before the test's `infos` reaches the daemon), so a restart says no second `go`.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::policies::policy_wasm;
use common::DEFAULT_TIMEOUT;
use common::{
    free_port, run_to_exit, setup, topic, unique_id, Client, Daemon, TestBroker, ANSWERS,
};
use coordinosaur::driver::ABORT_BEFORE_GO;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::time::Instant;

/// Span of every "nothing arrives" check.
const QUIET: Duration = Duration::from_millis(400);

/// The line the harness writes into the daemon log before each start.
const START_MARK: &str = "--- harness: starting coordinosaur ---";

/// The default state dir of a daemon started by the harness.
fn state_dir(daemon: &Daemon) -> PathBuf {
    daemon.dir().join("state")
}

/// Generations of the files named `{prefix}N` in `dir`, ascending.
fn generations(dir: &Path, prefix: &str) -> Vec<u64> {
    let mut found: Vec<u64> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.strip_prefix(prefix)?.parse().ok()
        })
        .collect();
    found.sort_unstable();
    found
}

/// The newest `{prefix}N` file in `dir`.
fn newest(dir: &Path, prefix: &str) -> PathBuf {
    let generation = generations(dir, prefix)
        .last()
        .copied()
        .unwrap_or_else(|| panic!("no {prefix}N file in {}", dir.display()));
    dir.join(format!("{prefix}{generation}"))
}

/// Every snapshot and journal in `dir` with its bytes (not the lock file, whose pid changes).
fn state_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().into_string().ok()?;
            let kept = name.starts_with("snapshot.") || name.starts_with("journal.");
            kept.then(|| (name, fs::read(entry.path()).expect("read a state file")))
        })
        .collect()
}

/// Flips every bit of the last byte of `path` (inside the checksummed payload).
fn flip_last_byte(path: &Path) {
    let mut bytes = fs::read(path).expect("read the file to damage");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(path, bytes).expect("write the damaged file");
}

/// Overwrites the first 8 bytes (the magic) of `path` with garbage.
fn garble_magic(path: &Path) {
    let mut bytes = fs::read(path).expect("read the file to damage");
    bytes[..8].copy_from_slice(b"GARBAGE!");
    fs::write(path, bytes).expect("write the damaged file");
}

/// What the daemon logged since it was last started.
fn last_run_log(daemon: &Daemon) -> String {
    let log = daemon.log();
    log.rsplit(START_MARK).next().unwrap_or_default().to_owned()
}

/// Waits (up to 10 s) until the log of the current run contains `needle`.
async fn wait_last_run_log(daemon: &Daemon, needle: &str) {
    let deadline = Instant::now() + DEFAULT_TIMEOUT;
    while !last_run_log(daemon).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "the daemon's current run logged no {needle:?} within {DEFAULT_TIMEOUT:?}:\n{}",
            last_run_log(daemon)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The uids in a state's `running`, sorted.
fn running(state: &Value) -> Vec<String> {
    let mut uids: Vec<String> = state["running"]
        .as_array()
        .unwrap_or_else(|| panic!("no running list in {state}"))
        .iter()
        .map(|u| u.as_str().unwrap_or_default().to_owned())
        .collect();
    uids.sort();
    uids
}

/// Milliseconds since the Unix epoch (the daemon's engine time is wall-clock based).
fn now_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH);
    u64::try_from(since.expect("clock after 1970").as_millis()).expect("ms fit in u64")
}

/// SIGKILL, then a start on the same config and state dir (returns once it answers).
async fn kill_and_restart(daemon: &mut Daemon) {
    daemon.kill();
    daemon.spawn_again().await;
}

/// A broker and a daemon whose first `go` for `uid` aborts it between journal and publish
/// (the fault point [`ABORT_BEFORE_GO`]).
async fn start_with_abort_before_go(uid: &str) -> (TestBroker, Daemon) {
    let broker = TestBroker::start();
    let options = common::DaemonOptions {
        env: vec![(ABORT_BEFORE_GO.into(), uid.into())],
        ..Default::default()
    };
    let daemon = Daemon::start_with_options(broker.port(), "", options).await;
    (broker, daemon)
}

/// Waits (up to 10 s) until the fault point has ended the daemon.
async fn wait_for_the_fault_point(daemon: &mut Daemon) {
    wait_last_run_log(daemon, "aborting before publishing go").await;
    let deadline = Instant::now() + DEFAULT_TIMEOUT;
    while daemon.is_running() {
        assert!(
            Instant::now() < deadline,
            "the fault point did not end the daemon"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After a restart: the grants the broker had acknowledged get no second `go` (a worker of the
/// original protocol would run its job again). Waits past the restart's re-send point (the
/// sync marker came back) plus [`QUIET`].
async fn expect_no_second_go(c: &mut Client, daemon: &Daemon) {
    wait_last_run_log(daemon, "synced").await;
    c.expect_none(&topic("ch", "go/+"), QUIET).await;
    assert!(
        !last_run_log(daemon).contains("go again"),
        "a second go after the restart:\n{}",
        last_run_log(daemon)
    );
}

/// Finishes `running` and returns the uid that gets `go` next, `n` times in a row.
async fn drain(c: &mut Client, channel: &str, mut running: String, n: usize) -> Vec<String> {
    let mut order = Vec::new();
    for _ in 0..n {
        c.finished(channel, &running).await;
        running = c.next_go(channel).await;
        order.push(running.clone());
    }
    order
}

// ---------------------------------------------------------------------------------------------
// Restart after kill -9

#[tokio::test]
async fn kill_9_then_restart_keeps_waiting_jobs_in_fifo_order_and_running_jobs_in_their_slots() {
    let (_broker, mut daemon, mut c) =
        setup("[defaults]\nmax_concurrent_jobs = 2\n", &["ch"], ANSWERS).await;
    for uid in ["r1", "r2", "w1", "w2", "w3", "w4"] {
        c.register("ch", uid, 300.0).await;
    }
    assert_eq!(c.next_go("ch").await, "r1");
    assert_eq!(c.next_go("ch").await, "r2");
    let before = c.state("ch").await;
    assert_eq!(before["waiting"], 4, "{before}");

    kill_and_restart(&mut daemon).await;
    let log = last_run_log(&daemon);
    assert!(
        log.contains("state restored") && log.contains("waiting=4") && log.contains("running=2"),
        "no 'state restored' line with the counts:\n{log}"
    );
    // The broker acknowledged both gos before the kill: neither job hears go again.
    expect_no_second_go(&mut c, &daemon).await;
    let after = c.state("ch").await;
    assert_eq!(running(&after), ["r1", "r2"], "{after}");
    assert_eq!(after["waiting"], 4, "{after}");
    // The two slots are still taken: a new job waits behind the restored ones.
    c.register("ch", "late", 300.0).await;
    c.expect_none(&topic("ch", "go/+"), QUIET).await;

    c.finished("ch", "r1").await;
    assert_eq!(c.next_go("ch").await, "w1");
    c.finished("ch", "r2").await;
    assert_eq!(c.next_go("ch").await, "w2");
    let rest = drain(&mut c, "ch", "w1".into(), 3).await;
    assert_eq!(rest, ["w3", "w4", "late"]);
    c.expect_none(&topic("ch", "expired/+"), Duration::ZERO)
        .await;
}

#[tokio::test]
async fn kill_9_then_restart_keeps_a_full_quota_window_full_until_it_opens() {
    // Long enough that the restart surely ends inside the window, even on a loaded machine.
    let window = Duration::from_secs(8);
    let toml = format!(
        "[defaults]\nmax_concurrent_jobs = 5\nquotas = [{{ interval = \"{}s\", limit = 2, name = \"w\" }}]\n",
        window.as_secs()
    );
    let (_broker, mut daemon, mut c) = setup(&toml, &["ch"], ANSWERS).await;
    for uid in ["a", "b", "c"] {
        c.register("ch", uid, 300.0).await;
    }
    assert_eq!(c.next_go("ch").await, "a");
    assert_eq!(c.next_go("ch").await, "b");
    c.finished("ch", "a").await;
    c.finished("ch", "b").await;
    let before = c.state("ch").await;
    assert_eq!(before["quotas"][0]["used"], 2, "{before}");
    assert_eq!(before["waiting"], 1, "{before}");
    let opens = before["quotas"][0]["next_opening"]
        .as_u64()
        .unwrap_or_else(|| panic!("a full window has a next_opening: {before}"));

    kill_and_restart(&mut daemon).await;
    let after = c.state("ch").await;
    assert!(
        now_ms() < opens,
        "the restart took longer than the {window:?} window; the test shows nothing"
    );
    assert_eq!(after["quotas"][0]["used"], 2, "{after}");
    assert_eq!(after["quotas"][0]["next_opening"], opens, "{after}");
    assert_eq!(after["waiting"], 1, "{after}");
    assert_eq!(after["running_count"], 0, "{after}");
    // Slots are free, yet c waits for the window, as it would have without the restart.
    c.expect_none(&topic("ch", "go/+"), QUIET).await;
    c.expect(&topic("ch", "go/c"), window + DEFAULT_TIMEOUT)
        .await;
    let at = now_ms();
    // Wall-clock receipt versus the daemon's wall-based engine time: allow a little skew.
    assert!(
        at + 100 >= opens,
        "c got go {} ms before its window opened",
        opens - at
    );
}

#[tokio::test]
async fn kill_9_then_restart_keeps_a_runtime_concurrency_set_unless_the_config_changed_it() {
    let (_broker, mut daemon, mut c) =
        setup("[defaults]\nmax_concurrent_jobs = 1\n", &["ch"], ANSWERS).await;
    c.set_concurrency("ch", 3).await;
    c.register("ch", "a", 300.0).await;
    assert_eq!(c.next_go("ch").await, "a");
    let before = c.state("ch").await;
    assert_eq!(before["max_concurrent_jobs"], 3, "{before}");

    kill_and_restart(&mut daemon).await;
    expect_no_second_go(&mut c, &daemon).await;
    let after = c.state("ch").await;
    assert_eq!(after["max_concurrent_jobs"], 3, "{after}");
    for uid in ["b", "c", "d"] {
        c.register("ch", uid, 300.0).await;
    }
    assert_eq!(c.next_go("ch").await, "b");
    assert_eq!(c.next_go("ch").await, "c");
    c.expect_none(&topic("ch", "go/+"), QUIET).await;

    // A restart under a config that gives the channel another limit takes the config's value,
    // as a reload would.
    daemon.kill();
    let config = fs::read_to_string(daemon.config_path()).expect("read the config");
    let edited = config.replace("max_concurrent_jobs = 1", "max_concurrent_jobs = 2");
    assert_ne!(config, edited, "the config names max_concurrent_jobs = 1");
    fs::write(daemon.config_path(), edited).expect("write the config");
    daemon.spawn_again().await;
    let edited_state = c.state("ch").await;
    assert_eq!(edited_state["max_concurrent_jobs"], 2, "{edited_state}");
    assert_eq!(edited_state["running_count"], 3, "{edited_state}");
}

#[tokio::test]
async fn kill_9_then_restart_keeps_policy_priorities_of_waiting_jobs() {
    let policies = tempfile::Builder::new()
        .prefix("coordinosaur-policies-")
        .tempdir()
        .expect("temp dir for the policy");
    let policy = policies.path().join("priority.wasm");
    fs::copy(policy_wasm("priority"), &policy).expect("copy the priority policy");
    // A debug build on a loaded machine can exceed the 10 ms default per call.
    let toml = format!(
        "[policy_sandbox]\ncall_timeout = \"5s\"\n\n[[channels]]\npattern = \"ch\"\nmax_concurrent_jobs = 1\npolicy = \"{}\"\n",
        policy.display()
    );
    let (_broker, mut daemon, mut c) = setup(&toml, &["ch"], ANSWERS).await;
    let register = |uid: &str, priority: i64| {
        let body = json!({"uid": uid, "timeout": 300, "priority": priority}).to_string();
        (topic("ch", "register"), body)
    };
    let (t, body) = register("run", 0);
    c.publish(&t, body).await;
    assert_eq!(c.next_go("ch").await, "run");
    for (uid, priority) in [("l1", 1), ("h5", 5), ("l2", 1), ("h9", 9)] {
        let (t, body) = register(uid, priority);
        c.publish(&t, body).await;
    }
    let before = c.state("ch").await;
    assert_eq!(before["waiting"], 4, "{before}");

    kill_and_restart(&mut daemon).await;
    expect_no_second_go(&mut c, &daemon).await;
    // The restarted policy ranks a new job among the restored ones.
    let (t, body) = register("m3", 3);
    c.publish(&t, body).await;
    let order = drain(&mut c, "ch", "run".into(), 5).await;
    assert_eq!(order, ["h9", "h5", "m3", "l1", "l2"]);
}

#[tokio::test]
async fn restarts_do_not_pile_up_grant_times_that_no_quota_window_counts() {
    let toml = "[[channels]]\npattern = \"q\"\nquotas = [{ interval = \"1h\", limit = 2 }]\n";
    let (_broker, mut daemon, mut c) = setup(toml, &["ch"], ANSWERS).await;
    c.subscribe(&topic("q", "go/+")).await;
    let dir = state_dir(&daemon);
    let mut snapshots = Vec::new();
    for round in 0..2 {
        // q's window counts its last 2 grants; ch has no quota, so its grants count nowhere.
        let channels: &[&str] = if round == 0 { &["q", "ch"] } else { &["ch"] };
        for channel in channels {
            for i in 0..if *channel == "q" { 2 } else { 20 } {
                let uid = format!("{channel}-{round}-{i}");
                c.register(channel, &uid, 300.0).await;
                assert_eq!(c.next_go(channel).await, uid);
                c.finished(channel, &uid).await;
            }
        }
        c.state("ch").await;
        kill_and_restart(&mut daemon).await;
        let q = c.state("q").await;
        assert_eq!(q["quotas"][0]["used"], 2, "{q}");
        snapshots.push(fs::read(newest(&dir, "snapshot.")).expect("read the snapshot"));
    }
    // Both hold q's two grant times and nothing else, however many grants ch had. (Their bytes
    // differ in one place: the token floor, which keeps ch's last fencing token, 20 then 40.)
    assert_eq!(
        snapshots[0].len(),
        snapshots[1].len(),
        "the snapshot grew with ch's grants"
    );
}

#[tokio::test]
async fn lease_that_ran_out_while_the_daemon_was_down_expires_at_restart_and_frees_its_slot() {
    let lease = Duration::from_secs(3);
    let (_broker, mut daemon, mut c) = setup("", &["ch"], ANSWERS).await;
    c.register("ch", "short", lease.as_secs_f64()).await;
    c.register("ch", "next", 300.0).await;
    assert_eq!(c.next_go("ch").await, "short");
    let granted = Instant::now();
    c.state("ch").await;
    daemon.kill();
    assert!(
        granted.elapsed() < lease,
        "the daemon was killed only after the lease ended; the test shows nothing"
    );
    c.expect_none(&topic("ch", "expired/+"), Duration::ZERO)
        .await;
    // Stay down until the lease is surely over (a margin for the go's trip to the client).
    tokio::time::sleep_until(granted + lease + Duration::from_millis(300)).await;

    daemon.spawn_again().await;
    // In this order: the lease ends first, then its slot goes to the waiting job.
    let (first, _) = c
        .recv(DEFAULT_TIMEOUT)
        .await
        .expect("a message after restart");
    assert_eq!(first, topic("ch", "expired/short"));
    let (second, _) = c
        .recv(DEFAULT_TIMEOUT)
        .await
        .expect("a go after the expiry");
    assert_eq!(second, topic("ch", "go/next"));
    wait_last_run_log(&daemon, "lease expired").await;
    assert!(
        !last_run_log(&daemon).contains("go again"),
        "an overdue lease must not get go again"
    );
    let state = c.state("ch").await;
    assert_eq!(running(&state), ["next"], "{state}");
    assert_eq!(state["waiting"], 0, "{state}");
}

/// The crash comes after the journal has the registration and the grant, but before the
/// broker has the register's acknowledgement (or the `go`); the lease runs out while the daemon
/// is down. The restart expires the job, and then the broker delivers the unacknowledged
/// register again: it must not start the job a second time (before the fix it got a new grant,
/// a `go` nobody waited for after its `expired`).
#[tokio::test]
async fn a_register_redelivered_after_its_job_expired_during_a_crash_starts_nothing() {
    let (broker, mut daemon) = start_with_abort_before_go("a").await;
    let mut c = Client::connect(broker.port(), &unique_id("worker")).await;
    for action in ["go/+", "expired/+"] {
        c.subscribe(&topic("ch", action)).await;
    }
    c.register("ch", "a", 0.3).await;
    wait_for_the_fault_point(&mut daemon).await;
    // Down past the lease's end.
    tokio::time::sleep(Duration::from_millis(500)).await;
    daemon.clear_env();
    daemon.spawn_again().await;
    c.expect(&topic("ch", "expired/a"), DEFAULT_TIMEOUT).await;
    wait_last_run_log(&daemon, "synced").await;
    c.expect_none(&topic("ch", "go/+"), QUIET).await;
    let log = last_run_log(&daemon);
    assert!(
        log.contains("register delivered again by the broker; already applied: ignored"),
        "the broker did not redeliver the register, so this test proves nothing:\n{log}"
    );
    let state = c.state("ch").await;
    assert_eq!(state["running_count"], 0, "{state}");
    assert_eq!(state["waiting"], 0, "{state}");
    // A fresh register of the same uid (not a redelivery) is a new job.
    c.register("ch", "a", 300.0).await;
    assert_eq!(c.next_go("ch").await, "a");
}

#[tokio::test]
async fn kill_9_after_the_broker_acknowledged_go_says_no_second_go_and_keeps_the_slot() {
    let (_broker, mut daemon, mut c) = setup("", &["ch"], ANSWERS).await;
    c.register("ch", "a", 300.0).await;
    c.register("ch", "b", 300.0).await;
    assert_eq!(c.next_go("ch").await, "a");
    c.state("ch").await;

    kill_and_restart(&mut daemon).await;
    expect_no_second_go(&mut c, &daemon).await;
    let state = c.state("ch").await;
    assert_eq!(running(&state), ["a"], "{state}");
    assert_eq!(state["waiting"], 1, "{state}");
    c.finished("ch", "a").await;
    assert_eq!(c.next_go("ch").await, "b");
}

/// A crash after the grant is journaled but before its `go` reaches the broker (a fault point
/// aborts the daemon right there): the restarted daemon says `go` exactly once, and the job
/// keeps its slot (no second grant).
#[tokio::test]
async fn crash_between_journal_and_publish_gives_exactly_one_go_after_restart() {
    let (broker, mut daemon) = start_with_abort_before_go("a").await;
    let mut c = Client::connect(broker.port(), &unique_id("worker")).await;
    c.subscribe(&topic("ch", "go/+")).await;
    c.register("ch", "a", 300.0).await;
    c.register("ch", "b", 300.0).await;
    wait_for_the_fault_point(&mut daemon).await;
    c.expect_none(&topic("ch", "go/+"), QUIET).await;

    // The same fault point stays armed: it ends only a first grant, not the go said again.
    daemon.spawn_again().await;
    c.expect(&topic("ch", "go/a"), DEFAULT_TIMEOUT).await;
    wait_last_run_log(&daemon, "go again").await;
    c.expect_none(&topic("ch", "go/+"), QUIET).await;
    // Acknowledged now: another crash and restart says nothing more.
    c.state("ch").await;
    kill_and_restart(&mut daemon).await;
    expect_no_second_go(&mut c, &daemon).await;
    let state = c.state("ch").await;
    assert_eq!(running(&state), ["a"], "{state}");
    assert_eq!(state["running_count"], 1, "{state}");
    assert_eq!(state["waiting"], 1, "{state}");
    // Still one slot, held by a: b keeps waiting and nothing else is granted.
    c.expect_none(&topic("ch", "go/+"), QUIET).await;
    c.finished("ch", "a").await;
    assert_eq!(c.next_go("ch").await, "b");
}

// ---------------------------------------------------------------------------------------------
// Refusals at start-up

#[tokio::test]
async fn second_daemon_on_the_same_state_dir_exits_non_zero_naming_the_dir_and_the_pid() {
    let (_broker, daemon, mut c) = setup("", &["ch"], ANSWERS).await;
    let pid = daemon.pid().expect("the first daemon runs");
    let second = daemon.run_to_exit();
    assert!(!second.status.success(), "{second:?}");
    let dir = state_dir(&daemon).display().to_string();
    assert!(
        second
            .output
            .contains(&format!("state dir {dir} is in use")),
        "no dir in {}",
        second.output
    );
    assert!(
        second.output.contains(&format!("(pid {pid})")),
        "no pid {pid} in {}",
        second.output
    );
    // It stopped before connecting (same client id): the first daemon still serves.
    c.register("ch", "a", 300.0).await;
    assert_eq!(c.next_go("ch").await, "a");
}

#[tokio::test]
async fn state_dir_that_is_a_regular_file_refuses_to_start_naming_the_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("not-a-dir");
    fs::write(&file, "I am a file").expect("write the file");
    let config = dir.path().join("coordinosaur.toml");
    // No broker listens on that port: the daemon must stop before it needs one.
    fs::write(
        &config,
        format!(
            "[state]\ndir = \"{}\"\n\n[mqtt]\nport = {}\n",
            file.display(),
            free_port()
        ),
    )
    .expect("write the config");
    let run = run_to_exit(&config, dir.path());
    assert!(!run.status.success(), "{run:?}");
    assert!(
        run.output.contains(&file.display().to_string()),
        "no path in {}",
        run.output
    );
    assert!(
        run.output.contains("cannot create the folder"),
        "{}",
        run.output
    );
    assert_eq!(
        run.output.matches("os error").count(),
        1,
        "the OS error once: {}",
        run.output
    );
    assert_eq!(
        fs::read_to_string(&file).expect("the file is still there"),
        "I am a file"
    );
}

// ---------------------------------------------------------------------------------------------
// Damaged state files

#[tokio::test]
async fn torn_journal_tail_after_kill_9_is_dropped_with_a_warning_and_state_is_intact() {
    let (_broker, mut daemon, mut c) = setup("", &["ch"], ANSWERS).await;
    for uid in ["a", "b", "c"] {
        c.register("ch", uid, 300.0).await;
    }
    assert_eq!(c.next_go("ch").await, "a");
    c.state("ch").await;
    daemon.kill();
    // A write cut short: a header announcing 100 bytes, then only 10 of them.
    let journal = newest(&state_dir(&daemon), "journal.");
    let mut torn = Vec::new();
    torn.extend_from_slice(&100u32.to_le_bytes());
    torn.extend_from_slice(&0xdead_beef_u32.to_le_bytes());
    torn.extend_from_slice(&[0xab; 10]);
    common::write_at_journal_end(&journal, &torn);

    daemon.spawn_again().await;
    let log = last_run_log(&daemon);
    assert!(
        log.contains("dropped a torn last write of 18 bytes"),
        "no torn-write warning:\n{log}"
    );
    assert!(log.contains("WARN"), "the torn write is a warning:\n{log}");
    expect_no_second_go(&mut c, &daemon).await;
    let state = c.state("ch").await;
    assert_eq!(running(&state), ["a"], "{state}");
    assert_eq!(state["waiting"], 2, "{state}");
    assert_eq!(drain(&mut c, "ch", "a".into(), 2).await, ["b", "c"]);
}

/// Two generations: a, b before the first restart; then c joins and a finishes (b runs).
async fn two_generations(daemon: &mut Daemon, c: &mut Client) {
    c.register("ch", "a", 300.0).await;
    c.register("ch", "b", 300.0).await;
    assert_eq!(c.next_go("ch").await, "a");
    c.state("ch").await;
    kill_and_restart(daemon).await;
    expect_no_second_go(c, daemon).await;
    c.register("ch", "c", 300.0).await;
    c.finished("ch", "a").await;
    assert_eq!(c.next_go("ch").await, "b");
    c.state("ch").await;
    daemon.kill();
    let dir = state_dir(daemon);
    assert_eq!(generations(&dir, "snapshot."), [0, 1]);
    assert_eq!(generations(&dir, "journal."), [0, 1]);
}

/// After [`two_generations`]: b runs (its go acknowledged, so not said again), c waits, and
/// nothing else.
async fn expect_b_running_c_waiting(c: &mut Client, daemon: &Daemon) {
    expect_no_second_go(c, daemon).await;
    let state = c.state("ch").await;
    assert_eq!(running(&state), ["b"], "{state}");
    assert_eq!(state["waiting"], 1, "{state}");
    assert_eq!(drain(c, "ch", "b".into(), 1).await, ["c"]);
}

#[tokio::test]
async fn damaged_newest_snapshot_falls_back_to_the_generation_before_with_a_warning_and_state_intact(
) {
    let (_broker, mut daemon, mut c) = setup("", &["ch"], ANSWERS).await;
    two_generations(&mut daemon, &mut c).await;
    let dir = state_dir(&daemon);
    flip_last_byte(&dir.join("snapshot.1"));

    daemon.spawn_again().await;
    let log = last_run_log(&daemon);
    assert!(
        log.contains("snapshot.1 is damaged") && log.contains("trying the generation before it"),
        "no fallback warning:\n{log}"
    );
    assert!(log.contains("base=0"), "restored from generation 0:\n{log}");
    expect_b_running_c_waiting(&mut c, &daemon).await;
    // The damaged generation is kept for inspection; a new one was started.
    assert_eq!(generations(&dir, "snapshot."), [0, 1, 2]);
}

#[tokio::test]
async fn torn_tail_then_damaged_newest_snapshot_still_restores_everything() {
    let (_broker, mut daemon, mut c) = setup("", &["ch"], ANSWERS).await;
    c.register("ch", "a", 300.0).await;
    c.register("ch", "b", 300.0).await;
    assert_eq!(c.next_go("ch").await, "a");
    c.state("ch").await;
    daemon.kill();
    let dir = state_dir(&daemon);
    common::write_at_journal_end(&dir.join("journal.0"), &[0x40, 0, 0, 0, 1, 2, 3]);

    // Generation 1 starts from what journal.0 held before its torn tail.
    daemon.spawn_again().await;
    expect_no_second_go(&mut c, &daemon).await;
    c.register("ch", "c", 300.0).await;
    c.finished("ch", "a").await;
    assert_eq!(c.next_go("ch").await, "b");
    c.state("ch").await;
    daemon.kill();
    flip_last_byte(&dir.join("snapshot.1"));

    // Falling back reads journal.0, then journal.1: the old torn tail must not end the replay.
    daemon.spawn_again().await;
    let log = last_run_log(&daemon);
    assert!(log.contains("snapshot.1 is damaged"), "{log}");
    expect_b_running_c_waiting(&mut c, &daemon).await;
}

#[tokio::test]
async fn every_snapshot_damaged_refuses_to_start_with_cannot_restore_and_leaves_the_files() {
    let (_broker, mut daemon, mut c) = setup("", &["ch"], ANSWERS).await;
    two_generations(&mut daemon, &mut c).await;
    let dir = state_dir(&daemon);

    // The newest snapshot is damaged and the fallback's journal is not a journal at all.
    flip_last_byte(&dir.join("snapshot.1"));
    garble_magic(&dir.join("journal.0"));
    let files = state_files(&dir);
    let run = daemon.run_to_exit();
    assert!(!run.status.success(), "{run:?}");
    assert!(run.output.contains("cannot restore"), "{}", run.output);
    assert!(
        run.output
            .contains("journal.0 is not a coordinosaur journal"),
        "{}",
        run.output
    );
    assert_eq!(
        state_files(&dir),
        files,
        "a refused start changed the files"
    );

    // Every snapshot damaged: nothing to start from.
    garble_magic(&dir.join("snapshot.0"));
    let files = state_files(&dir);
    let run = daemon.run_to_exit();
    assert!(!run.status.success(), "{run:?}");
    assert!(run.output.contains("cannot restore"), "{}", run.output);
    for name in ["snapshot.0", "snapshot.1"] {
        assert!(
            run.output.contains(&format!("{name} is damaged")),
            "{name} not named in {}",
            run.output
        );
    }
    assert!(
        run.output.contains(&dir.display().to_string()),
        "{}",
        run.output
    );
    assert_eq!(
        state_files(&dir),
        files,
        "a refused start changed the files"
    );
}

// ---------------------------------------------------------------------------------------------
// Full disk

/// A small tmpfs mounted on a temp folder, unmounted on drop (after the daemon using it is
/// gone: declare it before the daemon).
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("coordinosaur-tmpfs-")
            .tempdir()
            .expect("temp dir for the mount");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(out) if out.status.success() => Tmpfs { dir },
            Ok(out) => panic!(
                "this test needs to mount a tmpfs (run as root): mount on {} failed with {}: {}",
                dir.path().display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => panic!("this test needs mount(8) to mount a tmpfs: {e}"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Busy (a process still has a file open): detach it now, freed when closed.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Writes zeros into `path` until the file system is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut file = File::create(path).expect("create the filler");
    let chunk = [0u8; 4096];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == io::ErrorKind::StorageFull => break,
            Err(e) => panic!("fill {}: {e}", path.display()),
        }
    }
    written
}

#[tokio::test]
async fn full_disk_holds_the_go_until_space_is_freed_and_logs_the_write_failure() {
    let tmpfs = Tmpfs::mount("1m");
    let toml = format!("[state]\ndir = \"{}\"\n", tmpfs.path().display());
    let (_broker, mut daemon, mut c) = setup(&toml, &["ch"], ANSWERS).await;
    c.register("ch", "before", 300.0).await;
    assert_eq!(c.next_go("ch").await, "before");
    c.finished("ch", "before").await;
    c.state("ch").await;

    // 1 MiB of zeros written ahead of the records does not fit: they were cut off again, so
    // the journal's preallocation did not take the space the filler gets now.
    let log = last_run_log(&daemon);
    assert!(log.contains("cannot preallocate the journal"), "{log}");
    let filler = tmpfs.path().join("filler");
    assert!(fill(&filler) > 0, "the tmpfs was full from the start");
    // 16 KiB of registration fields: the record needs new pages, which a full tmpfs refuses
    // (a small one could still fit in the journal's last, partly used page).
    let body = json!({"uid": "held", "timeout": 300, "pad": "x".repeat(16 << 10)});
    c.publish(&topic("ch", "register"), body.to_string()).await;
    wait_last_run_log(
        &daemon,
        "journal write failed; holding every decision until it succeeds",
    )
    .await;
    c.expect_none(&topic("ch", "go/+"), QUIET).await;

    fs::remove_file(&filler).expect("delete the filler");
    c.expect(&topic("ch", "go/held"), DEFAULT_TIMEOUT).await;
    wait_last_run_log(&daemon, "journal writes work again").await;

    // What was finally written is whole: a restart finds held running.
    c.state("ch").await;
    kill_and_restart(&mut daemon).await;
    expect_no_second_go(&mut c, &daemon).await;
    let state = c.state("ch").await;
    assert_eq!(running(&state), ["held"], "{state}");
    drop(daemon);
    drop(tmpfs);
}

// ---------------------------------------------------------------------------------------------
// Settings

#[tokio::test]
async fn empty_state_dir_turns_persistence_off_with_a_warning_and_jobs_still_work() {
    let (_broker, mut daemon, mut c) = setup("[state]\ndir = \"\"\n", &["ch"], ANSWERS).await;
    daemon.wait_log("persistence is off").await;
    assert!(daemon.log().contains("WARN"), "{}", daemon.log());
    c.register("ch", "a", 300.0).await;
    c.register("ch", "b", 300.0).await;
    assert_eq!(c.next_go("ch").await, "a");
    c.finished("ch", "a").await;
    assert_eq!(c.next_go("ch").await, "b");
    assert!(!state_dir(&daemon).exists(), "a state dir was created");

    // Off means off: a restart forgets b.
    kill_and_restart(&mut daemon).await;
    let state = c.state("ch").await;
    assert_eq!(state["running_count"], 0, "{state}");
    assert!(!state_dir(&daemon).exists(), "a state dir was created");
    let names: Vec<String> = fs::read_dir(daemon.dir())
        .expect("list the daemon's folder")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("journal") || n.starts_with("snapshot") || n == "lock"),
        "state files written: {names:?}"
    );
}

#[tokio::test]
async fn durability_os_restores_after_kill_9() {
    let (_broker, mut daemon, mut c) =
        setup("[state]\ndurability = \"os\"\n", &["ch"], ANSWERS).await;
    c.register("ch", "a", 300.0).await;
    c.register("ch", "b", 300.0).await;
    assert_eq!(c.next_go("ch").await, "a");
    c.state("ch").await;

    kill_and_restart(&mut daemon).await;
    let log = last_run_log(&daemon);
    assert!(log.contains("durability=os"), "{log}");
    expect_no_second_go(&mut c, &daemon).await;
    let state = c.state("ch").await;
    assert_eq!(running(&state), ["a"], "{state}");
    assert_eq!(state["waiting"], 1, "{state}");
    assert_eq!(drain(&mut c, "ch", "a".into(), 1).await, ["b"]);
}
