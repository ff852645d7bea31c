//! Engine rules, driven with injected time.

use super::*;

/// Owns an engine and a fake clock; collects every output with the time it appeared.
struct Harness {
    engine: Engine,
    now: Time,
    log: Vec<(Time, Output)>,
}

fn opts(max: u32, offset_ms: u64, quotas: &[(u64, u32)]) -> ChannelOptions {
    ChannelOptions {
        max_concurrent_jobs: max,
        timeout_offset: Millis(offset_ms),
        quotas: quotas
            .iter()
            .enumerate()
            .map(|(i, (interval, limit))| QuotaSpec {
                name: format!("q{i}"),
                interval: Millis(*interval),
                limit: *limit,
                log: QuotaLog::Quiet,
            })
            .collect(),
        ..ChannelOptions::default()
    }
}

impl Harness {
    fn new(o: ChannelOptions) -> Harness {
        Harness {
            engine: Engine::new(Box::new(move |_| o.clone())),
            now: Time(1_000_000),
            log: Vec::new(),
        }
    }

    fn input(&mut self, input: Input) {
        self.engine.handle(self.now, input);
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(o) = self.engine.poll_output() {
            self.log.push((self.now, o));
        }
    }

    fn register(&mut self, uid: &str, timeout_ms: u64) {
        self.register_in("c", uid, timeout_ms);
    }

    fn register_in(&mut self, channel: &str, uid: &str, timeout_ms: u64) {
        self.input(Input::Register(Registration::new(
            channel,
            uid,
            Millis(timeout_ms),
        )));
    }

    fn finish(&mut self, uid: &str) {
        self.input(Input::Finished {
            channel: "c".into(),
            uid: uid.into(),
            token: None,
        });
    }

    /// Advances the clock by `ms`, waking the engine at each deadline on the way, exactly as the
    /// driver does.
    fn advance(&mut self, ms: u64) {
        let target = self.now + Millis(ms);
        while let Some(d) = self.engine.next_deadline() {
            if d > target {
                break;
            }
            self.now = self.now.max(d);
            self.engine.handle_timeout(self.now);
            self.drain();
        }
        self.now = target;
    }

    /// Uids granted so far with their grant times, in order.
    fn gos(&self) -> Vec<(u64, String)> {
        self.log
            .iter()
            .filter_map(|(t, o)| match o {
                Output::Go { uid, .. } => Some((t.0 - 1_000_000, uid.to_string())),
                _ => None,
            })
            .collect()
    }

    fn expired(&self) -> Vec<(u64, String)> {
        self.log
            .iter()
            .filter_map(|(t, o)| match o {
                Output::Expired { uid, .. } => Some((t.0 - 1_000_000, uid.to_string())),
                _ => None,
            })
            .collect()
    }

    fn go_uids(&self) -> Vec<String> {
        self.gos().into_iter().map(|(_, u)| u).collect()
    }
}

#[test]
fn grants_at_once_up_to_the_limit_then_fifo() {
    let mut h = Harness::new(opts(2, 0, &[]));
    for u in ["a", "b", "c", "d"] {
        h.register(u, 10_000);
    }
    assert_eq!(h.go_uids(), ["a", "b"]);
    h.finish("b");
    assert_eq!(h.go_uids(), ["a", "b", "c"]);
    h.finish("a");
    assert_eq!(h.go_uids(), ["a", "b", "c", "d"]);
    assert_eq!(h.engine.next_deadline(), Some(Time(1_010_000)));
}

#[test]
fn duplicate_register_is_ignored_whether_waiting_or_running() {
    let mut h = Harness::new(opts(1, 0, &[]));
    h.register("a", 1000);
    h.register("b", 1000);
    h.register("a", 5000);
    h.register("b", 5000);
    assert_eq!(h.go_uids(), ["a"]);
    assert_eq!(h.engine.waiting("c").len(), 1);
    // The duplicate did not change a's lease.
    assert_eq!(h.engine.running("c")[0].1, Time(1_001_000));
}

#[test]
fn lease_expires_exactly_at_timeout_plus_offset() {
    let mut h = Harness::new(opts(1, 500, &[]));
    h.register("a", 2_000);
    h.register("b", 1_000);
    assert_eq!(h.engine.next_deadline(), Some(Time(1_002_500)));
    h.advance(2_499);
    assert!(h.expired().is_empty());
    assert_eq!(h.go_uids(), ["a"]);
    h.advance(1);
    assert_eq!(h.expired(), [(2_500, "a".to_string())]);
    assert_eq!(h.gos(), [(0, "a".into()), (2_500, "b".into())]);
    assert_eq!(h.engine.next_deadline(), Some(Time(1_004_000)));
}

#[test]
fn finished_before_expiry_cancels_the_lease_timer() {
    let mut h = Harness::new(opts(1, 0, &[]));
    h.register("a", 1_000);
    h.finish("a");
    assert_eq!(h.engine.next_deadline(), None);
    h.advance(5_000);
    assert!(h.expired().is_empty());
}

#[test]
fn late_finish_after_expiry_is_ignored() {
    let mut h = Harness::new(opts(1, 0, &[]));
    h.register("a", 1_000);
    h.register("b", 1_000);
    h.advance(1_000);
    h.finish("a");
    assert_eq!(h.go_uids(), ["a", "b"]);
    assert_eq!(h.engine.running("c").len(), 1, "b keeps its slot");
}

#[test]
fn zero_timeout_lease_ends_at_grant_time() {
    let mut h = Harness::new(opts(1, 0, &[]));
    h.register("a", 0);
    h.register("b", 0);
    h.advance(0);
    assert_eq!(h.gos(), [(0, "a".into()), (0, "b".into())]);
    assert_eq!(h.expired().len(), 2);
    assert_eq!(h.engine.next_deadline(), None);
}

#[test]
fn cancelled_waiting_job_rejoins_at_the_back() {
    let mut h = Harness::new(opts(1, 0, &[]));
    h.register("run", 10_000);
    h.register("x", 1_000);
    h.register("y", 1_000);
    h.input(Input::Aborted {
        channel: "c".into(),
        uid: "x".into(),
        token: None,
    });
    h.register("x", 1_000);
    assert_eq!(h.engine.waiting("c"), vec![Arc::from("y"), Arc::from("x")]);
    h.finish("run");
    h.finish("y");
    h.finish("x");
    assert_eq!(h.go_uids(), ["run", "y", "x"], "x is granted once, after y");
}

#[test]
fn ended_output_says_whether_the_job_was_running() {
    let mut h = Harness::new(opts(1, 0, &[]));
    h.register("a", 1_000);
    h.register("b", 1_000);
    h.finish("b");
    h.input(Input::Aborted {
        channel: "c".into(),
        uid: "a".into(),
        token: None,
    });
    let ended: Vec<_> = h
        .log
        .iter()
        .filter_map(|(_, o)| match o {
            Output::Ended {
                uid,
                reason,
                was_running,
                ..
            } => Some((uid.to_string(), *reason, *was_running)),
            _ => None,
        })
        .collect();
    assert_eq!(
        ended,
        [
            ("b".into(), EndReason::Finished, false),
            ("a".into(), EndReason::Aborted, true)
        ]
    );
}

#[test]
fn unknown_uid_or_channel_on_finish_changes_nothing() {
    let mut h = Harness::new(opts(1, 0, &[]));
    h.finish("ghost");
    assert_eq!(h.engine.channel_count(), 0);
    h.register("a", 1_000);
    h.finish("ghost");
    assert_eq!(h.engine.running("c").len(), 1);
    assert!(h
        .log
        .iter()
        .all(|(_, o)| !matches!(o, Output::Ended { .. })));
}

#[test]
fn quota_holds_jobs_until_the_window_opens_then_grants_on_the_dot() {
    // 2 per second.
    let mut h = Harness::new(opts(10, 0, &[(1_000, 2)]));
    for u in ["a", "b", "c", "d", "e"] {
        h.register(u, 60_000);
    }
    assert_eq!(h.go_uids(), ["a", "b"]);
    // Grants at 0 count while now <= 1000; the window reopens at 1001.
    assert_eq!(h.engine.next_deadline(), Some(Time(1_001_001)));
    h.advance(1_000);
    assert_eq!(h.go_uids().len(), 2);
    h.advance(1);
    assert_eq!(h.gos()[2..], [(1_001, "c".into()), (1_001, "d".into())]);
    h.advance(1_001);
    assert_eq!(h.gos()[4..], [(2_002, "e".into())]);
}

#[test]
fn several_windows_apply_at_once() {
    // 2 per second and 3 per 10 seconds.
    let mut h = Harness::new(opts(10, 0, &[(1_000, 2), (10_000, 3)]));
    for i in 0..6 {
        h.register(&format!("j{i}"), 60_000);
    }
    h.advance(30_000);
    let times: Vec<u64> = h.gos().into_iter().map(|(t, _)| t).collect();
    assert_eq!(times, [0, 0, 1_001, 10_001, 10_001, 11_002]);
}

#[test]
fn disabled_quota_is_ignored() {
    let mut h = Harness::new(opts(10, 0, &[(1_000, 0)]));
    for i in 0..5 {
        h.register(&format!("j{i}"), 60_000);
    }
    assert_eq!(h.go_uids().len(), 5);
}

#[test]
fn quota_counts_grants_even_after_they_finish() {
    let mut h = Harness::new(opts(1, 0, &[(1_000, 2)]));
    h.register("a", 60_000);
    h.finish("a");
    h.register("b", 60_000);
    h.finish("b");
    h.register("c", 60_000);
    assert_eq!(h.go_uids(), ["a", "b"]);
    h.advance(1_001);
    assert_eq!(h.go_uids(), ["a", "b", "c"]);
}

#[test]
fn quota_wait_does_not_arm_a_timer_without_a_free_slot() {
    let mut h = Harness::new(opts(1, 0, &[(1_000, 1)]));
    h.register("a", 60_000);
    h.register("b", 60_000);
    // Slot is full: the only deadline is a's lease, not the quota opening.
    assert_eq!(h.engine.next_deadline(), Some(Time(1_060_000)));
    h.advance(500);
    h.finish("a");
    // Slot free, window still full until 1001.
    assert_eq!(h.engine.next_deadline(), Some(Time(1_001_001)));
    h.advance(501);
    assert_eq!(h.gos(), [(0, "a".into()), (1_001, "b".into())]);
}

#[test]
fn concurrency_raise_grants_at_once_and_lowering_revokes_nothing() {
    let mut h = Harness::new(opts(1, 0, &[]));
    for u in ["a", "b", "c", "d"] {
        h.register(u, 60_000);
    }
    h.input(Input::SetConcurrency {
        channel: "c".into(),
        max: 3,
    });
    assert_eq!(h.go_uids(), ["a", "b", "c"]);
    h.input(Input::SetConcurrency {
        channel: "c".into(),
        max: 1,
    });
    assert_eq!(h.engine.running("c").len(), 3);
    h.finish("a");
    h.finish("b");
    assert_eq!(h.go_uids().len(), 3, "still at the lowered limit");
    h.finish("c");
    assert_eq!(h.go_uids(), ["a", "b", "c", "d"]);
}

#[test]
fn concurrency_zero_pauses_the_channel() {
    let mut h = Harness::new(opts(2, 0, &[]));
    h.input(Input::SetConcurrency {
        channel: "c".into(),
        max: 0,
    });
    h.register("a", 1_000);
    h.advance(10_000);
    assert!(h.go_uids().is_empty());
    h.input(Input::SetConcurrency {
        channel: "c".into(),
        max: 1,
    });
    assert_eq!(h.go_uids(), ["a"]);
}

#[test]
fn renew_restarts_the_lease_from_now() {
    let mut h = Harness::new(opts(1, 100, &[]));
    h.register("a", 1_000);
    h.advance(900);
    h.input(Input::Renew {
        channel: "c".into(),
        uid: "a".into(),
        timeout: Millis(2_000),
        token: None,
    });
    assert_eq!(h.engine.next_deadline(), Some(Time(1_003_000)));
    h.advance(2_099);
    assert!(h.expired().is_empty());
    h.advance(1);
    assert_eq!(h.expired(), [(3_000, "a".into())]);
}

#[test]
fn renew_of_unknown_job_is_rejected() {
    let mut h = Harness::new(opts(1, 0, &[]));
    h.input(Input::Renew {
        channel: "c".into(),
        uid: "nope".into(),
        timeout: Millis(1),
        token: None,
    });
    assert!(matches!(&h.log[0].1, Output::Rejected { uid, .. } if &**uid == "nope"));
    assert_eq!(
        h.engine.channel_count(),
        0,
        "a stray renew creates no channel"
    );
}

#[test]
fn channels_are_independent_and_use_their_resolved_options() {
    let resolver: Resolver = Box::new(|name| {
        if name.starts_with("wide") {
            opts(3, 0, &[])
        } else {
            opts(1, 0, &[])
        }
    });
    let mut h = Harness::new(opts(1, 0, &[]));
    h.engine = Engine::new(resolver);
    for u in ["a", "b", "c"] {
        h.register_in("wide1", u, 1_000);
        h.register_in("narrow", u, 1_000);
    }
    assert_eq!(h.engine.running("wide1").len(), 3);
    assert_eq!(h.engine.running("narrow").len(), 1);
}

#[test]
fn infos_reports_state_without_creating_the_channel() {
    let mut h = Harness::new(opts(2, 0, &[(60_000, 1)]));
    h.input(Input::Infos {
        channel: "other".into(),
    });
    assert_eq!(h.engine.channel_count(), 0);
    h.register("a", 5_000);
    h.register("b", 5_000);
    h.input(Input::Infos {
        channel: "c".into(),
    });
    let Some((_, Output::State(s))) = h.log.last() else {
        panic!("no state output: {:?}", h.log);
    };
    assert_eq!(s.running, ["a"]);
    assert_eq!(s.waiting, 1);
    assert_eq!(s.quotas[0].used, 1);
    assert_eq!(s.next_window_opening, Some(Time(1_060_001)));
    assert_eq!(s.max_concurrent_jobs, 2);
}

#[test]
fn time_never_runs_backwards() {
    let mut h = Harness::new(opts(1, 0, &[]));
    h.register("a", 1_000);
    h.engine.handle(
        Time(5),
        Input::Infos {
            channel: "c".into(),
        },
    );
    h.drain();
    assert_eq!(h.engine.running("c")[0].1, Time(1_001_000));
}

#[test]
fn priority_orders_the_queue_fifo_among_equals() {
    let mut h = Harness::new(opts(1, 0, &[]));
    let reg = |uid: &str, priority| {
        Input::Register(Registration {
            priority,
            ..Registration::new("c", uid, Millis(1_000))
        })
    };
    h.input(reg("first", 0));
    for (u, p) in [("low", -1), ("mid1", 5), ("high", 9), ("mid2", 5)] {
        h.input(reg(u, p));
    }
    let order: Vec<String> = h
        .engine
        .waiting("c")
        .iter()
        .map(|u| u.to_string())
        .collect();
    assert_eq!(order, ["high", "mid1", "mid2", "low"]);
}

#[test]
fn reconfigure_raises_limits_keeps_quota_history_and_runtime_concurrency() {
    let mut h = Harness::new(opts(1, 0, &[(10_000, 2)]));
    for u in ["a", "b", "c", "d"] {
        h.register(u, 60_000);
    }
    h.finish("a");
    assert_eq!(h.go_uids(), ["a", "b"]);
    // Raise the limit to 3 and keep the quota window (same name q0, limit 3 now).
    let report = h.engine.reconfigure(
        h.now,
        Box::new(|_| opts(3, 500, &[(10_000, 3)])),
        &mut NoPolicies,
    );
    h.drain();
    assert_eq!(
        report,
        vec![(
            Arc::from("c"),
            vec!["max_concurrent_jobs", "timeout_offset", "quotas"]
        )]
    );
    // Two grants already counted in the window: only one more fits.
    assert_eq!(h.go_uids(), ["a", "b", "c"]);
    assert_eq!(
        h.engine
            .running("c")
            .iter()
            .find(|(u, _)| &**u == "c")
            .map(|(_, t)| *t),
        Some(h.now + Millis(60_500)),
        "new offset applies to new grants"
    );
    // A runtime concurrency/set survives a reload that does not touch max_concurrent_jobs.
    h.input(Input::SetConcurrency {
        channel: "c".into(),
        max: 7,
    });
    h.engine.reconfigure(
        h.now,
        Box::new(|_| opts(3, 0, &[(10_000, 3)])),
        &mut NoPolicies,
    );
    assert_eq!(
        h.engine.channel_state("c").map(|s| s.max_concurrent_jobs),
        Some(7)
    );
    // Lowering revokes nothing.
    h.engine
        .reconfigure(h.now, Box::new(|_| opts(1, 0, &[])), &mut NoPolicies);
    assert_eq!(h.engine.running("c").len(), 2);
    assert_eq!(
        h.engine.channel_state("c").map(|s| s.max_concurrent_jobs),
        Some(1)
    );
}

fn limited(o: ChannelOptions, max_channels: usize, max_waiting: usize) -> Harness {
    let limits = EngineLimits {
        max_channels,
        max_waiting_per_channel: max_waiting,
        ..EngineLimits::default()
    };
    Harness {
        engine: Engine::with_limits(Box::new(move |_| o.clone()), limits),
        now: Time(1_000_000),
        log: Vec::new(),
    }
}

/// `(uid, kind, reason)` of every rejection so far.
fn rejections(h: &Harness) -> Vec<(String, RejectKind, String)> {
    h.log
        .iter()
        .filter_map(|(_, o)| match o {
            Output::Rejected {
                uid, kind, reason, ..
            } => Some((uid.to_string(), *kind, reason.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn default_limits_are_documented_values() {
    let limits = Engine::new(Box::new(|_| ChannelOptions::default())).limits();
    assert_eq!(limits.max_channels, 10_000);
    assert_eq!(limits.max_waiting_per_channel, 100_000);
}

#[test]
fn register_past_max_waiting_is_rejected_by_name_and_does_not_queue() {
    let mut h = limited(opts(1, 0, &[]), 10, 3);
    for u in ["run", "w1", "w2", "w3", "w4"] {
        h.register(u, 10_000);
    }
    assert_eq!(h.go_uids(), ["run"]);
    assert_eq!(
        h.engine.waiting("c"),
        ["w1", "w2", "w3"].map(Arc::<str>::from)
    );
    let rejected = rejections(&h);
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let (uid, kind, reason) = &rejected[0];
    assert_eq!((uid.as_str(), *kind), ("w4", RejectKind::Limit));
    assert!(reason.contains("max_waiting_per_channel"), "{reason}");
    assert_eq!(kind.as_str(), "limit");
    // Room again once the queue moves: the channel keeps serving.
    h.finish("run");
    h.register("w5", 10_000);
    assert_eq!(h.go_uids(), ["run", "w1"]);
    assert_eq!(
        h.engine.waiting("c"),
        ["w2", "w3", "w5"].map(Arc::<str>::from)
    );
    assert_eq!(rejections(&h).len(), 1);
}

#[test]
fn duplicate_of_a_waiting_job_at_the_limit_is_ignored_not_rejected() {
    let mut h = limited(opts(0, 0, &[]), 10, 2);
    h.register("a", 1000);
    h.register("b", 1000);
    h.register("a", 1000);
    assert!(rejections(&h).is_empty());
    assert_eq!(h.engine.waiting("c").len(), 2);
}

#[test]
fn running_jobs_do_not_count_against_max_waiting() {
    let mut h = limited(opts(3, 0, &[]), 10, 1);
    for u in ["a", "b", "c", "d"] {
        h.register(u, 1000);
    }
    assert_eq!(h.go_uids(), ["a", "b", "c"]);
    assert_eq!(h.engine.waiting("c"), ["d"].map(Arc::<str>::from));
    assert!(rejections(&h).is_empty());
}

#[test]
fn new_channel_past_max_channels_is_rejected_and_not_created() {
    let mut h = limited(opts(1, 0, &[]), 2, 100);
    h.register_in("one", "a", 1000);
    h.register_in("two", "b", 1000);
    h.register_in("three", "c", 1000);
    assert_eq!(h.go_uids(), ["a", "b"]);
    assert_eq!(h.engine.channel_count(), 2);
    assert!(h.engine.channel_state("three").is_none());
    let rejected = rejections(&h);
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].0, "c");
    assert_eq!(rejected[0].1, RejectKind::Limit);
    assert!(rejected[0].2.contains("max_channels"), "{}", rejected[0].2);
    // concurrency/set does not create it either; existing channels keep working.
    h.input(Input::SetConcurrency {
        channel: "three".into(),
        max: 5,
    });
    assert_eq!(h.engine.channel_count(), 2);
    h.register_in("one", "a2", 1000);
    h.input(Input::Finished {
        channel: "one".into(),
        uid: "a".into(),
        token: None,
    });
    assert_eq!(h.go_uids(), ["a", "b", "a2"]);
}

#[test]
fn lowering_limits_keeps_what_exists_and_refuses_growth() {
    let mut h = limited(opts(0, 0, &[]), 10, 10);
    for u in ["a", "b", "c"] {
        h.register_in("x", u, 1000);
    }
    h.register_in("y", "d", 1000);
    h.engine.set_limits(EngineLimits {
        max_channels: 1,
        max_waiting_per_channel: 2,
        ..EngineLimits::default()
    });
    h.register_in("x", "e", 1000);
    h.register_in("y", "f", 1000);
    h.register_in("z", "g", 1000);
    assert_eq!(h.engine.waiting("x").len(), 3);
    assert_eq!(h.engine.waiting("y").len(), 2);
    assert_eq!(h.engine.channel_count(), 2);
    let uids: Vec<_> = rejections(&h).into_iter().map(|r| r.0).collect();
    assert_eq!(uids, ["e", "g"]);
}

/// A crash after the journal but before the broker: the restarted engine restores `a` and `b`
/// running; `b` finished while the daemon was down and its `finished` is read before the
/// redelivery, `a` ran out while down. Only jobs still running under the same grant hear `go`
/// again; the freed slots go to the waiting jobs with ordinary `go`s.
#[test]
fn restore_redelivers_go_only_to_jobs_still_running_under_the_same_grant() {
    let mut h = Harness::new(opts(3, 0, &[]));
    h.engine.record_changes(true);
    h.register("a", 1_000);
    h.register("b", 60_000);
    h.register("c", 60_000);
    h.register("w", 60_000);
    let mut changes = Vec::new();
    h.engine.take_changes(&mut changes);
    let mut snap = Snapshot::default();
    for c in changes {
        snap.apply(c);
    }
    let o = opts(3, 0, &[]);
    let mut r = Engine::new(Box::new(move |_| o.clone()));
    r.restore(Time(1_000_000 + 5_000), snap, &mut NoPolicies);
    let out: Vec<Output> = std::iter::from_fn(|| r.poll_output()).collect();
    assert_eq!(
        out,
        [
            Output::Expired {
                channel: "c".into(),
                uid: "a".into()
            },
            Output::Go {
                channel: "c".into(),
                uid: "w".into(),
                seq: 3,
                at: Time(1_005_000),
                waited: Millis(5_000),
                token: 4,
                deadline: Time(1_065_000),
                reply: Reply::Plain,
            },
        ]
    );
    assert!(r.awaits_redelivery());
    // The queued `finished` of b, then b registers again and is granted anew.
    r.handle(
        Time(1_005_001),
        Input::Finished {
            channel: "c".into(),
            uid: "b".into(),
            token: None,
        },
    );
    r.handle(
        Time(1_005_002),
        Input::Register(Registration::new("c", "b", Millis(1_000))),
    );
    let _: Vec<Output> = std::iter::from_fn(|| r.poll_output()).collect();
    r.redeliver();
    let again: Vec<Output> = std::iter::from_fn(|| r.poll_output()).collect();
    assert_eq!(
        again,
        [Output::GoAgain {
            channel: "c".into(),
            uid: "c".into(),
            seq: 2,
            granted_at: Some(Time(1_000_000)),
            token: 3,
            deadline: Time(1_060_000),
            remaining: Millis(54_998),
            reply: Reply::Plain,
        }]
    );
    assert!(!r.awaits_redelivery());
    r.redeliver();
    assert_eq!(r.poll_output(), None, "redelivery happens once");
}

/// Folds the changes recorded so far into `snap`.
fn fold_into(engine: &mut Engine, snap: &mut Snapshot) {
    let mut changes = Vec::new();
    engine.take_changes(&mut changes);
    for c in changes {
        snap.apply(c);
    }
}

fn delivered(channel: &str, uid: &str, seq: u64) -> Input {
    Input::Delivered {
        channel: channel.into(),
        uid: uid.into(),
        seq,
    }
}

/// The broker acknowledged `a`'s `go` before the crash, not `b`'s: after a restart only `b`
/// hears `go` again, and `a` keeps its slot without a second `go` (a worker of the original
/// protocol would run it twice).
#[test]
fn restore_says_go_again_only_to_grants_the_broker_never_acknowledged() {
    let mut h = Harness::new(opts(2, 0, &[]));
    h.engine.record_changes(true);
    h.register("a", 60_000);
    h.register("b", 60_000);
    h.register("w", 60_000);
    let mut snap = Snapshot::default();
    fold_into(&mut h.engine, &mut snap);
    h.engine.handle(Time(1_000_010), delivered("c", "a", 0));
    // A stale acknowledgement (wrong sequence number) changes nothing.
    h.engine.handle(Time(1_000_010), delivered("c", "b", 7));
    fold_into(&mut h.engine, &mut snap);
    let job = |s: &Snapshot, uid: &str| {
        s.channels["c"]
            .jobs
            .values()
            .find(|j| &*j.uid == uid)
            .cloned()
            .unwrap()
    };
    assert!(job(&snap, "a").delivered);
    assert!(!job(&snap, "b").delivered);
    assert_eq!(job(&snap, "a").granted_at, Some(Time(1_000_000)));
    assert_eq!(
        h.engine.export().channels["c"].jobs,
        snap.channels["c"].jobs,
        "the journal folds to what the engine holds"
    );

    let o = opts(2, 0, &[]);
    let mut r = Engine::new(Box::new(move |_| o.clone()));
    r.restore(Time(1_002_000), snap, &mut NoPolicies);
    assert_eq!(r.poll_output(), None, "both slots still held: w waits");
    r.redeliver();
    let again: Vec<Output> = std::iter::from_fn(|| r.poll_output()).collect();
    assert_eq!(
        again,
        [Output::GoAgain {
            channel: "c".into(),
            uid: "b".into(),
            seq: 1,
            granted_at: Some(Time(1_000_000)),
            token: 2,
            deadline: Time(1_060_000),
            remaining: Millis(58_000),
            reply: Reply::Plain,
        }]
    );
    assert_eq!(r.waiting("c"), ["w".into()] as [std::sync::Arc<str>; 1]);
}

/// After the broker lost the daemon's session, only running jobs whose `go` was never
/// acknowledged are told again; an acknowledgement that arrives before the re-send (the `go`
/// went out on the new connection) cancels it.
#[test]
fn a_lost_broker_session_says_go_again_only_to_unacknowledged_grants() {
    let mut h = Harness::new(opts(3, 0, &[]));
    h.register("a", 60_000);
    h.register("b", 60_000);
    h.register("c", 60_000);
    h.engine.handle(Time(1_000_001), delivered("c", "a", 0));
    assert_eq!(h.engine.redeliver_running(), 2);
    h.engine.handle(Time(1_000_002), delivered("c", "c", 2));
    h.engine.redeliver();
    let again: Vec<String> = std::iter::from_fn(|| h.engine.poll_output())
        .filter_map(|o| match o {
            Output::GoAgain { uid, .. } => Some(uid.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(again, ["b"]);
}

/// An acknowledgement for a grant that ended, or for a uid registered again since, is ignored:
/// it must not mark the new grant as delivered.
#[test]
fn an_acknowledgement_of_an_earlier_grant_does_not_mark_a_new_one() {
    let mut h = Harness::new(opts(1, 0, &[]));
    h.register("a", 60_000);
    h.engine.handle(
        Time(1_000_001),
        Input::Finished {
            channel: "c".into(),
            uid: "a".into(),
            token: None,
        },
    );
    h.register("a", 60_000);
    h.engine.handle(Time(1_000_002), delivered("c", "a", 0));
    assert_eq!(
        h.engine.redeliver_running(),
        1,
        "the new grant (seq 1) is not delivered"
    );
}
