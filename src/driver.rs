//! The one task that owns the [`Engine`]: it feeds inputs and the current time in, sleeps exactly
//! until the engine's next deadline, and publishes what comes out. It is the only reader of the
//! clock.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, QoS};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::engine::{Engine, Output, Time};
use crate::mqtt::Inbound;
use crate::protocol;

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
    shutdown: impl Future,
) {
    tokio::pin!(shutdown);
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
                Some(Inbound::Input(input)) => engine.handle(clock.now(), input),
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
                engine.handle_timeout(clock.now());
            }
        }
        while let Some(out) = engine.poll_output() {
            publish(&mut sink, out).await;
        }
    }
    debug!("driver stopped");
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
        Output::State(s) => info!(
            channel = s.channel,
            running = s.running_count,
            waiting = s.waiting,
            "state"
        ),
    }
    sink.send(out).await;
}
