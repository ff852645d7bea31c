//! Requests published with the MQTT retain flag (`mosquitto_pub -r`, a common slip, and some
//! libraries' default for "state" topics). The broker stores such a message and replays it to
//! every later subscriber: the daemon would see the same `register` after each restart and grant
//! a job nobody waits for, holding a slot until its lease ends, forever. Replays carry the retain
//! flag; the first, live delivery does not (MQTT 3.1.1 section 3.3.1.3), so only replays are
//! refused. Real Mosquitto, real binary.

mod common;

use std::time::Duration;

use common::{setup, topic, DEFAULT_TIMEOUT};

/// Span of every "nothing arrives" check.
const QUIET: Duration = Duration::from_millis(500);

#[tokio::test]
async fn a_retained_register_runs_once_and_is_refused_when_replayed_after_a_restart() {
    let (_broker, mut daemon, mut c) = setup(
        "[defaults]\nmax_concurrent_jobs = 1\n",
        &["ch"],
        &["go/+", "rejected/+"],
    )
    .await;
    let body = serde_json::json!({"uid": "r1", "timeout": 300}).to_string();
    c.publish_retained(&topic("ch", "register"), body.clone())
        .await;
    // Served once, live.
    assert_eq!(c.next_go("ch").await, "r1");
    c.finished("ch", "r1").await;
    c.state("ch").await;

    // A restart subscribes again: the broker replays the stored register.
    daemon.kill();
    daemon.spawn_again().await;
    let reason = c.expect(&topic("ch", "rejected/r1"), DEFAULT_TIMEOUT).await;
    let reason = String::from_utf8_lossy(&reason);
    assert!(reason.contains("retained"), "{reason}");
    daemon.wait_log("retained message refused").await;
    let log = daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains("retained message refused"))
        .unwrap_or_default();
    assert!(
        line.contains("WARN") && line.contains(&topic("ch", "register")),
        "the warning names the topic: {line}"
    );
    // No phantom job: the single slot is free for the next real job.
    let state = c.state("ch").await;
    assert_eq!(state["running_count"], 0, "{state}");
    assert_eq!(state["waiting"], 0, "{state}");
    c.register("ch", "real", 300.0).await;
    assert_eq!(c.next_go("ch").await, "real");
    c.expect_none(&topic("ch", "go/+"), QUIET).await;
}

/// Retained `finished` and `concurrency/set` replayed at a restart change nothing: the job they
/// name keeps running, the limit stays.
#[tokio::test]
async fn retained_finished_and_concurrency_set_are_refused_when_replayed() {
    let (_broker, mut daemon, mut c) =
        setup("[defaults]\nmax_concurrent_jobs = 1\n", &["ch"], &["go/+"]).await;
    // Stored while nothing of the kind runs: the live deliveries are harmless (an unknown uid,
    // then a limit of 1 that is already in force).
    c.publish_retained(&topic("ch", "finished"), "job").await;
    c.publish_retained(&topic("ch", "concurrency/set"), "1")
        .await;
    c.register("ch", "job", 300.0).await;
    assert_eq!(c.next_go("ch").await, "job");
    c.set_concurrency("ch", 2).await;
    let state = c.state("ch").await;
    assert_eq!(state["max_concurrent_jobs"], 2, "{state}");

    daemon.kill();
    daemon.spawn_again().await;
    daemon.wait_log_count("retained message refused", 2).await;
    let state = c.state("ch").await;
    assert_eq!(state["running"], serde_json::json!(["job"]), "{state}");
    assert_eq!(state["max_concurrent_jobs"], 2, "{state}");
}
