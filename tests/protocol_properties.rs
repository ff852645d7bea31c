//! Property tests of the wire decoder: whatever arrives, it answers with an input or a rejection,
//! never a panic, and what it accepts is well formed. `finished` and `aborted` take the plain uid
//! or a JSON object with `uid` and `token`.

use coordinosaur::engine::Input;
use coordinosaur::protocol::{decode, encode, DecodeLimits};
use proptest::prelude::*;
use serde_json::{Map, Value};

const PREFIX: &str = "coordinosaur";

/// Topics near the grammar: the prefix, a channel, an action (known or not), extra levels.
fn topic() -> impl Strategy<Value = String> {
    let action = prop_oneof![
        Just("register".to_owned()),
        Just("finished".to_owned()),
        Just("aborted".to_owned()),
        Just("renew".to_owned()),
        Just("infos".to_owned()),
        Just("concurrency/set".to_owned()),
        Just("go/x".to_owned()),
        Just("state".to_owned()),
        "[a-z/]{0,12}",
        any::<String>(),
    ];
    (
        prop_oneof![Just(PREFIX.to_owned()), any::<String>()],
        "[^/]{0,8}",
        action,
    )
        .prop_map(|(p, c, a)| format!("{p}/{c}/{a}"))
}

/// Payloads near the grammar: JSON objects with odd uid and timeout values, plain text, raw bytes.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        "\"[^\"\\\\]{0,20}\"",
        Just("[1,2]".to_owned()),
        Just("{\"a\":1}".to_owned()),
    ];
    prop_oneof![
        (value.clone(), value.clone())
            .prop_map(|(u, t)| format!("{{\"uid\":{u},\"timeout\":{t}}}").into_bytes()),
        (value.clone(), value)
            .prop_map(|(u, t)| format!("{{\"uid\":{u},\"token\":{t}}}").into_bytes()),
        any::<String>().prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn decode_never_panics_and_accepts_only_well_formed_inputs(topic in topic(), payload in payload()) {
        let limits = DecodeLimits::default();
        match decode(PREFIX, &topic, &payload, &limits) {
            Ok(Some(Input::Register(r))) => {
                prop_assert!(!r.uid.is_empty() && !r.uid.contains(['+', '#', '\0']));
                prop_assert!(r.timeout <= limits.max_timeout);
                prop_assert!(std::str::from_utf8(&payload).is_ok(), "accepted non-UTF-8");
            }
            Ok(Some(Input::Finished { uid, token, .. } | Input::Aborted { uid, token, .. })) => {
                prop_assert!(!uid.is_empty() && !uid.contains(['+', '#', '\0']));
                let object = payload
                    .starts_with(b"{")
                    .then(|| serde_json::from_slice::<Map<String, Value>>(&payload).ok())
                    .flatten()
                    .filter(|o| o.contains_key("uid"));
                match object {
                    // A JSON object with a uid: its uid (a string, or an integer's text).
                    Some(o) => {
                        let sent = match &o["uid"] {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        prop_assert_eq!(&uid, &sent);
                        prop_assert_eq!(token, o.get("token").and_then(Value::as_u64));
                    }
                    None => {
                        prop_assert_eq!(uid.as_bytes(), &payload[..], "the uid is the payload, unaltered");
                        prop_assert_eq!(token, None);
                    }
                }
            }
            Ok(_) => {}
            Err(rejection) => {
                // A rejection that can be answered encodes to a rejected/{uid} message.
                if let Some(out) = rejection.to_output() {
                    let encoded = encode(PREFIX, &out);
                    prop_assert!(matches!(&encoded[..], [(t, _)] if t.contains("/rejected/")));
                }
            }
        }
    }
}
