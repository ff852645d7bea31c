//! `coordinosaur status`: the real binary against a busy daemon, and against a broker with none.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{run_binary, setup, unique_id, Client, Daemon, TestBroker, DEFAULT_TIMEOUT};
use serde_json::{json, Value};
use tokio::process::Command;
use tokio::time::{timeout, Instant};

/// `alpha`: 1 slot, 1 running + 2 waiting. `wide`: 2 slots, both running. `quota`: a minute
/// quota of 1, used up, so the next job waits for the window.
const BUSY: &str = r#"
[defaults]
max_concurrent_jobs = 1

[[channels]]
pattern = "wide"
max_concurrent_jobs = 2

[[channels]]
pattern = "quota"
quotas = [{ interval = 60, name = "minute", limit = 1 }]
"#;

/// Runs `coordinosaur status --broker 127.0.0.1:PORT ARGS...` to completion (bounded).
async fn status(port: u16, args: &[&str]) -> (Option<i32>, String, String) {
    let broker = format!("127.0.0.1:{port}");
    let mut all = vec!["status", "--broker", &broker];
    all.extend_from_slice(args);
    run_binary(&all).await
}

/// A daemon with the three channels of [`BUSY`] filled in.
async fn busy() -> (TestBroker, Daemon, Client) {
    let (broker, daemon, mut c) = setup(BUSY, &["alpha", "wide", "quota"], &["go/+"]).await;
    for uid in ["a1", "a2", "a3"] {
        c.register("alpha", uid, 60.0).await;
    }
    assert_eq!(c.next_go("alpha").await, "a1");
    for uid in ["w1", "w2"] {
        c.register("wide", uid, 60.0).await;
    }
    c.next_go("wide").await;
    c.next_go("wide").await;
    c.register("quota", "q1", 60.0).await;
    assert_eq!(c.next_go("quota").await, "q1");
    c.finished("quota", "q1").await;
    c.register("quota", "q2", 60.0).await;
    // Each state request is answered after everything published before it.
    let quota = c.state("quota").await;
    assert_eq!(quota["waiting"], 1, "{quota}");
    (broker, daemon, c)
}

/// The table row of `channel`, split into columns (quotas may hold spaces: keep them joined).
fn row<'a>(table: &'a str, channel: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(channel))
        .unwrap_or_else(|| panic!("no row for {channel} in\n{table}"))
}

#[tokio::test]
async fn the_table_names_each_channel_with_its_counts_quotas_and_policy() {
    let (broker, _daemon, _c) = busy().await;
    let (code, table, stderr) = status(broker.port(), &[]).await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert!(table.starts_with("CHANNEL"), "{table}");
    let cols = |ch| -> Vec<String> {
        row(&table, ch)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(cols("alpha")[1..3], ["1/1", "2"], "{table}");
    assert_eq!(cols("wide")[1..3], ["2/2", "0"], "{table}");
    assert_eq!(cols("quota")[1..3], ["0/1", "1"], "{table}");
    assert!(
        row(&table, "quota").contains("minute 1/1, opens in "),
        "the full minute window says when it opens: {table}"
    );
    assert!(row(&table, "alpha").ends_with("built-in"), "{table}");
}

#[tokio::test]
async fn json_is_the_daemons_answer_and_a_channel_can_be_named() {
    let (broker, _daemon, mut c) = busy().await;
    let (code, out, stderr) = status(broker.port(), &["--json"]).await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    let all: Value = serde_json::from_str(&out).expect("status --json prints JSON");
    let all = all.as_array().expect("an array of channel states");
    let alpha_all = all
        .iter()
        .find(|s| s["channel"] == "alpha")
        .expect("alpha in the array");
    let alpha = c.state("alpha").await;
    for key in [
        "max_concurrent_jobs",
        "running",
        "running_count",
        "waiting",
        "quotas",
        "policy",
    ] {
        assert_eq!(alpha_all[key], alpha[key], "{key}");
    }
    assert_eq!(alpha_all["running"], json!(["a1"]));

    let (code, out, stderr) = status(broker.port(), &["wide", "--json"]).await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    let wide: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(wide["channel"], "wide");
    assert_eq!(wide["running_count"], 2);

    let (code, table, stderr) = status(broker.port(), &["alpha"]).await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_eq!(table.lines().count(), 2, "header and alpha only: {table}");
    assert!(row(&table, "alpha").contains("1/1"), "{table}");
}

#[tokio::test]
async fn watch_refreshes_until_interrupted() {
    let (broker, _daemon, _c) = busy().await;
    let child = Command::new(env!("CARGO_BIN_EXE_coordinosaur"))
        .args(["status", "--watch", "--broker"])
        .arg(format!("127.0.0.1:{}", broker.port()))
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn status --watch");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = nix::unistd::Pid::from_raw(child.id().expect("pid") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let out = timeout(DEFAULT_TIMEOUT, child.wait_with_output())
        .await
        .expect("status --watch ends on SIGINT")
        .expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        stdout.matches("CHANNEL").count() >= 2,
        "refreshed at least once: {stdout}"
    );
}

#[tokio::test]
async fn no_daemon_exits_125_and_says_so() {
    let broker = TestBroker::start();
    let started = Instant::now();
    let (code, out, stderr) = status(broker.port(), &["--timeout", "1s"]).await;
    assert_eq!(code, Some(125), "stdout: {out}");
    let expected = format!(
        "no coordinator answered on coordinosaur/infos at 127.0.0.1:{}; is it running?",
        broker.port()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(4));
    let (code, _, stderr) = status(broker.port(), &["ch", "--timeout", "0.3s"]).await;
    assert_eq!(code, Some(125));
    assert!(stderr.contains("on coordinosaur/ch/infos"), "{stderr}");
}

/// Channels of the large deployment: enough that one report is megabytes.
const MANY: usize = 3_000;

/// A daemon with [`MANY`] channels, each running one job with a 300-byte uid: every channel's
/// state together is ~2 MB of JSON, past what one MQTT message should carry.
async fn many_channels() -> (TestBroker, Daemon, Client) {
    let broker = TestBroker::start();
    let daemon = Daemon::start(broker.port(), "").await;
    let mut c = Client::connect(broker.port(), &unique_id("worker")).await;
    for i in 0..MANY {
        c.register(&format!("ch{i:04}"), &format!("{i:0>300}"), 3600.0)
            .await;
    }
    // Registers are read in order: once the last channel runs its job, every one does.
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.state(&format!("ch{:04}", MANY - 1)).await["running_count"] != 1 {
        assert!(Instant::now() < deadline, "registers not all read");
    }
    (broker, daemon, c)
}

/// Every `PREFIX/state` message that arrives within `within`: `(bytes, complete reports)`,
/// where a report is an array or the last page of a paged one.
async fn state_traffic(c: &mut Client, within: Duration) -> (usize, usize) {
    let end = Instant::now() + within;
    let (mut bytes, mut reports) = (0, 0);
    while let Some((topic, payload)) = c.recv(end.saturating_duration_since(Instant::now())).await {
        if topic != "coordinosaur/state" {
            continue;
        }
        bytes += payload.len();
        let value: Value = serde_json::from_slice(&payload).expect("state is JSON");
        if value.is_array() || value["page"] == value["pages"] {
            reports += 1;
        }
    }
    (bytes, reports)
}

#[tokio::test]
async fn a_burst_of_daemon_wide_infos_gets_one_answer_per_second_in_bounded_pages() {
    let (broker, _daemon, mut c) = many_channels().await;
    c.subscribe("coordinosaur/state").await;
    c.clear();
    // One report alone: its size, and each message within the limit.
    c.publish("coordinosaur/infos", Vec::new()).await;
    let (one, reports) = state_traffic(&mut c, Duration::from_secs(3)).await;
    assert_eq!(reports, 1);
    assert!(one > 1_000_000, "{MANY} channels make {one} bytes");

    // A burst of 50 within a fraction of a second: one answer at once, one a second later.
    for _ in 0..50 {
        c.publish("coordinosaur/infos", Vec::new()).await;
    }
    let (bytes, reports) = state_traffic(&mut c, Duration::from_secs(3)).await;
    eprintln!("one report: {one} bytes; 50 requests: {reports} reports, {bytes} bytes");
    assert!(reports <= 2, "{reports} reports for a burst of 50");
    assert!(
        bytes <= 2 * one + one / 10,
        "{bytes} bytes for a burst of 50"
    );

    // Pages stay under the limit; the status command puts them back together.
    c.publish("coordinosaur/infos", Vec::new()).await;
    let (topic, first) = c.expect_match("coordinosaur/state", DEFAULT_TIMEOUT).await;
    assert_eq!(topic, "coordinosaur/state");
    assert!(first.len() <= 256 * 1024, "{} bytes", first.len());
    let (code, table, stderr) = status(broker.port(), &[]).await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_eq!(table.lines().count(), MANY + 1, "header and every channel");
    assert!(
        row(&table, "ch2999").contains("1/1"),
        "{}",
        row(&table, "ch2999")
    );
    let (code, out, stderr) = status(broker.port(), &["--json"]).await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    let all: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(all.as_array().map(Vec::len), Some(MANY));
}
