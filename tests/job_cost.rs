//! Job cost end to end: a real Mosquitto, the real `coordinosaur` binary (with its journal) and
//! MQTT test clients. A worker opts in with `"cost": k` in its `register`.

mod common;

use std::time::Duration;

use common::{setup, topic, Client, DEFAULT_TIMEOUT};
use serde_json::json;

/// Span of every "nothing arrives" check.
const QUIET: Duration = Duration::from_millis(400);

/// Registers `uid` on `ch` at `cost` units.
async fn register_cost(c: &Client, uid: &str, cost: u32) {
    c.register_with("ch", uid, 600.0, json!({ "cost": cost }))
        .await;
}

async fn expect_go(c: &mut Client, uid: &str) {
    let payload = c
        .expect(&topic("ch", &format!("go/{uid}")), DEFAULT_TIMEOUT)
        .await;
    assert_eq!(payload, uid.as_bytes(), "a plain go: the uid");
}

/// Four units: a job of 3 and one of 1 run; the next job, of 2, waits at the head, and the
/// light jobs registered behind it do not overtake it when one unit frees. `state` shows units.
#[tokio::test]
async fn a_heavy_job_holds_its_units_and_light_ones_do_not_overtake_it() {
    let (_broker, _daemon, mut c) = setup(
        "[defaults]\nmax_concurrent_jobs = 4\n",
        &["ch"],
        &["go/+", "rejected/+"],
    )
    .await;
    register_cost(&c, "heavy", 3).await;
    expect_go(&mut c, "heavy").await;
    c.register("ch", "one", 600.0).await;
    expect_go(&mut c, "one").await;
    register_cost(&c, "two", 2).await;
    c.register("ch", "light", 600.0).await;
    c.expect_none(&topic("ch", "go/+"), QUIET).await;

    let state = c.state("ch").await;
    assert_eq!(state["running_count"], 2, "{state}");
    assert_eq!(state["running_units"], 4, "{state}");
    assert_eq!(state["waiting"], 2, "{state}");
    let heavy = state["running_jobs"]
        .as_array()
        .and_then(|jobs| jobs.iter().find(|j| j["uid"] == "heavy"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(heavy["cost"], 3, "{state}");

    c.finished("ch", "one").await;
    c.expect_none(&topic("ch", "go/+"), QUIET).await;
    c.finished("ch", "heavy").await;
    expect_go(&mut c, "two").await;
    expect_go(&mut c, "light").await;
}

/// A cost above the channel's limit or a quota's is refused at once with the reason, and so is
/// a cost that is not a positive integer; the channel keeps serving.
#[tokio::test]
async fn a_cost_that_could_never_run_is_rejected_with_the_reason() {
    let config = "[defaults]\nmax_concurrent_jobs = 4\n\
                  quotas = [{ interval = 60, limit = 3, name = \"minute\" }]\n";
    let (_broker, daemon, mut c) = setup(config, &["ch"], &["go/+", "rejected/+"]).await;
    register_cost(&c, "big", 5).await;
    let reason = c.rejection_reason("ch", "big").await;
    assert!(reason.contains("max_concurrent_jobs (4)"), "{reason}");
    register_cost(&c, "quota", 4).await;
    let reason = c.rejection_reason("ch", "quota").await;
    assert!(reason.contains("quota `minute`"), "{reason}");
    let body = json!({"uid": "zero", "timeout": 1, "cost": 0});
    c.publish(&topic("ch", "register"), body.to_string()).await;
    let reason = c.rejection_reason("ch", "zero").await;
    assert!(reason.contains("`cost` must be an integer"), "{reason}");
    daemon.wait_log("coordinosaur/ch/register").await;
    register_cost(&c, "fits", 3).await;
    expect_go(&mut c, "fits").await;
}

/// Killed with SIGKILL and restarted, the daemon still holds the running job's units and the
/// waiting job's cost (journal format 4), in its concurrency and in its quota window.
#[tokio::test]
async fn costs_survive_kill_9_and_restart() {
    let config = "[defaults]\nmax_concurrent_jobs = 5\n\
                  quotas = [{ interval = 3600, limit = 7, name = \"hour\" }]\n";
    let (_broker, mut daemon, mut c) = setup(config, &["ch"], &["go/+", "rejected/+"]).await;
    register_cost(&c, "a", 4).await;
    expect_go(&mut c, "a").await;
    register_cost(&c, "b", 3).await;
    register_cost(&c, "tail", 1).await;
    c.expect_none(&topic("ch", "go/+"), QUIET).await;

    daemon.kill();
    daemon.spawn_again().await;
    let state = c.state("ch").await;
    assert_eq!(state["running_units"], 4, "{state}");
    assert_eq!(state["waiting"], 2, "{state}");
    assert_eq!(state["quotas"][0]["used"], 4, "{state}");
    c.finished("ch", "a").await;
    expect_go(&mut c, "b").await;
    // 4 + 3 = 7 units in the hour: `tail` waits for the window, not for a slot.
    c.expect_none(&topic("ch", "go/+"), QUIET).await;
    let state = c.state("ch").await;
    assert_eq!(state["quotas"][0]["used"], 7, "{state}");
    assert_eq!(state["running_units"], 3, "{state}");
    c.finished("ch", "b").await;
    let state = c.state("ch").await;
    assert!(
        state.get("running_units").is_none(),
        "only with costs above 1: {state}"
    );
}
