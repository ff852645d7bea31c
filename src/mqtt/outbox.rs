//! The daemon's publishing side: a task that hands the driver's publishes and acknowledgements
//! to rumqttc, so that the driver never waits on the MQTT task.
//!
//! Why a task of its own: the MQTT task awaits room in the bounded channel to the driver (that
//! is what pushes back on a flood: it stops reading the socket). rumqttc's request channel, which
//! [`AsyncClient::publish`] and [`AsyncClient::ack`] await, is drained only by that same task's
//! `EventLoop::poll`. If the driver awaited `publish` itself, a full request channel (a burst of
//! grants, or the `state` pages of a large `infos`) while the channel to the driver is full would
//! stall both for good: the MQTT task waits for the driver, the driver for the MQTT task. Here the
//! driver only pushes onto an unbounded queue; this task is the one that waits for rumqttc. The
//! waits then form a chain, never a cycle: outbox -> MQTT task -> driver, and the driver waits on
//! neither, so it always drains the channel to the driver, and the MQTT task always polls again.
//!
//! Being the one caller of [`AsyncClient::publish`], this task also tells the MQTT task's
//! delivery tracker what each publish is, right before requesting it, so the tracker sees the
//! publishes in the order rumqttc takes them (see [`super::delivery`]).
//!
//! The queue holds decisions the driver made (each a response to a request it read through the
//! bounded channel, or to a timer), in order, publishes and acknowledgements interleaved as the
//! driver released them. Its depth is the `coordinosaur_publish_backlog` gauge.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rumqttc::{AsyncClient, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::warn;

use super::delivery::Sent;
use super::Ack;

/// One thing for the broker, in the order the driver decided it.
#[derive(Debug)]
enum Request {
    /// Publish at QoS 1; `sent` says what it is, for the delivery tracker.
    Publish {
        sent: Sent,
        topic: String,
        payload: Vec<u8>,
        retain: bool,
    },
    /// Acknowledge a received message.
    Ack(Ack),
}

/// The driver's end: never waits.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Request>,
    /// Requests queued and not yet handed to rumqttc.
    depth: Arc<AtomicUsize>,
}

impl Outbox {
    /// Starts the task that feeds `client`. It ends once every [`Outbox`] is dropped and the
    /// queue is empty.
    pub fn start(
        client: AsyncClient,
        tracker: mpsc::UnboundedSender<Sent>,
    ) -> (Outbox, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let depth = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(run(client, rx, depth.clone(), tracker));
        (Outbox { tx, depth }, task)
    }

    /// Queues a QoS 1 publish of what `sent` says.
    pub fn publish(&self, sent: Sent, topic: String, payload: Vec<u8>) {
        self.push(Request::Publish {
            sent,
            topic,
            payload,
            retain: false,
        });
    }

    /// Queues a retained QoS 1 publish (a record for late subscribers, not a decision).
    pub fn publish_retained(&self, topic: String, payload: Vec<u8>) {
        self.push(Request::Publish {
            sent: Sent::Other,
            topic,
            payload,
            retain: true,
        });
    }

    /// Queues the acknowledgement of a received message.
    pub fn ack(&self, ack: Ack) {
        self.push(Request::Ack(ack));
    }

    fn push(&self, request: Request) {
        self.depth.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(request).is_err() {
            // Only after the task ended, i.e. at shutdown.
            self.depth.fetch_sub(1, Ordering::Relaxed);
            warn!("publish after the outbox closed; dropped");
        }
    }
}

async fn run(
    client: AsyncClient,
    mut rx: mpsc::UnboundedReceiver<Request>,
    depth: Arc<AtomicUsize>,
    tracker: mpsc::UnboundedSender<Sent>,
) {
    while let Some(request) = rx.recv().await {
        let left = depth.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        metrics::gauge!("coordinosaur_publish_backlog").set(left as f64);
        match request {
            Request::Publish {
                sent,
                topic,
                payload,
                retain,
            } => {
                // Before the request: the tracker must find it when rumqttc sends the publish.
                // If the MQTT task is gone, so is the event loop, and the publish fails too.
                let _ = tracker.send(sent);
                if let Err(e) = client
                    .publish(topic.as_str(), QoS::AtLeastOnce, retain, payload)
                    .await
                {
                    warn!(topic, cause = %e, "publish failed");
                }
            }
            Request::Ack(ack) => {
                if let Err(e) = client.ack(ack.packet()).await {
                    warn!(cause = %e, "acknowledgement not sent");
                }
            }
        }
    }
}
