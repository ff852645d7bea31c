//! The repeated-`go` schedule with injected time.

use super::*;
use crate::engine::{ChannelOptions, Input, Output, Registration, Snapshot};

const T0: Time = Time(1_000_000);

fn engine() -> Engine {
    let opts = ChannelOptions {
        max_concurrent_jobs: 2,
        ..ChannelOptions::default()
    };
    Engine::new(Box::new(move |_| opts.clone()))
}

fn register(e: &mut Engine, now: Time, uid: &str) {
    e.handle(
        now,
        Input::Register(Registration {
            channel: "c".into(),
            uid: uid.into(),
            timeout: Millis(60_000),
            priority: 0,
            meta: None,
            reply: Default::default(),
            cost: 1,
            progress: false,
        }),
    );
}

fn again(e: &mut Engine) -> Vec<String> {
    std::iter::from_fn(|| e.poll_output())
        .filter_map(|o| match o {
            Output::GoAgain { uid, .. } => Some(uid.to_string()),
            _ => None,
        })
        .collect()
}

/// An engine restored after a crash with one running job whose `go` was never acknowledged.
fn restored() -> Engine {
    let mut before = engine();
    before.record_changes(true);
    register(&mut before, T0, "a");
    let mut changes = Vec::new();
    before.take_changes(&mut changes);
    let mut snap = Snapshot::default();
    for c in changes {
        snap.apply(c);
    }
    let mut e = engine();
    e.restore(T0 + Millis(5_000), snap, &mut crate::engine::NoPolicies);
    let _ = std::iter::from_fn(|| e.poll_output()).count();
    e
}

#[test]
fn after_a_restart_go_is_said_again_once_the_marker_is_back() {
    let mut e = restored();
    let mut r = Resend::default();
    let t = T0 + Millis(5_000);
    assert_eq!(
        r.handle_connected(t, false, 0, &mut e),
        None,
        "a first connect loses nothing"
    );
    assert_eq!(
        r.next_deadline(&e),
        Some(t + SYNC_PATIENCE),
        "only the give-up time"
    );
    assert_eq!(r.handle_timeout(t + Millis(100), &mut e), None);
    r.handle_synced();
    let due = r.next_deadline(&e).unwrap();
    assert!(due <= t + Millis(200), "due at once: {due:?}");
    assert_eq!(
        r.handle_timeout(t + Millis(200), &mut e),
        Some(Resent { synced: true })
    );
    assert_eq!(again(&mut e), ["a"]);
    assert_eq!(r.next_deadline(&e), None, "said once");
}

#[test]
fn without_the_marker_go_is_said_again_at_the_give_up_time() {
    let mut e = restored();
    let mut r = Resend::default();
    let t = T0 + Millis(5_000);
    r.handle_connected(t, true, 0, &mut e);
    let give_up = t + SYNC_PATIENCE;
    assert_eq!(r.handle_timeout(Time(give_up.0 - 1), &mut e), None);
    assert_eq!(
        r.handle_timeout(give_up, &mut e),
        Some(Resent { synced: false })
    );
    assert_eq!(again(&mut e), ["a"]);
}

/// After the broker lost the session, only unacknowledged grants are marked, and they wait
/// for the workers' grace even when the marker is back at once.
#[test]
fn a_lost_session_marks_unacknowledged_grants_and_waits_for_the_grace() {
    let mut e = engine();
    register(&mut e, T0, "a");
    register(&mut e, T0, "b");
    e.handle(
        T0,
        Input::Delivered {
            channel: "c".into(),
            uid: "a".into(),
            seq: 0,
        },
    );
    let _ = std::iter::from_fn(|| e.poll_output()).count();
    let mut r = Resend::default();
    assert_eq!(r.handle_connected(T0, true, 0, &mut e), None);
    assert_eq!(r.next_deadline(&e), None, "nothing awaits a repeat");
    let t = T0 + Millis(3_000);
    assert_eq!(
        r.handle_connected(t, false, 0, &mut e),
        Some(LostSession { unacknowledged: 1 })
    );
    r.handle_synced();
    assert_eq!(r.next_deadline(&e), Some(t + RESUBSCRIBE_GRACE));
    assert_eq!(r.handle_timeout(t + Millis(999), &mut e), None);
    assert!(r.handle_timeout(t + RESUBSCRIBE_GRACE, &mut e).is_some());
    assert_eq!(again(&mut e), ["b"]);
}

/// A session the broker kept loses nothing: no repeat at all.
#[test]
fn a_resumed_session_repeats_nothing() {
    let mut e = engine();
    register(&mut e, T0, "a");
    let mut r = Resend::default();
    r.handle_connected(T0, false, 0, &mut e);
    assert_eq!(r.handle_connected(T0 + Millis(10), true, 0, &mut e), None);
    r.handle_synced();
    assert_eq!(r.next_deadline(&e), None);
}

/// A resumed session whose in-flight `go`s the adapter withheld from rumqttc's resends: the
/// jobs still running and unacknowledged hear `go` again once the marker is back (at once: the
/// workers kept their sessions); a job that finished meanwhile does not.
#[test]
fn withheld_resends_are_said_again_after_the_marker_only_to_running_jobs() {
    let mut e = engine();
    register(&mut e, T0, "a");
    register(&mut e, T0, "b");
    let _ = std::iter::from_fn(|| e.poll_output()).count();
    let mut r = Resend::default();
    r.handle_connected(T0, false, 0, &mut e);
    let t = T0 + Millis(3_000);
    assert_eq!(
        r.handle_connected(t, true, 2, &mut e),
        None,
        "not a lost session"
    );
    // The broker had `a`'s finished queued for us: read before the marker.
    e.handle(
        t,
        Input::Finished {
            channel: "c".into(),
            uid: "a".into(),
            token: None,
        },
    );
    let _ = std::iter::from_fn(|| e.poll_output()).count();
    assert_eq!(
        r.next_deadline(&e),
        Some(t + SYNC_PATIENCE),
        "waits for the marker"
    );
    r.handle_synced();
    assert_eq!(r.next_deadline(&e), Some(Time(0)), "then at once");
    assert!(r.handle_timeout(t, &mut e).is_some());
    assert_eq!(again(&mut e), ["b"]);
}
