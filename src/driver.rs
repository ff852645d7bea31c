//! The one task that owns the [`Engine`]: it feeds inputs and the current time in, sleeps exactly
//! until the engine's next deadline, and publishes what comes out. It is the only reader of the
//! clock.

use std::collections::VecDeque;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::engine::Input;
use crate::engine::{Change, Engine, NoPolicies, Output, Policies, Snapshot, Time};
use crate::metrics::Recorder;
use crate::mqtt::{Ack, Inbound};
use crate::policy::reload::Update;
use crate::policy::PolicyHost;
use crate::protocol::Rejection;
use crate::state::Journal;

/// The policy host and the stream of reloaded policy files, when any channel uses a policy.
#[derive(Debug)]
pub struct PolicyRuntime {
    /// Runs the policies behind the engine's hooks.
    pub host: PolicyHost,
    /// Recompiled policy files from the watcher.
    pub updates: mpsc::UnboundedReceiver<Update>,
}

/// Engine time: the wall clock at start-up plus monotonic time elapsed since, so leases mean
/// the same after a restart and paused-time tests still drive it.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall_at_start: u64,
    start: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Clock {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Clock {
            wall_at_start: u64::try_from(wall.as_millis()).unwrap_or(u64::MAX),
            start: Instant::now(),
        }
    }

    /// The current engine time.
    pub fn now(&self) -> Time {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        Time(self.wall_at_start.saturating_add(elapsed))
    }

    /// The instant at which engine time reaches `t`.
    pub fn instant_of(&self, t: Time) -> Instant {
        self.start + Duration::from_millis(t.0.saturating_sub(self.wall_at_start))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Where outputs go. The daemon publishes over MQTT ([`crate::mqtt::MqttSink`]); tests can
/// collect them.
pub trait Sink {
    /// Delivers one output.
    fn send(&mut self, output: Output) -> impl Future<Output = ()> + Send;

    /// Acknowledges a received message (its effects are journaled).
    fn ack(&mut self, ack: Ack) -> impl Future<Output = ()> + Send;

    /// Publishes this process's sync marker (after each connect): when it comes back
    /// ([`Inbound::Synced`]), every request the broker had queued for the daemon has been read.
    fn mark(&mut self) -> impl Future<Output = ()> + Send;
}

/// What waits for a journal batch to be committed.
#[derive(Debug)]
enum Held {
    /// A decision to publish.
    Out(Output),
    /// A received message to acknowledge.
    Ack(Ack),
}

/// What the driver listens to besides MQTT.
#[derive(Debug)]
pub struct Control {
    /// The policy host and reloaded policy files, if policies are enabled.
    pub policies: Option<PolicyRuntime>,
    /// Reloaded configs.
    pub configs: mpsc::UnboundedReceiver<Config>,
    /// Channel labels for metrics.
    pub metrics: Recorder,
    /// The journal and the state restored from it, if persistence is on.
    pub state: Option<(Journal, Snapshot)>,
    /// The topic prefix, to name request topics in warnings.
    pub prefix: String,
}

/// The engine and everything its decisions go through.
struct Driver<S> {
    engine: Engine,
    clock: Clock,
    sink: S,
    policies: Option<PolicyRuntime>,
    none: NoPolicies,
    metrics: Recorder,
    /// Channels whose gauges need refreshing after the current event.
    touched: Vec<String>,
    /// Where changes are recorded before their effects are published.
    journal: Option<Journal>,
    /// Outputs and acknowledgements waiting for the journal batch (by id) they depend on.
    held: VecDeque<(u64, Held)>,
    /// Acknowledgements of the messages handled in the current event.
    acks: Vec<Ack>,
    /// Reused buffer for the engine's changes.
    changes: Vec<Change>,
    /// Test-only fault point ([`ABORT_BEFORE_GO`]): the uid whose first `go` ends the process.
    abort_before_go: Option<String>,
    /// The topic prefix, for log lines.
    prefix: String,
}

/// Environment variable naming a uid: the daemon aborts, as a crash would, right before
/// publishing that job's first `go` (after its grant is journaled). For the fault tests of the
/// window between journal and broker; unset in any real deployment.
pub const ABORT_BEFORE_GO: &str = "COORDINOSAUR_FAULT_ABORT_BEFORE_GO";

impl<S: Sink> Driver<S> {
    fn input(&mut self, input: Input) {
        // A delivery changes no gauge; it comes once per grant.
        if let (Some(channel), false) = (input.channel(), matches!(input, Input::Delivered { .. }))
        {
            self.touched.push(channel.to_owned());
        }
        let now = self.clock.now();
        let (engine, hooks) = self.split();
        engine.handle_with(now, input, hooks);
    }

    fn timeout(&mut self) {
        let now = self.clock.now();
        let (engine, hooks) = self.split();
        engine.handle_timeout_with(now, hooks);
    }

    async fn refused(&mut self, topic: String, rejection: Rejection) {
        warn!(topic, reason = %rejection.error, uid = rejection.uid.as_deref(), "message refused");
        self.metrics
            .rejection(rejection.channel.as_deref().unwrap_or(""), "invalid");
        if let Some(out) = rejection.to_output() {
            self.publish(out).await;
        }
    }

    fn config(&mut self, config: Config) {
        let now = self.clock.now();
        let limits = config.limits.engine();
        if limits != self.engine.limits() {
            info!(?limits, "limits changed");
            self.engine.set_limits(limits);
        }
        let (engine, hooks) = self.split();
        let report = engine.reconfigure(
            now,
            Box::new(move |channel| config.channel_options(channel)),
            hooks,
        );
        for (channel, keys) in &report {
            info!(%channel, changed = ?keys, "channel reconfigured");
        }
        info!(channels_changed = report.len(), "config applied");
    }

    /// Swaps a reloaded policy in between two events and re-ranks the waiting jobs it governs.
    fn policy_update(&mut self, update: Update) {
        let now = self.clock.now();
        let Some(rt) = self.policies.as_mut() else {
            return;
        };
        let path = update.path;
        match update.result {
            Ok(compiled) => {
                let compile_ms = compiled.compile_time.as_millis();
                let moved = rt.host.swap(compiled);
                // Only channels that took the new version: one whose init refused it keeps its old
                // instance, and asking that one again would double-count in stateful policies.
                self.engine.readmit_channels(now, &moved, &mut rt.host);
                metrics::counter!("coordinosaur_policy_reloads_total", "result" => "ok")
                    .increment(1);
                info!(
                    policy = %path.display(),
                    channels = moved.len(),
                    compile_ms,
                    took_ms = update.seen_at.elapsed().as_millis(),
                    "policy swapped"
                );
            }
            Err(e) => {
                metrics::counter!("coordinosaur_policy_reloads_total", "result" => "error")
                    .increment(1);
                warn!(policy = %path.display(), cause = %e, "policy reload failed; the last good version stays");
            }
        }
    }

    fn split(&mut self) -> (&mut Engine, &mut dyn Policies) {
        let hooks: &mut dyn Policies = match &mut self.policies {
            Some(rt) => &mut rt.host,
            None => &mut self.none,
        };
        (&mut self.engine, hooks)
    }

    /// Publishes every pending decision, or with a journal, submits the changes behind them and
    /// holds them until committed; then refreshes the gauges of the channels involved.
    async fn flush(&mut self) {
        let hold = self.submit_changes();
        while let Some(out) = self.engine.poll_output() {
            if let Some(channel) = out.channel() {
                if self.touched.last().map(String::as_str) != Some(channel) {
                    self.touched.push(channel.to_owned());
                }
            }
            match hold {
                Some(id) => self.held.push_back((id, Held::Out(out))),
                None => self.publish(out).await,
            }
        }
        for ack in std::mem::take(&mut self.acks) {
            match hold {
                Some(id) => self.held.push_back((id, Held::Ack(ack))),
                None => self.sink.ack(ack).await,
            }
        }
        self.touched.sort_unstable();
        self.touched.dedup();
        for channel in std::mem::take(&mut self.touched) {
            self.metrics.channel_gauges(&self.engine, &channel);
        }
    }

    /// Hands the engine's new changes to the journal. Returns the batch id that this event's
    /// outputs must wait for: the new batch, or else the last one while it is not committed
    /// or earlier outputs are still held; `None` if they can go out at once.
    ///
    /// An event without changes still waits: its outputs can reveal earlier changes (a `state`
    /// reply counts jobs whose `register` had no output of its own), and nothing published may
    /// show what a crash could still undo, nor overtake what is held.
    fn submit_changes(&mut self) -> Option<u64> {
        let journal = self.journal.as_mut()?;
        self.engine.take_changes(&mut self.changes);
        if self.changes.is_empty() {
            let pending = journal.committed() < journal.last_id();
            return (pending || !self.held.is_empty()).then(|| journal.last_id());
        }
        let id = journal.submit(&self.changes);
        self.changes.clear();
        if journal.wants_compaction() {
            journal.compact(&self.engine.export());
        }
        Some(id)
    }

    /// Publishes the held outputs whose batches are now committed, in order.
    async fn release(&mut self) {
        if let Some(committed) = self.journal.as_ref().map(Journal::committed) {
            self.release_upto(committed).await;
        }
    }

    /// Publishes the held outputs of batches up to `committed`, in order.
    async fn release_upto(&mut self, committed: u64) {
        while self.held.front().is_some_and(|(id, _)| *id <= committed) {
            if let Some((_, held)) = self.held.pop_front() {
                self.let_go(held).await;
            }
        }
    }

    async fn let_go(&mut self, held: Held) {
        match held {
            Held::Out(out) => self.publish(out).await,
            Held::Ack(ack) => self.sink.ack(ack).await,
        }
    }

    async fn publish(&mut self, out: Output) {
        if let (Some(uid), Output::Go { uid: going, .. }) = (&self.abort_before_go, &out) {
            if **going == **uid {
                tracing::error!(%uid, "{ABORT_BEFORE_GO}: aborting before publishing go");
                std::process::abort();
            }
        }
        log_output(&self.prefix, &out);
        self.metrics.output(&out);
        self.sink.send(out).await;
    }
}

/// Runs the engine until `shutdown` completes or the inbound channel closes.
pub async fn run(
    engine: Engine,
    clock: Clock,
    mut inbound: mpsc::UnboundedReceiver<Inbound>,
    sink: impl Sink,
    control: Control,
    shutdown: impl Future,
) {
    tokio::pin!(shutdown);
    let Control {
        policies,
        mut configs,
        metrics,
        state,
        prefix,
    } = control;
    let mut d = Driver {
        engine,
        clock,
        sink,
        policies,
        none: NoPolicies,
        metrics,
        touched: Vec::new(),
        journal: None,
        held: VecDeque::new(),
        acks: Vec::new(),
        changes: Vec::new(),
        abort_before_go: std::env::var(ABORT_BEFORE_GO).ok(),
        prefix,
    };
    if let Some((journal, snapshot)) = state {
        d.journal = Some(journal);
        d.engine.record_changes(true);
        let now = d.clock.now();
        let (engine, hooks) = d.split();
        engine.restore(now, snapshot, hooks);
        d.flush().await;
        d.release().await;
    }
    // One sleep, re-armed only when the engine's next deadline changes.
    let far = Duration::from_secs(86_400 * 365);
    let sleep = tokio::time::sleep(far);
    tokio::pin!(sleep);
    let mut armed: Option<Time> = None;
    let mut resend = Resend::default();
    let mut was_connected = false;
    loop {
        let next = d.engine.next_deadline();
        if next != armed {
            let wake = next.map_or_else(|| Instant::now() + far, |t| clock.instant_of(t));
            sleep.as_mut().reset(wake);
            armed = next;
        }
        let resend_at = resend.due(d.engine.awaits_redelivery());
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            msg = inbound.recv() => match msg {
                Some(Inbound::Input(input, ack)) => {
                    d.acks.extend(ack);
                    d.input(input);
                }
                Some(Inbound::Rejected { topic, rejection, ack }) => {
                    d.acks.extend(ack);
                    d.refused(topic, rejection).await;
                }
                Some(Inbound::Ignored(ack)) => d.acks.push(ack),
                Some(Inbound::Delivered(grant)) => d.input(Input::Delivered {
                    channel: grant.channel,
                    uid: grant.uid,
                    seq: grant.seq,
                }),
                Some(Inbound::Connected { session_present, grants_lost }) => {
                    resend.synced = false;
                    d.sink.mark().await;
                    if !session_present && was_connected {
                        let unacknowledged = d.engine.redeliver_running();
                        if unacknowledged > 0 {
                            warn!(unacknowledged, grants_lost, "the broker lost our session (restarted without persistence?): go will be said again to running jobs whose go it never acknowledged, once the backlog is read and workers had {RESUBSCRIBE_GRACE:?} to subscribe again");
                            resend.not_before = Some(Instant::now() + RESUBSCRIBE_GRACE);
                        }
                    }
                    was_connected = true;
                    if d.engine.awaits_redelivery() && resend.give_up_at.is_none() {
                        resend.give_up_at = Some(Instant::now() + SYNC_PATIENCE);
                    }
                }
                Some(Inbound::Synced(ack)) => {
                    d.acks.extend(ack);
                    resend.synced = true;
                    debug!("synced: every request the broker queued for us has been read");
                }
                None => break,
            },
            _ = &mut sleep, if armed.is_some() => {
                armed = None;
                d.timeout();
            }
            Some(config) = configs.recv() => d.config(config),
            Some(update) = next_update(&mut d.policies) => d.policy_update(update),
            () = committed(&mut d.journal) => {}
            () = until(resend_at) => {
                if !resend.synced {
                    warn!(
                        "the sync marker did not come back within {SYNC_PATIENCE:?}; sending go \
                         again without knowing whether a finished is still queued (may the \
                         daemon's broker user publish to PREFIX/_coordinosaur/sync?)"
                    );
                }
                resend = Resend {
                    synced: resend.synced,
                    ..Resend::default()
                };
                d.engine.redeliver();
            }
        }
        d.flush().await;
        d.release().await;
    }
    if let Some(journal) = d.journal.take() {
        // Let the writer finish what was decided, then publish what it committed.
        let held = d.held.len();
        let committed = journal.close(Duration::from_secs(5));
        d.release_upto(committed).await;
        if !d.held.is_empty() {
            warn!(
                unpublished = d.held.len(),
                "decisions the journal could not commit were not published"
            );
        }
        debug!(held, "journal closed");
    }
    debug!("driver stopped");
}

/// How long after connecting the driver waits for its sync marker before re-sending restored
/// jobs' `go` anyway.
const SYNC_PATIENCE: Duration = Duration::from_secs(10);

/// After a broker lost every session, how long workers get to reconnect and subscribe again
/// before running jobs are told `go` once more.
const RESUBSCRIBE_GRACE: Duration = Duration::from_secs(1);

/// When to say `go` again to jobs whose `go` may be lost (restored after a restart, or running
/// when the broker lost the daemon's session): once the sync marker shows that the requests
/// queued for the daemon have been read, not before `not_before`, and at `give_up_at` at the
/// latest.
#[derive(Debug, Default)]
struct Resend {
    /// The marker of the current connection came back.
    synced: bool,
    /// Workers' grace to subscribe again after a lost broker session.
    not_before: Option<Instant>,
    /// Re-send even without the marker.
    give_up_at: Option<Instant>,
}

impl Resend {
    /// When the driver should re-send, if jobs wait for it.
    fn due(&self, waiting: bool) -> Option<Instant> {
        if !waiting {
            return None;
        }
        let ready = self
            .synced
            .then(|| self.not_before.unwrap_or_else(Instant::now));
        match (ready, self.give_up_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Completes at `deadline`; never without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Completes when the journal commits more; never without a journal.
async fn committed(journal: &mut Option<Journal>) {
    match journal {
        Some(j) => j.advanced().await,
        None => std::future::pending().await,
    }
}

/// The next reloaded policy file; never completes without a policy runtime.
async fn next_update(policies: &mut Option<PolicyRuntime>) -> Option<Update> {
    match policies {
        Some(rt) => rt.updates.recv().await,
        None => std::future::pending().await,
    }
}

fn log_output(prefix: &str, out: &Output) {
    match out {
        Output::Go {
            channel,
            uid,
            at,
            waited,
            token,
            ..
        } => info!(%channel, %uid, waited_ms = waited.0, granted_at = at.0, token, "go"),
        Output::GoAgain {
            channel,
            uid,
            granted_at,
            token,
            ..
        } => {
            info!(%channel, %uid, granted_at = granted_at.map(|t| t.0), token, "go again: the broker never acknowledged the first")
        }
        Output::Stale {
            channel,
            uid,
            action,
            token,
            live,
        } => {
            let topic = crate::protocol::request_topic(prefix, channel, action.as_str());
            match live {
                Some(live_token) => {
                    warn!(topic, %uid, token, live_token, "stale fencing token: request ignored")
                }
                None => {
                    warn!(topic, %uid, token, "stale fencing token: request ignored (the uid waits for a new grant)")
                }
            }
        }
        Output::Expired { channel, uid } => info!(%channel, %uid, "lease expired"),
        Output::Rejected {
            channel,
            uid,
            reason,
            ..
        } => info!(%channel, %uid, reason, "rejected"),
        Output::Ended {
            channel,
            uid,
            reason,
            was_running,
        } => debug!(%channel, %uid, ?reason, was_running, "ended"),
        Output::AllStates(all) => info!(channels = all.len(), "state of all channels"),
        Output::State(s) => info!(
            channel = s.channel,
            running = s.running_count,
            waiting = s.waiting,
            "state"
        ),
    }
}
