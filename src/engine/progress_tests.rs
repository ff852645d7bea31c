//! Queue position, ETA and the reason a job waits, driven with injected time.

use std::path::Path;

use super::test_support::engine;
use super::*;

const T: Time = Time(1_000_000);

fn register(e: &mut Engine, at: Time, uid: &str, progress: bool) {
    let reg = Registration {
        progress,
        ..Registration::new("c", uid, Millis(10_000))
    };
    e.handle(at, Input::Register(reg));
}

fn finished(e: &mut Engine, at: Time, uid: &str) {
    let input = Input::Finished {
        channel: "c".into(),
        uid: uid.into(),
        token: None,
    };
    e.handle(at, input);
}

fn drain(e: &mut Engine) -> Vec<Output> {
    std::iter::from_fn(|| e.poll_output()).collect()
}

fn positions(out: &[Output]) -> Vec<Position> {
    out.iter()
        .filter_map(|o| match o {
            Output::Position { position, .. } => Some(position.clone()),
            _ => None,
        })
        .collect()
}

fn pos(uid: &str, position: usize, waiting: usize, held_by: HeldBy, eta: Option<Time>) -> Position {
    Position {
        uid: uid.into(),
        position,
        waiting,
        held_by,
        eta,
    }
}

#[test]
fn only_jobs_that_ask_are_told_and_first_on_register() {
    let mut e = engine(1, &[]);
    register(&mut e, T, "run", false);
    register(&mut e, T, "quiet", false);
    register(&mut e, T, "asks", true);
    let out = drain(&mut e);
    // Nobody has run yet: no run time to estimate from, and a slot is what it waits for.
    assert_eq!(
        positions(&out),
        [pos("asks", 2, 2, HeldBy::Concurrency, None)]
    );
}

/// Where quota windows bound the wait, the ETA is the instant the windows admit the job, and
/// the job is granted then.
#[test]
fn a_quota_bound_eta_is_exact() {
    let mut e = engine(10, &[(1_000, 2)]);
    register(&mut e, T, "a", false);
    register(&mut e, T + Millis(300), "b", false);
    register(&mut e, T + Millis(400), "c", true);
    register(&mut e, T + Millis(400), "d", true);
    let q = HeldBy::Quota("q1000".into());
    assert_eq!(
        positions(&drain(&mut e)),
        [
            pos("c", 1, 1, q.clone(), Some(T + Millis(1_001))),
            pos("d", 2, 2, q.clone(), Some(T + Millis(1_301))),
        ]
    );
    let due = e.next_deadline();
    assert_eq!(due, Some(T + Millis(1_001)));
    e.handle_timeout(T + Millis(1_001));
    let out = drain(&mut e);
    assert!(
        matches!(&out[0], Output::Go { uid, at, .. } if &**uid == "c" && *at == T + Millis(1_001))
    );
    // `d` moved to 1; it was told less than a second ago, so that waits for the next sweep.
    assert!(positions(&out).is_empty());
    e.handle_timeout(T + Millis(1_300));
    assert!(
        positions(&drain(&mut e)).is_empty(),
        "still within its second"
    );
    e.handle_timeout(T + Millis(1_301));
    let out = drain(&mut e);
    assert!(
        matches!(&out[0], Output::Go { uid, .. } if &**uid == "d"),
        "{out:?}"
    );
}

/// Where concurrency bounds the wait, the ETA is estimated from the channel's recent run times.
#[test]
fn a_concurrency_bound_eta_is_estimated_from_recent_runs() {
    let mut e = engine(1, &[]);
    for (i, uid) in ["r1", "r2"].into_iter().enumerate() {
        register(&mut e, T + Millis(i as u64 * 1_000), uid, false);
        finished(&mut e, T + Millis(i as u64 * 1_000 + 400), uid);
    }
    // Runs took 400 ms. `now` runs from 3_000; `w1` and `w2` wait behind it.
    register(&mut e, T + Millis(3_000), "now", false);
    register(&mut e, T + Millis(3_100), "w1", true);
    register(&mut e, T + Millis(3_100), "w2", true);
    let c = HeldBy::Concurrency;
    assert_eq!(
        positions(&drain(&mut e)),
        [
            pos("w1", 1, 1, c.clone(), Some(T + Millis(3_400))),
            pos("w2", 2, 2, c.clone(), Some(T + Millis(3_800))),
        ]
    );
}

#[test]
fn a_paused_channel_says_so_with_no_eta() {
    let mut e = engine(0, &[]);
    register(&mut e, T, "a", true);
    assert_eq!(
        positions(&drain(&mut e)),
        [pos("a", 1, 1, HeldBy::Paused, None)]
    );
}

/// At most one message a second per job: a change within the second is told when it is over,
/// as things then stand; an unchanged position is not told again.
#[test]
fn a_job_is_told_at_most_once_a_second() {
    let mut e = engine(1, &[]);
    register(&mut e, T, "run", false);
    for uid in ["a", "b", "c"] {
        register(&mut e, T, uid, true);
    }
    assert_eq!(positions(&drain(&mut e)).len(), 3);
    finished(&mut e, T + Millis(100), "run");
    finished(&mut e, T + Millis(200), "a");
    let out = drain(&mut e);
    assert!(positions(&out).is_empty(), "told at T: {out:?}");
    assert_eq!(e.next_deadline(), Some(T + Millis(1_000)));
    e.handle_timeout(T + Millis(1_000));
    let told = positions(&drain(&mut e));
    // `b` runs; `c` moved from 3 to 1.
    assert_eq!(told.len(), 1);
    assert_eq!((told[0].uid.as_str(), told[0].position), ("c", 1));
    assert_eq!(
        e.next_deadline(),
        Some(T + Millis(10_200)),
        "nothing left to tell"
    );
    e.handle_timeout(T + Millis(5_000));
    assert!(positions(&drain(&mut e)).is_empty());
}

/// One grant moves every job behind it; the head positions are told at once, the rest at the
/// sweep a second later, never more than the cap per event.
#[test]
fn one_grant_in_a_long_queue_costs_a_bounded_number_of_messages() {
    let n = 500;
    let mut e = engine(1, &[]);
    register(&mut e, T, "run", false);
    for i in 0..n {
        register(&mut e, T, &format!("w{i:04}"), true);
    }
    assert_eq!(positions(&drain(&mut e)).len(), n, "each first message");
    // A second later: nothing changed, nothing told.
    e.handle_timeout(T + Millis(1_000));
    assert!(positions(&drain(&mut e)).is_empty());
    finished(&mut e, T + Millis(1_500), "run");
    let told = positions(&drain(&mut e));
    assert!(told.len() <= MAX_POSITIONS_PER_EVENT, "{}", told.len());
    let mut total = told.len();
    let mut t = T + Millis(1_500);
    let mut rounds = 0;
    while let Some(next) = e.next_deadline().filter(|d| *d < T + Millis(10_000)) {
        assert!(
            next >= t + PROGRESS_INTERVAL || rounds == 0,
            "{next:?} after {t:?}"
        );
        t = next;
        e.handle_timeout(t);
        let told = positions(&drain(&mut e));
        assert!(told.len() <= MAX_POSITIONS_PER_EVENT, "{}", told.len());
        total += told.len();
        rounds += 1;
    }
    assert_eq!(
        total,
        n - 1,
        "each job still waiting told its new position once"
    );
}

/// A restart keeps the wish: the restored waiting job is told its position again.
#[test]
fn progress_survives_a_restart() {
    let mut e = engine(1, &[]);
    register(&mut e, T, "run", false);
    register(&mut e, T, "w", true);
    drain(&mut e);
    let mut changes = Vec::new();
    e.take_changes(&mut changes);
    let mut snap = Snapshot::default();
    for c in changes {
        snap.apply(c);
    }
    assert!(snap.channels["c"].jobs.values().any(|j| j.progress));
    assert_eq!(snap.channels["c"].jobs, e.export().channels["c"].jobs);
    let mut r = engine(1, &[]);
    r.restore(T + Millis(10), snap, &mut NoPolicies);
    r.handle_timeout(T + Millis(10));
    assert_eq!(
        positions(&drain(&mut r)),
        [pos("w", 1, 1, HeldBy::Concurrency, None)]
    );
}

/// A policy that defers every job it is offered holds the queue: `policy`, no ETA.
#[test]
fn a_deferring_policy_holds_the_queue() {
    struct Never;
    impl Policies for Never {
        fn admit(&mut self, _: &ChannelView<'_>, _: &JobInfo<'_>) -> Admission {
            Admission::Accept(0)
        }
        fn before_grant(&mut self, _: &ChannelView<'_>, _: &JobInfo<'_>) -> Decision {
            Decision::Defer
        }
        fn on_event(&mut self, _: &ChannelView<'_>, _: JobEvent, _: &JobInfo<'_>) {}
    }
    let mut e = Engine::new(Box::new(|_| ChannelOptions {
        max_concurrent_jobs: 3,
        policy: Some(Arc::from(Path::new("p.wasm"))),
        ..ChannelOptions::default()
    }));
    let reg = Registration {
        progress: true,
        ..Registration::new("c", "a", Millis(1_000))
    };
    e.handle_with(T, Input::Register(reg), &mut Never);
    assert_eq!(
        positions(&drain(&mut e)),
        [pos("a", 1, 1, HeldBy::Policy, None)]
    );
}

#[test]
fn state_lists_waiting_jobs_when_asked() {
    let mut e = engine(1, &[]);
    register(&mut e, T, "run", false);
    register(&mut e, T, "a", false);
    register(&mut e, T, "b", false);
    drain(&mut e);
    e.handle(
        T,
        Input::InfosJobs {
            channel: "c".into(),
        },
    );
    let out = drain(&mut e);
    let [Output::State(s)] = &out[..] else {
        panic!("{out:?}")
    };
    let listed = s.waiting_jobs.as_ref().unwrap();
    assert_eq!(
        listed,
        &[
            pos("a", 1, 2, HeldBy::Concurrency, None),
            pos("b", 2, 2, HeldBy::Concurrency, None)
        ]
    );
    e.handle(
        T,
        Input::Infos {
            channel: "c".into(),
        },
    );
    let out = drain(&mut e);
    assert!(matches!(&out[..], [Output::State(s)] if s.waiting_jobs.is_none()));
}
