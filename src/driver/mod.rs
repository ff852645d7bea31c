//! The one task that owns the [`Engine`]: a thin `select!` that feeds inputs and the current
//! time in, sleeps exactly until the next deadline, and hands what comes out to a [`Sink`]. It
//! is the only reader of the clock ([`Clock`]). Its decisions live in pure parts beside the
//! engine, with the engine's shape and injected time: [`CommitGate`] (what waits for the
//! journal) and [`Resend`] (when to say `go` again). `events` holds what each event does,
//! `publish` the way from decisions to the journal and the [`Sink`].

mod clock;
mod events;
mod gate;
mod publish;
mod redelivery;
mod resend;
mod summary;

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

pub use clock::Clock;
pub use gate::CommitGate;
pub use redelivery::RedeliveryGuard;
pub use resend::{LostSession, Resend, Resent, RESUBSCRIBE_GRACE, SYNC_PATIENCE};
pub use summary::{Report, Summary, SUMMARY_EVERY};

use crate::config_reload::NewConfig;
use crate::engine::{Change, Engine, NoPolicies, Output, Policies, Snapshot, Time};
use crate::metrics::Recorder;
use crate::mqtt::{Ack, Inbound};
use crate::policy::hot_reload::Update;
use crate::policy::PolicyHost;
use crate::state::{Journal, Registered};

/// The policy host and the stream of reloaded policy files, when any channel uses a policy.
#[derive(Debug)]
pub struct PolicyRuntime {
    /// Runs the policies behind the engine's hooks.
    pub host: PolicyHost,
    /// Recompiled policy files from the watcher.
    pub updates: mpsc::UnboundedReceiver<Update>,
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
    /// Reloaded configs, with the new policy files they name already compiled.
    pub configs: mpsc::UnboundedReceiver<NewConfig>,
    /// Channel labels for metrics.
    pub metrics: Recorder,
    /// The journal, the state restored from it and the registrations it applied last, if
    /// persistence is on.
    pub state: Option<(Journal, Snapshot, Vec<Registered>)>,
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
    /// Outputs and acknowledgements waiting for the journal batch they depend on.
    gate: CommitGate<Held>,
    /// When to say `go` again to jobs that may have lost it.
    resend: Resend,
    /// The periodic activity line.
    summary: Summary,
    /// Registrations the journal applied, against the broker's redeliveries after a crash.
    redelivery: RedeliveryGuard,
    /// Acknowledgements of the messages handled in the current event.
    acks: Vec<Ack>,
    /// Reused buffer for the engine's changes.
    changes: Vec<Change>,
    /// Reused buffer for the engine's outputs of the current event.
    outs: Vec<Output>,
    /// Test-only fault point ([`ABORT_BEFORE_GO`]): the uid whose first `go` ends the process.
    abort_before_go: Option<String>,
    /// The topic prefix, for log lines.
    prefix: String,
    /// Why this process may no longer publish (another leader took over), once it may not.
    deposed: Option<String>,
}

/// How [`run`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Shutdown was asked for, or the inbound channel closed.
    Shutdown,
    /// This leader lost its lease or was fenced: it published nothing after that.
    Deposed(String),
}

/// Environment variable naming a uid: the daemon aborts, as a crash would, right before
/// publishing that job's first `go` (after its grant is journaled). For the fault tests of the
/// window between journal and broker; unset in any real deployment.
pub const ABORT_BEFORE_GO: &str = "COORDINOSAUR_FAULT_ABORT_BEFORE_GO";

/// At most this many queued messages are handled as one event (one journal batch).
const INBOUND_BATCH: usize = 64;

impl<S: Sink> Driver<S> {
    fn split(&mut self) -> (&mut Engine, &mut dyn Policies) {
        let hooks: &mut dyn Policies = match &mut self.policies {
            Some(rt) => &mut rt.host,
            None => &mut self.none,
        };
        (&mut self.engine, hooks)
    }
}

/// Runs the engine until `shutdown` completes, the inbound channel closes, or (with the
/// JetStream journal) this process stops being the leader.
pub async fn run(
    engine: Engine,
    clock: Clock,
    mut inbound: mpsc::Receiver<Inbound>,
    sink: impl Sink,
    control: Control,
    shutdown: impl Future,
) -> Stopped {
    tokio::pin!(shutdown);
    let Control {
        policies,
        mut configs,
        metrics,
        state,
        prefix,
    } = control;
    let mut d = Driver::new(engine, clock, sink, policies, metrics, prefix);
    if let Some(state) = state {
        d.restore(state).await;
    }
    // One sleep for the engine's, the resend schedule's, the summary's and the journal's
    // deadlines, re-armed only when the earliest of them changes.
    let far = Duration::from_secs(86_400 * 365);
    let sleep = tokio::time::sleep(far);
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;
    let mut received = Vec::with_capacity(INBOUND_BATCH);
    loop {
        let next = d.next_wake();
        if next != armed {
            sleep
                .as_mut()
                .reset(next.unwrap_or_else(|| Instant::now() + far));
            armed = next;
        }
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            // Every request already queued, up to a bound, makes one event: one journal batch
            // and one wake of its writer for them all, instead of one each.
            n = inbound.recv_many(&mut received, INBOUND_BATCH) => {
                if n == 0 {
                    break;
                }
                for msg in received.drain(..) {
                    d.inbound(msg).await;
                }
            }
            _ = &mut sleep, if armed.is_some() => {
                armed = None;
                d.timeout();
            }
            Some(config) = configs.recv() => d.config(config),
            Some(update) = next_update(&mut d.policies) => d.policy_update(update),
            fenced = journal_event(&mut d.journal) => {
                if let Some(reason) = fenced {
                    d.deposed = Some(reason);
                }
            }
        }
        d.flush().await;
        d.release(None).await;
        if let Some(reason) = d.deposed.take() {
            // Nothing more goes out: what is held stays unpublished (the next leader owns it).
            return Stopped::Deposed(reason);
        }
    }
    d.close().await;
    debug!("driver stopped");
    Stopped::Shutdown
}

impl<S: Sink> Driver<S> {
    fn new(
        engine: Engine,
        clock: Clock,
        sink: S,
        policies: Option<PolicyRuntime>,
        metrics: Recorder,
        prefix: String,
    ) -> Driver<S> {
        Driver {
            engine,
            clock,
            sink,
            policies,
            none: NoPolicies,
            metrics,
            touched: Vec::new(),
            journal: None,
            gate: CommitGate::default(),
            resend: Resend::default(),
            summary: Summary::default(),
            redelivery: RedeliveryGuard::default(),
            acks: Vec::new(),
            changes: Vec::new(),
            outs: Vec::new(),
            abort_before_go: std::env::var(ABORT_BEFORE_GO).ok(),
            prefix,
            deposed: None,
        }
    }

    /// Starts from the journal's state: the engine restored (leases and quota windows as
    /// recorded), and what the restore decides published once committed.
    async fn restore(&mut self, (journal, snapshot, recent): (Journal, Snapshot, Vec<Registered>)) {
        self.journal = Some(journal);
        self.redelivery = RedeliveryGuard::new(recent, self.clock.now());
        self.engine.record_changes(true);
        let now = self.clock.now();
        let (engine, hooks) = self.split();
        engine.restore(now, snapshot, hooks);
        self.flush().await;
        self.release(None).await;
    }

    /// The earliest of the engine's, the resend schedule's and the summary's deadlines.
    fn next_deadline(&self) -> Option<Time> {
        earliest(
            earliest(
                self.engine.next_deadline(),
                self.resend.next_deadline(&self.engine),
            ),
            self.summary.next_deadline(),
        )
    }

    /// When to wake up next: the earliest of [`Self::next_deadline`] (engine time) and the
    /// journal's (a batch held for a shared sync).
    fn next_wake(&self) -> Option<Instant> {
        let engine = self.next_deadline().map(|t| self.clock.instant_of(t));
        let journal = self
            .journal
            .as_ref()
            .and_then(Journal::deadline)
            .map(Instant::from_std);
        earliest(engine, journal)
    }

    /// Lets the writer finish what was decided, then publishes what it committed.
    async fn close(&mut self) {
        let Some(journal) = self.journal.take() else {
            return;
        };
        let held = self.gate.held();
        let committed = journal.close(Duration::from_secs(5)).await;
        self.release(Some(committed)).await;
        if self.gate.held() > 0 {
            warn!(
                unpublished = self.gate.held(),
                "decisions the journal could not commit were not published"
            );
        }
        debug!(held, "journal closed");
    }
}

/// The earlier of two optional deadlines.
fn earliest<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Completes when the journal commits more (`None`) or is fenced (the reason); never without
/// a journal.
async fn journal_event(journal: &mut Option<Journal>) -> Option<String> {
    match journal {
        Some(j) => j.next_event().await,
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

/// One line per output, under the target `coordinosaur::driver` (the fault checker and operators'
/// filters read these lines: keep them in this module). Per-job routine (grants, ends, state replies) at `debug`; what an
/// operator should see one by one (a repeated `go`, an expiry, a refusal) at `info`; the
/// [`Summary`] gives the rest at `info` once per period.
pub(super) fn log_output(prefix: &str, out: &Output) {
    match out {
        Output::Go {
            channel,
            uid,
            at,
            waited,
            token,
            ..
        } => debug!(%channel, %uid, waited_ms = waited.0, granted_at = at.0, token, "go"),
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
        Output::AllStates(all) => debug!(channels = all.len(), "state of all channels"),
        Output::Position { channel, position } => {
            debug!(%channel, uid = position.uid, position = position.position, held_by = %position.held_by, "position")
        }
        Output::State(s) => debug!(
            channel = s.channel,
            running = s.running_count,
            waiting = s.waiting,
            "state"
        ),
    }
}

/// The summary line of one period.
pub(super) fn log_report(r: &Report) {
    let busiest = r
        .busiest
        .iter()
        .map(|(c, n)| format!("{c}:{n}"))
        .collect::<Vec<_>>()
        .join(" ");
    info!(
        period_s = r.period.0 / 1000,
        grants = r.grants,
        busiest,
        ended = r.ended,
        expired = r.expired,
        rejected = r.rejected,
        go_again = r.again,
        "activity"
    );
}

#[cfg(test)]
mod tests;
