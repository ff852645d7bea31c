//! Unit tests, including a miniature host: a queue ordered by priority then
//! FIFO, a semaphore, and the hook calls the daemon makes.

use coordinosaur_policy::serde_json::json;

use super::*;

fn job(uid: &str, tenant: &str) -> Job {
    Job::new(uid, &json!({ "tenant": tenant }).to_string())
}

fn configured(cap: u64) -> FairShare {
    let mut policy = FairShare::default();
    policy
        .init(&json!({ "max_running_per_tenant": cap }))
        .unwrap();
    policy
}

/// The host as the WIT describes it, reduced to what the policy sees.
struct Host {
    policy: FairShare,
    max: usize,
    /// (priority, sequence, job): granted highest priority first, FIFO among equals.
    queue: Vec<(i64, u64, Job)>,
    running: Vec<Job>,
    seq: u64,
    /// uids in grant order.
    granted: Vec<String>,
}

impl Host {
    fn new(policy: FairShare, max: usize) -> Self {
        Self {
            policy,
            max,
            queue: Vec::new(),
            running: Vec::new(),
            seq: 0,
            granted: Vec::new(),
        }
    }

    fn state(&self) -> ChannelState {
        ChannelState {
            running: self.running.len() as u32,
            waiting: self.queue.len() as u32,
            max_concurrent_jobs: self.max as u32,
            ..ChannelState::default()
        }
    }

    fn register(&mut self, job: Job) {
        let state = self.state();
        match self.policy.admit(&job, &state) {
            Admission::Accept(priority) => {
                self.seq += 1;
                self.queue.push((priority, self.seq, job));
            }
            Admission::Reject(reason) => panic!("unexpected rejection: {reason}"),
        }
        self.grant();
    }

    /// Offer queued jobs in order while slots are free; deferred jobs stay.
    fn grant(&mut self) {
        self.queue.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut i = 0;
        while self.running.len() < self.max && i < self.queue.len() {
            let state = self.state();
            match self.policy.before_grant(&self.queue[i].2, &state) {
                Decision::Grant => {
                    let (_, _, job) = self.queue.remove(i);
                    self.granted.push(job.uid.clone());
                    self.running.push(job.clone());
                    self.event(EventKind::Granted, job);
                }
                Decision::Defer => i += 1,
                Decision::Veto(reason) => panic!("unexpected veto: {reason}"),
            }
        }
    }

    fn finish(&mut self, uid: &str) {
        let at = self
            .running
            .iter()
            .position(|j| j.uid == uid)
            .expect("running");
        let job = self.running.remove(at);
        self.event(EventKind::Finished, job);
        self.grant();
    }

    fn event(&mut self, kind: EventKind, job: Job) {
        let state = self.state();
        self.policy.on_event(&Event { kind, job }, &state);
    }
}

#[test]
fn tenants_alternate_whatever_the_registration_order() {
    // One slot, so grants happen one by one in queue order. "x" holds it
    // while everyone registers.
    let mut host = Host::new(configured(10), 1);
    host.register(job("x", "other"));
    for uid in ["a1", "a2", "a3", "a4"] {
        host.register(job(uid, "a"));
    }
    for uid in ["b1", "b2"] {
        host.register(job(uid, "b"));
    }
    host.register(job("c1", "c"));
    for uid in ["x", "a1", "b1", "c1", "a2", "b2", "a3"] {
        host.finish(uid);
    }
    assert_eq!(
        host.granted,
        ["x", "a1", "b1", "c1", "a2", "b2", "a3", "a4"]
    );
}

#[test]
fn an_idle_tenant_rejoins_at_the_current_round() {
    let mut host = Host::new(configured(10), 1);
    // "old" ran many jobs earlier; that history must not push it behind.
    for i in 0..50 {
        let uid = format!("old{i}");
        host.register(job(&uid, "old"));
        host.finish(&uid);
    }
    host.register(job("hold", "new"));
    for uid in ["n1", "n2", "n3"] {
        host.register(job(uid, "new"));
    }
    host.register(job("o1", "old"));
    for uid in ["hold", "n1", "o1", "n2"] {
        host.finish(uid);
    }
    assert_eq!(host.granted[50..], ["hold", "n1", "o1", "n2", "n3"]);
}

#[test]
fn a_tenant_at_its_cap_is_deferred_and_others_get_the_slot() {
    let mut host = Host::new(configured(2), 4);
    for uid in ["a1", "a2", "a3", "a4"] {
        host.register(job(uid, "a"));
    }
    // Four free slots, but "a" may hold only two.
    assert_eq!(host.granted, ["a1", "a2"]);
    assert_eq!(host.policy.running("a"), 2);
    host.register(job("b1", "b"));
    assert_eq!(host.granted, ["a1", "a2", "b1"]);
    host.finish("a1");
    assert_eq!(host.granted, ["a1", "a2", "b1", "a3"]);
    assert_eq!(host.policy.running("a"), 2);
    assert_eq!(host.queue.len(), 1);
}

#[test]
fn running_counts_follow_events_and_never_underflow() {
    let mut policy = configured(1);
    let state = ChannelState::default();
    let a = job("a1", "a");
    let ev = |kind| Event {
        kind,
        job: a.clone(),
    };
    policy.on_event(&ev(EventKind::Granted), &state);
    assert_eq!(
        policy.before_grant(&job("a2", "a"), &state),
        Decision::Defer
    );
    assert_eq!(
        policy.before_grant(&job("b1", "b"), &state),
        Decision::Grant
    );
    policy.on_event(&ev(EventKind::Finished), &state);
    for kind in [EventKind::Finished, EventKind::Aborted, EventKind::Expired] {
        policy.on_event(&ev(EventKind::Granted), &state);
        policy.on_event(&ev(kind), &state);
        assert_eq!(policy.running("a"), 0, "{kind:?}");
    }
    // An end without a start (the instance was reloaded in between).
    policy.on_event(&ev(EventKind::Expired), &state);
    assert_eq!(policy.running("a"), 0);
    assert_eq!(
        policy.before_grant(&job("a2", "a"), &state),
        Decision::Grant
    );
}

#[test]
fn jobs_without_tenant_share_the_default_tenant() {
    let mut policy = configured(1);
    let state = ChannelState::default();
    let anon = Job::new("n1", "{}");
    assert_eq!(policy.admit(&anon, &state), Admission::Accept(0));
    policy.on_event(
        &Event {
            kind: EventKind::Granted,
            job: anon,
        },
        &state,
    );
    assert_eq!(policy.running(DEFAULT_TENANT), 1);
    assert_eq!(
        policy.before_grant(&job("n2", "default"), &state),
        Decision::Defer
    );
}

#[test]
fn a_non_string_tenant_is_rejected() {
    let mut policy = configured(1);
    let reply = policy.admit(&Job::new("a", r#"{"tenant":7}"#), &ChannelState::default());
    assert_eq!(
        reply,
        Admission::Reject(r#"field "tenant" must be a string, got 7"#.to_owned())
    );
}

#[test]
fn cancelled_jobs_are_forgotten() {
    let mut policy = configured(1);
    let state = ChannelState::default();
    policy.admit(&job("a1", "a"), &state);
    policy.on_event(
        &Event {
            kind: EventKind::Cancelled,
            job: job("a1", "a"),
        },
        &state,
    );
    assert!(policy.rounds.waiting.is_empty());
}

#[test]
fn config_needs_a_positive_integer_cap() {
    assert_eq!(parse_config(&json!({ "max_running_per_tenant": 3 })), Ok(3));
    assert_eq!(
        parse_config(&json!({})),
        Err("max_running_per_tenant is required".to_owned())
    );
    for bad in [json!(0), json!(-1), json!(1.5), json!("2"), json!(u64::MAX)] {
        let err = parse_config(&json!({ "max_running_per_tenant": bad })).unwrap_err();
        assert!(
            err.starts_with("max_running_per_tenant must be a positive integer"),
            "{err}"
        );
    }
    let err = parse_config(&json!({ "max_running_per_tenant": 1, "typo": 1 })).unwrap_err();
    assert!(err.contains("\"typo\""), "{err}");
    assert!(parse_config(&json!([1])).is_err());
}
