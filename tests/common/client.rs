//! An async MQTT test client over rumqttc, with bounded waits and coordinosaur protocol helpers.
//!
//! The rumqttc `EventLoop` is polled in its own tokio task, which never awaits the `AsyncClient`
//! (that can stall both sides once the request channel is full); it only uses the non-blocking
//! `try_subscribe_many` to restore subscriptions. The task forwards every incoming PUBLISH into an
//! unbounded channel, keeps polling after errors (reconnecting every 100 ms) and, because sessions
//! are clean, subscribes again to every stored filter after each CONNACK.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnAck, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS,
    SubAck, SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{timeout, timeout_at, Instant};

use super::{DEFAULT_TIMEOUT, PREFIX};

/// A received PUBLISH: topic and payload.
pub type Message = (String, Vec<u8>);

/// Pause between reconnect attempts after a connection error.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);
/// Size of the rumqttc request channel (publishes queued while disconnected wait here).
const REQUEST_CAPACITY: usize = 1024;
/// Largest packet sent or received, so that tests can send big payloads (a 2 MiB one included).
const MAX_PACKET: usize = 4 << 20;

/// What a SUBACK tells a waiting `subscribe`: `Err` names the refused filters.
type SubResult = Result<(), String>;

/// One SUBSCRIBE request, from the moment it enters the request channel until its SUBACK.
struct Intent {
    /// The filters in the request.
    filters: Vec<String>,
    /// `subscribe` calls waiting for this SUBACK.
    waiters: Vec<oneshot::Sender<SubResult>>,
    /// `Some(n)` for the re-subscription sent after the n-th CONNACK.
    restores_connection: Option<u64>,
}

/// Subscription bookkeeping shared by the test task and the event-loop task.
///
/// Invariant: `queued` lists, in order, the SUBSCRIBE requests that sit in rumqttc's request
/// channel; it is only appended to while the lock is held around `try_subscribe*`, and popped
/// when rumqttc reports `Outgoing::Subscribe(pkid)`, which also gives the packet id.
#[derive(Default)]
struct Subscriptions {
    /// Every filter ever subscribed, restored after each reconnect (sessions are clean).
    filters: Vec<String>,
    /// Requests not yet written to the network, oldest first.
    queued: VecDeque<Intent>,
    /// Requests written and waiting for their SUBACK, by packet id.
    in_flight: HashMap<u16, Intent>,
    /// Waiters whose request was lost with a connection; answered by the next re-subscription.
    orphans: Vec<oneshot::Sender<SubResult>>,
}

/// Connection state published by the event-loop task.
#[derive(Clone, Copy, Debug, Default)]
struct Link {
    /// Between a CONNACK and the next connection error.
    up: bool,
    /// CONNACKs received so far.
    connacks: u64,
    /// The last connection whose subscriptions are all restored (SUBACK received); 0 before any.
    ready: u64,
}

/// A test MQTT client (MQTT 3.1.1, clean session, QoS 1 everywhere).
///
/// Received messages are buffered: [`Client::expect`] and friends take the first message that
/// matches and keep the others, in arrival order, for later calls, so order checks still work.
pub struct Client {
    /// The client id given to the broker.
    id: String,
    /// Request side of rumqttc; publishing only enqueues into its channel.
    client: AsyncClient,
    /// Shared with the event-loop task.
    subs: Arc<Mutex<Subscriptions>>,
    /// Connection state from the event-loop task.
    link: watch::Receiver<Link>,
    /// Messages forwarded by the event-loop task.
    rx: mpsc::UnboundedReceiver<Message>,
    /// Messages received but not yet taken, oldest first.
    buffer: VecDeque<Message>,
    /// The event-loop task, aborted on drop.
    task: JoinHandle<()>,
}

impl Client {
    /// Connects to the broker on `127.0.0.1:port` and returns once the broker sent CONNACK
    /// (waits up to 10 s; panics otherwise).
    pub async fn connect(port: u16, id: &str) -> Client {
        Client::connect_with(port, id, None).await
    }

    /// [`Client::connect`] with a broker user name and password.
    pub async fn connect_as(port: u16, id: &str, user: &str, password: &str) -> Client {
        Client::connect_with(port, id, Some((user, password))).await
    }

    /// [`Client::connect`], logging in with `login` (user, password) when given.
    pub async fn connect_with(port: u16, id: &str, login: Option<(&str, &str)>) -> Client {
        Client::connect_secure(port, id, login, None).await
    }

    /// [`Client::connect_with`], over TLS with `tls` when given (e.g. built by
    /// `coordinosaur::mqtt::tls::client_config`, as the daemon builds its own). The broker's
    /// certificate must be valid for 127.0.0.1, or for the config's `server_name`.
    pub async fn connect_secure(
        port: u16,
        id: &str,
        login: Option<(&str, &str)>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Client {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET);
        if let Some((user, password)) = login {
            options.set_credentials(user, password);
        }
        if let Some(config) = tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
        }
        let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let mut network = eventloop.network_options();
        network.set_tcp_nodelay(true);
        network.set_connection_timeout(5);
        eventloop.set_network_options(network);

        let subs = Arc::new(Mutex::new(Subscriptions::default()));
        let (link_tx, link) = watch::channel(Link::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let driver = Driver {
            id: id.to_owned(),
            client: client.clone(),
            subs: Arc::clone(&subs),
            link: link_tx,
            tx,
        };
        let task = tokio::spawn(driver.run(eventloop));
        let this = Client {
            id: id.to_owned(),
            client,
            subs,
            link,
            rx,
            buffer: VecDeque::new(),
            task,
        };
        this.wait_connections(1).await;
        this
    }

    /// The MQTT client id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Subscribes to `filter` at QoS 1 and returns once the SUBACK arrived, so that nothing
    /// published afterwards can be missed. The filter is restored after every reconnect.
    /// Panics if the broker refuses it or does not answer within 10 s.
    pub async fn subscribe(&self, filter: &str) {
        let (done, answer) = oneshot::channel();
        let mut done = Some(done);
        let give_up = std::time::Instant::now() + DEFAULT_TIMEOUT;
        loop {
            let mut subs = self.lock();
            // Under the lock, so that `queued` stays in the channel's order.
            match self.client.try_subscribe(filter, QoS::AtLeastOnce) {
                Ok(()) => {
                    if !subs.filters.iter().any(|f| f == filter) {
                        subs.filters.push(filter.to_owned());
                    }
                    subs.queued.push_back(Intent {
                        filters: vec![filter.to_owned()],
                        waiters: done.take().into_iter().collect(),
                        restores_connection: None,
                    });
                    break;
                }
                // The request channel is full (e.g. right after thousands of publishes): wait
                // for the event loop to take some, outside the lock.
                Err(e) if std::time::Instant::now() < give_up => {
                    let _ = e;
                    drop(subs);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("{}: subscribe {filter}: {e}", self.id),
            }
        }
        match timeout(DEFAULT_TIMEOUT, answer).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("{}: {e}", self.id),
            Ok(Err(_)) => panic!("{}: event loop ended before SUBACK for {filter}", self.id),
            Err(_) => panic!(
                "{}: no SUBACK for {filter} within {DEFAULT_TIMEOUT:?}",
                self.id
            ),
        }
    }

    /// Whether one of the subscribed filters matches `topic`.
    pub fn is_subscribed_to(&self, topic: &str) -> bool {
        self.lock().filters.iter().any(|f| topic_matches(f, topic))
    }

    /// Publishes at QoS 1. This hands the message to rumqttc's request channel: while the broker
    /// is away the message waits there and is sent after the reconnect (or dropped, if it was
    /// already taken for the lost connection). Panics if it cannot be queued within 10 s.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.publish_as(topic, payload.into(), false).await;
    }

    async fn publish_as(&self, topic: &str, payload: Vec<u8>, retain: bool) {
        let queued = self
            .client
            .publish(topic, QoS::AtLeastOnce, retain, payload);
        match timeout(DEFAULT_TIMEOUT, queued).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{}: publish to {topic}: {e}", self.id),
            Err(_) => panic!(
                "{}: publish to {topic} not queued within {DEFAULT_TIMEOUT:?}",
                self.id
            ),
        }
    }

    /// Publishes at QoS 1 with the retain flag: the broker stores the message and hands it to
    /// every later subscriber (the slip that [`Client::publish`] never makes).
    pub async fn publish_retained(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.publish_as(topic, payload.into(), true).await;
    }

    /// Publishes arbitrary bytes (e.g. invalid UTF-8) at QoS 1; see [`Client::publish`].
    pub async fn publish_raw(&self, topic: &str, bytes: &[u8]) {
        self.publish(topic, bytes.to_vec()).await;
    }

    /// `PREFIX/channel/register` with `{"uid": uid, "timeout": timeout_secs}`; a whole number of
    /// seconds is sent as a JSON integer, as the original protocol expects.
    pub async fn register(&self, channel: &str, uid: &str, timeout_secs: f64) {
        self.register_with(channel, uid, timeout_secs, serde_json::json!({}))
            .await;
    }

    /// [`Client::register`] with the extra registration fields of the JSON object `fields`
    /// (`cost`, `progress`, `reply`, `priority`, ...).
    pub async fn register_with(
        &self,
        channel: &str,
        uid: &str,
        timeout_secs: f64,
        fields: serde_json::Value,
    ) {
        let mut body = serde_json::json!({ "uid": uid, "timeout": seconds_json(timeout_secs) });
        if let (Some(body), Some(fields)) = (body.as_object_mut(), fields.as_object()) {
            body.extend(fields.clone());
        }
        self.publish(&topic(channel, "register"), body.to_string())
            .await;
    }

    /// `PREFIX/channel/renew` with `{"uid": uid, "timeout": timeout_secs}`.
    pub async fn renew(&self, channel: &str, uid: &str, timeout_secs: f64) {
        let body = serde_json::json!({ "uid": uid, "timeout": seconds_json(timeout_secs) });
        self.publish(&topic(channel, "renew"), body.to_string())
            .await;
    }

    /// `PREFIX/channel/finished` with the uid as plain text.
    pub async fn finished(&self, channel: &str, uid: &str) {
        self.publish(&topic(channel, "finished"), uid).await;
    }

    /// `PREFIX/channel/aborted` with the uid as plain text.
    pub async fn aborted(&self, channel: &str, uid: &str) {
        self.publish(&topic(channel, "aborted"), uid).await;
    }

    /// `PREFIX/channel/concurrency/set` with `n` as text.
    pub async fn set_concurrency(&self, channel: &str, n: i64) {
        self.publish(&topic(channel, "concurrency/set"), n.to_string())
            .await;
    }

    /// `PREFIX/channel/infos` with an empty payload; the daemon answers on `PREFIX/channel/state`.
    pub async fn infos(&self, channel: &str) {
        self.publish(&topic(channel, "infos"), Vec::new()).await;
    }

    /// The next message, buffered ones first; `None` if nothing arrives within `within`.
    pub async fn recv(&mut self, within: Duration) -> Option<Message> {
        if let Some(message) = self.buffer.pop_front() {
            return Some(message);
        }
        timeout(within, self.rx.recv()).await.ok().flatten()
    }

    /// Payload of the first message on exactly `topic`, waiting up to `within`. Other messages
    /// are kept in the buffer for later calls. Panics, listing what did arrive, on timeout.
    pub async fn expect(&mut self, topic: &str, within: Duration) -> Vec<u8> {
        match self.take_where(|t| t == topic, within).await {
            Some((_, payload)) => payload,
            None => panic!(
                "{}: nothing on {topic} within {within:?}; buffered: {}",
                self.id,
                self.describe_buffer()
            ),
        }
    }

    /// First message whose topic matches the MQTT `filter` (`+`, `#`), waiting up to `within`.
    /// Other messages stay buffered. Panics on timeout.
    pub async fn expect_match(&mut self, filter: &str, within: Duration) -> Message {
        match self.take_where(|t| topic_matches(filter, t), within).await {
            Some(message) => message,
            None => panic!(
                "{}: nothing matching {filter} within {within:?}; buffered: {}",
                self.id,
                self.describe_buffer()
            ),
        }
    }

    /// Asserts that no message matching the MQTT `filter` is buffered or arrives within
    /// `within` (use short spans, e.g. 300 ms). Other messages stay buffered.
    pub async fn expect_none(&mut self, filter: &str, within: Duration) {
        if let Some(message) = self.take_where(|t| topic_matches(filter, t), within).await {
            panic!(
                "{}: expected nothing matching {filter} for {within:?}, got {} {:?}",
                self.id,
                message.0,
                String::from_utf8_lossy(&message.1)
            );
        }
    }

    /// The `reason` of the next `PREFIX/channel/rejected/{uid}` message (waits up to 10 s).
    /// Panics unless it is a JSON object naming `uid`, with a string `reason`.
    pub async fn rejection_reason(&mut self, channel: &str, uid: &str) -> String {
        let payload = self
            .expect(&topic(channel, &format!("rejected/{uid}")), DEFAULT_TIMEOUT)
            .await;
        let body: serde_json::Value = serde_json::from_slice(&payload)
            .unwrap_or_else(|e| panic!("{}: rejected/{uid} is not JSON ({e})", self.id));
        assert_eq!(body["uid"], uid, "{}: {body}", self.id);
        match body["reason"].as_str() {
            Some(reason) => reason.to_owned(),
            None => panic!("{}: rejected/{uid} has no reason: {body}", self.id),
        }
    }

    /// Uid of the next `PREFIX/channel/go/{uid}` message (waits up to 10 s). The client must
    /// already be subscribed to it (e.g. `PREFIX/channel/go/+`), or a grant could be missed.
    pub async fn next_go(&mut self, channel: &str) -> String {
        let filter = topic(channel, "go/+");
        assert!(
            self.is_subscribed_to(&topic(channel, "go/x")),
            "{}: next_go({channel}) needs a subscription to {filter} made before the register",
            self.id
        );
        let (topic, _) = self.expect_match(&filter, DEFAULT_TIMEOUT).await;
        let uid = topic.rsplit('/').next().unwrap_or_default();
        uid.to_owned()
    }

    /// The channel's state: sends `infos` and returns the JSON of the next `state` reply.
    /// Subscribes to `PREFIX/channel/state` if needed and discards state messages buffered
    /// before the request, so the answer is not stale.
    pub async fn state(&mut self, channel: &str) -> serde_json::Value {
        let state_topic = topic(channel, "state");
        if !self.is_subscribed_to(&state_topic) {
            self.subscribe(&state_topic).await;
        }
        self.buffer.retain(|(t, _)| *t != state_topic);
        self.infos(channel).await;
        let payload = self.expect(&state_topic, DEFAULT_TIMEOUT).await;
        serde_json::from_slice(&payload).unwrap_or_else(|e| {
            panic!(
                "{}: state of {channel} is not JSON ({e}): {:?}",
                self.id,
                String::from_utf8_lossy(&payload)
            )
        })
    }

    /// Like [`Client::state`], but sends `infos` again every 200 ms until a reply arrives (up to
    /// 10 s): for when the daemon may not be subscribed yet, e.g. just after a broker restart.
    pub async fn state_when_answered(&mut self, channel: &str) -> serde_json::Value {
        let state_topic = topic(channel, "state");
        if !self.is_subscribed_to(&state_topic) {
            self.subscribe(&state_topic).await;
        }
        self.buffer.retain(|(t, _)| *t != state_topic);
        let deadline = Instant::now() + DEFAULT_TIMEOUT;
        loop {
            self.infos(channel).await;
            if let Some((_, payload)) = self
                .take_where(|t| t == state_topic, Duration::from_millis(200))
                .await
            {
                return serde_json::from_slice(&payload).unwrap_or_else(|e| {
                    panic!("{}: state of {channel} is not JSON ({e})", self.id)
                });
            }
            assert!(
                Instant::now() < deadline,
                "{}: no answer on {state_topic} within {DEFAULT_TIMEOUT:?}",
                self.id
            );
        }
    }

    /// Drops every buffered message.
    pub fn clear(&mut self) {
        while self.rx.try_recv().is_ok() {}
        self.buffer.clear();
    }

    /// Connections whose subscriptions are fully restored so far (1 after `connect`).
    pub fn connections(&self) -> u64 {
        self.link.borrow().ready
    }

    /// Waits (up to 10 s) until `n` connections were made and their subscriptions restored.
    pub async fn wait_connections(&self, n: u64) {
        let mut link = self.link.clone();
        let reached = timeout(DEFAULT_TIMEOUT, link.wait_for(|l| l.ready >= n)).await;
        assert!(
            matches!(reached, Ok(Ok(_))),
            "{}: connection {n} not ready within {DEFAULT_TIMEOUT:?} (now {:?})",
            self.id,
            *self.link.borrow()
        );
    }

    /// Waits (up to 10 s) until the client has noticed that its connection is gone.
    pub async fn wait_disconnected(&self) {
        let mut link = self.link.clone();
        let reached = timeout(DEFAULT_TIMEOUT, link.wait_for(|l| !l.up)).await;
        assert!(
            matches!(reached, Ok(Ok(_))),
            "{}: still connected after {DEFAULT_TIMEOUT:?}",
            self.id
        );
    }

    /// First message matching `pred`: from the buffer, else received before `within` runs out,
    /// buffering the others.
    async fn take_where(
        &mut self,
        pred: impl Fn(&str) -> bool,
        within: Duration,
    ) -> Option<Message> {
        if let Some(i) = self.buffer.iter().position(|(t, _)| pred(t)) {
            return self.buffer.remove(i);
        }
        let deadline = Instant::now() + within;
        while let Ok(Some(message)) = timeout_at(deadline, self.rx.recv()).await {
            if pred(&message.0) {
                return Some(message);
            }
            self.buffer.push_back(message);
        }
        None
    }

    fn describe_buffer(&self) -> String {
        let topics: Vec<&str> = self.buffer.iter().map(|(t, _)| t.as_str()).collect();
        format!("{topics:?}")
    }

    fn lock(&self) -> MutexGuard<'_, Subscriptions> {
        lock(&self.subs)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The event-loop task's state.
struct Driver {
    id: String,
    /// Used only through non-blocking `try_*` calls, never awaited here.
    client: AsyncClient,
    subs: Arc<Mutex<Subscriptions>>,
    link: watch::Sender<Link>,
    tx: mpsc::UnboundedSender<Message>,
}

impl Driver {
    /// Polls the event loop forever (until aborted), reconnecting with a short backoff.
    async fn run(self, mut eventloop: EventLoop) {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    // The receiver is gone only when the Client is being dropped.
                    let _ = self.tx.send((p.topic, p.payload.to_vec()));
                }
                Ok(Event::Incoming(Packet::ConnAck(ack))) => self.handle_connack(&ack),
                Ok(Event::Outgoing(Outgoing::Subscribe(pkid))) => {
                    let mut subs = lock(&self.subs);
                    if let Some(intent) = subs.queued.pop_front() {
                        subs.in_flight.insert(pkid, intent);
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => self.handle_suback(&ack),
                Ok(_) => {}
                Err(ConnectionError::RequestsDone) => return,
                Err(e) => {
                    self.handle_error(&e);
                    tokio::time::sleep(RECONNECT_BACKOFF).await;
                }
            }
        }
    }

    /// A connection error. If the link was up, rumqttc has just moved the request channel's
    /// contents into its pending list, which the next clean-session CONNACK discards: the
    /// SUBSCRIBEs known so far are lost, and their waiters wait for the re-subscription instead.
    /// If the link was down, the error came from a connect attempt and nothing was drained.
    ///
    /// A `subscribe` that lands in the instant between rumqttc's drain and this lock is counted
    /// as lost although it is still queued; its SUBACK then answers one re-subscription early.
    fn handle_error(&self, error: &ConnectionError) {
        let was_up = self.link.borrow().up;
        if was_up {
            eprintln!("[{}] connection lost: {error}", self.id);
            let mut guard = lock(&self.subs);
            let subs = &mut *guard;
            let lost: Vec<Intent> = subs
                .queued
                .drain(..)
                .chain(subs.in_flight.drain().map(|(_, intent)| intent))
                .collect();
            subs.orphans
                .extend(lost.into_iter().flat_map(|intent| intent.waiters));
            self.link.send_modify(|l| l.up = false);
        }
    }

    fn handle_connack(&self, ack: &ConnAck) {
        let mut n = 0;
        self.link.send_modify(|l| {
            l.up = true;
            l.connacks += 1;
            n = l.connacks;
        });
        let mut subs = lock(&self.subs);
        if subs.filters.is_empty() || ack.session_present {
            self.link.send_modify(|l| l.ready = n);
            return;
        }
        let filters = subs.filters.clone();
        let request = filters
            .iter()
            .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
        match self.client.try_subscribe_many(request) {
            Ok(()) => {
                let waiters = std::mem::take(&mut subs.orphans);
                subs.queued.push_back(Intent {
                    filters,
                    waiters,
                    restores_connection: Some(n),
                });
            }
            Err(e) => eprintln!("[{}] could not restore subscriptions: {e}", self.id),
        }
    }

    fn handle_suback(&self, ack: &SubAck) {
        let Some(intent) = lock(&self.subs).in_flight.remove(&ack.pkid) else {
            return;
        };
        let refused: Vec<&String> = intent
            .filters
            .iter()
            .zip(&ack.return_codes)
            .filter(|(_, code)| matches!(code, SubscribeReasonCode::Failure))
            .map(|(f, _)| f)
            .collect();
        let result = if refused.is_empty() {
            Ok(())
        } else {
            Err(format!("broker refused subscription to {refused:?}"))
        };
        for waiter in intent.waiters {
            // A waiter that timed out has gone away; nothing to tell it.
            let _ = waiter.send(result.clone());
        }
        if let Some(n) = intent.restores_connection {
            self.link.send_modify(|l| l.ready = l.ready.max(n));
        }
    }
}

/// `PREFIX/channel/action`.
pub fn topic(channel: &str, action: &str) -> String {
    format!("{PREFIX}/{channel}/{action}")
}

/// Whether `topic` matches the MQTT subscription `filter` (`+` one level, `#` the rest, including
/// the parent level: `a/#` matches `a`). Exact topics are filters that match only themselves.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut levels = topic.split('/');
    for part in filter.split('/') {
        match (part, levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (p, Some(level)) if p == level => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

/// Seconds as JSON: an integer when whole, else a float.
fn seconds_json(secs: f64) -> serde_json::Value {
    const MAX_EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if secs.fract() == 0.0 && secs.abs() < MAX_EXACT {
        // Exact: a whole number below 2^53 converts without loss.
        serde_json::Value::from(secs as i64)
    } else {
        serde_json::Value::from(secs)
    }
}

/// Locks `subs`; a poisoned lock only means a test thread panicked, and the data is still usable.
fn lock(subs: &Mutex<Subscriptions>) -> MutexGuard<'_, Subscriptions> {
    subs.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
