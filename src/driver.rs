//! The one task that owns the [`Engine`]: it feeds inputs and the current time in, sleeps exactly
//! until the engine's next deadline, and publishes what comes out. It is the only reader of the
//! clock.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, QoS};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::engine::{Engine, NoPolicies, Output, Policies, Time};
use crate::mqtt::Inbound;
use crate::policy::reload::Update;
use crate::policy::PolicyHost;
use crate::protocol;

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

/// Where outputs go. The daemon publishes over MQTT; tests can collect them.
pub trait Sink {
    /// Delivers one output.
    fn send(&mut self, output: Output) -> impl Future<Output = ()> + Send;
}

/// Publishes outputs to the broker at QoS 1.
#[derive(Debug, Clone)]
pub struct MqttSink {
    /// The client whose event loop runs in the MQTT task.
    pub client: AsyncClient,
    /// First topic level.
    pub prefix: String,
}

impl Sink for MqttSink {
    async fn send(&mut self, output: Output) {
        let Some((topic, payload)) = protocol::encode(&self.prefix, &output) else {
            return;
        };
        if let Err(e) = self
            .client
            .publish(topic.as_str(), QoS::AtLeastOnce, false, payload)
            .await
        {
            warn!(topic, cause = %e, "publish failed");
        }
    }
}

/// Runs the engine until `shutdown` completes or the inbound channel closes.
pub async fn run(
    mut engine: Engine,
    clock: Clock,
    mut inbound: mpsc::UnboundedReceiver<Inbound>,
    mut sink: impl Sink,
    mut policies: Option<PolicyRuntime>,
    mut configs: mpsc::UnboundedReceiver<Config>,
    shutdown: impl Future,
) {
    tokio::pin!(shutdown);
    let mut none = NoPolicies;
    // One sleep, re-armed only when the engine's next deadline changes.
    let far = Duration::from_secs(86_400 * 365);
    let sleep = tokio::time::sleep(far);
    tokio::pin!(sleep);
    let mut armed: Option<Time> = None;
    loop {
        let next = engine.next_deadline();
        if next != armed {
            let wake = next.map_or_else(|| Instant::now() + far, |t| clock.instant_of(t));
            sleep.as_mut().reset(wake);
            armed = next;
        }
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            msg = inbound.recv() => match msg {
                Some(Inbound::Input(input)) => engine.handle_with(clock.now(), input, hooks(&mut policies, &mut none)),
                Some(Inbound::Rejected { topic, rejection }) => {
                    warn!(topic, reason = %rejection.error, uid = rejection.uid.as_deref(), "message refused");
                    if let Some(out) = rejection.to_output() {
                        publish(&mut sink, out).await;
                    }
                }
                None => break,
            },
            _ = &mut sleep, if armed.is_some() => {
                armed = None;
                engine.handle_timeout_with(clock.now(), hooks(&mut policies, &mut none));
            }
            Some(config) = configs.recv() => {
                apply_config(&mut engine, clock.now(), hooks(&mut policies, &mut none), config);
            }
            Some(update) = next_update(&mut policies) => {
                if let Some(rt) = policies.as_mut() {
                    apply_update(&mut engine, clock.now(), &mut rt.host, update);
                }
            }
        }
        while let Some(out) = engine.poll_output() {
            publish(&mut sink, out).await;
        }
    }
    debug!("driver stopped");
}

/// The hooks to hand the engine: the policy host, or the built-in behaviour.
fn hooks<'a>(
    policies: &'a mut Option<PolicyRuntime>,
    none: &'a mut NoPolicies,
) -> &'a mut dyn Policies {
    match policies {
        Some(rt) => &mut rt.host,
        None => none,
    }
}

/// The next reloaded policy file; never completes without a policy runtime.
async fn next_update(policies: &mut Option<PolicyRuntime>) -> Option<Update> {
    match policies {
        Some(rt) => rt.updates.recv().await,
        None => std::future::pending().await,
    }
}

/// Applies a reloaded config to every channel and logs what changed.
fn apply_config(engine: &mut Engine, now: Time, hooks: &mut dyn Policies, config: Config) {
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
fn apply_update(engine: &mut Engine, now: Time, host: &mut PolicyHost, update: Update) {
    let path = update.path;
    match update.result {
        Ok(compiled) => {
            let compile_ms = compiled.compile_time.as_millis();
            let moved = host.swap(compiled);
            engine.readmit(now, |o| o.policy.as_deref() == Some(path.as_path()), host);
            info!(
                policy = %path.display(),
                channels = moved.len(),
                compile_ms,
                took_ms = update.seen_at.elapsed().as_millis(),
                "policy swapped"
            );
        }
        Err(e) => {
            warn!(policy = %path.display(), cause = %e, "policy reload failed; the last good version stays")
        }
    }
}

async fn publish(sink: &mut impl Sink, out: Output) {
    match &out {
        Output::Go { channel, uid } => info!(%channel, %uid, "go"),
        Output::Expired { channel, uid } => info!(%channel, %uid, "lease expired"),
        Output::Rejected {
            channel,
            uid,
            reason,
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
    sink.send(out).await;
}
