//! `[limits]`: requests that would grow state past a configured bound are answered with
//! `rejected/{uid}` naming the limit, and the daemon keeps serving.

mod common;

use std::time::Duration;

use common::{topic, unique_id, Client, Daemon, TestBroker, DEFAULT_TIMEOUT};
use serde_json::Value;

/// The `reason` of the `rejected/{uid}` message on `channel`.
async fn rejection_reason(c: &mut Client, channel: &str, uid: &str) -> String {
    let payload = c
        .expect(&topic(channel, &format!("rejected/{uid}")), DEFAULT_TIMEOUT)
        .await;
    let body: Value = serde_json::from_slice(&payload).expect("rejected payload is JSON");
    assert_eq!(body["uid"], uid, "{body}");
    body["reason"].as_str().expect("reason").to_owned()
}

#[tokio::test]
async fn fourth_waiting_job_is_rejected_at_max_waiting_per_channel_and_daemon_keeps_serving() {
    let broker = TestBroker::start();
    let daemon = Daemon::start(
        broker.port(),
        "[limits]\nmax_waiting_per_channel = 3\n[defaults]\nmax_concurrent_jobs = 1\n",
    )
    .await;
    let mut c = Client::connect(broker.port(), &unique_id("worker")).await;
    c.subscribe(&topic("ch", "go/+")).await;
    c.subscribe(&topic("ch", "rejected/+")).await;
    c.register("ch", "run", 60.0).await;
    assert_eq!(c.next_go("ch").await, "run");
    for uid in ["w1", "w2", "w3", "w4"] {
        c.register("ch", uid, 60.0).await;
    }
    let reason = rejection_reason(&mut c, "ch", "w4").await;
    assert!(reason.contains("max_waiting_per_channel"), "{reason}");
    c.expect_none(&topic("ch", "rejected/+"), Duration::from_millis(200))
        .await;
    let state = c.state("ch").await;
    assert_eq!(state["waiting"], 3, "{state}");
    daemon.wait_log("rejected").await;

    // Still serving: the queue moves, and the freed place takes a new job.
    c.finished("ch", "run").await;
    assert_eq!(c.next_go("ch").await, "w1");
    c.register("ch", "w5", 60.0).await;
    let state = c.state("ch").await;
    assert_eq!(state["waiting"], 3, "{state}");
    c.expect_none(&topic("ch", "rejected/+"), Duration::ZERO)
        .await;
}

#[tokio::test]
async fn third_channel_is_rejected_at_max_channels() {
    let broker = TestBroker::start();
    let _daemon = Daemon::start(broker.port(), "[limits]\nmax_channels = 2\n").await;
    let mut c = Client::connect(broker.port(), &unique_id("worker")).await;
    for ch in ["one", "two", "three"] {
        c.subscribe(&topic(ch, "go/+")).await;
        c.subscribe(&topic(ch, "rejected/+")).await;
    }
    c.register("one", "a", 60.0).await;
    c.register("two", "b", 60.0).await;
    assert_eq!(c.next_go("one").await, "a");
    assert_eq!(c.next_go("two").await, "b");
    c.register("three", "c", 60.0).await;
    let reason = rejection_reason(&mut c, "three", "c").await;
    assert!(reason.contains("max_channels"), "{reason}");
    c.expect_none(&topic("three", "go/+"), Duration::from_millis(200))
        .await;
    // The existing channels keep working.
    c.finished("one", "a").await;
    c.register("one", "a2", 60.0).await;
    assert_eq!(c.next_go("one").await, "a2");
}
