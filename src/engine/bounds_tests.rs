//! `max_waiting_bytes`: the daemon-wide count of bytes held by waiting jobs stays exact through
//! every way a job enters or leaves a queue, and a register past the limit is refused by name.

use std::path::Path;

use super::*;

const T0: Time = Time(1_000_000);

/// Every channel: `max` slots; channel `"p"` also has a policy (driven by [`VetoLater`]).
fn engine(max: u32, max_waiting_bytes: usize) -> Engine {
    let limits = EngineLimits {
        max_waiting_bytes,
        ..EngineLimits::default()
    };
    Engine::with_limits(
        Box::new(move |name| ChannelOptions {
            max_concurrent_jobs: max,
            policy: (name == "p").then(|| Arc::from(Path::new("p.wasm"))),
            ..ChannelOptions::default()
        }),
        limits,
    )
}

fn reg(channel: &str, uid: &str, meta: Option<&str>) -> Input {
    Input::Register(Registration {
        meta: meta.map(Into::into),
        ..Registration::new(channel, uid, Millis(1_000))
    })
}

fn end(channel: &str, uid: &str) -> Input {
    Input::Finished {
        channel: channel.into(),
        uid: uid.into(),
        token: None,
    }
}

/// The bytes of every waiting job of `channels`, recomputed from what the engine reports.
fn recount(e: &Engine, channels: &[&str]) -> usize {
    channels
        .iter()
        .flat_map(|c| {
            e.waiting(c)
                .into_iter()
                .map(move |uid| job_bytes(&uid, e.channel(c).and_then(|ch| ch.meta(&uid))))
        })
        .sum()
}

/// `(uid, reason)` of each `Limit` rejection in the pending outputs; other outputs are dropped.
fn limit_rejections(e: &mut Engine) -> Vec<(String, String)> {
    std::iter::from_fn(|| e.poll_output())
        .filter_map(|o| match o {
            Output::Rejected {
                uid,
                kind: RejectKind::Limit,
                reason,
                ..
            } => Some((uid.to_string(), reason)),
            _ => None,
        })
        .collect()
}

/// Admits everything; vetoes uids starting with "veto", rejects "bad" ones on re-admission.
#[derive(Default)]
struct VetoLater {
    readmitting: bool,
}

impl Policies for VetoLater {
    fn admit(&mut self, _: &ChannelView<'_>, job: &JobInfo<'_>) -> Admission {
        if self.readmitting && job.uid.starts_with("bad") {
            Admission::Reject("no longer welcome".into())
        } else {
            Admission::Accept(0)
        }
    }
    fn before_grant(&mut self, _: &ChannelView<'_>, job: &JobInfo<'_>) -> Decision {
        if job.uid.starts_with("veto") {
            Decision::Veto("vetoed".into())
        } else {
            Decision::Grant
        }
    }
    fn on_event(&mut self, _: &ChannelView<'_>, _: JobEvent, _: &JobInfo<'_>) {}
}

#[test]
fn a_job_counts_its_uid_its_extra_fields_and_the_overhead() {
    assert_eq!(job_bytes("abc", None), JOB_OVERHEAD_BYTES + 3);
    assert_eq!(
        job_bytes("abc", Some("{\"a\":1}")),
        JOB_OVERHEAD_BYTES + 3 + 7
    );
    assert_eq!(EngineLimits::default().max_waiting_bytes, 256 << 20);
}

#[test]
fn waiting_bytes_follow_register_grant_cancel_finish_expire_and_renew() {
    let mut e = engine(1, usize::MAX);
    let all = ["c", "d"];
    let check = |e: &Engine| assert_eq!(e.waiting_bytes(), recount(e, &all));
    e.handle(T0, reg("c", "run", Some("{\"x\":1}")));
    assert_eq!(e.waiting_bytes(), 0, "granted at once: it never waits");
    e.handle(T0, reg("c", "w1", Some("{\"big\":\"0123456789\"}")));
    e.handle(T0, reg("c", "w2", None));
    e.handle(T0, reg("d", "w3", None));
    e.handle(T0, reg("d", "w4", Some("{}")));
    check(&e);
    assert_eq!(
        e.waiting_bytes(),
        job_bytes("w1", Some("{\"big\":\"0123456789\"}"))
            + job_bytes("w2", None)
            + job_bytes("w4", Some("{}"))
    );
    // A duplicate changes nothing; renewing a waiting job changes its timeout only.
    e.handle(T0, reg("c", "w1", None));
    e.handle(
        T0,
        Input::Renew {
            channel: "c".into(),
            uid: "w2".into(),
            timeout: Millis(9_000),
            token: None,
        },
    );
    check(&e);
    // Cancel while waiting.
    e.handle(T0, end("c", "w2"));
    check(&e);
    // Finish: the slot goes to w1, which stops waiting.
    e.handle(T0 + Millis(10), end("c", "run"));
    assert_eq!(e.waiting("c"), Vec::<Arc<str>>::new());
    check(&e);
    // Expire: d's lease runs out and w4 is granted.
    e.handle_timeout(T0 + Millis(1_000));
    assert_eq!(e.waiting("d"), Vec::<Arc<str>>::new());
    check(&e);
    assert_eq!(e.waiting_bytes(), 0);
    // concurrency/set 0 then a raise: queued, then granted.
    e.handle(
        T0 + Millis(2_000),
        Input::SetConcurrency {
            channel: "d".into(),
            max: 0,
        },
    );
    e.handle_timeout(T0 + Millis(3_000));
    e.handle(T0 + Millis(3_000), reg("d", "w5", None));
    assert_eq!(e.waiting_bytes(), job_bytes("w5", None));
    e.handle(
        T0 + Millis(3_000),
        Input::SetConcurrency {
            channel: "d".into(),
            max: 1,
        },
    );
    check(&e);
    assert_eq!(e.waiting_bytes(), 0);
}

#[test]
fn policy_vetoes_and_rejections_on_readmission_release_their_bytes() {
    let mut e = engine(0, usize::MAX);
    let mut p = VetoLater::default();
    for uid in ["a", "veto1", "bad1", "b"] {
        e.handle_with(T0, reg("p", uid, Some("{\"k\":\"v\"}")), &mut p);
    }
    assert_eq!(e.waiting_bytes(), recount(&e, &["p"]));
    p.readmitting = true;
    e.readmit_channels(T0, &["p".into()], &mut p);
    assert_eq!(e.waiting("p").len(), 3, "bad1 left on re-admission");
    assert_eq!(e.waiting_bytes(), recount(&e, &["p"]));
    e.handle_with(
        T0,
        Input::SetConcurrency {
            channel: "p".into(),
            max: 5,
        },
        &mut p,
    );
    assert!(e.waiting("p").is_empty(), "a and b granted, veto1 vetoed");
    assert_eq!(e.waiting_bytes(), 0);
}

#[test]
fn register_past_max_waiting_bytes_is_rejected_by_name_and_nothing_queued_is_dropped() {
    let one = job_bytes("w0", Some("{\"pad\":\"xxxxxxxxxx\"}"));
    let tiny = job_bytes("tiny", None);
    assert!(tiny < one - 8);
    // Room for three such jobs and a tiny one, not four.
    let mut e = engine(1, 3 * one + one - 8);
    e.handle(T0, reg("c", "run", None));
    for i in 0..4 {
        e.handle(
            T0,
            reg("c", &format!("w{i}"), Some("{\"pad\":\"xxxxxxxxxx\"}")),
        );
    }
    let rejected = limit_rejections(&mut e);
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].0, "w3");
    let reason = &rejected[0].1;
    assert!(reason.contains("max_waiting_bytes"), "{reason}");
    assert!(reason.contains(&format!("needs {one}")), "{reason}");
    assert_eq!(e.waiting("c").len(), 3);
    assert_eq!(e.waiting_bytes(), 3 * one);
    // A smaller job still fits; then the queue moves and frees room.
    e.handle(T0, reg("c", "tiny", None));
    assert!(limit_rejections(&mut e).is_empty());
    e.handle(T0, end("c", "run"));
    e.handle(T0, reg("c", "w4", Some("{\"pad\":\"xxxxxxxxxx\"}")));
    assert!(limit_rejections(&mut e).is_empty());
    assert_eq!(e.waiting_bytes(), recount(&e, &["c"]));
}

#[test]
fn a_job_granted_at_once_is_never_refused_by_max_waiting_bytes() {
    let mut e = engine(1, 4096);
    // Channel "full" is paused: its jobs fill the budget.
    e.handle(
        T0,
        Input::SetConcurrency {
            channel: "full".into(),
            max: 0,
        },
    );
    let pad = format!("{{\"pad\":\"{}\"}}", "x".repeat(1_000));
    for i in 0..4 {
        e.handle(T0, reg("full", &format!("f{i}"), Some(&pad)));
    }
    assert_eq!(limit_rejections(&mut e).len(), 1, "the budget is full");
    // A free slot elsewhere still serves: the job never waits.
    e.handle(T0, reg("free", "a", Some(&pad)));
    assert_eq!(e.running("free").len(), 1);
    assert!(limit_rejections(&mut e).is_empty());
    // But a job that would have to wait there is refused.
    e.handle(T0, reg("free", "b", Some(&pad)));
    let rejected = limit_rejections(&mut e);
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(e.waiting("free").is_empty());
}

#[test]
fn a_lowered_limit_refuses_growth_only() {
    let mut e = engine(0, usize::MAX);
    for uid in ["a", "b", "c"] {
        e.handle(T0, reg("c", uid, None));
    }
    let before = e.waiting_bytes();
    e.set_limits(EngineLimits {
        max_waiting_bytes: before - 1,
        ..e.limits()
    });
    e.handle(T0, reg("c", "d", None));
    assert_eq!(limit_rejections(&mut e).len(), 1);
    assert_eq!(e.waiting("c").len(), 3, "nothing queued is dropped");
    assert_eq!(e.waiting_bytes(), before);
    // Once jobs leave and the total is under the limit again, growth resumes.
    e.handle(T0, end("c", "a"));
    e.handle(T0, end("c", "b"));
    e.handle(T0, reg("c", "d", None));
    assert!(limit_rejections(&mut e).is_empty());
    assert_eq!(e.waiting_bytes(), recount(&e, &["c"]));
}

#[test]
fn restore_counts_every_restored_waiting_job_even_past_the_limit() {
    let mut e = engine(1, usize::MAX);
    e.record_changes(true);
    e.handle(T0, reg("c", "run", None));
    for uid in ["a", "b", "c"] {
        e.handle(T0, reg("c", uid, Some("{\"n\":1}")));
    }
    e.handle(T0, reg("d", "solo", None));
    let mut changes = Vec::new();
    e.take_changes(&mut changes);
    let mut snap = Snapshot::default();
    for c in changes {
        snap.apply(c);
    }
    let mut r = engine(1, 4096);
    r.restore(T0, snap, &mut NoPolicies);
    assert_eq!(r.waiting("c").len(), 3, "restored past the limit");
    assert_eq!(r.waiting_bytes(), e.waiting_bytes());
    assert_eq!(r.waiting_bytes(), recount(&r, &["c", "d"]));
    // The restored lease ends; the queue moves and the count follows.
    r.handle_timeout(T0 + Millis(1_000));
    assert_eq!(r.waiting("c").len(), 2);
    assert_eq!(r.waiting_bytes(), recount(&r, &["c", "d"]));
}
