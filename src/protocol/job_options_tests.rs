//! The opt-in fields of `register`: `cost` (units in `state`) and `progress` (`position/{uid}`,
//! and the waiting jobs `infos` lists on request).

use serde_json::Value;

use super::*;
use crate::engine::{ChannelOptions, Engine, Registration, Time};

const P: &str = "coordinosaur";

fn dec(payload: &str) -> Result<Option<Input>, Rejection> {
    let topic = format!("{P}/ch/register");
    decode(P, &topic, payload.as_bytes(), &DecodeLimits::default())
}

fn registration(payload: &str) -> Registration {
    match dec(payload) {
        Ok(Some(Input::Register(r))) => r,
        other => panic!("{payload}: {other:?}"),
    }
}

#[test]
fn cost_defaults_to_one_and_stays_among_the_fields_policies_see() {
    let r = registration(r#"{"uid":"a","timeout":1}"#);
    assert_eq!((r.cost, r.meta), (1, None));
    let r = registration(r#"{"uid":"a","timeout":1,"cost":3,"tenant":"acme"}"#);
    assert_eq!(r.cost, 3);
    assert_eq!(r.meta.as_deref(), Some(r#"{"cost":3,"tenant":"acme"}"#));
    let r = registration(r#"{"uid":"a","timeout":1,"cost":4294967295}"#);
    assert_eq!(r.cost, u32::MAX);
}

#[test]
fn a_bad_cost_is_refused_naming_the_uid() {
    for bad in ["0", "-1", "1.5", "4294967296", r#""2""#, "null", "[2]"] {
        let payload = format!(r#"{{"uid":"a","timeout":1,"cost":{bad}}}"#);
        let err = dec(&payload).unwrap_err();
        assert_eq!(err.uid.as_deref(), Some("a"), "{bad}");
        assert!(matches!(err.error, ProtocolError::BadCost(_)), "{bad}");
        assert!(err
            .error
            .to_string()
            .starts_with("`cost` must be an integer from 1"));
        assert!(err.to_output().is_some(), "{bad}: rejected/a is published");
    }
}

/// `state` shows the units running; a job of cost 1 keeps `running_jobs` entries as before.
#[test]
fn state_shows_units_and_the_cost_of_heavy_jobs_only() {
    let o = ChannelOptions {
        max_concurrent_jobs: 5,
        ..ChannelOptions::default()
    };
    let mut e = Engine::new(Box::new(move |_| o.clone()));
    for (uid, cost) in [("h", 3), ("l", 1)] {
        let mut r = registration(&format!(r#"{{"uid":"{uid}","timeout":9}}"#));
        r.cost = cost;
        e.handle(Time(1_000), Input::Register(r));
    }
    let state = e.channel_state("ch").unwrap();
    let json: Value = serde_json::from_slice(&state_json(&state, MAX_STATE_MESSAGE)).unwrap();
    assert_eq!(json["running_count"], 2);
    assert_eq!(json["running_units"], 4);
    let jobs = json["running_jobs"].as_array().unwrap();
    let cost_of = |uid: &str| {
        jobs.iter()
            .find(|j| j["uid"] == uid)
            .map(|j| j.get("cost").cloned())
    };
    assert_eq!(cost_of("h"), Some(Some(Value::from(3))));
    assert_eq!(cost_of("l"), Some(None), "no `cost` key for a job of 1");
}

/// `position/{uid}` carries the fields the README names; `infos` with `{"jobs": true}` asks for
/// the waiting jobs, anything else does not; a listing too large for one message is cut.
#[test]
fn positions_and_listed_jobs_on_the_wire() {
    use crate::engine::{HeldBy, Position};
    let position = Position {
        uid: "j".into(),
        position: 3,
        waiting: 7,
        held_by: HeldBy::Quota("minute".into()),
        eta: Some(Time(1_795_000_000_000)),
    };
    let out = Output::Position {
        channel: "ch".into(),
        position: position.clone(),
    };
    let [(topic, body)] = &encode(P, &out)[..] else {
        panic!("one message")
    };
    assert_eq!(topic, "coordinosaur/ch/position/j");
    let v: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"uid": "j", "position": 3, "waiting": 7,
            "held_by": "quota:minute", "eta_ms": 1_795_000_000_000u64})
    );
    let infos = |payload: &[u8]| {
        decode(
            P,
            "coordinosaur/ch/infos",
            payload,
            &DecodeLimits::default(),
        )
        .unwrap()
    };
    assert_eq!(
        infos(br#"{"jobs": true}"#),
        Some(Input::InfosJobs {
            channel: "ch".into()
        })
    );
    for other in [&b""[..], b"jobs", br#"{"jobs": 1}"#, br#"{"jobs": false}"#] {
        assert_eq!(
            infos(other),
            Some(Input::Infos {
                channel: "ch".into()
            })
        );
    }
    assert_eq!(
        decode(
            P,
            "coordinosaur/ch/position/j",
            b"{}",
            &DecodeLimits::default()
        ),
        Ok(None),
        "our own publish is ignored"
    );
    // 100 jobs with 4 KiB uids do not fit in 256 KiB: the list is cut, and says so.
    let o = ChannelOptions::default();
    let mut e = Engine::new(Box::new(move |_| o.clone()));
    let mut state = e.channel_state("ch").unwrap_or_else(|| {
        e.handle(
            Time(0),
            Input::Infos {
                channel: "ch".into(),
            },
        );
        match e.poll_output() {
            Some(Output::State(s)) => s,
            other => panic!("{other:?}"),
        }
    });
    let big = |i: usize| Position {
        uid: format!("{i:04}{}", "x".repeat(4_096)),
        ..position.clone()
    };
    state.waiting_jobs = Some((0..100).map(big).collect());
    let body = state_json(&state, MAX_STATE_MESSAGE);
    assert!(body.len() <= MAX_STATE_MESSAGE, "{}", body.len());
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["waiting_jobs_truncated"], true);
    let listed = v["waiting_jobs"].as_array().unwrap().len();
    assert!((50..100).contains(&listed), "{listed}");
}

#[test]
fn a_bad_progress_is_refused_naming_the_uid() {
    assert!(registration(r#"{"uid":"a","timeout":1,"progress":true}"#).progress);
    assert!(!registration(r#"{"uid":"a","timeout":1}"#).progress);
    let r = registration(r#"{"uid":"a","timeout":1,"progress":false,"t":1}"#);
    assert_eq!(r.meta.as_deref(), Some(r#"{"t":1}"#), "not a policy field");
    for bad in ["1", r#""yes""#, "null"] {
        let err = dec(&format!(r#"{{"uid":"a","timeout":1,"progress":{bad}}}"#)).unwrap_err();
        assert_eq!(err.uid.as_deref(), Some("a"));
        assert!(matches!(err.error, ProtocolError::BadProgress(_)), "{bad}");
    }
}
