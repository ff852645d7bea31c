//! Live config reload, end to end: the daemon re-reads `coordinosaur.toml` when it changes or on
//! SIGHUP, applies new limits to existing channels, and keeps the old config when the new one is
//! invalid.

mod common;

use std::time::Duration;

use common::{setup, topic, Daemon};

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

#[tokio::test]
async fn raising_a_limit_in_the_file_releases_queued_jobs() {
    let (_broker, daemon, mut client) =
        setup("[defaults]\nmax_concurrent_jobs = 1\n", &["ch"], &["go/+"]).await;
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
    let (_broker, mut daemon, mut client) =
        setup("[defaults]\nmax_concurrent_jobs = 1\n", &["ch"], &["go/+"]).await;

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
    let quota = |limit: u32| {
        format!("[defaults]\nmax_concurrent_jobs = 10\nquotas = [{{ interval = \"1h\", name = \"hourly\", limit = {limit} }}]\n")
    };
    let (_broker, daemon, mut client) = setup(&quota(2), &["ch"], &["go/+"]).await;
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

/// `[limits]` message limits are read by the MQTT task, not the engine: a reload must reach it
/// too (they were copied once at start and never updated, although the README said they apply
/// at once).
#[tokio::test]
async fn lowered_message_limits_apply_to_the_next_message() {
    let (_broker, daemon, mut client) =
        setup("[defaults]\nmax_concurrent_jobs = 5\n", &["ch"], &["go/+"]).await;
    client.subscribe(&topic("ch", "rejected/+")).await;
    let long_uid = "u".repeat(40);
    client.register("ch", &long_uid, 60.0).await;
    assert_eq!(client.next_go("ch").await, long_uid);

    rewrite(
        &daemon,
        "[defaults]\nmax_concurrent_jobs = 5\n[limits]\nmax_uid_len = 32\nmax_timeout = \"1m\"\n",
    );
    daemon.wait_log("message limits changed").await;
    let other = "v".repeat(40);
    client.register("ch", &other, 30.0).await;
    // A uid over the limit is not echoed back in a topic: the refusal is logged.
    daemon.wait_log("max_uid_len = 32").await;
    client.register("ch", "short", 120.0).await;
    let refused = client
        .expect(&topic("ch", "rejected/short"), Duration::from_secs(10))
        .await;
    let reason = String::from_utf8_lossy(&refused);
    assert!(reason.contains("over the limit"), "{reason}");
    client.register("ch", "fine", 30.0).await;
    assert_eq!(client.next_go("ch").await, "fine");
}
