//! Bad input of every kind: each one is refused with a WARN log line naming its topic (and a
//! `rejected/{uid}` message when the uid is known), and the daemon keeps serving the channel.

mod common;

use std::time::Duration;

use common::{topic, unique_id, Client, Daemon, TestBroker, DEFAULT_TIMEOUT};
use serde_json::Value;
use tokio::time::Instant;

/// One bad message and what must come of it.
struct Case {
    /// Shown on failure.
    name: &'static str,
    /// The action part of the topic (`register`, `finished`, ...).
    action: &'static str,
    /// The payload, bytes as sent.
    payload: Vec<u8>,
    /// Text the refusal reason must contain (in the log, and in `rejected` when there is one).
    reason: &'static str,
    /// `Some(uid)`: a `rejected/{uid}` message must come; `None`: none may.
    rejected_uid: Option<&'static str>,
}

fn case(
    name: &'static str,
    action: &'static str,
    payload: impl Into<Vec<u8>>,
    reason: &'static str,
    rejected_uid: Option<&'static str>,
) -> Case {
    Case {
        name,
        action,
        payload: payload.into(),
        reason,
        rejected_uid,
    }
}

/// A register payload of exactly `size` bytes, otherwise valid.
fn padded_register(uid: &str, size: usize) -> Vec<u8> {
    let head = format!(r#"{{"uid": "{uid}", "timeout": 1, "pad": ""#);
    let tail = r#""}"#;
    let mut body = head.into_bytes();
    body.resize(size - tail.len(), b'x');
    body.extend_from_slice(tail.as_bytes());
    assert_eq!(body.len(), size);
    body
}

fn cases() -> Vec<Case> {
    const NOT_UTF8: &[u8] = &[b'{', 0xff, 0xfe, b'}', 0xc3, 0x28];
    vec![
        case(
            "non-UTF-8 register",
            "register",
            NOT_UTF8,
            "not valid UTF-8",
            None,
        ),
        case(
            "non-UTF-8 finished",
            "finished",
            [b'a', 0xff, 0x80],
            "not valid UTF-8",
            None,
        ),
        case(
            "non-UTF-8 aborted",
            "aborted",
            [0xc3, 0x28],
            "not valid UTF-8",
            None,
        ),
        case(
            "100 KiB payload",
            "register",
            padded_register("big", 100 * 1024),
            "over the limit of 65536 bytes",
            None,
        ),
        case(
            "2 MiB payload",
            "register",
            padded_register("huge", 2 * 1024 * 1024),
            "over the limit of 65536 bytes",
            None,
        ),
        case(
            "empty register payload",
            "register",
            "",
            "not a JSON object",
            None,
        ),
        case(
            "malformed JSON",
            "register",
            r#"{"uid": "m", "timeout": "#,
            "not a JSON object",
            None,
        ),
        case(
            "JSON array",
            "register",
            "[1, 2]",
            "not a JSON object",
            None,
        ),
        case(
            "JSON string",
            "register",
            r#""uid""#,
            "not a JSON object",
            None,
        ),
        case(
            "missing uid",
            "register",
            r#"{"timeout": 1}"#,
            "missing field `uid`",
            None,
        ),
        case(
            "float uid",
            "register",
            r#"{"uid": 1.5, "timeout": 1}"#,
            "`uid` must be a string or an integer, not a fractional number",
            None,
        ),
        case(
            "array uid",
            "register",
            r#"{"uid": ["a"], "timeout": 1}"#,
            "not an array",
            None,
        ),
        case(
            "null uid",
            "register",
            r#"{"uid": null, "timeout": 1}"#,
            "not null",
            None,
        ),
        case(
            "bool uid",
            "register",
            r#"{"uid": true, "timeout": 1}"#,
            "not a boolean",
            None,
        ),
        case(
            "object uid",
            "register",
            r#"{"uid": {"id": 1}, "timeout": 1}"#,
            "not an object",
            None,
        ),
        case(
            "empty uid",
            "register",
            r#"{"uid": "", "timeout": 1}"#,
            "`uid` is empty",
            None,
        ),
        case(
            "uid with +",
            "register",
            r#"{"uid": "a+b", "timeout": 1}"#,
            "contains '+'",
            None,
        ),
        case(
            "uid with #",
            "register",
            r##"{"uid": "a#b", "timeout": 1}"##,
            "contains '+', '#'",
            None,
        ),
        case(
            "finished uid with #",
            "finished",
            "a#",
            "contains '+', '#'",
            None,
        ),
        case("empty finished", "finished", "", "`uid` is empty", None),
        case(
            "negative timeout",
            "register",
            r#"{"uid": "neg", "timeout": -1}"#,
            "non-negative",
            Some("neg"),
        ),
        case(
            "timeout \"soon\"",
            "register",
            r#"{"uid": "soon", "timeout": "soon"}"#,
            "must be a number of seconds",
            Some("soon"),
        ),
        case(
            "boolean timeout",
            "register",
            r#"{"uid": "tbool", "timeout": true}"#,
            "must be a number of seconds",
            Some("tbool"),
        ),
        case(
            "missing timeout",
            "register",
            r#"{"uid": "nt"}"#,
            "missing field `timeout`",
            Some("nt"),
        ),
        case(
            "huge timeout",
            "register",
            r#"{"uid": "long", "timeout": 1e12}"#,
            "over the limit",
            Some("long"),
        ),
        case(
            "integer uid, bad timeout",
            "register",
            r#"{"uid": 77, "timeout": -5}"#,
            "non-negative",
            Some("77"),
        ),
        case(
            "renew without timeout",
            "renew",
            r#"{"uid": "r"}"#,
            "missing field `timeout`",
            Some("r"),
        ),
        case(
            "concurrency -1",
            "concurrency/set",
            "-1",
            "concurrency must be a non-negative integer",
            None,
        ),
        case(
            "concurrency 1.5",
            "concurrency/set",
            "1.5",
            "concurrency must be a non-negative integer",
            None,
        ),
        case(
            "concurrency abc",
            "concurrency/set",
            "abc",
            "concurrency must be a non-negative integer",
            None,
        ),
        case(
            "concurrency empty",
            "concurrency/set",
            "",
            "concurrency must be a non-negative integer",
            None,
        ),
        case(
            "unknown action finish",
            "finish",
            "ok",
            "unknown action \"finish\"",
            None,
        ),
        case(
            "unknown action renewal",
            "renewal",
            r#"{"uid": "u", "timeout": 1}"#,
            "unknown action \"renewal\"",
            None,
        ),
    ]
}

/// Waits (up to 10 s) for one daemon log line with WARN, "message refused", `topic` and `reason`.
async fn wait_warn(daemon: &Daemon, topic: &str, reason: &str) {
    let deadline = Instant::now() + DEFAULT_TIMEOUT;
    loop {
        let log = daemon.log();
        let found = log.lines().any(|l| {
            l.contains("WARN")
                && l.contains("message refused")
                && l.contains(&format!("topic=\"{topic}\""))
                && l.contains(reason)
        });
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no WARN naming {topic} with {reason:?} in the daemon log; refusals logged:\n{}",
            log.lines()
                .filter(|l| l.contains("message refused"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_is_refused_and_the_daemon_keeps_serving() {
    let broker = TestBroker::start();
    let mut daemon = Daemon::start(broker.port(), "[limits]\nmax_payload = 65536\n").await;
    let mut c = Client::connect(broker.port(), &unique_id("worker")).await;
    c.subscribe("coordinosaur/+/go/+").await;
    c.subscribe("coordinosaur/+/rejected/+").await;

    for (i, case) in cases().into_iter().enumerate() {
        let channel = format!("bad-{i}");
        let bad_topic = topic(&channel, case.action);
        c.publish_raw(&bad_topic, &case.payload).await;
        // The channel still works: a valid job right after gets its go.
        c.register(&channel, "ok", 30.0).await;
        let go = c.expect(&topic(&channel, "go/ok"), DEFAULT_TIMEOUT).await;
        assert_eq!(go, b"ok", "{}", case.name);
        match case.rejected_uid {
            Some(uid) => {
                // Published before the go above, in order; a short wait is ample.
                let payload = c
                    .expect(
                        &topic(&channel, &format!("rejected/{uid}")),
                        DEFAULT_TIMEOUT,
                    )
                    .await;
                let body: Value = serde_json::from_slice(&payload)
                    .unwrap_or_else(|e| panic!("{}: rejected is not JSON: {e}", case.name));
                assert_eq!(body["uid"], uid, "{}: {body}", case.name);
                let reason = body["reason"].as_str().unwrap_or_default();
                assert!(
                    reason.contains(case.reason),
                    "{}: reason {reason:?} lacks {:?}",
                    case.name,
                    case.reason
                );
                // A refused register creates no job.
                c.expect_none(&topic(&channel, &format!("go/{uid}")), Duration::ZERO)
                    .await;
            }
            None => {
                c.expect_none(&topic(&channel, "rejected/+"), Duration::ZERO)
                    .await;
            }
        }
        wait_warn(&daemon, &bad_topic, case.reason).await;
        assert!(daemon.is_running(), "daemon died after {}", case.name);
    }

    // Refused concurrency values changed nothing.
    for i in 0..cases().len() {
        let channel = format!("bad-{i}");
        let state = c.state(&channel).await;
        assert_eq!(state["max_concurrent_jobs"], 1, "{channel}: {state}");
        assert_eq!(
            state["running"],
            serde_json::json!(["ok"]),
            "{channel}: {state}"
        );
        assert_eq!(state["waiting"], 0, "{channel}: {state}");
    }
    // Nothing else was granted anywhere, and the daemon is still up.
    c.expect_none("coordinosaur/+/go/+", Duration::from_millis(300))
        .await;
    assert!(daemon.is_running(), "the daemon exited");
}

#[tokio::test]
async fn bad_input_does_not_disturb_running_and_waiting_jobs() {
    let broker = TestBroker::start();
    let daemon = Daemon::start(broker.port(), "").await;
    let mut c = Client::connect(broker.port(), &unique_id("worker")).await;
    c.subscribe("coordinosaur/ch/go/+").await;
    c.register("ch", "a", 30.0).await;
    c.register("ch", "b", 30.0).await;
    assert_eq!(c.next_go("ch").await, "a");
    // A flood of junk on the busy channel.
    for case in cases() {
        c.publish_raw(&topic("ch", case.action), &case.payload)
            .await;
    }
    c.expect_none("coordinosaur/ch/go/+", Duration::from_millis(300))
        .await;
    let state = c.state("ch").await;
    assert_eq!(state["running"], serde_json::json!(["a"]), "{state}");
    assert_eq!(state["waiting"], 1, "{state}");
    c.finished("ch", "a").await;
    assert_eq!(c.next_go("ch").await, "b");
    wait_warn(&daemon, "coordinosaur/ch/finish", "unknown action").await;
}
