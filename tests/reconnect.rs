//! Broker outages: the daemon reconnects and resubscribes by itself, and keeps its state.

mod common;

use std::time::Duration;

use common::{setup, topic, unique_id, Client, Daemon, Mosquitto, TestBroker, DEFAULT_TIMEOUT};
use serde_json::json;

#[tokio::test]
async fn daemon_reconnects_resubscribes_and_keeps_its_state() {
    let mut broker = TestBroker::Mosquitto(Mosquitto::start());
    let daemon = Daemon::start(broker.port(), "[defaults]\nmax_concurrent_jobs = 1\n").await;
    let mut c = Client::connect(broker.port(), &unique_id("worker")).await;
    c.subscribe(&topic("ch", "go/+")).await;
    c.subscribe(&topic("ch", "expired/+")).await;
    c.register("ch", "first", 60.0).await;
    c.register("ch", "second", 60.0).await;
    assert_eq!(c.next_go("ch").await, "first");
    let before = c.state("ch").await;
    assert_eq!(before["running"], json!(["first"]), "{before}");
    assert_eq!(before["waiting"], 1, "{before}");

    broker.stop();
    c.wait_disconnected().await;
    broker.restart();
    c.wait_connections(2).await;
    // Retries `infos` until the daemon is back and subscribed again.
    let after = c.state_when_answered("ch").await;
    daemon.wait_log("broker connection lost").await;
    assert_eq!(after["running"], json!(["first"]), "{after}");
    assert_eq!(after["waiting"], 1, "{after}");

    // The running job still holds its slot.
    c.expect_none(&topic("ch", "go/+"), Duration::from_millis(400))
        .await;
    c.finished("ch", "first").await;
    assert_eq!(c.next_go("ch").await, "second");
    // New registrations are served too.
    c.register("ch", "third", 60.0).await;
    c.finished("ch", "second").await;
    assert_eq!(c.next_go("ch").await, "third");
    c.expect_none(&topic("ch", "expired/+"), Duration::ZERO)
        .await;
}

#[tokio::test]
async fn daemon_survives_two_outages_and_leases_still_expire() {
    let (mut broker, _daemon, mut c) = setup("", &["ch"], &["go/+", "expired/+"]).await;
    for round in 0..2u64 {
        broker.stop();
        c.wait_disconnected().await;
        broker.restart();
        c.wait_connections(round + 2).await;
        c.state_when_answered("ch").await;
    }
    // A short lease granted after the outages expires on time and frees the slot.
    c.register("ch", "a", 0.3).await;
    c.register("ch", "b", 60.0).await;
    assert_eq!(c.next_go("ch").await, "a");
    c.expect(&topic("ch", "expired/a"), DEFAULT_TIMEOUT).await;
    assert_eq!(c.next_go("ch").await, "b");
}

/// A broker restarted without persistence forgets the daemon's session, and rumqttc then drops
/// the publishes it had in flight: a `go` sent just before the broker died would be lost, leaving
/// its worker waiting until the lease ran out. The daemon notices the lost session and, once it
/// is subscribed again and workers had a moment to resubscribe, says `go` again to every running
/// job. (Without that, this test fails: the worker never hears `go/next`.)
#[tokio::test]
async fn a_go_in_flight_when_a_broker_without_persistence_died_is_said_again_after_it_returns() {
    let mut broker = Mosquitto::start();
    let daemon = Daemon::start(broker.port(), "[defaults]\nmax_concurrent_jobs = 1\n").await;
    let mut c = Client::connect(broker.port(), &unique_id("worker")).await;
    c.subscribe(&topic("ch", "go/+")).await;
    c.register("ch", "short", 1.0).await;
    c.register("ch", "next", 60.0).await;
    assert_eq!(c.next_go("ch").await, "short");

    // Frozen, the broker takes the go of `next` (granted when the lease of `short` ends) into
    // its socket but never acknowledges it; then it dies and comes back without any session.
    broker.freeze();
    daemon.wait_log("uid=next waited_ms").await;
    broker.restart();
    c.wait_connections(2).await;
    assert_eq!(c.next_go("ch").await, "next");
    daemon.wait_log("the broker lost our session").await;
    daemon.wait_log("go again").await;
    // Exactly once: `short` (acknowledged long before) is not told again, nor is `next` twice.
    c.expect_none(&topic("ch", "go/+"), Duration::from_millis(500))
        .await;
    assert_eq!(
        daemon.log().matches("go again").count(),
        1,
        "{}",
        daemon.log()
    );
}

/// A broker restarted without persistence loses every session, but a `go` it had acknowledged
/// was handed to the worker: the daemon says nothing again (a worker of the original protocol
/// would run its job twice), and the running job keeps its slot.
#[tokio::test]
async fn an_acknowledged_go_is_not_said_again_after_the_broker_lost_every_session() {
    let mut broker = Mosquitto::start();
    let daemon = Daemon::start(broker.port(), "[defaults]\nmax_concurrent_jobs = 1\n").await;
    let mut c = Client::connect(broker.port(), &unique_id("worker")).await;
    c.subscribe(&topic("ch", "go/+")).await;
    c.register("ch", "a", 60.0).await;
    c.register("ch", "b", 60.0).await;
    assert_eq!(c.next_go("ch").await, "a");
    // The reply waits for every earlier journal batch: the go's acknowledgement is recorded.
    c.state("ch").await;

    broker.restart();
    c.wait_connections(2).await;
    daemon.wait_log_count("synced", 2).await;
    // Past the lost-session grace (1 s) in which a re-send would happen.
    c.expect_none(&topic("ch", "go/+"), Duration::from_millis(1_500))
        .await;
    assert!(!daemon.log().contains("go again"), "{}", daemon.log());
    let state = c.state_when_answered("ch").await;
    assert_eq!(state["running"], json!(["a"]), "{state}");
    c.finished("ch", "a").await;
    assert_eq!(c.next_go("ch").await, "b");
}

/// The broker got two `go`s and delivered them, but their acknowledgements never reached the
/// daemon, and then the connection dropped while the broker kept the session. rumqttc would
/// resend both as they were, and the worker that had finished meanwhile would hear `go` after
/// its `finished`. The daemon withholds such resends and says `go` again, once it has read what
/// the broker queued for it, only to the job still running.
#[tokio::test]
async fn after_lost_pubacks_and_a_resumed_session_go_is_said_again_only_to_running_jobs() {
    let broker = Mosquitto::start();
    let relay = common::relay::Relay::start(broker.port()).await;
    let daemon = Daemon::start(
        relay.port(),
        "[state]\ndir = \"\"\n\n[defaults]\nmax_concurrent_jobs = 2\n",
    )
    .await;
    let mut c = Client::connect(broker.port(), &unique_id("worker")).await;
    c.subscribe(&topic("ch", "go/+")).await;
    relay.drop_pubacks(true);
    c.register("ch", "done", 60.0).await;
    c.register("ch", "busy", 60.0).await;
    let mut granted = vec![c.next_go("ch").await, c.next_go("ch").await];
    granted.sort();
    assert_eq!(granted, ["busy", "done"]);
    c.finished("ch", "done").await;
    // The daemon has read the `finished` (through the relay, which only drops PUBACKs).
    let state = c.state("ch").await;
    assert_eq!(state["running"], json!(["busy"]), "{state}");

    relay.drop_pubacks(false);
    relay.cut();
    daemon.wait_log("session_present=true").await;
    assert_eq!(
        c.next_go("ch").await,
        "busy",
        "said again to the job still running"
    );
    c.expect_none(&topic("ch", "go/+"), Duration::from_millis(1500))
        .await;
    daemon.wait_log("not resent as they were").await;

    // Served as usual afterwards.
    c.finished("ch", "busy").await;
    c.register("ch", "next", 60.0).await;
    assert_eq!(c.next_go("ch").await, "next");
}

/// A broker may refuse a SUBSCRIBE and keep the connection: an ACL that denies a filter, or
/// nats-server's MQTT listener when it cannot set up the subscription's JetStream consumer in
/// time (while its cluster elects leaders after losing a node). Taking the refusal as a
/// subscription would leave the daemon deaf for good; it warns and subscribes again until the
/// broker takes every filter.
#[tokio::test]
async fn refused_subscriptions_are_asked_for_again_until_the_broker_takes_them() {
    let broker = Mosquitto::start();
    let relay = common::relay::Relay::start(broker.port()).await;
    // The ConnAck's SUBSCRIBE and the first retry.
    relay.refuse_subscribes(2);
    let options = common::DaemonOptions {
        skip_ready: true,
        ..common::DaemonOptions::default()
    };
    let mut daemon =
        Daemon::start_with_options(relay.port(), "[state]\ndir = \"\"\n", options).await;
    daemon.wait_log("retry_in_ms=500").await;
    // The second retry, 0.5 s later, goes through; the readiness probe (through the relay too)
    // only from now on, so that the relay refuses the daemon's SUBSCRIBEs, not the probe's.
    daemon.wait_ready().await;
    let log = daemon.log();
    assert_eq!(
        log.matches("the broker refused to subscribe").count(),
        2,
        "{log}"
    );
    assert!(log.contains("retry_in_ms=250"), "{log}");
    assert!(log.contains("retry_in_ms=500"), "{log}");

    let mut c = Client::connect(broker.port(), &unique_id("worker")).await;
    c.subscribe(&topic("ch", "go/+")).await;
    c.register("ch", "a", 60.0).await;
    assert_eq!(c.next_go("ch").await, "a");
}
