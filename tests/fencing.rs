//! Fencing tokens end to end: a real Mosquitto, the real `coordinosaur` binary (with its journal)
//! and MQTT test clients. A worker opts in with `"reply": "json"` and sends its token back.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{setup, topic, Client, ANSWERS, DEFAULT_TIMEOUT};
use serde_json::{json, Value};

/// Span of every "nothing arrives" check.
const QUIET: Duration = Duration::from_millis(400);

/// Registers `uid` on `ch` asking for a JSON `go`.
async fn register_json(c: &Client, uid: &str, timeout_secs: f64) {
    c.register_with("ch", uid, timeout_secs, json!({ "reply": "json" }))
        .await;
}

/// The JSON `go` of `uid`.
async fn go_json(c: &mut Client, uid: &str) -> Value {
    let payload = c
        .expect(&topic("ch", &format!("go/{uid}")), DEFAULT_TIMEOUT)
        .await;
    serde_json::from_slice(&payload).unwrap_or_else(|e| {
        panic!(
            "go/{uid} is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&payload)
        )
    })
}

fn token_of(go: &Value) -> u64 {
    go["token"]
        .as_u64()
        .unwrap_or_else(|| panic!("no token in {go}"))
}

/// `finished` (or another action) as `{"uid", "token"}`.
async fn with_token(c: &Client, action: &str, uid: &str, token: u64) {
    let body = json!({"uid": uid, "token": token});
    c.publish(&topic("ch", action), body.to_string()).await;
}

/// `(uid, token)` of every running job in a `state` reply.
fn running_tokens(state: &Value) -> Vec<(String, u64)> {
    state["running_jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("no running_jobs in {state}"))
        .iter()
        .map(|j| {
            let uid = j["uid"].as_str().unwrap_or_default().to_owned();
            (uid, j["token"].as_u64().unwrap_or_default())
        })
        .collect()
}

fn now_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH);
    u64::try_from(since.expect("clock after 1970").as_millis()).expect("ms fit in u64")
}

/// The `backup` job's first holder hangs past its lease; `backup` runs again (same uid, as a
/// cron job does) and gets the slot. The first holder's late `finished` and `renew`, carrying
/// its old token, must not touch the second run: the job waiting behind it stays waiting.
#[tokio::test]
async fn a_late_finished_with_an_expired_token_leaves_the_next_holder_its_slot() {
    let (_broker, daemon, mut c) = setup("", &["ch"], ANSWERS).await;
    register_json(&c, "backup", 0.3).await;
    let first = token_of(&go_json(&mut c, "backup").await);
    c.expect(&topic("ch", "expired/backup"), DEFAULT_TIMEOUT)
        .await;
    register_json(&c, "backup", 60.0).await;
    let second = token_of(&go_json(&mut c, "backup").await);
    assert!(second > first, "token {second} after {first}");
    register_json(&c, "other", 60.0).await;

    with_token(&c, "finished", "backup", first).await;
    c.expect_none(&topic("ch", "go/+"), QUIET).await;
    daemon.wait_log("stale fencing token").await;
    let log = daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains("stale fencing token"))
        .unwrap_or_default();
    for part in [
        "coordinosaur/ch/finished",
        "backup",
        &format!("token={first}"),
        &format!("live_token={second}"),
    ] {
        assert!(line.contains(part), "{part:?} missing in {line}");
    }

    let renew = json!({"uid": "backup", "timeout": 600, "token": first});
    c.publish(&topic("ch", "renew"), renew.to_string()).await;
    let reason = c.rejection_reason("ch", "backup").await;
    assert!(reason.contains(&format!("token {first}")), "{reason}");

    let state = c.state("ch").await;
    assert_eq!(running_tokens(&state), [("backup".to_owned(), second)]);
    assert_eq!(state["running"], json!(["backup"]), "{state}");
    assert_eq!(state["waiting"], 1, "{state}");

    // The live holder's own token ends the job, and the slot goes on.
    with_token(&c, "finished", "backup", second).await;
    assert!(token_of(&go_json(&mut c, "other").await) > second);
}

/// `"reply": "json"` gets a JSON `go`; a job that does not ask keeps the plain uid. `state`
/// lists the tokens next to the unchanged `running` list.
#[tokio::test]
async fn a_json_reply_carries_token_lease_and_deadline_and_plain_stays_plain() {
    let (_broker, _daemon, mut c) = setup(
        "[defaults]\nmax_concurrent_jobs = 2\ntimeout_offset = \"500ms\"\n",
        &["ch"],
        ANSWERS,
    )
    .await;
    let before = now_ms();
    register_json(&c, "j", 30.0).await;
    let go = go_json(&mut c, "j").await;
    let after = now_ms();
    assert_eq!(go["uid"], "j", "{go}");
    assert_eq!(go["lease_ms"], 30_500, "{go}");
    let deadline = go["deadline_ms"].as_u64().unwrap_or_default();
    // Engine time is the start-up wall clock plus monotonic time since, each truncated to whole
    // milliseconds: it may read up to 2 ms behind this process's wall clock (seen: 1 ms, 1 run
    // in 15), plus any slew between the two clocks.
    const CLOCK_SKEW_MS: u64 = 5;
    assert!(
        (before + 30_500 - CLOCK_SKEW_MS..=after + 30_500).contains(&deadline),
        "deadline {deadline} not 30.5 s after {before}..{after}"
    );
    let keys: Vec<&str> = go
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(keys.len(), 4, "{go}");

    c.register("ch", "p", 30.0).await;
    assert_eq!(c.expect(&topic("ch", "go/p"), DEFAULT_TIMEOUT).await, b"p");
    let state = c.state("ch").await;
    let mut running: Vec<String> = serde_json::from_value(state["running"].clone()).unwrap();
    running.sort();
    assert_eq!(running, ["j", "p"], "{state}");
    let tokens = running_tokens(&state);
    assert!(tokens.contains(&("j".to_owned(), token_of(&go))), "{state}");
    assert!(
        tokens.contains(&("p".to_owned(), token_of(&go) + 1)),
        "{state}"
    );
}

/// Killed with SIGKILL and restarted, the daemon hands out tokens above every earlier one:
/// while a job still runs (its token comes back from the journal), and after the channel was
/// left with nothing, so the snapshot of the next start dropped it.
#[tokio::test]
async fn tokens_keep_increasing_across_kill_9_and_restart() {
    let (_broker, mut daemon, mut c) = setup("", &["ch"], ANSWERS).await;
    register_json(&c, "a", 60.0).await;
    let a = token_of(&go_json(&mut c, "a").await);
    with_token(&c, "finished", "a", a).await;
    register_json(&c, "b", 60.0).await;
    let b = token_of(&go_json(&mut c, "b").await);
    assert!(b > a);

    daemon.kill();
    daemon.spawn_again().await;
    let state = c.state("ch").await;
    assert_eq!(running_tokens(&state), [("b".to_owned(), b)], "{state}");
    with_token(&c, "finished", "b", b).await;
    register_json(&c, "c", 60.0).await;
    let c_token = token_of(&go_json(&mut c, "c").await);
    assert!(c_token > b, "token {c_token} after {b} across a restart");
    with_token(&c, "finished", "c", c_token).await;
    let state = c.state("ch").await;
    assert_eq!(state["running_count"], 0, "{state}");

    // Nothing left in the channel: the next start's snapshot drops it, its tokens go on.
    daemon.kill();
    daemon.spawn_again().await;
    daemon.kill();
    daemon.spawn_again().await;
    register_json(&c, "d", 60.0).await;
    let d = token_of(&go_json(&mut c, "d").await);
    assert!(
        d > c_token,
        "token {d} after {c_token} for a dropped channel"
    );
}
