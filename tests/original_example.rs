//! The original daemon's documented example, end to end: channels matching `test(.+)` run two jobs
//! at once with one extra second per lease, at most 15 grants a minute (log "v") and 100 an hour
//! (log "q"); every other channel runs on `[defaults]`.

mod common;

use std::time::Duration;

use common::{setup, topic};
use serde_json::{json, Value};

/// The shipped `coordinosaur.toml` from `[limits]` on (its `[limits]`, `[defaults]` and the
/// example `[[channels]]` entry); the harness supplies `[mqtt]`, and the embedded broker stays off.
fn shipped_example() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/coordinosaur.toml");
    let text = std::fs::read_to_string(path).expect("read the shipped coordinosaur.toml");
    let start = text
        .find("\n[limits]")
        .expect("the shipped config has a [limits] table after [mqtt] and [embedded_broker]");
    text[start..].to_owned()
}

fn quota<'a>(state: &'a Value, name: &str) -> &'a Value {
    state["quotas"]
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["name"] == name))
        .unwrap_or_else(|| panic!("no quota {name:?} in {state}"))
}

#[tokio::test]
async fn matching_channel_runs_two_at_once_until_the_minute_quota_holds_the_16th() {
    let (_broker, daemon, mut c) = setup(&shipped_example(), &["testA"], &["go/+"]).await;
    let uids: Vec<String> = (1..=20).map(|i| format!("job-{i:02}")).collect();
    for uid in &uids {
        c.register("testA", uid, 600.0).await;
    }
    let mut granted = vec![c.next_go("testA").await, c.next_go("testA").await];
    c.expect_none(&topic("testA", "go/+"), Duration::from_millis(400))
        .await;
    let state = c.state("testA").await;
    assert_eq!(state["max_concurrent_jobs"], 2, "{state}");
    assert_eq!(state["timeout_offset_ms"], 1000, "{state}");
    assert_eq!(state["running_count"], 2, "{state}");
    assert_eq!(state["waiting"], 18, "{state}");

    // Finishing the oldest running job keeps granting, in FIFO order, up to 15 grants.
    let mut done = 0;
    while granted.len() < 15 {
        c.finished("testA", &granted[done]).await;
        done += 1;
        granted.push(c.next_go("testA").await);
    }
    assert_eq!(granted, uids[..15], "grants out of FIFO order");

    // A slot is free, but the minute quota holds the 16th.
    c.finished("testA", &granted[done]).await;
    c.expect_none(&topic("testA", "go/+"), Duration::from_millis(500))
        .await;
    let state = c.state("testA").await;
    assert_eq!(state["running_count"], 1, "{state}");
    assert_eq!(state["waiting"], 5, "{state}");
    let minute = quota(&state, "minute");
    assert_eq!(minute["limit"], 15, "{state}");
    assert_eq!(minute["interval_ms"], 60_000, "{state}");
    assert_eq!(minute["used"], 15, "{state}");
    let now = state["now"].as_u64().expect("now");
    let opening = minute["next_opening"]
        .as_u64()
        .unwrap_or_else(|| panic!("minute quota full but no next_opening: {state}"));
    // The first grant was a few seconds ago at most: the window reopens about a minute later.
    assert!(
        opening > now + 50_000 && opening <= now + 60_001,
        "next_opening {opening} vs now {now}"
    );
    assert_eq!(state["next_window_opening"], opening, "{state}");
    let hour = quota(&state, "hour");
    assert_eq!(hour["limit"], 100, "{state}");
    assert_eq!(hour["used"], 15, "{state}");
    assert_eq!(hour["next_opening"], Value::Null, "{state}");
    // log = "v": the minute quota says when it holds a job back.
    daemon.wait_log("quota holds a job back").await;
    assert!(
        daemon
            .log()
            .lines()
            .any(|l| l.contains("quota holds a job back") && l.contains("quota=minute")),
        "no log line from the minute quota"
    );
}

#[tokio::test]
async fn non_matching_channels_use_the_defaults() {
    let (_broker, _daemon, mut c) = setup(&shipped_example(), &["test", "other"], &["go/+"]).await;
    for channel in ["test", "other"] {
        for uid in ["a", "b", "c"] {
            c.register(channel, uid, 600.0).await;
        }
    }
    assert_eq!(c.next_go("test").await, "a");
    assert_eq!(c.next_go("other").await, "a");
    c.expect_none("coordinosaur/+/go/+", Duration::from_millis(400))
        .await;
    for channel in ["test", "other"] {
        let state = c.state(channel).await;
        assert_eq!(state["max_concurrent_jobs"], 1, "{state}");
        assert_eq!(state["timeout_offset_ms"], 0, "{state}");
        assert_eq!(state["quotas"], json!([]), "{state}");
        assert_eq!(state["running_count"], 1, "{state}");
        assert_eq!(state["waiting"], 2, "{state}");
    }
    // No quota: a quick succession of finishes keeps granting.
    c.finished("other", "a").await;
    assert_eq!(c.next_go("other").await, "b");
    c.finished("other", "b").await;
    assert_eq!(c.next_go("other").await, "c");
}

#[tokio::test]
async fn own_defaults_apply_to_non_matching_channels_and_entries_override_per_key() {
    let example = shipped_example();
    let entries = example
        .find("\n[[channels]]")
        .expect("an example [[channels]] entry");
    let config = format!(
        r#"
[defaults]
max_concurrent_jobs = 3
timeout_offset = 0.5
quotas = [{{ interval = "1m", limit = 5 }}]
{channels}
[[channels]]
pattern = "testB"
max_concurrent_jobs = 4
"#,
        channels = &example[entries..]
    );
    let (_broker, _daemon, mut c) = setup(&config, &["other"], &["go/+"]).await;
    for uid in ["a", "b", "c", "d"] {
        c.register("other", uid, 600.0).await;
    }
    for uid in ["a", "b", "c"] {
        assert_eq!(c.next_go("other").await, uid);
    }
    c.expect_none(&topic("other", "go/+"), Duration::from_millis(400))
        .await;
    let other = c.state("other").await;
    assert_eq!(other["max_concurrent_jobs"], 3, "{other}");
    assert_eq!(other["timeout_offset_ms"], 500, "{other}");
    // A minute, not a second: a stalled disk sync delays grants, and the first must still
    // count when the state is read.
    assert_eq!(quota(&other, "1m")["limit"], 5, "{other}");
    assert_eq!(quota(&other, "1m")["used"], 3, "{other}");

    // testA: the example entry replaces every default, quotas as a whole.
    let a = c.state("testA").await;
    assert_eq!(a["max_concurrent_jobs"], 2, "{a}");
    assert_eq!(a["timeout_offset_ms"], 1000, "{a}");
    let names: Vec<&str> = a["quotas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["minute", "hour"], "{a}");
    // testB: both entries match; the later one overrides only max_concurrent_jobs.
    let b = c.state("testB").await;
    assert_eq!(b["max_concurrent_jobs"], 4, "{b}");
    assert_eq!(b["timeout_offset_ms"], 1000, "{b}");
    assert_eq!(b["quotas"].as_array().unwrap().len(), 2, "{b}");
}
