//! `coordinosaur run`: the real binary against a real daemon and Mosquitto, observed by a test
//! client subscribed to the channel's topics.

mod common;

use std::process::{Output, Stdio};
use std::time::Duration;

use common::{free_port, setup, topic, Client, DEFAULT_TIMEOUT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use tokio::process::{Child, Command};
use tokio::time::{timeout, Instant};

/// Starts `coordinosaur run --broker 127.0.0.1:PORT ARGS...` with stdout and stderr captured.
fn spawn_run(port: u16, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_coordinosaur"))
        .arg("run")
        .arg("--broker")
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        // No ./coordinosaur.toml to pick up by accident.
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn coordinosaur run")
}

/// `coordinosaur run --channel ch --timeout 60 --uid UID -- COMMAND...`, as [`spawn_run`].
fn spawn_job(port: u16, uid: &str, command: &[&str]) -> Child {
    let options = ["--channel", "ch", "--timeout", "60", "--uid", uid, "--"];
    spawn_run(port, &[&options[..], command].concat())
}

/// Waits (bounded) for `run` to exit; returns its exit code and stderr.
async fn finish(child: Child) -> (Option<i32>, String) {
    let out: Output = timeout(DEFAULT_TIMEOUT, child.wait_with_output())
        .await
        .expect("coordinosaur run did not exit within 10 s")
        .expect("wait for coordinosaur run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What the test's watcher sees on `ch`: the daemon's answers and the requests `run` sends.
const WATCHED: &[&str] = &[
    "go/+",
    "finished",
    "aborted",
    "renew",
    "expired/+",
    "rejected/+",
];

fn payload_text(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

#[tokio::test]
async fn a_command_that_succeeds_exits_0_quietly_and_frees_the_slot() {
    let (broker, _daemon, mut w) = setup("", &["ch"], WATCHED).await;
    let run = spawn_job(broker.port(), "ok-1", &["true"]);
    let (code, stderr) = finish(run).await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_eq!(stderr, "", "quiet on success when not a terminal");
    w.expect(&topic("ch", "go/ok-1"), DEFAULT_TIMEOUT).await;
    assert_eq!(
        w.expect(&topic("ch", "finished"), DEFAULT_TIMEOUT).await,
        b"ok-1"
    );
    w.expect_none(&topic("ch", "aborted"), Duration::ZERO).await;
    // max_concurrent_jobs = 1: the next job is granted at once.
    w.register("ch", "next", 60.0).await;
    assert_eq!(w.next_go("ch").await, "next");
}

#[tokio::test]
async fn a_failing_command_gives_its_exit_code_and_publishes_aborted() {
    let (broker, _daemon, mut w) = setup("", &["ch"], WATCHED).await;
    let run = spawn_run(
        broker.port(),
        &[
            "--channel",
            "ch",
            "--timeout",
            "60",
            "--uid",
            "fail-1",
            "--meta",
            "tenant=acme",
            "--",
            "sh",
            "-c",
            "exit 3",
        ],
    );
    let (code, stderr) = finish(run).await;
    assert_eq!(code, Some(3), "stderr: {stderr}");
    assert_eq!(
        w.expect(&topic("ch", "aborted"), DEFAULT_TIMEOUT).await,
        b"fail-1"
    );
    w.expect_none(&topic("ch", "finished"), Duration::ZERO)
        .await;
    let state = w.state("ch").await;
    assert_eq!(state["running_count"], 0, "{state}");
}

#[tokio::test]
async fn a_command_past_half_its_timeout_is_renewed_and_never_expires() {
    let (broker, _daemon, mut w) = setup("", &["ch"], WATCHED).await;
    let run = spawn_run(
        broker.port(),
        &[
            "--channel",
            "ch",
            "--timeout",
            "1",
            "--uid",
            "long-1",
            "--",
            "sleep",
            "2.5",
        ],
    );
    let (code, stderr) = finish(run).await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    let renew = w.expect(&topic("ch", "renew"), Duration::ZERO).await;
    let renew: serde_json::Value = serde_json::from_slice(&renew).unwrap();
    assert_eq!(renew, json!({"uid": "long-1", "timeout": 1}));
    w.expect(&topic("ch", "finished"), DEFAULT_TIMEOUT).await;
    w.expect_none(&topic("ch", "expired/+"), Duration::ZERO)
        .await;
    w.expect_none(&topic("ch", "rejected/+"), Duration::ZERO)
        .await;
}

#[tokio::test]
async fn sigint_goes_to_the_command_and_run_exits_130() {
    let (broker, _daemon, mut w) = setup("", &["ch"], WATCHED).await;
    let run = spawn_job(broker.port(), "int-1", &["sleep", "30"]);
    w.expect(&topic("ch", "go/int-1"), DEFAULT_TIMEOUT).await;
    let started = Instant::now();
    let pid = Pid::from_raw(run.id().expect("pid of run") as i32);
    kill(pid, Signal::SIGINT).expect("send SIGINT to run");
    let (code, stderr) = finish(run).await;
    // sleep died of the forwarded SIGINT (2): 128 + 2; run itself survived to report it.
    assert_eq!(code, Some(130), "stderr: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        w.expect(&topic("ch", "aborted"), DEFAULT_TIMEOUT).await,
        b"int-1"
    );
}

#[tokio::test]
async fn a_killed_run_frees_its_slot_at_once_through_its_will() {
    let (broker, _daemon, mut w) = setup("", &["ch"], WATCHED).await;
    let mut run = spawn_job(broker.port(), "dead-1", &["sleep", "30"]);
    w.expect(&topic("ch", "go/dead-1"), DEFAULT_TIMEOUT).await;
    w.register("ch", "second", 60.0).await;
    // Kill run once its command runs (the command dies with it: see the next test).
    wait_for_children(run.id().expect("pid of run")).await;
    run.start_kill().expect("SIGKILL run");
    let _ = run.wait().await;
    let killed = Instant::now();
    let will = w
        .expect(&topic("ch", "aborted"), Duration::from_secs(2))
        .await;
    assert_eq!(payload_text(&will), "dead-1");
    w.expect(&topic("ch", "go/second"), Duration::from_secs(2))
        .await;
    assert!(killed.elapsed() < Duration::from_secs(2));
}

/// SIGKILL on `run` must take its command down too: the MQTT will frees the slot at once, so a
/// command that outlived `run` would run beside the next job of a max-1 channel. Measures, on
/// the wall clock, when the first command is seen dead and when the second one starts.
#[tokio::test]
async fn a_killed_run_takes_its_command_down_before_the_next_job_starts() {
    let (broker, _daemon, mut w) = setup("", &["ch"], WATCHED).await;
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("first.pid");
    let started = dir.path().join("second.start");
    let first_cmd = format!("echo $$ > {}; exec sleep 30", pidfile.display());
    let mut first = spawn_job(broker.port(), "first", &["sh", "-c", &first_cmd]);
    w.expect(&topic("ch", "go/first"), DEFAULT_TIMEOUT).await;
    let command = Pid::from_raw(read_pid(&pidfile).await);
    let second_cmd = format!("date +%s.%N > {}", started.display());
    let second = spawn_job(broker.port(), "second", &["sh", "-c", &second_cmd]);
    // Queued behind `first` before the kill, so it starts as soon as the slot is free.
    let state = wait_waiting(&mut w, 1).await;
    assert_eq!(state["running"], json!(["first"]), "{state}");

    first.start_kill().expect("SIGKILL run");
    let killed = unix_now();
    let _ = first.wait().await;
    let dead = wait_dead(command, Duration::from_secs(1)).await;
    let (code, stderr) = finish(second).await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    let second_start: f64 = std::fs::read_to_string(&started)
        .expect("the second command ran")
        .trim()
        .parse()
        .expect("a date +%s.%N timestamp");
    let dead = dead.unwrap_or_else(|| {
        let _ = kill(command, Signal::SIGKILL);
        panic!(
            "the command of the killed run still ran 1 s after the kill; the next command \
             started {:.1} ms after the kill",
            (second_start - killed) * 1e3
        )
    });
    let overlap = dead - second_start;
    eprintln!(
        "command dead {:.1} ms after the kill; next command started {:.1} ms after the kill; \
         overlap {:.1} ms",
        (dead - killed) * 1e3,
        (second_start - killed) * 1e3,
        overlap * 1e3
    );
    assert!(
        overlap < 1.0,
        "the two commands overlapped by {overlap:.3} s"
    );
}

/// Seconds since the Unix epoch, as `date +%s.%N` prints them.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The pid a command wrote to `path`, once it is there.
async fn read_pid(path: &std::path::Path) -> i32 {
    let deadline = Instant::now() + DEFAULT_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Ok(pid) = text.trim().parse() {
            return pid;
        }
        assert!(Instant::now() < deadline, "no pid in {}", path.display());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The channel's state once `n` jobs wait in it.
async fn wait_waiting(w: &mut Client, n: u64) -> serde_json::Value {
    let deadline = Instant::now() + DEFAULT_TIMEOUT;
    loop {
        let state = w.state("ch").await;
        if state["waiting"] == n {
            return state;
        }
        assert!(Instant::now() < deadline, "never {n} waiting: {state}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// When (seconds since the epoch) `pid` was first seen gone or a zombie, polling every 0.25 ms
/// on a thread of its own; `None` if it still runs after `within`. An orphan's zombie lasts
/// until init reaps it, so `kill(pid, 0)` alone would not do.
async fn wait_dead(pid: Pid, within: Duration) -> Option<f64> {
    let poll = move || {
        let deadline = std::time::Instant::now() + within;
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The state follows the parenthesised command name.
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next());
            if matches!(state, None | Some('Z' | 'X')) {
                return Some(unix_now());
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_micros(250));
        }
    };
    tokio::task::spawn_blocking(poll).await.unwrap()
}

/// Returns once `pid` has a child (the command starts just after `go`), or after 10 s.
async fn wait_for_children(pid: u32) {
    let path = format!("/proc/{pid}/task/{pid}/children");
    let deadline = Instant::now() + DEFAULT_TIMEOUT;
    loop {
        let Ok(text) = std::fs::read_to_string(&path) else {
            // No /proc children file on this kernel: the will is what this test checks.
            return;
        };
        if !text.trim().is_empty() || Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn giving_up_the_wait_exits_124_and_leaves_the_queue() {
    let (broker, _daemon, mut w) = setup("", &["ch"], WATCHED).await;
    w.register("ch", "holder", 60.0).await;
    assert_eq!(w.next_go("ch").await, "holder");
    let started = Instant::now();
    let run = spawn_run(
        broker.port(),
        &[
            "--channel",
            "ch",
            "--timeout",
            "60",
            "--uid",
            "patient-1",
            "--wait-timeout",
            "0.5s",
            "--",
            "true",
        ],
    );
    let (code, stderr) = finish(run).await;
    assert_eq!(code, Some(124), "stderr: {stderr}");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(
        stderr.contains("no go on channel ch within 500ms"),
        "{stderr}"
    );
    assert_eq!(
        w.expect(&topic("ch", "aborted"), DEFAULT_TIMEOUT).await,
        b"patient-1"
    );
    let state = w.state("ch").await;
    assert_eq!(state["waiting"], 0, "{state}");
    assert_eq!(state["running"], json!(["holder"]), "{state}");
    w.expect_none(&topic("ch", "go/patient-1"), Duration::ZERO)
        .await;
}

#[tokio::test]
async fn a_rejected_registration_exits_122_with_the_reason() {
    let (broker, _daemon, _w) = setup("[limits]\nmax_timeout = 10\n", &["ch"], WATCHED).await;
    let run = spawn_job(broker.port(), "greedy-1", &["true"]);
    let (code, stderr) = finish(run).await;
    assert_eq!(code, Some(122), "stderr: {stderr}");
    assert!(stderr.contains("rejected on channel ch"), "{stderr}");
    assert!(
        stderr.contains("timeout"),
        "the reason names the timeout: {stderr}"
    );
}

#[tokio::test]
async fn an_unreachable_broker_exits_125() {
    let run = spawn_run(
        free_port(),
        &["--channel", "ch", "--timeout", "60", "--", "true"],
    );
    let (code, stderr) = finish(run).await;
    assert_eq!(code, Some(125), "stderr: {stderr}");
    assert!(
        stderr.contains("cannot reach the MQTT broker at 127.0.0.1:"),
        "{stderr}"
    );
}

#[tokio::test]
async fn usage_errors_exit_125() {
    for args in [
        &["--channel", "ch", "--timeout", "60"][..],
        &["--channel", "ch", "--timeout", "soon", "--", "true"],
        &["--channel", "a/b", "--timeout", "60", "--", "true"],
        &[
            "--channel",
            "ch",
            "--timeout",
            "60",
            "--meta",
            "uid=x",
            "--",
            "true",
        ],
    ] {
        let (code, stderr) = finish(spawn_run(free_port(), args)).await;
        assert_eq!(code, Some(125), "{args:?}: {stderr}");
        assert!(!stderr.is_empty(), "{args:?}");
    }
}

/// `run` reads `[limits] max_uid_len` from its config, as the daemon does: a longer uid than
/// the default 1024 bytes works when both allow it, and a shorter limit is refused up front.
#[tokio::test]
async fn the_uid_limit_comes_from_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, _daemon, mut w) = setup("[limits]\nmax_uid_len = 4096\n", &["ch"], WATCHED).await;
    let roomy = dir.path().join("roomy.toml");
    std::fs::write(&roomy, "[limits]\nmax_uid_len = 4096\n").unwrap();
    let uid = "u".repeat(2000);
    let roomy = roomy.to_str().unwrap();
    let args = [
        "--config",
        roomy,
        "--channel",
        "ch",
        "--timeout",
        "60",
        "--uid",
        &uid,
    ];
    let run = spawn_run(broker.port(), &[&args[..], &["--", "true"]].concat());
    let (code, stderr) = finish(run).await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    w.expect(&topic("ch", &format!("go/{uid}")), DEFAULT_TIMEOUT)
        .await;

    let tight = dir.path().join("tight.toml");
    std::fs::write(&tight, "[limits]\nmax_uid_len = 8\n").unwrap();
    let tight = tight.to_str().unwrap();
    let args = [
        "--config",
        tight,
        "--channel",
        "ch",
        "--timeout",
        "60",
        "--uid",
        "123456789",
    ];
    let run = spawn_run(broker.port(), &[&args[..], &["--", "true"]].concat());
    let (code, stderr) = finish(run).await;
    assert_eq!(code, Some(125), "stderr: {stderr}");
    assert!(stderr.contains("max_uid_len = 8"), "{stderr}");
    w.expect_none(&topic("ch", "go/123456789"), Duration::ZERO)
        .await;
}

#[tokio::test]
async fn a_missing_command_exits_127_and_aborts() {
    let (broker, _daemon, mut w) = setup("", &["ch"], WATCHED).await;
    let run = spawn_job(broker.port(), "nope-1", &["/nonexistent/cmd"]);
    let (code, stderr) = finish(run).await;
    assert_eq!(code, Some(127), "stderr: {stderr}");
    assert!(stderr.contains("cannot run /nonexistent/cmd"), "{stderr}");
    assert_eq!(
        w.expect(&topic("ch", "aborted"), DEFAULT_TIMEOUT).await,
        b"nope-1"
    );
}

#[tokio::test]
async fn an_expired_lease_stops_the_command_and_exits_123() {
    let (broker, _daemon, mut w) = setup("", &["ch"], WATCHED).await;
    let run = spawn_job(broker.port(), "exp-1", &["sleep", "30"]);
    w.expect(&topic("ch", "go/exp-1"), DEFAULT_TIMEOUT).await;
    let started = Instant::now();
    // Someone shortens the lease to 50 ms: it expires long before run's next renew (30 s).
    w.renew("ch", "exp-1", 0.05).await;
    let (code, stderr) = finish(run).await;
    assert_eq!(code, Some(123), "stderr: {stderr}");
    assert!(
        stderr.contains("lease of exp-1 on channel ch expired"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "sleep was stopped"
    );
    w.expect(&topic("ch", "expired/exp-1"), DEFAULT_TIMEOUT)
        .await;
}
