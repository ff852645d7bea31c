//! Job cost (units of concurrency and quota), driven with injected time.

use super::test_support::engine;
use super::*;

const T: Time = Time(1_000_000);

fn register(e: &mut Engine, at: Time, uid: &str, cost: u32) {
    let reg = Registration {
        cost,
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

/// Uids granted in `out`, in order.
fn gos(out: &[Output]) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            Output::Go { uid, .. } => Some(uid.to_string()),
            _ => None,
        })
        .collect()
}

/// The reason of the only output, which must be a rejection.
fn rejection(out: &[Output]) -> &str {
    match out {
        [Output::Rejected { reason, kind, .. }] => {
            assert_eq!(*kind, RejectKind::Limit);
            reason
        }
        other => panic!("expected one rejection, got {other:?}"),
    }
}

#[test]
fn a_job_holds_its_cost_in_units_of_concurrency() {
    let mut e = engine(4, &[]);
    register(&mut e, T, "heavy", 3);
    register(&mut e, T, "one", 1);
    register(&mut e, T, "two", 2);
    assert_eq!(gos(&drain(&mut e)), ["heavy", "one"]);
    let s = e.channel_state("c").unwrap();
    assert_eq!(
        (s.running_count, s.running_units, s.waiting),
        (2, Some(4), 1)
    );
    assert_eq!(s.running_jobs[0].cost, 3);
    finished(&mut e, T + Millis(1), "one");
    assert!(gos(&drain(&mut e)).is_empty(), "1 unit free, `two` needs 2");
    finished(&mut e, T + Millis(2), "heavy");
    assert_eq!(gos(&drain(&mut e)), ["two"]);
    let s = e.channel_state("c").unwrap();
    assert_eq!((s.running_count, s.running_units), (1, Some(2)));
}

/// Head of line: a heavy job at the head is not overtaken by light ones behind it, however
/// many free units they would fit in; it starts as soon as enough units are free.
#[test]
fn a_heavy_head_is_not_starved_by_light_jobs_behind_it() {
    let mut e = engine(3, &[]);
    register(&mut e, T, "a", 1);
    register(&mut e, T, "b", 1);
    register(&mut e, T, "heavy", 3);
    for i in 0..10 {
        register(&mut e, T, &format!("light{i}"), 1);
    }
    assert_eq!(gos(&drain(&mut e)), ["a", "b"]);
    finished(&mut e, T + Millis(1), "a");
    assert!(
        gos(&drain(&mut e)).is_empty(),
        "light jobs must not pass the head"
    );
    finished(&mut e, T + Millis(2), "b");
    assert_eq!(gos(&drain(&mut e)), ["heavy"]);
    finished(&mut e, T + Millis(3), "heavy");
    assert_eq!(gos(&drain(&mut e)), ["light0", "light1", "light2"]);
}

/// A quota counts units: a window of 5 admits a job of 3 and one of 2, then a job of 2 waits
/// until enough units have left the window, to the millisecond.
#[test]
fn a_quota_window_counts_units_and_opens_when_enough_have_left() {
    let mut e = engine(10, &[(1_000, 5)]);
    register(&mut e, T, "three", 3);
    register(&mut e, T + Millis(100), "two", 2);
    register(&mut e, T + Millis(200), "next", 2);
    assert_eq!(gos(&drain(&mut e)), ["three", "two"]);
    let s = e.channel_state("c").unwrap();
    assert_eq!(s.quotas[0].used, 5);
    // `next` needs 2 free units: the 3 granted at T leave at T + 1001.
    assert_eq!(e.next_deadline(), Some(T + Millis(1_001)));
    e.handle_timeout(T + Millis(1_000));
    assert!(gos(&drain(&mut e)).is_empty());
    e.handle_timeout(T + Millis(1_001));
    assert_eq!(gos(&drain(&mut e)), ["next"]);
    assert_eq!(e.channel_state("c").unwrap().quotas[0].used, 4);
}

#[test]
fn a_cost_that_could_never_run_is_rejected_with_the_reason() {
    let mut e = engine(4, &[(60_000, 10), (1_000, 3)]);
    register(&mut e, T, "big", 5);
    let out = drain(&mut e);
    let reason = rejection(&out);
    assert!(reason.contains("max_concurrent_jobs (4)"), "{reason}");
    register(&mut e, T, "quota", 4);
    let out = drain(&mut e);
    let reason = rejection(&out);
    assert!(reason.contains("quota `q1000` (3 per 1000 ms)"), "{reason}");
    assert!(reason.contains("could never run"), "{reason}");
    assert_eq!(e.channel_state("c").unwrap().waiting, 0);
    // A paused channel still takes what its configured limit admits, and refuses the rest.
    e.handle(
        T,
        Input::SetConcurrency {
            channel: "c".into(),
            max: 0,
        },
    );
    register(&mut e, T, "fits", 3);
    register(&mut e, T, "never", 5);
    let out = drain(&mut e);
    assert!(rejection(&out[..]).contains("(4)"));
    assert_eq!(e.waiting("c"), [Arc::from("fits")]);
}

/// A limit lowered below a waiting job's cost (here `concurrency/set`) holds it, and the jobs
/// behind it, until the limit is raised again: nothing is dropped, nothing overtakes.
#[test]
fn a_head_above_a_lowered_limit_waits_for_it_to_be_raised() {
    let mut e = engine(4, &[]);
    let set = |max| Input::SetConcurrency {
        channel: "c".into(),
        max,
    };
    e.handle(T, set(0));
    register(&mut e, T, "heavy", 4);
    register(&mut e, T, "light", 1);
    e.handle(T, set(2));
    assert!(drain(&mut e).is_empty());
    assert_eq!(e.next_deadline(), None);
    e.handle(T + Millis(5), set(4));
    assert_eq!(gos(&drain(&mut e)), ["heavy"]);
}

/// The journal keeps each job's cost and each grant's units: folded or exported, a restored
/// engine holds the same units and counts them in its windows.
#[test]
fn cost_and_grant_units_survive_a_restart() {
    let mut e = engine(5, &[(60_000, 6)]);
    register(&mut e, T, "running", 4);
    register(&mut e, T, "waiting", 2);
    assert_eq!(gos(&drain(&mut e)), ["running"]);
    let mut changes = Vec::new();
    e.take_changes(&mut changes);
    assert!(changes.contains(&Change::JobOptions {
        channel: "c".into(),
        uid: "waiting".into(),
        cost: 2,
        progress: false,
    }));
    let mut folded = Snapshot::default();
    for c in changes {
        folded.apply(c);
    }
    let exported = e.export();
    assert_eq!(folded.channels["c"].jobs, exported.channels["c"].jobs);
    assert_eq!(folded.channels["c"].grants, [(T, 4)]);
    for snap in [folded, exported] {
        let mut r = engine(5, &[(60_000, 6)]);
        r.restore(T + Millis(10), snap, &mut NoPolicies);
        let s = r.channel_state("c").unwrap();
        assert_eq!((s.running_units, s.quotas[0].used), (Some(4), 4));
        finished(&mut r, T + Millis(20), "running");
        // 2 more units fit the window (4 + 2 = 6).
        assert_eq!(gos(&drain(&mut r)), ["waiting"]);
        assert_eq!(r.channel_state("c").unwrap().quotas[0].used, 6);
    }
}
