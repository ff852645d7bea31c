//! `[limits]`: requests that would grow state past a configured bound are answered with
//! `rejected/{uid}` naming the limit, and the daemon keeps serving.

mod common;

use std::time::Duration;

use common::{setup, topic, unique_id, Client, Daemon};
use serde_json::Value;

#[tokio::test]
async fn fourth_waiting_job_is_rejected_at_max_waiting_per_channel_and_daemon_keeps_serving() {
    let (_broker, daemon, mut c) = setup(
        "[limits]\nmax_waiting_per_channel = 3\n[defaults]\nmax_concurrent_jobs = 1\n",
        &["ch"],
        &["go/+", "rejected/+"],
    )
    .await;
    c.register("ch", "run", 60.0).await;
    assert_eq!(c.next_go("ch").await, "run");
    for uid in ["w1", "w2", "w3", "w4"] {
        c.register("ch", uid, 60.0).await;
    }
    let reason = c.rejection_reason("ch", "w4").await;
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
    let (_broker, _daemon, mut c) = setup(
        "[limits]\nmax_channels = 2\n",
        &["one", "two", "three"],
        &["go/+", "rejected/+"],
    )
    .await;
    c.register("one", "a", 60.0).await;
    c.register("two", "b", 60.0).await;
    assert_eq!(c.next_go("one").await, "a");
    assert_eq!(c.next_go("two").await, "b");
    c.register("three", "c", 60.0).await;
    let reason = c.rejection_reason("three", "c").await;
    assert!(reason.contains("max_channels"), "{reason}");
    c.expect_none(&topic("three", "go/+"), Duration::from_millis(200))
        .await;
    // The existing channels keep working.
    c.finished("one", "a").await;
    c.register("one", "a2", 60.0).await;
    assert_eq!(c.next_go("one").await, "a2");
}

/// A QoS 0 flood of `PREFIX/{channel}/register`, as an anonymous client could send it: `count`
/// registrations of `pad` bytes of extra fields each, then a QoS 1 `infos` on the same channel.
/// Mosquitto forwards one client's messages in order, so the `state` reply to that `infos`
/// comes once the daemon has read the flood. Returns once the broker acknowledged the `infos`.
async fn flood_qos0(port: u16, channel: &str, count: usize, pad: usize) {
    let padding = "x".repeat(pad);
    let messages = (0..count).map(|i| {
        (
            topic(channel, "register"),
            format!(r#"{{"uid":"f-{i}","timeout":3600,"pad":"{padding}"}}"#),
        )
    });
    publish_qos0(port, messages, topic(channel, "infos")).await;
}

/// Publishes `messages` at QoS 0 as fast as the broker takes them, then `last` at QoS 1, and
/// returns once the broker acknowledged `last`.
async fn publish_qos0(port: u16, messages: impl Iterator<Item = (String, String)>, last: String) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut options = MqttOptions::new(unique_id("flooder"), "127.0.0.1", port);
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let (acked_tx, acked) = tokio::sync::oneshot::channel();
    let poller = tokio::spawn(async move {
        let mut acked_tx = Some(acked_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    if let Some(tx) = acked_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("flooder lost its connection: {e}"),
            }
        }
    });
    for (topic, body) in messages {
        client
            .publish(topic, QoS::AtMostOnce, false, body)
            .await
            .expect("queue a flood message");
    }
    client
        .publish(last, QoS::AtLeastOnce, false, Vec::new())
        .await
        .expect("queue the closing message");
    tokio::time::timeout(Duration::from_secs(60), acked)
        .await
        .expect("the broker acknowledges the closing message within 60 s")
        .expect("flooder event loop");
    poller.abort();
}

/// `VmRSS` of a process, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

/// The value of the Prometheus sample whose line starts with `series`, if present.
fn scrape_sample(port: u16, series: &str) -> Option<f64> {
    let text = ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .expect("GET /metrics")
        .into_body()
        .read_to_string()
        .expect("metrics body");
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The bound under test and the flood, scaled down from the field report (20,000 x 60 KB, 1.19
/// GB of RSS) so the test stays fast: 1,500 x 60 KB = 90 MB against 8 MiB.
const FLOOD_BOUND: u64 = 8 << 20;
const FLOOD_COUNT: usize = 1_500;
const FLOOD_PAD: usize = 60_000;
/// What the daemon may hold besides the bound: the channel from the MQTT task (up to 256
/// decoded requests) and allocator slack.
const FLOOD_SLACK: u64 = 32 << 20;

#[tokio::test]
async fn a_qos0_flood_of_fat_registrations_stays_within_max_waiting_bytes() {
    let broker = common::Mosquitto::start_with("max_queued_messages 0\n");
    let metrics = common::free_port();
    let daemon = Daemon::start(
        broker.port(),
        &format!(
            "[limits]\nmax_waiting_bytes = {FLOOD_BOUND}\n\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"
        ),
    )
    .await;
    let pid = daemon.pid().expect("daemon pid");
    let baseline = rss_bytes(pid);
    let mut c = Client::connect(broker.port(), &unique_id("worker")).await;
    c.subscribe(&topic("flood", "state")).await;
    c.subscribe(&topic("work", "go/+")).await;

    flood_qos0(broker.port(), "flood", FLOOD_COUNT, FLOOD_PAD).await;
    let state = c
        .expect(&topic("flood", "state"), Duration::from_secs(120))
        .await;
    let state: Value = serde_json::from_slice(&state).expect("state JSON");
    let rss = rss_bytes(pid);
    let waiting = state["waiting"].as_u64().expect("waiting");
    eprintln!(
        "flood: {FLOOD_COUNT} x {FLOOD_PAD} B; waiting {waiting}; RSS {} MiB -> {} MiB",
        baseline >> 20,
        rss >> 20
    );

    // Still serving: a normal job on a channel with a free slot gets its go.
    c.register("work", "normal", 60.0).await;
    assert_eq!(c.next_go("work").await, "normal");

    // Held: what waits fits the bound, and memory grew by little more than the bound.
    let job = (FLOOD_PAD + 300) as u64;
    assert!(waiting >= 1, "some of the flood was queued: {state}");
    assert!(waiting * job <= FLOOD_BOUND, "{waiting} waiting: {state}");
    assert!(
        rss <= baseline + FLOOD_BOUND + FLOOD_SLACK,
        "RSS grew from {} MiB to {} MiB (bound {} MiB)",
        baseline >> 20,
        rss >> 20,
        FLOOD_BOUND >> 20
    );

    // Counted: every flood message the daemon read and did not queue is a `limit` rejection,
    // published (and counted) before the `state` reply, which waited behind them.
    let (rejected, bytes) = tokio::task::spawn_blocking(move || {
        (
            scrape_sample(
                metrics,
                "coordinosaur_rejections_total{channel=\"flood\",reason=\"limit\"}",
            ),
            scrape_sample(metrics, "coordinosaur_waiting_bytes"),
        )
    })
    .await
    .expect("scrape");
    let rejected = rejected.unwrap_or(0.0) as u64;
    eprintln!("flood: {rejected} limit rejections");
    assert!(
        rejected + waiting < FLOOD_COUNT as u64 && rejected >= FLOOD_COUNT as u64 / 2,
        "{rejected} limit rejections and {waiting} waiting of {FLOOD_COUNT}"
    );
    let bytes = bytes.expect("coordinosaur_waiting_bytes");
    assert!(bytes as u64 <= FLOOD_BOUND, "{bytes}");
}

/// The channel from the MQTT task to the driver is bounded, and the driver publishes through
/// rumqttc, whose request channel only the MQTT task drains. A burst of grants larger than that
/// request channel (1,024), while a QoS 0 flood keeps the channel to the driver full, must not
/// stall both tasks (checked by planting a driver that awaits `publish` itself: it hangs here).
#[tokio::test]
async fn a_burst_of_grants_during_a_flood_does_not_stall_the_daemon() {
    const JOBS: usize = 3_000;
    let broker = common::Mosquitto::start_with("max_queued_messages 0\n");
    let _daemon = Daemon::start(
        broker.port(),
        "[[channels]]\npattern = \"burst\"\nmax_concurrent_jobs = 0\n",
    )
    .await;
    let mut c = Client::connect(broker.port(), &unique_id("worker")).await;
    c.subscribe(&topic("burst", "go/+")).await;
    for i in 0..JOBS {
        c.register("burst", &format!("b{i}"), 3600.0).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while c.state("burst").await["waiting"] != JOBS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "registers not all read"
        );
    }
    // Every flood message is answered with a `state` publish, on top of the burst.
    let flood = (0..20_000).map(|_| (topic("other", "infos"), String::new()));
    let flooding = tokio::spawn(publish_qos0(broker.port(), flood, topic("other", "infos")));
    c.set_concurrency("burst", JOBS as i64).await;
    let mut gos = 0;
    while gos < JOBS {
        c.expect_match(&topic("burst", "go/+"), Duration::from_secs(60))
            .await;
        gos += 1;
    }
    flooding.await.expect("flood task");
    // And it still answers.
    assert_eq!(c.state("burst").await["running_count"], JOBS);
}
