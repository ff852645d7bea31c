//! The MQTT edge: one task polls rumqttc's event loop, (re)subscribes on every ConnAck, decodes
//! what arrives and forwards it to the driver through a bounded channel, so a flood is held back
//! in the socket and the broker rather than in the daemon, and reports which grants' `go` the
//! broker acknowledged ([`delivery`]). The driver's outputs are encoded by [`MqttSink`] and
//! published by the [`outbox`] task, never from this task and never awaited by the driver, so no
//! two tasks can wait on each other (the outbox's module doc has the argument).
//!
//! [`Broker`] turns `[mqtt]` into rumqttc options (plain TCP or TLS, see [`tls`]) for the daemon
//! and the client commands alike.

pub mod delivery;
pub mod outbox;
mod sink;
mod subscribe;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnAck, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet,
    Publish, QoS, Request, SubAck, SubscribeFilter, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::config::MqttConfig;
use crate::engine::Input;
use crate::protocol::{self, DecodeLimits, Rejection};
use delivery::{Grant, Sent, Tracker};
pub use sink::MqttSink;
use subscribe::Subscriptions;

/// Largest packet the client accepts or sends. Much larger than `max_payload` on purpose: an
/// oversized payload must reach `protocol::decode` and be refused by name, not make rumqttc drop
/// the connection (and every message in flight with it).
const MAX_PACKET: usize = 16 << 20;

/// Capacity of the channel from the MQTT task to the driver, in messages. When it is full the
/// MQTT task stops polling, so rumqttc stops reading the socket and a flood (QoS 0 has no flow
/// control of its own) waits in the kernel and the broker, which applies its own limits. At most
/// this many decoded requests, each under `[limits] max_payload`, wait here: 16 MiB at the
/// default 64 KiB. Enough to keep the driver busy while the MQTT task decodes (rumqttc reads at
/// most 10 packets per poll).
pub const INBOUND_CAPACITY: usize = 256;

/// How to reach the broker, from `[mqtt]`: shared by the daemon and the client commands, so
/// both connect the same way (address, TLS, login, keep-alive).
#[derive(Debug, Clone)]
pub struct Broker {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Optional user name and password.
    pub credentials: Option<(String, String)>,
    /// Keep-alive (0 or at least 1 s; checked by config).
    pub keep_alive: Duration,
    /// TLS client settings (`[mqtt.tls]`, files already read); `None`: plain TCP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Broker {
    /// The broker of `[mqtt]` (after [`crate::config::Config::apply_env`]). Reads the
    /// `[mqtt.tls]` files, so a missing or invalid one fails here, naming key and file.
    pub fn from_config(mqtt: &MqttConfig) -> Result<Broker, tls::TlsError> {
        Ok(Broker {
            host: mqtt.host.clone(),
            port: mqtt.port,
            credentials: mqtt
                .username
                .clone()
                .map(|u| (u, mqtt.password.clone().unwrap_or_default())),
            keep_alive: mqtt.keep_alive,
            tls: mqtt.tls.as_ref().map(tls::client_config).transpose()?,
        })
    }

    /// rumqttc options to connect as `client_id`; callers add what is theirs (session, packet
    /// sizes, a will).
    pub fn options(&self, client_id: &str) -> MqttOptions {
        let mut opts = MqttOptions::new(client_id, &self.host, self.port);
        opts.set_keep_alive(self.keep_alive);
        if let Some(config) = &self.tls {
            // rumqttc checks the certificate against the host it dials (`[mqtt] host`), unless
            // the config carries a `server_name` verifier.
            opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                config.clone(),
            )));
        }
        if let Some((user, pass)) = &self.credentials {
            opts.set_credentials(user, pass);
        }
        opts
    }

    /// `host:port`, with an IPv6 host in brackets.
    pub fn address(&self) -> String {
        crate::config::host_port(&self.host, self.port)
    }
}

/// What the daemon's connection needs besides the broker.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where to connect, and how.
    pub broker: Broker,
    /// MQTT client id.
    pub client_id: String,
    /// Start a fresh session on every connect; false keeps the broker-side session (its
    /// subscriptions and the QoS 1 messages queued while we were away).
    pub clean_session: bool,
    /// First topic level.
    pub prefix: String,
    /// Payload and timeout limits for decoding; a reloaded config replaces them.
    pub limits: watch::Receiver<DecodeLimits>,
    /// The payload of this process's sync marker (tells it from another daemon's).
    pub nonce: Arc<str>,
}

impl Settings {
    /// A sync marker payload unique to this process.
    pub fn new_nonce() -> Arc<str> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        format!("{}-{nanos}", std::process::id()).into()
    }
}

/// A received QoS 1 message to acknowledge. The daemon acknowledges a request only once what
/// it changed is journaled: a request the broker saw acknowledged is never lost to a crash, and
/// one that was not is delivered again when the daemon reconnects (persistent session).
#[derive(Debug, Clone)]
pub struct Ack(Publish);

impl Ack {
    /// The acknowledgement `p` needs, if any (QoS 0 needs none). Keeps only its packet id and
    /// DUP flag.
    fn of(p: &Publish) -> Option<Ack> {
        (p.qos != QoS::AtMostOnce).then(|| {
            let mut ack = Publish::new("", p.qos, Vec::<u8>::new());
            ack.pkid = p.pkid;
            ack.dup = p.dup;
            Ack(ack)
        })
    }

    /// The acknowledgement of a QoS 1 message with packet id `pkid` (driver tests).
    #[cfg(test)]
    pub(crate) fn for_test(pkid: u16) -> Ack {
        let mut ack = Publish::new("", QoS::AtLeastOnce, Vec::<u8>::new());
        ack.pkid = pkid;
        Ack(ack)
    }

    /// The packet rumqttc acknowledges.
    pub fn packet(&self) -> &Publish {
        &self.0
    }

    /// Whether the broker delivered the message again (DUP): an earlier delivery was not
    /// acknowledged, e.g. because the daemon crashed after journaling it.
    pub fn redelivered(&self) -> bool {
        self.0.dup
    }
}

/// What the MQTT task hands to the driver.
#[derive(Debug)]
pub enum Inbound {
    /// A decoded request.
    Input(Input, Option<Ack>),
    /// Connected (or reconnected) to the broker.
    Connected {
        /// Whether the broker still had our session. If not (a broker restarted without
        /// persistence), rumqttc drops the publishes it had not got acknowledged.
        session_present: bool,
        /// `go`s dropped that way (never acknowledged).
        grants_lost: usize,
    },
    /// The broker acknowledged a grant's `go`.
    Delivered(Grant),
    /// The marker published after connecting came back: everything the broker had queued for
    /// the daemon before it has been forwarded.
    Synced(Option<Ack>),
    /// A message with nothing to do (our own answers, another daemon's marker): only acknowledged.
    Ignored(Ack),
    /// A refused message and its topic.
    Rejected {
        /// The topic it arrived on.
        topic: String,
        /// Why it was refused and what is known of it.
        rejection: Rejection,
        /// Its acknowledgement.
        ack: Option<Ack>,
    },
}

/// Creates the client (for publishing) and the event loop (for [`run`]).
pub fn connect(settings: &Settings) -> (AsyncClient, EventLoop) {
    let mut opts = settings.broker.options(&settings.client_id);
    opts.set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_inflight(500)
        .set_clean_session(settings.clean_session)
        // Requests are acknowledged by the driver once journaled (see [`Ack`]).
        .set_manual_acks(true);
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    // Nagle's algorithm holds small QoS 1 packets back ~40 ms behind a delayed ACK.
    eventloop.network_options.set_tcp_nodelay(true);
    (client, eventloop)
}

/// Polls the event loop until `to_driver` closes: reconnects with capped backoff after any
/// connection error and resubscribes on every ConnAck.
pub async fn run(
    client: AsyncClient,
    mut eventloop: EventLoop,
    settings: Settings,
    mut sent: mpsc::UnboundedReceiver<Sent>,
    to_driver: mpsc::Sender<Inbound>,
) {
    let mut link = Link::new(client, settings);
    loop {
        let event = eventloop.poll().await;
        // Before the tracker looks at any event: every publish request it may see was queued
        // (the driver queues its `Sent` first).
        while let Ok(s) = sent.try_recv() {
            link.tracker.handle_queued(s);
        }
        let inbound = match event {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                link.tracker.handle_outgoing_publish(pkid);
                None
            }
            Ok(Event::Outgoing(Outgoing::AwaitAck(pkid))) => {
                link.tracker.handle_await_ack(pkid);
                None
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                link.tracker.handle_puback(ack.pkid).map(Inbound::Delivered)
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                Some(link.handle_connack(&ack, &mut eventloop))
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                link.handle_suback(&ack);
                None
            }
            Ok(Event::Incoming(Packet::Publish(p))) => link.handle_publish(&p),
            Ok(_) => None,
            Err(e) => {
                if to_driver.is_closed() {
                    return;
                }
                link.handle_error(&eventloop, &e);
                tokio::time::sleep(link.backoff).await;
                link.backoff = (link.backoff * 2).min(Duration::from_secs(5));
                None
            }
        };
        // The only await besides `poll` and the backoff: the driver never waits on this task.
        if let Some(inbound) = inbound {
            if to_driver.send(inbound).await.is_err() {
                return;
            }
        }
    }
}

/// Queues one SUBSCRIBE of every filter, so that its SubAck's codes are in `filters` order
/// ([`subscribe`]). `try_`: awaiting from the polling task could deadlock on a full channel.
fn subscribe_all(client: &AsyncClient, filters: &[String]) {
    let request = filters
        .iter()
        .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
    if let Err(e) = client.try_subscribe_many(request) {
        warn!(?filters, cause = %e, "subscribe request not queued");
    }
}

/// What the MQTT task keeps between events: what it subscribes to, which grants' `go` are in
/// flight, and how the connection has been going.
struct Link {
    /// For (re)subscribing; never awaited (see the module doc).
    client: AsyncClient,
    /// The connection's settings.
    settings: Settings,
    /// The filters subscribed on every ConnAck.
    filters: [String; 3],
    /// Where this process's sync marker comes back.
    sync_topic: String,
    /// Which grants' `go` the broker acknowledged.
    tracker: Tracker,
    /// Whether the broker took the filters, and when to ask again.
    subscriptions: Subscriptions,
    /// How long to wait before the next connection attempt; reset on ConnAck.
    backoff: Duration,
    /// Whether the last attempt reached the broker (a failure after one is news).
    connected: bool,
}

impl Link {
    fn new(client: AsyncClient, settings: Settings) -> Link {
        Link {
            client,
            filters: protocol::subscriptions(&settings.prefix),
            sync_topic: protocol::sync_topic(&settings.prefix),
            settings,
            tracker: Tracker::default(),
            subscriptions: Subscriptions::default(),
            backoff: Duration::from_millis(50),
            connected: false,
        }
    }

    /// Subscribes again and tells the driver, which publishes the sync marker when it reads
    /// this: behind the subscriptions, and behind whatever the broker queued for our session.
    /// With the session resumed, the grants' `go`s are taken out of rumqttc's resends (see
    /// [`delivery`]): the driver says them again to the jobs still running.
    fn handle_connack(&mut self, ack: &ConnAck, eventloop: &mut EventLoop) -> Inbound {
        // Subscribe on every ConnAck, even with `session_present`: the broker may have
        // dropped or expired the session (a restart without persistence, a session
        // expiry), or restored it without a subscription it could not set up again
        // (nats-server), and subscribing again to a filter we hold is harmless.
        info!(broker = %self.settings.broker.address(), session_present = ack.session_present, "connected");
        self.connected = true;
        metrics::counter!("coordinosaur_broker_connects_total").increment(1);
        self.backoff = Duration::from_millis(50);
        self.subscriptions.handle_connack();
        subscribe_all(&self.client, &self.filters);
        let pending: Vec<Option<u16>> = eventloop
            .pending
            .iter()
            .map(|r| match r {
                Request::Publish(p) => Some(p.pkid),
                _ => None,
            })
            .collect();
        let (grants_lost, withhold) = self.tracker.handle_connack(ack.session_present, &pending);
        if ack.session_present && grants_lost > 0 {
            let mut out = withhold.into_iter();
            eventloop.pending.retain(|_| !out.next().unwrap_or(false));
            info!(
                grants = grants_lost,
                "go messages in flight when the connection dropped are not resent as they were; they are said again to jobs still running once the backlog is read"
            );
        }
        Inbound::Connected {
            session_present: ack.session_present,
            grants_lost,
        }
    }

    /// A SubAck: a refused filter is warned about and every filter asked for again after a
    /// backoff ([`subscribe`]), from a timer task (this task only ever awaits the event loop).
    fn handle_suback(&mut self, ack: &SubAck) {
        let refused = subscribe::refused(&self.filters, &ack.return_codes);
        if refused.is_empty() {
            debug!(?ack.return_codes, "subscribed");
            return;
        }
        metrics::counter!("coordinosaur_subscriptions_refused_total").increment(1);
        let retry = self
            .subscriptions
            .handle_suback(std::time::Instant::now(), &ack.return_codes);
        warn!(
            broker = %self.settings.broker.address(),
            ?refused,
            retry_in_ms = retry.map(|d| d.as_millis()),
            "the broker refused to subscribe; no request on these filters arrives until it takes them: subscribing again"
        );
        if let Some(wait) = retry {
            let client = self.client.clone();
            let filters = self.filters.clone();
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                subscribe_all(&client, &filters);
            });
        }
    }

    /// What a received message means for the driver; `None` when there is nothing to tell it,
    /// not even an acknowledgement (QoS 0 with nothing to do).
    fn handle_publish(&self, p: &Publish) -> Option<Inbound> {
        tracing::trace!(topic = p.topic, pkid = p.pkid, dup = p.dup, "received");
        let ack = Ack::of(p);
        if p.topic == self.sync_topic {
            return if p.payload == self.settings.nonce.as_bytes() {
                Some(Inbound::Synced(ack))
            } else {
                ack.map(Inbound::Ignored)
            };
        }
        let limits = *self.settings.limits.borrow();
        let rejected = |rejection, ack| Inbound::Rejected {
            topic: p.topic.clone(),
            rejection,
            ack,
        };
        match protocol::decode(&self.settings.prefix, &p.topic, &p.payload, &limits) {
            Ok(Some(input)) if p.retain => Some(rejected(protocol::retained(&input), ack)),
            Ok(Some(input)) => Some(Inbound::Input(input, ack)),
            Ok(None) => ack.map(Inbound::Ignored),
            Err(rejection) => Some(rejected(rejection, ack)),
        }
    }

    /// Counts the grants whose `go` the lost connection may have dropped and says what
    /// happened, loudly only when it is news or will not heal by itself.
    fn handle_error(&mut self, eventloop: &EventLoop, e: &ConnectionError) {
        // rumqttc moved what it had in flight and the requests it had not read yet into
        // its pending queue; the unsent publishes there have no packet id yet.
        let unsent = eventloop
            .pending
            .iter()
            .filter(|r| matches!(r, Request::Publish(p) if p.pkid == 0))
            .count();
        self.tracker.handle_connection_lost(unsent);
        let cause = describe(e);
        let retry_in = self.backoff;
        let tls_failed = matches!(e, ConnectionError::Tls(_)) || tls::rustls_cause(e).is_some();
        if !self.connected && tls_failed {
            // Wrong CA, wrong name, a refused client certificate, a listener that does
            // not speak TLS: it will not heal by itself, so say so on every attempt.
            warn!(%cause, ?retry_in, "broker TLS handshake failed");
        } else if self.connected
            || !matches!(e, ConnectionError::Io(_) | ConnectionError::NetworkTimeout)
        {
            warn!(%cause, ?retry_in, "broker connection lost");
        } else {
            debug!(%cause, ?retry_in, "broker still unreachable");
        }
        self.connected = false;
    }
}

/// rumqttc's error for people: the OS error spelled out for the common refusals, and a TLS
/// failure as rustls' own words plus what it most likely means.
pub fn describe(error: &ConnectionError) -> String {
    if let Some(cause) = tls::rustls_cause(error) {
        return match tls::hint(cause) {
            Some(hint) => format!("TLS: {cause} ({hint})"),
            None => format!("TLS: {cause}"),
        };
    }
    match error {
        ConnectionError::Io(io) => io.to_string(),
        ConnectionError::ConnectionRefused(code) => {
            format!("the broker refused the connection: {code:?}")
        }
        ConnectionError::NetworkTimeout => "connection timed out".into(),
        other => other.to_string(),
    }
}
