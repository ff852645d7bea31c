//! The daemon's MQTT session: with `[mqtt] clean_session = false` (the default) the broker
//! queues what clients publish while the daemon is down and delivers it when it comes back.
//!
//! What the daemon decided before the outage comes back from its journal (tests/durable.rs,
//! tests/faults.rs); these tests show that requests published during the outage are not lost on
//! the way.

mod common;

use std::time::Duration;

use common::{setup, topic, unique_id, Client, Daemon, TestBroker, PREFIX};

#[tokio::test]
async fn register_published_while_daemon_is_down_gets_go_after_restart() {
    let (_broker, mut daemon, mut c) = setup("", &["ch"], &["go/+"]).await;

    daemon.kill();
    c.register("ch", "while-down", 60.0).await;
    // A SUBACK on the same connection comes after the broker handled the PUBLISH before it,
    // so the register is in the daemon's offline session before the daemon comes back.
    c.subscribe(&topic("ch", "rejected/+")).await;
    c.expect_none(&topic("ch", "go/+"), Duration::from_millis(200))
        .await;

    // Same config, so the same client id: the broker resumes the session and delivers.
    daemon.spawn_again().await;
    assert_eq!(c.next_go("ch").await, "while-down");
    daemon.wait_log("session_present=true").await;
    c.expect_none(&topic("ch", "rejected/+"), Duration::ZERO)
        .await;
}

#[tokio::test]
async fn with_clean_session_a_register_published_while_down_is_lost() {
    let broker = TestBroker::start();
    let config = format!(
        "[mqtt]\nport = {}\nclient_id = \"{}\"\nclean_session = true\n",
        broker.port(),
        unique_id("coordinosaur-clean")
    );
    let mut daemon = Daemon::start_with_config(broker.port(), &config, PREFIX).await;
    let mut c = Client::connect(broker.port(), &unique_id("worker")).await;
    c.subscribe(&topic("ch", "go/+")).await;

    daemon.kill();
    c.register("ch", "lost", 60.0).await;
    c.subscribe(&topic("ch", "rejected/+")).await;
    daemon.spawn_again().await;
    c.expect_none(&topic("ch", "go/+"), Duration::from_millis(500))
        .await;
    // The daemon itself works: a register sent now is served.
    c.register("ch", "after", 60.0).await;
    assert_eq!(c.next_go("ch").await, "after");
}
