//! The driver loop with paused tokio time and a collecting [`Sink`]: inputs go in through the
//! channel the MQTT task would use, outputs are recorded with the (paused) time they came out.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio::time::{advance, Instant};

use super::*;
use crate::engine::{ChannelOptions, Input, Millis, Registration, Snapshot};
use crate::mqtt::Ack;

/// What the driver handed to the sink, with when (paused time since the test's start).
#[derive(Clone, Default)]
struct Collect {
    seen: Arc<Mutex<Vec<(Duration, String)>>>,
    /// Packet ids acknowledged, with when (apart from `seen`, which most tests compare whole).
    acks: Arc<Mutex<Vec<(Duration, u16)>>>,
    start: Arc<Mutex<Option<Instant>>>,
}

impl Collect {
    fn push(&self, what: String) {
        let start = *self.start.lock().unwrap().get_or_insert_with(Instant::now);
        self.seen.lock().unwrap().push((start.elapsed(), what));
    }

    fn take(&self) -> Vec<(Duration, String)> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    fn take_acks(&self) -> Vec<(Duration, u16)> {
        std::mem::take(&mut *self.acks.lock().unwrap())
    }
}

impl Sink for Collect {
    async fn send(&mut self, output: Output) {
        let text = match output {
            Output::Go { uid, .. } => format!("go {uid}"),
            Output::GoAgain { uid, .. } => format!("go again {uid}"),
            Output::Expired { uid, .. } => format!("expired {uid}"),
            Output::Rejected { uid, .. } => format!("rejected {uid}"),
            Output::Ended { .. }
            | Output::State(_)
            | Output::AllStates(_)
            | Output::Stale { .. }
            | Output::Position { .. } => return,
        };
        self.push(text);
    }

    async fn ack(&mut self, ack: Ack) {
        let start = *self.start.lock().unwrap().get_or_insert_with(Instant::now);
        self.acks
            .lock()
            .unwrap()
            .push((start.elapsed(), ack.packet().pkid));
    }

    async fn mark(&mut self) {
        self.push("mark".into());
    }
}

struct Running {
    inbound: mpsc::Sender<Inbound>,
    sink: Collect,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<super::Stopped>,
    _configs: mpsc::UnboundedSender<crate::config_reload::NewConfig>,
}

impl Running {
    fn send(&self, msg: Inbound) {
        self.inbound
            .try_send(msg)
            .expect("driver alive, room in the channel");
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        assert_eq!(
            self.task.await.expect("driver task"),
            super::Stopped::Shutdown
        );
    }
}

fn start(engine: Engine) -> Running {
    start_with(engine, None)
}

fn start_with(
    engine: Engine,
    state: Option<(Journal, Snapshot, Vec<crate::state::Registered>)>,
) -> Running {
    let sink = Collect::default();
    *sink.start.lock().unwrap() = Some(Instant::now());
    let (inbound, rx) = mpsc::channel(64);
    let (configs_tx, configs) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let control = Control {
        policies: None,
        configs,
        metrics: Recorder::new(10),
        state,
        prefix: "coordinosaur".into(),
    };
    let task = tokio::spawn(run(
        engine,
        Clock::new(),
        rx,
        sink.clone(),
        control,
        stopped,
    ));
    Running {
        inbound,
        sink,
        stop: Some(stop),
        task,
        _configs: configs_tx,
    }
}

fn engine(max: u32) -> Engine {
    let opts = ChannelOptions {
        max_concurrent_jobs: max,
        ..ChannelOptions::default()
    };
    Engine::new(Box::new(move |_| opts.clone()))
}

fn register(uid: &str, timeout_ms: u64) -> Inbound {
    Inbound::Input(
        Input::Register(Registration {
            channel: "c".into(),
            uid: uid.into(),
            timeout: Millis(timeout_ms),
            priority: 0,
            meta: None,
            reply: Default::default(),
            cost: 1,
            progress: false,
        }),
        None,
    )
}

/// Lets the driver task run until it waits again (paused time does not move meanwhile).
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test(start_paused = true)]
async fn a_lease_ends_on_its_millisecond_and_the_slot_goes_to_the_next_job() {
    let d = start(engine(1));
    d.send(register("a", 1_000));
    d.send(register("b", 1_000));
    settle().await;
    assert_eq!(d.sink.take(), [(ms(0), "go a".to_string())]);
    advance(ms(999)).await;
    settle().await;
    assert!(d.sink.take().is_empty(), "nothing before the lease ends");
    advance(ms(1)).await;
    settle().await;
    assert_eq!(
        d.sink.take(),
        [
            (ms(1_000), "expired a".to_string()),
            (ms(1_000), "go b".to_string())
        ]
    );
    d.stop().await;
}

/// One running job restored without an acknowledged `go`: said again once the sync marker is
/// back, and not before; the marker is published on every connect.
#[tokio::test(start_paused = true)]
async fn a_restored_job_hears_go_again_only_after_the_sync_marker() {
    let now = Clock::new().now();
    let mut before = engine(1);
    before.record_changes(true);
    before.handle(now, register_input("a"));
    let mut changes = Vec::new();
    before.take_changes(&mut changes);
    let mut snap = Snapshot::default();
    for c in changes {
        snap.apply(c);
    }
    let mut e = engine(1);
    e.restore(now, snap, &mut NoPolicies);
    let d = start(e);
    d.send(Inbound::Connected {
        session_present: true,
        grants_lost: 0,
    });
    settle().await;
    assert_eq!(d.sink.take(), [(ms(0), "mark".to_string())]);
    advance(ms(2_000)).await;
    settle().await;
    assert!(d.sink.take().is_empty(), "no go again before the marker");
    d.send(Inbound::Synced(None));
    settle().await;
    let seen = d.sink.take();
    assert_eq!(seen, [(ms(2_000), "go again a".to_string())]);
    advance(SYNC_PATIENCE_DURATION).await;
    settle().await;
    assert!(d.sink.take().is_empty(), "said once");
    d.stop().await;
}

/// Without the marker, the repeat goes out at the give-up time.
#[tokio::test(start_paused = true)]
async fn without_the_marker_go_is_said_again_after_the_patience() {
    let mut e = engine(1);
    e.handle(Clock::new().now(), register_input("a"));
    let _ = std::iter::from_fn(|| e.poll_output()).count();
    let d = start(e);
    d.send(Inbound::Connected {
        session_present: true,
        grants_lost: 0,
    });
    settle().await;
    // A later connect without the session: the unacknowledged go of `a` is to be said again.
    d.send(Inbound::Connected {
        session_present: false,
        grants_lost: 1,
    });
    settle().await;
    assert_eq!(d.sink.take().len(), 2, "two marks");
    advance(SYNC_PATIENCE_DURATION - ms(1)).await;
    settle().await;
    assert!(d.sink.take().is_empty());
    advance(ms(1)).await;
    settle().await;
    assert_eq!(
        d.sink.take(),
        [(SYNC_PATIENCE_DURATION, "go again a".to_string())]
    );
    d.stop().await;
}

const SYNC_PATIENCE_DURATION: Duration = Duration::from_millis(SYNC_PATIENCE.0);

fn register_input(uid: &str) -> Input {
    Input::Register(Registration {
        channel: "c".into(),
        uid: uid.into(),
        timeout: Millis(3_600_000),
        priority: 0,
        meta: None,
        reply: Default::default(),
        cost: 1,
        progress: false,
    })
}

/// An event whose outputs are only logged (a `finished` that freed a slot nobody waits for)
/// lets its batch wait to share the next sync; anything published needs its batch at once.
#[test]
fn only_published_outputs_make_the_journal_sync_at_once() {
    use crate::engine::EndReason;
    use crate::state::Urgency;
    let ended = Output::Ended {
        channel: "c".into(),
        uid: "a".into(),
        reason: EndReason::Finished,
        was_running: true,
    };
    let expired = Output::Expired {
        channel: "c".into(),
        uid: "b".into(),
    };
    assert_eq!(publish::urgency(&[]), Urgency::Soon);
    assert_eq!(
        publish::urgency(std::slice::from_ref(&ended)),
        Urgency::Soon
    );
    assert_eq!(publish::urgency(&[ended, expired]), Urgency::Now);
}

/// With the file journal syncing on the driver's thread: a `finished` that frees a slot nobody
/// waits for is acknowledged at its batch's deadline (the driver wakes up for it), a `register`
/// that gets `go` at once, with its sync.
#[tokio::test(start_paused = true)]
async fn a_finished_that_frees_nothing_is_acknowledged_at_its_sync_deadline() {
    use crate::state::{Durability, DEFER_MAX};
    let tmp = tempfile::tempdir().unwrap();
    let (snapshot, _, mut journal) =
        crate::state::open(tmp.path(), Durability::Fsync, |_| usize::MAX).unwrap();
    // Syncs stay on the driver's thread however slow the disk is today: the times below are
    // the driver's (paused), not the writer thread's.
    journal.set_inline_sync_max(Duration::MAX);
    let d = start_with(
        engine(1),
        Some((Journal::File(Box::new(journal)), snapshot, Vec::new())),
    );
    d.send(Inbound::Input(register_input("a"), Some(Ack::for_test(1))));
    settle().await;
    assert_eq!(d.sink.take(), [(ms(0), "go a".to_string())]);
    assert_eq!(d.sink.take_acks(), [(ms(0), 1)]);
    let finished = Input::Finished {
        channel: "c".into(),
        uid: "a".into(),
        token: None,
    };
    d.send(Inbound::Input(finished, Some(Ack::for_test(2))));
    settle().await;
    assert!(d.sink.take_acks().is_empty(), "held for a shared sync");
    advance(DEFER_MAX - ms(1)).await;
    settle().await;
    assert!(d.sink.take_acks().is_empty(), "not before the deadline");
    advance(ms(1)).await;
    settle().await;
    assert_eq!(d.sink.take_acks(), [(DEFER_MAX, 2)]);
    assert!(d.sink.take().is_empty(), "nothing published for it");
    d.stop().await;
}
