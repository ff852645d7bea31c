//! `/metrics` scraped with a real HTTP client: the values match what the test did.

mod common;

use std::time::Duration;

use common::{free_port, topic, unique_id, Client, Daemon, TestBroker};

fn scrape(port: u16) -> String {
    ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .expect("GET /metrics")
        .into_body()
        .read_to_string()
        .expect("metrics body")
}

/// The value of the sample whose line starts with `series` (name and labels), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Scrapes until `series` has `value` (gauges and counters are updated as events happen, but
/// the test must not race the daemon's last publish).
async fn wait_for(port: u16, series: &str, value: f64) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = tokio::task::spawn_blocking(move || scrape(port))
            .await
            .expect("scrape task");
        if sample(&text, series) == Some(value) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never reached {value}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn metrics_match_what_happened() {
    let broker = TestBroker::start();
    let port = free_port();
    let daemon = Daemon::start(
        broker.port(),
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\nmax_channels = 1\n\n[defaults]\nmax_concurrent_jobs = 1\n"),
    )
    .await;
    let mut client = Client::connect(broker.port(), &unique_id("worker")).await;
    client.subscribe(&topic("jobs", "go/+")).await;
    client.subscribe(&topic("jobs", "expired/+")).await;

    client.register("jobs", "a", 60.0).await;
    client.register("jobs", "b", 0.2).await;
    client.register("jobs", "c", 60.0).await;
    assert_eq!(client.next_go("jobs").await, "a");
    client.finished("jobs", "a").await;
    assert_eq!(client.next_go("jobs").await, "b");
    client
        .expect(&topic("jobs", "expired/b"), Duration::from_secs(5))
        .await;
    assert_eq!(client.next_go("jobs").await, "c");
    // Waits behind c and asks for its place: one position message.
    client
        .publish(
            &topic("jobs", "register"),
            r#"{"uid": "d", "timeout": 60, "progress": true}"#,
        )
        .await;
    client.register("jobs", "bad", -1.0).await;
    client.publish(&topic("jobs", "register"), "not json").await;

    // Outputs are counted when they are published (after the journal), invalid messages when
    // they are decoded: wait for both.
    wait_for(
        port,
        "coordinosaur_position_messages_total{channel=\"jobs\"}",
        1.0,
    )
    .await;
    let text = wait_for(
        port,
        "coordinosaur_rejections_total{channel=\"jobs\",reason=\"invalid\"}",
        2.0,
    )
    .await;
    assert_eq!(
        sample(&text, "coordinosaur_grants_total{channel=\"jobs\"}"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "coordinosaur_expirations_total{channel=\"jobs\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "coordinosaur_ended_total{channel=\"jobs\",reason=\"finished\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "coordinosaur_running{channel=\"jobs\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "coordinosaur_waiting{channel=\"jobs\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "coordinosaur_position_messages_total{channel=\"jobs\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "coordinosaur_queue_wait_seconds_count{channel=\"jobs\"}"
        ),
        Some(3.0)
    );
    assert!(sample(&text, "coordinosaur_broker_connects_total").is_some_and(|v| v >= 1.0));
    // Every metric family exported is described (metrics::describe) and in the README's table.
    let readme = include_str!("../README.md");
    let families: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("coordinosaur_"))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|name| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name)
        })
        .collect();
    assert!(families.len() >= 8, "{families:?}");
    for family in families {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family} has no description (metrics::describe)\n{text}"
        );
        assert!(
            readme.contains(&format!("`{family}`")),
            "{family} is not in the README's metrics table"
        );
    }

    // Label cardinality is bounded: the second channel is counted as _other.
    client.subscribe(&topic("zzz", "go/+")).await;
    client.register("zzz", "z", 60.0).await;
    assert_eq!(client.next_go("zzz").await, "z");
    let text = wait_for(port, "coordinosaur_grants_total{channel=\"_other\"}", 1.0).await;
    assert!(!text.contains("channel=\"zzz\""), "{text}");
    drop(daemon);
}

#[tokio::test]
async fn limit_rejections_are_counted_with_reason_limit() {
    let broker = TestBroker::start();
    let port = free_port();
    let _daemon = Daemon::start(
        broker.port(),
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n[limits]\nmax_waiting_per_channel = 1\n\n\
             [defaults]\nmax_concurrent_jobs = 0\n"
        ),
    )
    .await;
    let mut client = Client::connect(broker.port(), &unique_id("worker")).await;
    client.subscribe(&topic("jobs", "rejected/+")).await;
    client.register("jobs", "a", 60.0).await;
    client.register("jobs", "b", 60.0).await;
    client.register("jobs", "c", 60.0).await;
    client
        .expect(&topic("jobs", "rejected/c"), common::DEFAULT_TIMEOUT)
        .await;
    wait_for(
        port,
        "coordinosaur_rejections_total{channel=\"jobs\",reason=\"limit\"}",
        2.0,
    )
    .await;
}
