//! The engine's use of policy hooks, with a scripted test double.

use std::collections::HashMap;
use std::path::Path;

use super::*;

/// Admits with the priority in `meta` ("p"), rejects uids starting with "bad", defers uids
/// starting with "later" until `release` is set, vetoes uids starting with "veto", and records
/// every hook call.
#[derive(Default)]
struct Scripted {
    release: bool,
    calls: Vec<String>,
    priorities: HashMap<String, i64>,
}

impl Policies for Scripted {
    fn admit(&mut self, _: &ChannelView<'_>, job: &JobInfo<'_>) -> Admission {
        self.calls.push(format!("admit {}", job.uid));
        if job.uid.starts_with("bad") {
            return Admission::Reject("bad job".into());
        }
        Admission::Accept(self.priorities.get(job.uid).copied().unwrap_or(0))
    }
    fn before_grant(&mut self, ch: &ChannelView<'_>, job: &JobInfo<'_>) -> Decision {
        self.calls
            .push(format!("before {} running={}", job.uid, ch.running));
        if job.uid.starts_with("veto") {
            Decision::Veto("vetoed".into())
        } else if job.uid.starts_with("later") && !self.release {
            Decision::Defer
        } else {
            Decision::Grant
        }
    }
    fn on_event(&mut self, _: &ChannelView<'_>, event: JobEvent, job: &JobInfo<'_>) {
        self.calls.push(format!("{event:?} {}", job.uid));
    }
}

fn engine(max: u32) -> Engine {
    Engine::new(Box::new(move |name| ChannelOptions {
        max_concurrent_jobs: max,
        policy: (name != "plain").then(|| Arc::from(Path::new("p.wasm"))),
        ..ChannelOptions::default()
    }))
}

fn reg(channel: &str, uid: &str) -> Input {
    Input::Register(Registration::new(channel, uid, Millis(1_000)))
}

fn drain(e: &mut Engine) -> Vec<String> {
    std::iter::from_fn(|| e.poll_output())
        .filter_map(|o| match o {
            Output::Go { uid, .. } => Some(format!("go {uid}")),
            Output::Rejected { uid, reason, .. } => Some(format!("rejected {uid}: {reason}")),
            Output::Expired { uid, .. } => Some(format!("expired {uid}")),
            _ => None,
        })
        .collect()
}

#[test]
fn admit_sets_priority_and_can_reject() {
    let mut e = engine(1);
    let mut p = Scripted::default();
    p.priorities.insert("urgent".into(), 10);
    for uid in ["first", "normal", "bad1", "urgent"] {
        e.handle_with(Time(0), reg("c", uid), &mut p);
    }
    assert_eq!(drain(&mut e), ["go first", "rejected bad1: bad job"]);
    assert_eq!(
        e.waiting("c"),
        vec![Arc::from("urgent"), Arc::from("normal")]
    );
}

#[test]
fn deferred_job_keeps_its_place_and_the_next_one_is_offered() {
    let mut e = engine(2);
    let mut p = Scripted::default();
    for uid in ["later1", "a", "b"] {
        e.handle_with(Time(0), reg("c", uid), &mut p);
    }
    assert_eq!(drain(&mut e), ["go a", "go b"]);
    assert_eq!(e.waiting("c"), vec![Arc::from("later1")]);
    // The next event asks again.
    p.release = true;
    e.handle_with(
        Time(5),
        Input::Finished {
            channel: "c".into(),
            uid: "a".into(),
            token: None,
        },
        &mut p,
    );
    assert_eq!(drain(&mut e), ["go later1"]);
}

#[test]
fn deferrals_are_bounded_per_opportunity() {
    let mut e = engine(1);
    let mut p = Scripted::default();
    for i in 0..200 {
        e.handle_with(Time(0), reg("c", &format!("later{i}")), &mut p);
    }
    p.calls.clear();
    e.handle_with(Time(0), reg("c", "last"), &mut p);
    let asked = p.calls.iter().filter(|c| c.starts_with("before")).count();
    assert_eq!(asked, channel::MAX_DEFERRALS, "stops after the bound");
    assert!(
        drain(&mut e).is_empty(),
        "last is beyond the bound and waits for the next event"
    );
}

#[test]
fn veto_removes_the_job_and_reports_it() {
    let mut e = engine(1);
    let mut p = Scripted::default();
    e.handle_with(Time(0), reg("c", "veto1"), &mut p);
    e.handle_with(Time(0), reg("c", "ok"), &mut p);
    assert_eq!(drain(&mut e), ["rejected veto1: vetoed", "go ok"]);
    assert!(e.waiting("c").is_empty());
}

#[test]
fn events_tell_the_policy_what_happened() {
    let mut e = engine(1);
    let mut p = Scripted::default();
    e.handle_with(Time(0), reg("c", "a"), &mut p);
    e.handle_with(Time(0), reg("c", "b"), &mut p);
    e.handle_with(Time(0), reg("c", "w"), &mut p);
    e.handle_with(
        Time(1),
        Input::Aborted {
            channel: "c".into(),
            uid: "w".into(),
            token: None,
        },
        &mut p,
    );
    e.handle_with(
        Time(2),
        Input::Finished {
            channel: "c".into(),
            uid: "a".into(),
            token: None,
        },
        &mut p,
    );
    e.handle_timeout_with(Time(5_000), &mut p);
    let events: Vec<&str> = p
        .calls
        .iter()
        .map(String::as_str)
        .filter(|c| !c.starts_with("admit") && !c.starts_with("before"))
        .collect();
    assert_eq!(
        events,
        [
            "Granted a",
            "Cancelled w",
            "Finished a",
            "Granted b",
            "Expired b"
        ]
    );
    assert!(p.calls.contains(&"before b running=0".to_string()));
}

#[test]
fn channels_without_a_policy_never_call_hooks() {
    let mut e = engine(1);
    let mut p = Scripted::default();
    e.handle_with(Time(0), reg("plain", "bad1"), &mut p);
    e.handle_with(Time(0), reg("plain", "veto1"), &mut p);
    e.handle_with(
        Time(0),
        Input::Finished {
            channel: "plain".into(),
            uid: "bad1".into(),
            token: None,
        },
        &mut p,
    );
    assert!(p.calls.is_empty());
    assert_eq!(drain(&mut e), ["go bad1", "go veto1"]);
}

#[test]
fn readmit_reorders_waiting_jobs_and_drops_rejected_ones() {
    let mut e = engine(1);
    let mut p = Scripted::default();
    for uid in ["run", "x", "y", "z"] {
        e.handle_with(Time(0), reg("c", uid), &mut p);
    }
    e.handle_with(Time(0), reg("plain", "q"), &mut p);
    drain(&mut e);
    // A new policy: z first, and y is now refused.
    let mut p2 = Scripted::default();
    p2.priorities.insert("z".into(), 3);
    struct RejectY(Scripted);
    impl Policies for RejectY {
        fn admit(&mut self, c: &ChannelView<'_>, j: &JobInfo<'_>) -> Admission {
            if j.uid == "y" {
                Admission::Reject("no y".into())
            } else {
                self.0.admit(c, j)
            }
        }
        fn before_grant(&mut self, c: &ChannelView<'_>, j: &JobInfo<'_>) -> Decision {
            self.0.before_grant(c, j)
        }
        fn on_event(&mut self, c: &ChannelView<'_>, ev: JobEvent, j: &JobInfo<'_>) {
            self.0.on_event(c, ev, j)
        }
    }
    let mut p2 = RejectY(p2);
    e.readmit_channels(Time(10), &["c".into(), "plain".into()], &mut p2);
    assert_eq!(drain(&mut e), ["rejected y: no y"]);
    assert_eq!(e.waiting("c"), vec![Arc::from("z"), Arc::from("x")]);
    assert_eq!(e.running("c").len(), 1, "running jobs untouched");
    assert_eq!(e.waiting("plain").len(), 0);
}
