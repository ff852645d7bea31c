//! One short-lived MQTT connection for a client command, with bounded waits.
//!
//! As in the daemon, one task polls rumqttc's `EventLoop` and never awaits the `AsyncClient`;
//! the command only uses the non-blocking `try_*` requests. The task forwards what the command
//! needs (messages, SUBACKs, PUBACKs, the end of the connection) through a channel. It does not
//! reconnect: a client with a will has lost its job once the broker saw it go, so a dropped
//! connection is the command's to report, not to paper over.

use std::collections::VecDeque;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, Outgoing, Packet, QoS, SubscribeFilter,
    SubscribeReasonCode,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{timeout, timeout_at, Instant};

use super::{CliError, Endpoint};

/// How long to wait for the TCP connection plus CONNACK, and for a SUBACK.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the polling task reports.
#[derive(Debug)]
enum Report {
    Connected,
    Message(Message),
    SubAck(Vec<SubscribeReasonCode>),
    PubAck,
    /// The connection failed or ended; carries the cause.
    Closed(String),
}

/// A PUBLISH received on a subscribed topic.
#[derive(Debug, Clone)]
pub struct Message {
    /// The topic it arrived on.
    pub topic: String,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// A connected client. Dropping it without [`Session::disconnect`] closes the socket without a
/// DISCONNECT, so the broker publishes the will, if any.
pub struct Session {
    /// Request side of rumqttc.
    client: AsyncClient,
    /// Reports from the polling task.
    reports: mpsc::UnboundedReceiver<Report>,
    /// Messages received while waiting for an acknowledgement, oldest first.
    buffer: VecDeque<Message>,
    /// QoS 1 publishes requested so far.
    published: u64,
    /// PUBACKs received so far; `acked == published` means nothing is in flight.
    acked: u64,
    /// `host:port`, for messages.
    broker: String,
    /// Set once the connection ended; later waits fail at once.
    closed: Option<String>,
    /// The polling task; it ends after the DISCONNECT is written or the connection drops.
    task: JoinHandle<()>,
}

impl Session {
    /// Connects as `client_id` (clean session, TCP_NODELAY) with an optional last will, and
    /// returns once the broker sent CONNACK, or fails within [`CONNECT_TIMEOUT`].
    pub async fn connect(
        endpoint: &Endpoint,
        client_id: &str,
        will: Option<LastWill>,
    ) -> Result<Session, CliError> {
        let mut opts = endpoint.broker.options(client_id);
        opts.set_clean_session(true)
            .set_max_packet_size(1 << 20, 1 << 20);
        if let Some(will) = will {
            opts.set_last_will(will);
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let mut network = eventloop.network_options();
        network.set_tcp_nodelay(true);
        network.set_connection_timeout(CONNECT_TIMEOUT.as_secs());
        eventloop.set_network_options(network);
        let (tx, mut reports) = mpsc::unbounded_channel();
        let task = tokio::spawn(poll(eventloop, tx));
        let broker = endpoint.address();
        let unreachable = |cause: String| CliError::Unreachable {
            broker: broker.clone(),
            cause,
        };
        match timeout(CONNECT_TIMEOUT + Duration::from_secs(1), reports.recv()).await {
            Ok(Some(Report::Connected)) => {}
            Ok(Some(Report::Closed(cause))) => return Err(unreachable(cause)),
            Ok(_) => return Err(unreachable("the connection ended at once".into())),
            Err(_) => {
                return Err(unreachable(format!(
                    "no CONNACK within {CONNECT_TIMEOUT:?}"
                )))
            }
        }
        Ok(Session {
            client,
            reports,
            buffer: VecDeque::new(),
            published: 0,
            acked: 0,
            broker,
            closed: None,
            task,
        })
    }

    /// Subscribes to `filters` at QoS 1 and returns once the broker acknowledged all of them,
    /// so nothing published afterwards can be missed.
    pub async fn subscribe(&mut self, filters: &[String]) -> Result<(), CliError> {
        let request = filters
            .iter()
            .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
        self.client
            .try_subscribe_many(request)
            .map_err(|e| self.lost(format!("subscribe request not queued: {e}")))?;
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            match timeout_at(deadline, self.report()).await {
                Ok(Report::SubAck(codes)) => {
                    if let Some(i) = codes
                        .iter()
                        .position(|c| matches!(c, SubscribeReasonCode::Failure))
                    {
                        return Err(
                            self.lost(format!("the broker refused to subscribe to {}", filters[i]))
                        );
                    }
                    return Ok(());
                }
                Ok(Report::Message(m)) => self.buffer.push_back(m),
                Ok(Report::Closed(cause)) => return Err(self.lost(cause)),
                Ok(_) => {}
                Err(_) => return Err(self.lost(format!("no SUBACK within {CONNECT_TIMEOUT:?}"))),
            }
        }
    }

    /// Queues a QoS 1 publish (not retained). Fails only if the connection is gone or the
    /// request channel is full.
    pub fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) -> Result<(), CliError> {
        self.client
            .try_publish(topic, QoS::AtLeastOnce, false, payload.into())
            .map_err(|e| self.lost(format!("publish to {topic} not queued: {e}")))?;
        self.published += 1;
        Ok(())
    }

    /// Queues a QoS 0 publish, for requests whose answer is its own acknowledgement (`infos`).
    pub fn publish_qos0(
        &mut self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
    ) -> Result<(), CliError> {
        self.client
            .try_publish(topic, QoS::AtMostOnce, false, payload.into())
            .map_err(|e| self.lost(format!("publish to {topic} not queued: {e}")))
    }

    /// Waits until the broker acknowledged every QoS 1 publish so far, at most `within`.
    pub async fn flush(&mut self, within: Duration) -> Result<(), CliError> {
        let deadline = Instant::now() + within;
        while self.acked < self.published {
            match timeout_at(deadline, self.report()).await {
                Ok(Report::Message(m)) => self.buffer.push_back(m),
                Ok(Report::Closed(cause)) => return Err(self.lost(cause)),
                Ok(_) => {}
                Err(_) => {
                    return Err(self.lost(format!(
                        "{} publish(es) not acknowledged within {within:?}",
                        self.published - self.acked
                    )))
                }
            }
        }
        Ok(())
    }

    /// The next message, or the error that ended the connection. Cancel-safe.
    pub async fn next_message(&mut self) -> Result<Message, CliError> {
        if let Some(m) = self.buffer.pop_front() {
            return Ok(m);
        }
        loop {
            match self.report().await {
                Report::Message(m) => return Ok(m),
                Report::Closed(cause) => return Err(self.lost(cause)),
                _ => {}
            }
        }
    }

    /// Sends DISCONNECT (so the broker drops the will) and waits, at most `within`, until it is
    /// written.
    pub async fn disconnect(self, within: Duration) {
        if self.closed.is_none() && self.client.try_disconnect().is_ok() {
            let _ = timeout(within, self.task).await;
        }
    }

    /// `host:port` of the broker.
    pub fn broker(&self) -> &str {
        &self.broker
    }

    /// The next report; counts PUBACKs and remembers the end of the connection.
    async fn report(&mut self) -> Report {
        if let Some(cause) = &self.closed {
            return Report::Closed(cause.clone());
        }
        let report = self
            .reports
            .recv()
            .await
            .unwrap_or_else(|| Report::Closed("connection closed".into()));
        match &report {
            Report::PubAck => self.acked += 1,
            Report::Closed(cause) => self.closed = Some(cause.clone()),
            _ => {}
        }
        report
    }

    fn lost(&self, cause: String) -> CliError {
        CliError::Lost {
            broker: self.broker.clone(),
            cause,
        }
    }
}

/// Polls until the connection ends: after the DISCONNECT is written, or on the first error.
async fn poll(mut eventloop: EventLoop, reports: mpsc::UnboundedSender<Report>) {
    loop {
        let report = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => Report::Connected,
            Ok(Event::Incoming(Packet::Publish(p))) => Report::Message(Message {
                topic: p.topic,
                payload: p.payload.to_vec(),
            }),
            Ok(Event::Incoming(Packet::SubAck(ack))) => Report::SubAck(ack.return_codes),
            Ok(Event::Incoming(Packet::PubAck(_))) => Report::PubAck,
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => continue,
            Err(e) => {
                let _ = reports.send(Report::Closed(crate::mqtt::describe(&e)));
                return;
            }
        };
        if reports.send(report).is_err() {
            return;
        }
    }
}
