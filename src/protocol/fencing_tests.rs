//! The opt-in fencing fields: `reply` on register, `token` on finished, aborted and renew, and
//! the JSON `go`.

use serde_json::Value;

use super::*;
use crate::engine::{Registration, Reply, StaleAction, Time};

const P: &str = "coordinosaur";

fn dec(action: &str, payload: &str) -> Result<Option<Input>, Rejection> {
    let topic = format!("{P}/ch/{action}");
    decode(P, &topic, payload.as_bytes(), &DecodeLimits::default())
}

fn registration(payload: &str) -> Registration {
    match dec("register", payload) {
        Ok(Some(Input::Register(r))) => r,
        other => panic!("{payload}: {other:?}"),
    }
}

#[test]
fn reply_json_is_taken_out_of_the_fields_policies_see() {
    let r = registration(r#"{"uid":"a","timeout":1,"reply":"json","tenant":"acme"}"#);
    assert_eq!(r.reply, Reply::Json);
    assert_eq!(r.meta.as_deref(), Some(r#"{"tenant":"acme"}"#));
    let r = registration(r#"{"uid":"a","timeout":1,"reply":"json"}"#);
    assert_eq!((r.reply, r.meta), (Reply::Json, None));
    assert_eq!(
        registration(r#"{"uid":"a","timeout":1,"reply":"plain"}"#).reply,
        Reply::Plain
    );
    assert_eq!(
        registration(r#"{"uid":"a","timeout":1}"#).reply,
        Reply::Plain
    );
}

#[test]
fn an_unknown_reply_is_refused_naming_the_uid() {
    for bad in [r#""xml""#, "true", "1", r#"["json"]"#] {
        let payload = format!(r#"{{"uid":"a","timeout":1,"reply":{bad}}}"#);
        let e = dec("register", &payload).expect_err(bad);
        assert_eq!(e.uid.as_deref(), Some("a"), "{bad}");
        assert!(matches!(e.error, ProtocolError::BadReply(_)), "{bad}");
        assert!(e.error.to_string().contains("\"json\""), "{}", e.error);
    }
}

#[test]
fn finished_and_aborted_take_a_token_in_json_and_the_plain_uid_as_before() {
    let end = |action: &str, payload: &str| match dec(action, payload) {
        Ok(Some(Input::Finished { uid, token, .. } | Input::Aborted { uid, token, .. })) => {
            (uid, token)
        }
        other => panic!("{payload}: {other:?}"),
    };
    assert_eq!(
        end("finished", r#"{"uid":"a","token":7}"#),
        ("a".into(), Some(7))
    );
    assert_eq!(
        end("aborted", r#"{"uid":42,"token":7}"#),
        ("42".into(), Some(7))
    );
    assert_eq!(end("finished", r#"{"uid":"a"}"#), ("a".into(), None));
    assert_eq!(
        end("finished", r#"{"uid":"a","token":null}"#),
        ("a".into(), None)
    );
    // Not a JSON object with a uid: the payload is the uid, as in the original protocol.
    for plain in ["a", "{not json", r#"{"id":"a"}"#, "[1]", "7"] {
        assert_eq!(end("finished", plain), (plain.into(), None), "{plain}");
    }
}

#[test]
fn a_bad_token_is_refused_naming_the_uid() {
    for (action, payload) in [
        ("finished", r#"{"uid":"a","token":-1}"#),
        ("aborted", r#"{"uid":"a","token":"7"}"#),
        ("finished", r#"{"uid":"a","token":1.5}"#),
        ("renew", r#"{"uid":"a","timeout":1,"token":true}"#),
    ] {
        let e = dec(action, payload).expect_err(payload);
        assert_eq!(e.uid.as_deref(), Some("a"), "{payload}");
        assert!(matches!(e.error, ProtocolError::BadToken(_)), "{payload}");
    }
    let e = dec("finished", r#"{"uid":"a+b","token":1}"#).expect_err("bad uid");
    assert!(matches!(e.error, ProtocolError::BadUid(_)));
}

#[test]
fn renew_takes_a_token() {
    assert_eq!(
        dec("renew", r#"{"uid":"a","timeout":5,"token":3}"#),
        Ok(Some(Input::Renew {
            channel: "ch".into(),
            uid: "a".into(),
            timeout: Millis(5_000),
            token: Some(3),
        }))
    );
}

#[test]
fn a_json_go_carries_uid_token_lease_and_deadline() {
    let go = |reply| Output::Go {
        channel: "ch".into(),
        uid: "a/b".into(),
        seq: 0,
        at: Time(1_700_000_000_000),
        waited: Millis(3),
        token: 42,
        deadline: Time(1_700_000_030_000),
        reply,
    };
    let (topic, body) = encode(P, &go(Reply::Json)).remove(0);
    assert_eq!(topic, "coordinosaur/ch/go/a/b");
    assert_eq!(
        String::from_utf8(body).unwrap(),
        r#"{"uid":"a/b","token":42,"lease_ms":30000,"deadline_ms":1700000030000}"#
    );
    assert_eq!(encode(P, &go(Reply::Plain))[0].1, b"a/b");
}

/// A `go` said again keeps the token and gives what remains of the lease.
#[test]
fn a_json_go_said_again_gives_the_remaining_lease() {
    let again = Output::GoAgain {
        channel: "ch".into(),
        uid: "a".into(),
        seq: 0,
        granted_at: Some(Time(1_000)),
        token: 9,
        deadline: Time(31_000),
        remaining: Millis(12_000),
        reply: Reply::Json,
    };
    let (_, body) = encode(P, &again).remove(0);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"uid": "a", "token": 9, "lease_ms": 12_000, "deadline_ms": 31_000})
    );
}

#[test]
fn a_stale_report_is_not_published() {
    let stale = Output::Stale {
        channel: "ch".into(),
        uid: "a".into(),
        action: StaleAction::Finished,
        token: 1,
        live: Some(2),
    };
    assert!(encode(P, &stale).is_empty());
    assert_eq!(
        request_topic(P, "ch", StaleAction::Renew.as_str()),
        "coordinosaur/ch/renew"
    );
}

#[test]
fn a_retained_finished_with_a_token_is_refused_naming_the_uid() {
    let input = dec("finished", r#"{"uid":"a","token":1}"#)
        .unwrap()
        .unwrap();
    assert_eq!(retained(&input).uid.as_deref(), Some("a"));
}
