//! Decoding every input and every kind of bad input.

use super::*;
use serde_json::Value;

use crate::engine::{Registration, Reply};

const P: &str = "coordinosaur";

fn dec(topic: &str, payload: &[u8]) -> Result<Option<Input>, Rejection> {
    decode(P, topic, payload, &DecodeLimits::default())
}

fn reg(payload: &str) -> Result<Option<Input>, Rejection> {
    dec("coordinosaur/ch/register", payload.as_bytes())
}

fn registered(payload: &str) -> Registration {
    match reg(payload) {
        Ok(Some(Input::Register(r))) => r,
        other => panic!("expected a registration from {payload}, got {other:?}"),
    }
}

fn error(r: Result<Option<Input>, Rejection>) -> Rejection {
    r.expect_err("expected a rejection")
}

#[test]
fn register_with_string_or_integer_uid() {
    let r = registered(r#"{"uid":"job-1","timeout":30}"#);
    assert_eq!(
        (r.channel.as_str(), r.uid.as_str(), r.timeout),
        ("ch", "job-1", Millis(30_000))
    );
    assert_eq!(r.meta, None);
    assert_eq!(registered(r#"{"uid":42,"timeout":1}"#).uid, "42");
    assert_eq!(registered(r#"{"uid":-7,"timeout":1}"#).uid, "-7");
}

#[test]
fn timeout_accepts_fractions_and_numeric_strings() {
    assert_eq!(
        registered(r#"{"uid":"a","timeout":0.25}"#).timeout,
        Millis(250)
    );
    assert_eq!(
        registered(r#"{"uid":"a","timeout":"12"}"#).timeout,
        Millis(12_000)
    );
    assert_eq!(
        registered(r#"{"uid":"a","timeout":" 1.5 "}"#).timeout,
        Millis(1_500)
    );
    assert_eq!(registered(r#"{"uid":"a","timeout":0}"#).timeout, Millis(0));
}

#[test]
fn extra_fields_are_kept_as_meta() {
    let r = registered(r#"{"uid":"a","timeout":30,"priority":5,"tenant":"acme"}"#);
    let meta: Value = serde_json::from_str(r.meta.as_deref().unwrap_or("null")).unwrap_or_default();
    assert_eq!(meta, serde_json::json!({"priority": 5, "tenant": "acme"}));
}

#[test]
fn bad_registrations_name_the_reason_and_the_uid_when_known() {
    let cases: &[(&str, Option<&str>, &str)] = &[
        ("not json", None, "not a JSON object"),
        ("[1,2]", None, "not a JSON object"),
        ("\"a\"", None, "not a JSON object"),
        (r#"{"timeout":1}"#, None, "missing field `uid`"),
        (r#"{"uid":"a"}"#, Some("a"), "missing field `timeout`"),
        (r#"{"uid":1.5,"timeout":1}"#, None, "fractional number"),
        (r#"{"uid":null,"timeout":1}"#, None, "null"),
        (r#"{"uid":["x"],"timeout":1}"#, None, "an array"),
        (r#"{"uid":true,"timeout":1}"#, None, "a boolean"),
        (r#"{"uid":"","timeout":1}"#, None, "empty"),
        (
            r#"{"uid":"a+b","timeout":1}"#,
            None,
            "cannot appear in a topic",
        ),
        (
            r#"{"uid":"a#","timeout":1}"#,
            None,
            "cannot appear in a topic",
        ),
        (r#"{"uid":"a","timeout":-1}"#, Some("a"), "non-negative"),
        (
            r#"{"uid":"a","timeout":"soon"}"#,
            Some("a"),
            "number of seconds",
        ),
        (
            r#"{"uid":"a","timeout":null}"#,
            Some("a"),
            "number of seconds",
        ),
        (
            r#"{"uid":"a","timeout":{"s":1}}"#,
            Some("a"),
            "number of seconds",
        ),
        (
            r#"{"uid":"a","timeout":1e300}"#,
            Some("a"),
            "over the limit",
        ),
        (r#"{"uid":"a","timeout":"NaN"}"#, Some("a"), "non-negative"),
        (r#"{"uid":"a","timeout":"inf"}"#, Some("a"), "non-negative"),
    ];
    for (payload, uid, reason) in cases {
        let e = error(reg(payload));
        assert_eq!(e.channel.as_deref(), Some("ch"), "{payload}");
        assert_eq!(e.uid.as_deref(), *uid, "{payload}");
        let msg = e.error.to_string();
        assert!(msg.contains(reason), "{payload}: {msg:?} lacks {reason:?}");
    }
}

#[test]
fn long_uid_is_refused() {
    let uid = "x".repeat(DEFAULT_MAX_UID_LEN + 1);
    let e = error(reg(&format!(r#"{{"uid":"{uid}","timeout":1}}"#)));
    assert_eq!(
        e.error,
        ProtocolError::UidTooLong {
            len: DEFAULT_MAX_UID_LEN + 1,
            limit: DEFAULT_MAX_UID_LEN
        }
    );
    assert!(e.error.to_string().contains("max_uid_len"), "{}", e.error);
    assert!(
        registered(&format!(
            r#"{{"uid":"{}","timeout":1}}"#,
            "y".repeat(DEFAULT_MAX_UID_LEN)
        ))
        .uid
        .len()
            == DEFAULT_MAX_UID_LEN
    );
}

#[test]
fn max_uid_len_is_configurable_for_every_action() {
    let limits = DecodeLimits {
        max_uid_len: 4,
        ..DecodeLimits::default()
    };
    let dec = |topic: &str, payload: &str| decode(P, topic, payload.as_bytes(), &limits);
    assert!(dec("coordinosaur/ch/register", r#"{"uid":"abcd","timeout":1}"#).is_ok());
    for (topic, payload) in [
        ("coordinosaur/ch/register", r#"{"uid":"abcde","timeout":1}"#),
        ("coordinosaur/ch/renew", r#"{"uid":"abcde","timeout":1}"#),
        ("coordinosaur/ch/finished", "abcde"),
        ("coordinosaur/ch/aborted", "abcde"),
    ] {
        let e = dec(topic, payload).expect_err(topic);
        assert_eq!(
            e.error,
            ProtocolError::UidTooLong { len: 5, limit: 4 },
            "{topic}"
        );
    }
}

#[test]
fn rejection_output_needs_both_channel_and_uid() {
    let e = error(reg(r#"{"uid":"a","timeout":-1}"#));
    let Some(Output::Rejected {
        channel,
        uid,
        reason,
        kind,
    }) = e.to_output()
    else {
        panic!("no output for {e:?}");
    };
    assert_eq!((&*channel, &*uid), ("ch", "a"));
    assert!(reason.contains("timeout"));
    assert_eq!(kind, crate::engine::RejectKind::Invalid);
    assert_eq!(error(reg("{}")).to_output(), None);
}

#[test]
fn non_utf8_is_refused_never_altered() {
    let e = error(dec(
        "coordinosaur/ch/register",
        b"{\"uid\":\"a\xff\",\"timeout\":1}",
    ));
    assert_eq!(e.error, ProtocolError::NotUtf8);
    let e = error(dec("coordinosaur/ch/finished", b"a\xffb"));
    assert_eq!(e.error, ProtocolError::NotUtf8);
}

#[test]
fn oversized_payload_is_refused_before_parsing() {
    let limits = DecodeLimits {
        max_payload: 100,
        ..DecodeLimits::default()
    };
    let big = format!(r#"{{"uid":"a","timeout":1,"pad":"{}"}}"#, "x".repeat(200));
    let e = decode(P, "coordinosaur/ch/register", big.as_bytes(), &limits).expect_err("too large");
    assert!(matches!(
        e.error,
        ProtocolError::TooLarge { limit: 100, .. }
    ));
}

#[test]
fn finished_and_aborted_take_the_plain_uid() {
    assert_eq!(
        dec("coordinosaur/ch/finished", b"job 1"),
        Ok(Some(Input::Finished {
            channel: "ch".into(),
            uid: "job 1".into(),
            token: None,
        }))
    );
    assert_eq!(
        dec("coordinosaur/ch/aborted", b"42"),
        Ok(Some(Input::Aborted {
            channel: "ch".into(),
            uid: "42".into(),
            token: None,
        }))
    );
    assert!(matches!(
        error(dec("coordinosaur/ch/finished", b"")).error,
        ProtocolError::BadUid(_)
    ));
}

#[test]
fn concurrency_set_takes_an_integer_with_whitespace() {
    assert_eq!(
        dec("coordinosaur/ch/concurrency/set", b" 3\n"),
        Ok(Some(Input::SetConcurrency {
            channel: "ch".into(),
            max: 3
        }))
    );
    assert_eq!(
        dec("coordinosaur/ch/concurrency/set", b"0"),
        Ok(Some(Input::SetConcurrency {
            channel: "ch".into(),
            max: 0
        }))
    );
    for bad in ["-1", "1.5", "two", "", "99999999999"] {
        let e = error(dec("coordinosaur/ch/concurrency/set", bad.as_bytes()));
        assert!(matches!(e.error, ProtocolError::BadConcurrency(_)), "{bad}");
    }
}

#[test]
fn renew_and_infos() {
    assert_eq!(
        dec("coordinosaur/ch/renew", br#"{"uid":"a","timeout":5}"#),
        Ok(Some(Input::Renew {
            channel: "ch".into(),
            uid: "a".into(),
            timeout: Millis(5_000),
            token: None,
        }))
    );
    assert_eq!(
        dec("coordinosaur/ch/infos", b"\xff anything"),
        Ok(Some(Input::Infos {
            channel: "ch".into()
        }))
    );
}

#[test]
fn own_outputs_are_ignored_silently() {
    for t in [
        "coordinosaur/ch/go/a",
        "coordinosaur/ch/expired/a",
        "coordinosaur/ch/rejected/a",
        "coordinosaur/ch/state",
    ] {
        assert_eq!(dec(t, b"a"), Ok(None), "{t}");
    }
}

#[test]
fn bad_topics_and_unknown_actions() {
    for t in [
        "coordinosaur",
        "coordinosaur/",
        "coordinosaur/ch",
        "coordinosaur//register",
        "coordinosaur/ch/",
        "other/ch/register",
        "coordinosaurx/ch/register",
    ] {
        assert_eq!(error(dec(t, b"x")).error, ProtocolError::BadTopic, "{t}");
    }
    let e = error(dec("coordinosaur/ch/finish", b"x"));
    assert_eq!(
        (e.channel.as_deref(), e.error),
        (Some("ch"), ProtocolError::UnknownAction("finish".into()))
    );
}

#[test]
fn multi_level_prefix() {
    let r = decode(
        "org/jobs",
        "org/jobs/ch/finished",
        b"u",
        &DecodeLimits::default(),
    );
    assert_eq!(
        r,
        Ok(Some(Input::Finished {
            channel: "ch".into(),
            uid: "u".into(),
            token: None,
        }))
    );
    assert_eq!(
        subscriptions("org/jobs"),
        [
            "org/jobs/+/+".to_string(),
            "org/jobs/+/concurrency/set".to_string(),
            "org/jobs/infos".to_string()
        ]
    );
}

#[test]
fn encode_outputs() {
    let go = Output::Go {
        seq: 0,
        at: crate::engine::Time(5),
        waited: Millis(3),
        channel: "ch".into(),
        uid: "a/b".into(),
        token: 1,
        deadline: crate::engine::Time(105),
        reply: Reply::Plain,
    };
    assert_eq!(
        encode(P, &go),
        [("coordinosaur/ch/go/a/b".into(), b"a/b".to_vec())]
    );
    let ex = Output::Expired {
        channel: "ch".into(),
        uid: "a".into(),
    };
    assert_eq!(
        encode(P, &ex),
        [("coordinosaur/ch/expired/a".into(), b"a".to_vec())]
    );
    let rej = Output::Rejected {
        kind: crate::engine::RejectKind::Policy,
        channel: "ch".into(),
        uid: "a".into(),
        reason: "no \"way\"".into(),
    };
    let (topic, body) = encode(P, &rej).pop().unwrap_or_default();
    assert_eq!(topic, "coordinosaur/ch/rejected/a");
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    assert_eq!(v, serde_json::json!({"uid": "a", "reason": "no \"way\""}));
    let ended = Output::Ended {
        channel: "ch".into(),
        uid: "a".into(),
        reason: crate::engine::EndReason::Finished,
        was_running: true,
    };
    assert_eq!(encode(P, &ended), []);
}

#[test]
fn daemon_wide_infos() {
    assert_eq!(dec("coordinosaur/infos", b""), Ok(Some(Input::InfosAll)));
    let out = Output::AllStates(Vec::new());
    assert_eq!(
        encode(P, &out),
        [("coordinosaur/state".into(), b"[]".to_vec())]
    );
}

#[test]
fn a_retained_request_is_refused_naming_the_uid_where_there_is_one() {
    let limits = DecodeLimits::default();
    let register = decode(
        P,
        "coordinosaur/ch/register",
        br#"{"uid":"r1","timeout":5}"#,
        &limits,
    )
    .unwrap()
    .unwrap();
    let r = retained(&register);
    assert_eq!(
        (r.channel.as_deref(), r.uid.as_deref()),
        (Some("ch"), Some("r1"))
    );
    assert_eq!(r.error, ProtocolError::Retained);
    assert!(r.to_output().is_some(), "rejected/r1 is published");
    let set = decode(P, "coordinosaur/ch/concurrency/set", b"3", &limits)
        .unwrap()
        .unwrap();
    let r = retained(&set);
    assert_eq!((r.channel.as_deref(), r.uid.as_deref()), (Some("ch"), None));
    assert!(r.error.to_string().contains("retain flag"));
}

/// A channel's state as the engine reports it, with `running` uids.
fn channel_state(name: &str, running: &[String]) -> crate::engine::ChannelState {
    crate::engine::ChannelState {
        channel: name.into(),
        max_concurrent_jobs: 1,
        timeout_offset_ms: 0,
        running: running.to_vec(),
        running_count: running.len(),
        running_units: None,
        waiting_jobs: None,
        shadow: None,
        running_jobs: running
            .iter()
            .enumerate()
            .map(|(i, uid)| crate::engine::RunningJob {
                uid: uid.clone(),
                token: i as u64 + 1,
                deadline: 1_795_000_060_000,
                cost: 1,
            })
            .collect(),
        waiting: 0,
        quotas: Vec::new(),
        next_window_opening: None,
        policy: None,
        quota_held_ms: 0,
        now: crate::engine::Time(1_795_000_000_000),
    }
}

#[test]
fn a_daemon_wide_state_that_fits_is_the_plain_array() {
    let states: Vec<_> = ["a", "b"].iter().map(|c| channel_state(c, &[])).collect();
    let out = encode_all_states(P, &states, 4096);
    assert_eq!(out.len(), 1);
    let (topic, body) = &out[0];
    assert_eq!(topic, "coordinosaur/state");
    assert_eq!(body, &serde_json::to_vec(&states).unwrap_or_default());
}

#[test]
fn a_large_daemon_wide_state_is_split_into_pages_of_at_most_max_bytes() {
    let states: Vec<_> = (0..200)
        .map(|i| channel_state(&format!("channel-{i:04}"), &[format!("job-{i}")]))
        .collect();
    let max = 4096;
    let out = encode_all_states(P, &states, max);
    assert!(out.len() > 5, "{} pages", out.len());
    let mut names = Vec::new();
    for (i, (topic, body)) in out.iter().enumerate() {
        assert_eq!(topic, "coordinosaur/state");
        assert!(body.len() <= max, "page {i}: {} bytes", body.len());
        let page: Value = serde_json::from_slice(body).unwrap_or_default();
        assert_eq!(page["page"], i + 1);
        assert_eq!(page["pages"], out.len());
        assert_eq!(page["now"], 1_795_000_000_000u64);
        for c in page["channels"].as_array().into_iter().flatten() {
            names.push(c["channel"].as_str().unwrap_or_default().to_owned());
        }
    }
    let expected: Vec<String> = states.iter().map(|s| s.channel.clone()).collect();
    assert_eq!(names, expected, "every channel once, in order");
}

#[test]
fn a_state_too_large_for_one_message_keeps_the_first_running_uids() {
    // 3,000 uids of 100 bytes: ~309 KB of JSON.
    let running: Vec<String> = (0..3_000).map(|i| format!("{i:0>100}")).collect();
    let state = channel_state("big", &running);
    let out = encode(P, &Output::State(state.clone()));
    let (_, body) = &out[0];
    assert!(body.len() <= MAX_STATE_MESSAGE, "{}", body.len());
    let v: Value = serde_json::from_slice(body).unwrap_or_default();
    assert_eq!(v["running_truncated"], true);
    assert_eq!(v["running_count"], 3_000);
    let kept = v["running"].as_array().map_or(0, Vec::len);
    assert!(kept > 1_000 && kept < 2_560, "{kept} kept");
    assert_eq!(
        v["running_jobs"].as_array().map_or(0, Vec::len),
        kept,
        "running_jobs is cut with running"
    );
    assert_eq!(v["running"][0], running[0]);
    // Within a page too, and a small one is left whole.
    let small = channel_state("small", &running[..3]);
    let pages = encode_all_states(P, &[state, small], 64 * 1024);
    assert_eq!(pages.len(), 2);
    assert!(pages.iter().all(|(_, b)| b.len() <= 64 * 1024));
    let last: Value = serde_json::from_slice(&pages[1].1).unwrap_or_default();
    assert_eq!(
        last["channels"][0]["running"]
            .as_array()
            .map_or(0, Vec::len),
        3
    );
    assert!(last["channels"][0].get("running_truncated").is_none());
}
