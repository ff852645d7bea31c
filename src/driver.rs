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
use crate::engine::Input;
use crate::engine::{Engine, NoPolicies, Output, Policies, Time};
use crate::metrics::Recorder;
use crate::mqtt::Inbound;
use crate::policy::reload::Update;
use crate::policy::PolicyHost;
use crate::protocol::{self, Rejection};

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

/// What the driver listens to besides MQTT.
#[derive(Debug)]
pub struct Control {
    /// The policy host and reloaded policy files, if policies are enabled.
    pub policies: Option<PolicyRuntime>,
    /// Reloaded configs.
    pub configs: mpsc::UnboundedReceiver<Config>,
    /// Channel labels for metrics.
    pub metrics: Recorder,
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
}

impl<S: Sink> Driver<S> {
    fn input(&mut self, input: Input) {
        if let Some(channel) = input.channel() {
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

    /// Publishes every pending decision, then refreshes the gauges of the channels involved.
    async fn flush(&mut self) {
        while let Some(out) = self.engine.poll_output() {
            if let Some(channel) = out.channel() {
                if self.touched.last().map(String::as_str) != Some(channel) {
                    self.touched.push(channel.to_owned());
                }
            }
            self.publish(out).await;
        }
        self.touched.sort_unstable();
        self.touched.dedup();
        for channel in std::mem::take(&mut self.touched) {
            self.metrics.channel_gauges(&self.engine, &channel);
        }
    }

    async fn publish(&mut self, out: Output) {
        log_output(&out);
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
    } = control;
    let mut d = Driver {
        engine,
        clock,
        sink,
        policies,
        none: NoPolicies,
        metrics,
        touched: Vec::new(),
    };
    // One sleep, re-armed only when the engine's next deadline changes.
    let far = Duration::from_secs(86_400 * 365);
    let sleep = tokio::time::sleep(far);
    tokio::pin!(sleep);
    let mut armed: Option<Time> = None;
    loop {
        let next = d.engine.next_deadline();
        if next != armed {
            let wake = next.map_or_else(|| Instant::now() + far, |t| clock.instant_of(t));
            sleep.as_mut().reset(wake);
            armed = next;
        }
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            msg = inbound.recv() => match msg {
                Some(Inbound::Input(input)) => d.input(input),
                Some(Inbound::Rejected { topic, rejection }) => d.refused(topic, rejection).await,
                None => break,
            },
            _ = &mut sleep, if armed.is_some() => {
                armed = None;
                d.timeout();
            }
            Some(config) = configs.recv() => d.config(config),
            Some(update) = next_update(&mut d.policies) => d.policy_update(update),
        }
        d.flush().await;
    }
    debug!("driver stopped");
}

/// The next reloaded policy file; never completes without a policy runtime.
async fn next_update(policies: &mut Option<PolicyRuntime>) -> Option<Update> {
    match policies {
        Some(rt) => rt.updates.recv().await,
        None => std::future::pending().await,
    }
}

fn log_output(out: &Output) {
    match out {
        Output::Go {
            channel,
            uid,
            waited,
        } => info!(%channel, %uid, waited_ms = waited.0, "go"),
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
