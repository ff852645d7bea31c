//! Fencing tokens, driven with injected time.

use super::*;

const T: Time = Time(1_000_000);

fn engine(max: u32) -> Engine {
    let o = ChannelOptions {
        max_concurrent_jobs: max,
        ..ChannelOptions::default()
    };
    let mut e = Engine::new(Box::new(move |_| o.clone()));
    e.record_changes(true);
    e
}

fn register(e: &mut Engine, at: Time, channel: &str, uid: &str, reply: Reply) {
    let reg = Registration {
        reply,
        ..Registration::new(channel, uid, Millis(1_000))
    };
    e.handle(at, Input::Register(reg));
}

fn finished(channel: &str, uid: &str, token: Option<u64>) -> Input {
    Input::Finished {
        channel: channel.into(),
        uid: uid.into(),
        token,
    }
}

fn drain(e: &mut Engine) -> Vec<Output> {
    std::iter::from_fn(|| e.poll_output()).collect()
}

/// `(uid, token)` of every `Go` in `out`.
fn tokens(out: &[Output]) -> Vec<(String, u64)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Go { uid, token, .. } => Some((uid.to_string(), *token)),
            _ => None,
        })
        .collect()
}

fn stale(uid: &str, action: StaleAction, token: u64, live: Option<u64>) -> Output {
    Output::Stale {
        channel: "c".into(),
        uid: uid.into(),
        action,
        token,
        live,
    }
}

/// Folds everything the engine recorded into `snap`.
fn fold(e: &mut Engine, snap: &mut Snapshot) {
    let mut changes = Vec::new();
    e.take_changes(&mut changes);
    for c in changes {
        snap.apply(c);
    }
}

#[test]
fn tokens_increase_per_channel_and_each_channel_counts_its_own() {
    let mut e = engine(1);
    for (i, uid) in ["a", "b", "c"].into_iter().enumerate() {
        register(&mut e, T, "c", uid, Reply::Plain);
        register(&mut e, T, "d", uid, Reply::Plain);
        let at = T + Millis(i as u64);
        e.handle(at, finished("c", uid, None));
        e.handle(at, finished("d", uid, None));
    }
    let out = drain(&mut e);
    let by = |ch: &str| -> Vec<u64> {
        out.iter()
            .filter_map(|o| match o {
                Output::Go { channel, token, .. } if &**channel == ch => Some(*token),
                _ => None,
            })
            .collect()
    };
    assert_eq!(by("c"), [1, 2, 3]);
    assert_eq!(by("d"), [1, 2, 3]);
}

/// The lease of `a` (token 1) runs out and `a` registers again and is granted (token 2). The
/// first holder's late `finished` carries token 1: it must not end the second grant.
#[test]
fn a_late_finished_of_an_expired_grant_does_not_end_the_uids_new_grant() {
    let mut e = engine(1);
    register(&mut e, T, "c", "a", Reply::Plain);
    e.handle_timeout(T + Millis(1_000));
    register(&mut e, T + Millis(1_001), "c", "a", Reply::Plain);
    let out = drain(&mut e);
    assert_eq!(tokens(&out), [("a".into(), 1), ("a".into(), 2)]);
    assert!(matches!(out[1], Output::Expired { .. }));
    let mut changes = Vec::new();
    e.take_changes(&mut changes);
    changes.clear();

    e.handle(T + Millis(1_500), finished("c", "a", Some(1)));
    assert_eq!(
        drain(&mut e),
        [stale("a", StaleAction::Finished, 1, Some(2))]
    );
    assert_eq!(e.running("c"), [("a".into(), T + Millis(2_001))]);
    // Nothing durable changed.
    e.take_changes(&mut changes);
    assert_eq!(changes, []);

    // The live holder's own `finished` still works, and so does one without a token.
    e.handle(T + Millis(1_600), finished("c", "a", Some(2)));
    assert!(matches!(
        drain(&mut e)[..],
        [Output::Ended {
            was_running: true,
            ..
        }]
    ));
    assert!(e.running("c").is_empty());
}

/// `a` (token 1) expires, its slot goes to `b` (token 2), and `a` registers again and waits.
/// The first holder's late `finished` and `aborted` must neither free `b`'s slot nor cancel the
/// new registration of `a`.
#[test]
fn a_late_finished_leaves_the_successor_running_and_the_re_registered_uid_waiting() {
    let mut e = engine(1);
    register(&mut e, T, "c", "a", Reply::Plain);
    register(&mut e, T, "c", "b", Reply::Plain);
    e.handle_timeout(T + Millis(1_000));
    register(&mut e, T + Millis(1_001), "c", "a", Reply::Plain);
    assert_eq!(tokens(&drain(&mut e)), [("a".into(), 1), ("b".into(), 2)]);

    e.handle(T + Millis(1_002), finished("c", "a", Some(1)));
    let aborted = Input::Aborted {
        channel: "c".into(),
        uid: "a".into(),
        token: Some(1),
    };
    e.handle(T + Millis(1_003), aborted);
    // `b`'s token is not `a`'s either.
    e.handle(T + Millis(1_004), finished("c", "a", Some(2)));
    assert_eq!(
        drain(&mut e),
        [
            stale("a", StaleAction::Finished, 1, None),
            stale("a", StaleAction::Aborted, 1, None),
            stale("a", StaleAction::Finished, 2, None),
        ]
    );
    assert_eq!(e.running("c"), [("b".into(), T + Millis(2_000))]);
    assert_eq!(e.waiting("c"), ["a".into()] as [Arc<str>; 1]);
}

#[test]
fn a_renew_with_a_stale_token_is_rejected_and_leaves_the_lease_alone() {
    let mut e = engine(1);
    register(&mut e, T, "c", "a", Reply::Plain);
    e.handle_timeout(T + Millis(1_000));
    register(&mut e, T + Millis(1_001), "c", "a", Reply::Plain);
    drain(&mut e);
    let renew = |token| Input::Renew {
        channel: "c".into(),
        uid: "a".into(),
        timeout: Millis(60_000),
        token,
    };
    e.handle(T + Millis(1_100), renew(Some(1)));
    let out = drain(&mut e);
    assert!(
        matches!(&out[..], [Output::Rejected { kind: RejectKind::Renew, reason, .. }, s]
            if reason.contains("token 1") && *s == stale("a", StaleAction::Renew, 1, Some(2))),
        "{out:?}"
    );
    assert_eq!(e.running("c"), [("a".into(), T + Millis(2_001))]);
    e.handle(T + Millis(1_200), renew(Some(2)));
    assert_eq!(drain(&mut e), []);
    assert_eq!(e.running("c"), [("a".into(), T + Millis(61_200))]);
}

/// Tokens come back from the journal: a restored channel goes on from its last token, the `go`
/// said again repeats the grant's token and reply, and `state` lists the tokens.
#[test]
fn tokens_and_replies_survive_a_restore() {
    let mut e = engine(2);
    register(&mut e, T, "c", "a", Reply::Plain);
    e.handle(T, finished("c", "a", None));
    register(&mut e, T, "c", "b", Reply::Json);
    register(&mut e, T, "c", "w", Reply::Plain);
    register(&mut e, T, "c", "x", Reply::Plain);
    assert_eq!(
        tokens(&drain(&mut e)),
        [("a".into(), 1), ("b".into(), 2), ("w".into(), 3)]
    );
    let mut snap = Snapshot::default();
    fold(&mut e, &mut snap);
    assert_eq!(snap.channels["c"].last_token, 3);
    assert_eq!(e.export().channels["c"].jobs, snap.channels["c"].jobs);

    let mut r = engine(2);
    r.restore(T + Millis(10), snap, &mut NoPolicies);
    r.redeliver();
    let again = drain(&mut r);
    assert!(again.contains(&Output::GoAgain {
        channel: "c".into(),
        uid: "b".into(),
        seq: 1,
        granted_at: Some(T),
        token: 2,
        deadline: T + Millis(1_000),
        remaining: Millis(990),
        reply: Reply::Json,
    }));
    let state = r.channel_state("c").unwrap();
    let listed: Vec<(&str, u64)> = state
        .running_jobs
        .iter()
        .map(|j| (j.uid.as_str(), j.token))
        .collect();
    assert_eq!(listed, [("b", 2), ("w", 3)]);
    r.handle(T + Millis(20), finished("c", "w", Some(3)));
    assert_eq!(tokens(&drain(&mut r)), [("x".into(), 4)]);
}

/// A channel left with nothing durable is dropped from the snapshot, by the engine's export
/// and by the fold's trim alike; its last token stays in the floor, so the channel, created
/// again after a restart, hands out higher tokens. A channel the snapshot keeps goes on from
/// its own last token.
#[test]
fn a_channel_dropped_from_the_snapshot_never_hands_out_a_lower_token() {
    let mut e = engine(1);
    for uid in ["a", "b", "c", "d", "e"] {
        register(&mut e, T, "busy", uid, Reply::Plain);
        e.handle(T, finished("busy", uid, None));
    }
    register(&mut e, T, "kept", "k", Reply::Plain);
    drain(&mut e);

    let exported = e.export();
    assert!(!exported.channels.contains_key("busy"));
    assert_eq!(exported.token_floor, 5);
    let mut folded = Snapshot::default();
    fold(&mut e, &mut folded);
    folded.trim(|_| 0);
    assert!(!folded.channels.contains_key("busy"));
    assert_eq!(folded.token_floor, 5);

    for snap in [exported, folded] {
        let mut r = engine(1);
        r.restore(T + Millis(1), snap, &mut NoPolicies);
        register(&mut r, T + Millis(2), "busy", "f", Reply::Plain);
        register(&mut r, T + Millis(2), "new", "n", Reply::Plain);
        r.handle(T + Millis(3), finished("kept", "k", Some(1)));
        register(&mut r, T + Millis(4), "kept", "l", Reply::Plain);
        assert_eq!(
            tokens(&drain(&mut r)),
            [("f".into(), 6), ("n".into(), 6), ("l".into(), 2)]
        );
        // And through a second restart, with `busy` in the snapshot this time.
        let again = r.export();
        assert_eq!(again.channels["busy"].last_token, 6);
        let mut r2 = engine(1);
        r2.restore(T + Millis(5), again, &mut NoPolicies);
        r2.handle(T + Millis(6), finished("busy", "f", None));
        register(&mut r2, T + Millis(6), "busy", "g", Reply::Plain);
        assert_eq!(tokens(&drain(&mut r2)), [("g".into(), 7)]);
    }
}

/// A floor in the fold also covers a channel that comes back within the same journal: its new
/// entry starts at the floor, as the engine's channel does.
#[test]
fn a_channel_recreated_after_a_trim_folds_from_the_floor() {
    let mut snap = Snapshot {
        token_floor: 9,
        ..Snapshot::default()
    };
    snap.apply(Change::Concurrency {
        channel: "c".into(),
        configured: 1,
        max: 3,
    });
    assert_eq!(snap.channels["c"].last_token, 9);
    let mut r = engine(1);
    r.restore(T, snap, &mut NoPolicies);
    register(&mut r, T, "c", "a", Reply::Plain);
    assert_eq!(tokens(&drain(&mut r)), [("a".into(), 10)]);
}
