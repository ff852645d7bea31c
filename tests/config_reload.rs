//! Live config reload, end to end: the daemon re-reads `coordinosaur.toml` when it changes or on
//! SIGHUP, applies new limits to existing channels, and keeps the old config when the new one is
//! invalid.

mod common;

use std::time::Duration;

use common::{topic, unique_id, Client, Daemon, TestBroker};

/// Span of every "nothing arrives" check.
const QUIET: Duration = Duration::from_millis(400);

/// Rewrites the daemon's config with `extra_toml` (keeping its `[mqtt]` table), atomically.
fn rewrite(daemon: &Daemon, extra_toml: &str) {
    let path = daemon.config_path();
    let current = std::fs::read_to_string(&path).expect("read config");
    let mqtt = &current[current.find("[mqtt]").expect("has [mqtt]")..];
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{extra_toml}\n\n{mqtt}")).expect("write config");
    std::fs::rename(&tmp, &path).expect("rename config");
}

async fn worker(broker: &TestBroker, channel: &str) -> Client {
    let client = Client::connect(broker.port(), &unique_id("worker")).await;
    client.subscribe(&topic(channel, "go/+")).await;
    client
}

#[tokio::test]
async fn raising_a_limit_in_the_file_releases_queued_jobs() {
    let broker = TestBroker::start();
    let daemon = Daemon::start(broker.port(), "[defaults]\nmax_concurrent_jobs = 1\n").await;
    let mut client = worker(&broker, "ch").await;
    for uid in ["a", "b", "c"] {
        client.register("ch", uid, 60.0).await;
    }
    assert_eq!(client.next_go("ch").await, "a");
    client.expect_none(&topic("ch", "go/+"), QUIET).await;

    rewrite(&daemon, "[defaults]\nmax_concurrent_jobs = 3\n");
    assert_eq!(client.next_go("ch").await, "b");
    assert_eq!(client.next_go("ch").await, "c");
    daemon.wait_log("channel reconfigured").await;
    assert!(
        daemon.log().contains("max_concurrent_jobs"),
        "the log says what changed"
    );
    let state = client.state("ch").await;
    assert_eq!(state["max_concurrent_jobs"], 3);
    assert_eq!(state["running_count"], 3, "nothing revoked, nothing lost");
}

#[tokio::test]
async fn an_invalid_file_keeps_the_old_config() {
    let broker = TestBroker::start();
    let mut daemon = Daemon::start(broker.port(), "[defaults]\nmax_concurrent_jobs = 1\n").await;
    let mut client = worker(&broker, "ch").await;

    rewrite(&daemon, "[defaults]\nmax_concurrent_jobs = -4\n");
    daemon.wait_log("config reload failed").await;
    assert!(
        daemon.log().contains("max_concurrent_jobs"),
        "the log names the key"
    );

    client.register("ch", "a", 60.0).await;
    client.register("ch", "b", 60.0).await;
    assert_eq!(client.next_go("ch").await, "a");
    client.expect_none(&topic("ch", "go/+"), QUIET).await;
    assert!(daemon.is_running());
}

#[tokio::test]
async fn sighup_rereads_the_file_and_quota_history_is_kept() {
    let broker = TestBroker::start();
    let quota = |limit: u32| {
        format!("[defaults]\nmax_concurrent_jobs = 10\nquotas = [{{ interval = \"1h\", name = \"hourly\", limit = {limit} }}]\n")
    };
    let daemon = Daemon::start(broker.port(), &quota(2)).await;
    let mut client = worker(&broker, "ch").await;
    for uid in ["a", "b", "c", "d"] {
        client.register("ch", uid, 60.0).await;
    }
    assert_eq!(client.next_go("ch").await, "a");
    assert_eq!(client.next_go("ch").await, "b");
    client.expect_none(&topic("ch", "go/+"), QUIET).await;

    // Raise the hourly limit to 3 by SIGHUP: the two grants already made still count.
    rewrite(&daemon, &quota(3));
    daemon.signal("HUP");
    daemon.wait_log("trigger=\"SIGHUP\"").await;
    assert_eq!(client.next_go("ch").await, "c");
    client.expect_none(&topic("ch", "go/+"), QUIET).await;
    let state = client.state("ch").await;
    assert_eq!(state["quotas"][0]["used"], 3);
    assert_eq!(state["waiting"], 1);
}
