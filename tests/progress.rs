//! Queue position, ETA and the reason it waits, end to end: a real Mosquitto, the real
//! `coordinosaur` binary and MQTT test clients. A worker opts in with `"progress": true`.

mod common;

use std::time::Duration;

use common::{run_binary, setup, topic, Client, DEFAULT_TIMEOUT};
use serde_json::{json, Value};

/// Span of every "nothing arrives" check.
const QUIET: Duration = Duration::from_millis(400);

async fn register_progress(c: &Client, uid: &str) {
    c.register_with("ch", uid, 60.0, json!({ "progress": true }))
        .await;
}

/// The next `position/{uid}` message, as JSON.
async fn position(c: &mut Client, uid: &str) -> Value {
    let payload = c
        .expect(&topic("ch", &format!("position/{uid}")), DEFAULT_TIMEOUT)
        .await;
    serde_json::from_slice(&payload).unwrap_or_else(|e| {
        panic!("position/{uid} is not JSON ({e}): {payload:?}");
    })
}

/// Two jobs wait behind a running one. Each is told its place on register; when the running
/// job ends, the next gets `go` and the one behind it hears it moved to 1. A job registered
/// without `progress` hears nothing, as in the original protocol.
#[tokio::test]
async fn a_waiting_job_hears_its_position_and_when_it_moves() {
    let (_broker, _daemon, mut c) = setup("", &["ch"], &["go/+", "position/+"]).await;
    c.register("ch", "run", 60.0).await;
    c.next_go("ch").await;
    c.register("ch", "plain", 60.0).await;
    register_progress(&c, "a").await;
    register_progress(&c, "b").await;
    assert_eq!(
        position(&mut c, "a").await,
        json!({"uid": "a", "position": 2, "waiting": 2, "held_by": "concurrency", "eta_ms": null})
    );
    assert_eq!(
        position(&mut c, "b").await,
        json!({"uid": "b", "position": 3, "waiting": 3, "held_by": "concurrency", "eta_ms": null})
    );
    c.finished("ch", "run").await;
    assert_eq!(c.next_go("ch").await, "plain");
    c.finished("ch", "plain").await;
    assert_eq!(c.next_go("ch").await, "a");
    // Run times are now known (two runs), so `b`, at 1, gets an estimate.
    let moved = position(&mut c, "b").await;
    assert_eq!(moved["position"], 1, "{moved}");
    assert_eq!(moved["waiting"], 1, "{moved}");
    assert!(moved["eta_ms"].is_u64(), "{moved}");
    c.expect_none(&topic("ch", "position/plain"), QUIET).await;
}

/// Held by a quota window, a job's ETA is exact: the instant the window admits it, one
/// interval and a millisecond after the grant that filled it (read from that grant's JSON
/// `go`), and it is granted then.
#[tokio::test]
async fn a_quota_bound_eta_is_the_instant_the_window_opens() {
    let config = "[defaults]\nmax_concurrent_jobs = 5\n\
                  quotas = [{ interval = \"1500ms\", limit = 1, name = \"window\" }]\n";
    let (_broker, _daemon, mut c) = setup(config, &["ch"], &["go/+", "position/+"]).await;
    let body = json!({"uid": "first", "timeout": 60, "reply": "json"});
    c.publish(&topic("ch", "register"), body.to_string()).await;
    let go = c.expect(&topic("ch", "go/first"), DEFAULT_TIMEOUT).await;
    let go: Value = serde_json::from_slice(&go).unwrap_or_default();
    let granted_at = go["deadline_ms"].as_u64().unwrap_or_default() - 60_000;
    register_progress(&c, "second").await;
    let told = position(&mut c, "second").await;
    assert_eq!(told["held_by"], "quota:window", "{told}");
    assert_eq!(told["eta_ms"], granted_at + 1_501, "{told}");
    c.expect(&topic("ch", "go/second"), DEFAULT_TIMEOUT).await;
}

/// `status CH --jobs` lists the waiting jobs with the same fields, as a table and as JSON.
#[tokio::test]
async fn status_jobs_lists_the_waiting_jobs() {
    let (broker, _daemon, mut c) = setup("", &["ch"], &["go/+", "position/+"]).await;
    c.register("ch", "run", 60.0).await;
    c.next_go("ch").await;
    c.register("ch", "w1", 60.0).await;
    register_progress(&c, "w2").await;
    position(&mut c, "w2").await;
    let port = format!("127.0.0.1:{}", broker.port());
    let (code, out, err) = run_binary(&["status", "--broker", &port, "ch", "--jobs"]).await;
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<Vec<&str>> = out
        .lines()
        .skip_while(|l| !l.starts_with("POSITION"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines,
        [
            vec!["POSITION", "UID", "HELD_BY", "ETA"],
            vec!["1", "w1", "concurrency", "-"],
            vec!["2", "w2", "concurrency", "-"],
        ],
        "{out}"
    );
    let (code, out, err) =
        run_binary(&["status", "--broker", &port, "ch", "--jobs", "--json"]).await;
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_default();
    assert_eq!(v["waiting_jobs"][1]["uid"], "w2", "{out}");
    assert_eq!(v["waiting_jobs"][1]["position"], 2, "{out}");
    let (code, _, err) = run_binary(&["status", "--broker", &port, "--jobs"]).await;
    assert_ne!(code, Some(0), "--jobs needs a channel");
    assert!(err.contains("<CHANNEL>"), "{err}");
}
