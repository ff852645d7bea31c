//! Load for fault tests: a fleet of workers over several channels, and a monitor that records
//! every message on `coordinosaur/#` for the [`checker`](super::checker).
//!
//! - [`FleetSpec`] describes the channels (limits, quotas, leases) and their workers, and writes
//!   the daemon's `[defaults]`/`[[channels]]` config and the checker's rules from one place.
//! - [`Fleet`] runs the workers over a few shared MQTT connections. Each connection has a fixed
//!   client id and a persistent session (`clean_session = false`), so a `go` published while it
//!   is disconnected waits in the broker. Each job subscribes to its own `go`, `expired` and
//!   `rejected` topics and then registers, on the same connection: Mosquitto handles one
//!   connection's packets in order, so the subscription is in place before the daemon can answer.
//!   After a reconnect every connection subscribes again to the topics of its unfinished jobs (a
//!   SUBSCRIBE in flight when the link dropped may be lost).
//! - [`Monitor`] is one more persistent-session client, subscribed to `coordinosaur/#` at QoS 1,
//!   that keeps every message with its arrival time and the broker's DUP flag.
//!
//! A worker registers its jobs one after another: on `go` it "runs" for a random time in its
//! channel's range and publishes `finished`; a job marked to hang never finishes, so its lease
//! expires; on `expired` or `rejected` it moves on. Randomness comes from a seed printed in the
//! report, so a run can be repeated with `COORDINOSAUR_FAULT_SEED`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::checker::{self, ChannelRule, CheckOptions, Record, Report};
use super::{topic, unique_id, DEFAULT_TIMEOUT, PREFIX};

/// Pause between reconnect attempts of fleet and monitor connections.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);
/// How long a connection waits to subscribe again after the broker refused a filter.
const RESUBSCRIBE_AFTER_REFUSAL: Duration = Duration::from_millis(250);
/// rumqttc request channel size per connection (subscribes, registers, finishes of its workers).
const REQUEST_CAPACITY: usize = 1024;
/// How often `settle` looks at the monitor's log.
const POLL: Duration = Duration::from_millis(100);
/// After every job is accounted for, how long `settle` keeps listening for late messages (a `go`
/// after the end would show up here).
const QUIET_AFTER: Duration = Duration::from_millis(500);

/// One channel of the fleet: the daemon's limits for it and the workers that use it.
#[derive(Debug, Clone)]
pub struct ChannelSpec {
    /// Channel name (one topic level; also the `[[channels]] pattern`, anchored with `$`).
    pub name: &'static str,
    /// `max_concurrent_jobs`.
    pub max_running: usize,
    /// `quotas`: (limit, interval).
    pub quota: Option<(usize, Duration)>,
    /// Workers on this channel.
    pub workers: usize,
    /// Jobs each worker registers, one after the other.
    pub jobs_per_worker: usize,
    /// How long a job "runs" after `go`: uniform in this range.
    pub run: (Duration, Duration),
    /// The `timeout` each register asks for (the lease), in seconds.
    pub timeout_secs: f64,
    /// Every n-th job of the channel hangs: it never publishes `finished`, so its lease expires.
    pub hang_every: Option<usize>,
    /// Workers start at a random moment in `[0, start_spread)` after the fleet starts, so that
    /// registers keep arriving for a while instead of in one instant.
    pub start_spread: Duration,
}

impl ChannelSpec {
    /// Total jobs of the channel.
    pub fn jobs(&self) -> usize {
        self.workers * self.jobs_per_worker
    }
}

/// The whole load: channels and how many MQTT connections their workers share.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// The channels, in config order.
    pub channels: Vec<ChannelSpec>,
    /// MQTT connections shared by all workers (worker i uses connection i mod n).
    pub connections: usize,
    /// Each connection subscribes once to `PREFIX/+/go/+`, `PREFIX/+/expired/+` and
    /// `PREFIX/+/rejected/+` instead of each job to its own three topics. On NATS's MQTT
    /// listener every new QoS 1 subscription is a replicated JetStream consumer, created
    /// synchronously (4 s timeout) in the client's read loop: three per job overload a small
    /// cluster.
    pub wildcard_subscriptions: bool,
}

impl FleetSpec {
    /// The standard fault load: 176 workers and 352 jobs over four channels.
    ///
    /// - `burst`: 100 workers, 12 at once, 5-50 ms jobs: the bulk of the grant traffic;
    /// - `quota`: 40 workers, 10 at once, at most 20 grants per 1 s window, so it spends most of
    ///   its time waiting for the window to open;
    /// - `lease`: 16 workers, 3 at once, 1 s leases, every 4th job hangs and expires;
    /// - `slow`: 20 workers, 4 at once, 200-600 ms jobs, so some run across a daemon restart.
    pub fn standard() -> FleetSpec {
        let quick = (Duration::from_millis(5), Duration::from_millis(50));
        FleetSpec {
            connections: 24,
            wildcard_subscriptions: false,
            channels: vec![
                ChannelSpec {
                    name: "burst",
                    max_running: 12,
                    quota: None,
                    workers: 100,
                    jobs_per_worker: 2,
                    run: quick,
                    timeout_secs: 10.0,
                    hang_every: None,
                    start_spread: Duration::from_millis(1500),
                },
                ChannelSpec {
                    name: "quota",
                    max_running: 10,
                    quota: Some((20, Duration::from_secs(1))),
                    workers: 40,
                    jobs_per_worker: 2,
                    run: quick,
                    timeout_secs: 10.0,
                    hang_every: None,
                    start_spread: Duration::from_millis(1000),
                },
                ChannelSpec {
                    name: "lease",
                    max_running: 3,
                    quota: None,
                    workers: 16,
                    jobs_per_worker: 2,
                    run: quick,
                    timeout_secs: 1.0,
                    hang_every: Some(4),
                    start_spread: Duration::from_millis(2000),
                },
                ChannelSpec {
                    name: "slow",
                    max_running: 4,
                    quota: None,
                    workers: 20,
                    jobs_per_worker: 2,
                    run: (Duration::from_millis(200), Duration::from_millis(600)),
                    timeout_secs: 10.0,
                    hang_every: None,
                    start_spread: Duration::from_millis(2000),
                },
            ],
        }
    }

    /// The channel named `name`.
    pub fn channel(&self, name: &str) -> &ChannelSpec {
        self.channels
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no channel {name} in the fleet"))
    }

    /// `[[channels]]` tables giving each channel its limits (no `[defaults]`, so the caller may
    /// add one).
    pub fn daemon_toml(&self) -> String {
        let mut toml = String::new();
        for c in &self.channels {
            let _ = write!(
                toml,
                "[[channels]]\npattern = \"{}$\"\nmax_concurrent_jobs = {}\n",
                c.name, c.max_running
            );
            if let Some((limit, interval)) = c.quota {
                let _ = writeln!(
                    toml,
                    "quotas = [{{ interval = \"{}ms\", limit = {limit}, name = \"window\" }}]",
                    interval.as_millis()
                );
            }
            toml.push('\n');
        }
        toml
    }

    /// The checker's view of the same limits.
    pub fn rules(&self) -> Vec<ChannelRule> {
        self.channels
            .iter()
            .map(|c| ChannelRule {
                name: c.name.to_owned(),
                max_running: c.max_running,
                quotas: c.quota.into_iter().collect(),
            })
            .collect()
    }

    /// Total workers.
    pub fn workers(&self) -> usize {
        self.channels.iter().map(|c| c.workers).sum()
    }

    /// Total jobs.
    pub fn jobs(&self) -> usize {
        self.channels.iter().map(ChannelSpec::jobs).sum()
    }
}

/// The seed for a run: `COORDINOSAUR_FAULT_SEED` if set, else from the clock.
pub fn seed_from_env() -> u64 {
    std::env::var("COORDINOSAUR_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            // Nanoseconds vary enough between runs; the value only needs to be printable.
            now.as_nanos() as u64
        })
}

/// splitmix64: a small, good-enough mixer for per-job random numbers from (seed, worker, job).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A duration uniform in `[lo, hi]` from the random `r`.
fn between(r: u64, (lo, hi): (Duration, Duration)) -> Duration {
    let span = hi.saturating_sub(lo).as_micros() as u64;
    lo + Duration::from_micros(if span == 0 { 0 } else { r % (span + 1) })
}

/// Locks a mutex, ignoring poisoning (a panicking test thread leaves the data usable).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a job hears from the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Go,
    Expired,
    Rejected,
}

/// Topic -> (what it means, the job waiting for it), shared by a connection's workers and its
/// event-loop task.
type Routes = Arc<Mutex<HashMap<String, (Outcome, mpsc::UnboundedSender<Outcome>)>>>;

/// Counters over the whole fleet.
#[derive(Debug, Default)]
pub struct FleetStats {
    /// Workers that registered all their jobs and saw each one end.
    pub workers_done: AtomicUsize,
    /// Jobs that got `go` (first one) at their worker.
    pub gos: AtomicUsize,
    /// Further `go` messages a worker got for a job it had already started.
    pub repeated_gos: AtomicUsize,
    /// Jobs that ended with `expired` / `rejected` at their worker.
    pub expired: AtomicUsize,
    /// See `expired`.
    pub rejected: AtomicUsize,
    /// CONNACKs on fleet connections after the first one of each.
    pub reconnects: AtomicUsize,
    /// Reconnects where the broker had lost the session.
    pub sessions_lost: AtomicUsize,
    /// SubAcks refusing a filter (each followed by a new SUBSCRIBE).
    pub subscriptions_refused: AtomicUsize,
}

/// A running fleet; dropping it stops every worker and connection.
pub struct Fleet {
    /// Tells workers to stop.
    stop: watch::Sender<bool>,
    /// Worker tasks.
    workers: Vec<JoinHandle<()>>,
    /// Connection event-loop tasks.
    loops: Vec<JoinHandle<()>>,
    /// (channel, uid) of every register handed to a client.
    sent: Arc<Mutex<Vec<(String, String)>>>,
    /// Counters.
    stats: Arc<FleetStats>,
    /// Workers in total.
    total_workers: usize,
    /// The seed of this run.
    seed: u64,
}

impl Fleet {
    /// Connects `spec.connections` clients to the broker on `port` (waiting for each CONNACK)
    /// and starts every worker.
    pub async fn start(port: u16, spec: &FleetSpec, seed: u64) -> Fleet {
        Fleet::start_on(&[port], spec, seed).await
    }

    /// [`Fleet::start`] with the connections spread over several brokers (connection i on
    /// `ports[i % ports.len()]`): the nodes of a clustered broker.
    pub async fn start_on(ports: &[u16], spec: &FleetSpec, seed: u64) -> Fleet {
        let stats = Arc::new(FleetStats::default());
        let sent = Arc::new(Mutex::new(Vec::new()));
        let (stop, stop_rx) = watch::channel(false);
        let mut conns = Vec::new();
        let mut loops = Vec::new();
        for i in 0..spec.connections {
            // Connection i starts on node i and fails over to the next one when it loses it.
            let nodes: Vec<u16> = (0..ports.len())
                .map(|k| ports[(i + k) % ports.len()])
                .collect();
            let (conn, task) = Conn::connect(
                nodes,
                &unique_id(&format!("fleet{i}")),
                &stats,
                spec.wildcard_subscriptions,
            )
            .await;
            conns.push(conn);
            loops.push(task);
        }
        let mut workers = Vec::new();
        let mut n = 0;
        for (c, channel) in spec.channels.iter().enumerate() {
            let channel = Arc::new(channel.clone());
            for w in 0..channel.workers {
                let worker = Worker {
                    conn: conns[n % conns.len()].clone(),
                    channel: Arc::clone(&channel),
                    index: w,
                    seed: mix(seed ^ mix(c as u64) ^ (w as u64) << 20),
                    stop: stop_rx.clone(),
                    sent: Arc::clone(&sent),
                    stats: Arc::clone(&stats),
                };
                workers.push(tokio::spawn(worker.run()));
                n += 1;
            }
        }
        Fleet {
            stop,
            workers,
            loops,
            sent,
            stats,
            total_workers: n,
            seed,
        }
    }

    /// Whether every worker is done with all its jobs.
    pub fn all_done(&self) -> bool {
        self.stats.workers_done.load(Ordering::Relaxed) == self.total_workers
    }

    /// (channel, uid) of every register a worker handed to its client so far.
    pub fn sent(&self) -> Vec<(String, String)> {
        lock(&self.sent).clone()
    }

    /// The counters.
    pub fn stats(&self) -> &FleetStats {
        &self.stats
    }

    /// One line on what the workers saw, for the report.
    pub fn summary(&self) -> String {
        let s = &self.stats;
        format!(
            "fleet (seed {}): {}/{} workers done; at the workers: {} go, {} repeated go, {} expired, \
             {} rejected; {} reconnects, {} sessions lost, {} subscriptions refused",
            self.seed,
            s.workers_done.load(Ordering::Relaxed),
            self.total_workers,
            s.gos.load(Ordering::Relaxed),
            s.repeated_gos.load(Ordering::Relaxed),
            s.expired.load(Ordering::Relaxed),
            s.rejected.load(Ordering::Relaxed),
            s.reconnects.load(Ordering::Relaxed),
            s.sessions_lost.load(Ordering::Relaxed),
            s.subscriptions_refused.load(Ordering::Relaxed),
        )
    }

    /// Stops the workers and the connections.
    pub fn stop(&self) {
        self.stop.send_replace(true);
        for task in self.workers.iter().chain(&self.loops) {
            task.abort();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One shared MQTT connection of the fleet.
#[derive(Clone)]
struct Conn {
    client: AsyncClient,
    routes: Routes,
    /// Whether the connection's wildcard subscriptions cover every job (see
    /// [`FleetSpec::wildcard_subscriptions`]).
    wildcard: bool,
}

/// The filters of a connection with [`FleetSpec::wildcard_subscriptions`].
fn wildcard_filters() -> Vec<SubscribeFilter> {
    ["go/+", "expired/+", "rejected/+"]
        .iter()
        .map(|a| SubscribeFilter::new(topic("+", a), QoS::AtLeastOnce))
        .collect()
}

impl Conn {
    /// Connects with a persistent session and waits (up to 10 s) for the first CONNACK.
    async fn connect(
        nodes: Vec<u16>,
        id: &str,
        stats: &Arc<FleetStats>,
        wildcard: bool,
    ) -> (Conn, JoinHandle<()>) {
        let (client, eventloop) = persistent_client(nodes[0], id);
        let routes: Routes = Arc::default();
        let (up_tx, mut up) = watch::channel(false);
        let task = tokio::spawn(conn_loop(
            eventloop,
            nodes,
            client.clone(),
            Arc::clone(&routes),
            Arc::clone(stats),
            up_tx,
            wildcard,
        ));
        let connected = tokio::time::timeout(DEFAULT_TIMEOUT, up.wait_for(|&u| u)).await;
        assert!(
            matches!(connected, Ok(Ok(_))),
            "{id}: no CONNACK within {DEFAULT_TIMEOUT:?}"
        );
        if wildcard {
            client
                .subscribe_many(wildcard_filters())
                .await
                .expect("queue the fleet's wildcard subscriptions");
        }
        (
            Conn {
                client,
                routes,
                wildcard,
            },
            task,
        )
    }
}

/// The options of a fleet connection to `port`: a fixed id and a persistent session.
fn persistent_options(port: u16, id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options
        .set_keep_alive(Duration::from_secs(5))
        .set_clean_session(false);
    options
}

/// A rumqttc client with a fixed id and a persistent session, TCP_NODELAY on.
fn persistent_client(port: u16, id: &str) -> (AsyncClient, EventLoop) {
    let options = persistent_options(port, id);
    let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
    let mut network = eventloop.network_options();
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(5);
    eventloop.set_network_options(network);
    (client, eventloop)
}

/// Subscribes again to the connection's filters: the wildcards, or the topics of the jobs
/// still waiting. Non-blocking: the polling task must never wait on its own request channel.
fn resubscribe(client: &AsyncClient, routes: &Routes, wildcard: bool) {
    let filters: Vec<SubscribeFilter> = if wildcard {
        wildcard_filters()
    } else {
        lock(routes)
            .keys()
            .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce))
            .collect()
    };
    if !filters.is_empty() {
        if let Err(e) = client.try_subscribe_many(filters) {
            eprintln!("fleet: could not subscribe again: {e}");
        }
    }
}

/// Polls a fleet connection forever: routes each PUBLISH to the job waiting on its topic and,
/// after every reconnect, subscribes again to the topics of the jobs still waiting. A lost
/// connection is tried again on the next of `nodes` (a clustered broker's nodes; the session
/// is the cluster's), as a worker given every node's address would.
async fn conn_loop(
    mut eventloop: EventLoop,
    nodes: Vec<u16>,
    client: AsyncClient,
    routes: Routes,
    stats: Arc<FleetStats>,
    up: watch::Sender<bool>,
    wildcard: bool,
) {
    let mut connacks = 0u64;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if let Some((outcome, job)) = lock(&routes).get(&p.topic) {
                    // The job may have just ended; then nobody listens and that is fine.
                    let _ = job.send(*outcome);
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                connacks += 1;
                up.send_replace(true);
                if connacks > 1 {
                    stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    if !ack.session_present {
                        stats.sessions_lost.fetch_add(1, Ordering::Relaxed);
                    }
                    resubscribe(&client, &routes, wildcard);
                }
            }
            // A broker may refuse a filter and keep the connection (nats-server, while its
            // cluster elects leaders after a node loss): no `go` on it would ever arrive, so a
            // worker subscribes again, as the daemon does.
            Ok(Event::Incoming(Packet::SubAck(ack)))
                if ack.return_codes.contains(&SubscribeReasonCode::Failure) =>
            {
                stats.subscriptions_refused.fetch_add(1, Ordering::Relaxed);
                let (client, routes) = (client.clone(), Arc::clone(&routes));
                tokio::spawn(async move {
                    tokio::time::sleep(RESUBSCRIBE_AFTER_REFUSAL).await;
                    resubscribe(&client, &routes, wildcard);
                });
            }
            Ok(_) => {}
            Err(rumqttc::ConnectionError::RequestsDone) => return,
            Err(_) => {
                up.send_replace(false);
                if nodes.len() > 1 {
                    let id = eventloop.mqtt_options.client_id();
                    let (_, port) = eventloop.mqtt_options.broker_address();
                    let at = nodes.iter().position(|&p| p == port).unwrap_or(0);
                    eventloop.mqtt_options = persistent_options(nodes[(at + 1) % nodes.len()], &id);
                }
                tokio::time::sleep(RECONNECT_BACKOFF).await;
            }
        }
    }
}

/// One worker: registers its jobs one after the other on its connection.
struct Worker {
    conn: Conn,
    channel: Arc<ChannelSpec>,
    index: usize,
    seed: u64,
    stop: watch::Receiver<bool>,
    sent: Arc<Mutex<Vec<(String, String)>>>,
    stats: Arc<FleetStats>,
}

impl Worker {
    async fn run(mut self) {
        let start = between(self.seed, (Duration::ZERO, self.channel.start_spread));
        if !self.pause(start).await {
            return;
        }
        for job in 0..self.channel.jobs_per_worker {
            let n = self.index * self.channel.jobs_per_worker + job;
            let hangs = self.channel.hang_every.is_some_and(|k| n % k == k - 1);
            let uid = format!(
                "{}-w{:03}-j{job}{}",
                self.channel.name,
                self.index,
                if hangs { "-hang" } else { "" }
            );
            let run = between(mix(self.seed ^ (job as u64 + 1)), self.channel.run);
            if !self.job(&uid, hangs, run).await {
                return;
            }
        }
        self.stats.workers_done.fetch_add(1, Ordering::Relaxed);
    }

    /// One job from subscribe to outcome; false if the fleet was stopped meanwhile.
    async fn job(&mut self, uid: &str, hangs: bool, run: Duration) -> bool {
        let name = self.channel.name;
        let topics = [
            (topic(name, &format!("go/{uid}")), Outcome::Go),
            (topic(name, &format!("expired/{uid}")), Outcome::Expired),
            (topic(name, &format!("rejected/{uid}")), Outcome::Rejected),
        ];
        let (tx, mut rx) = mpsc::unbounded_channel();
        {
            let mut routes = lock(&self.conn.routes);
            for (t, outcome) in &topics {
                routes.insert(t.clone(), (*outcome, tx.clone()));
            }
        }
        let filters = topics
            .iter()
            .map(|(t, _)| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
        let body = serde_json::json!({ "uid": uid, "timeout": self.channel.timeout_secs });
        let client = self.conn.client.clone();
        let register_topic = topic(name, "register");
        // Subscribe, then register, through the same request channel: sent in this order.
        let wildcard = self.conn.wildcard;
        let queued = async {
            if !wildcard {
                client.subscribe_many(filters).await?;
            }
            client
                .publish(register_topic, QoS::AtLeastOnce, false, body.to_string())
                .await
        };
        let ok = tokio::select! {
            r = queued => r.is_ok(),
            _ = self.stop.wait_for(|&s| s) => false,
        };
        if !ok {
            return false;
        }
        lock(&self.sent).push((name.to_owned(), uid.to_owned()));
        let finished = self.outcome(uid, hangs, run, &mut rx).await;
        let mut routes = lock(&self.conn.routes);
        for (t, _) in &topics {
            routes.remove(t);
        }
        finished
    }

    /// Waits for the job's outcome and plays the worker's part; false if stopped.
    async fn outcome(
        &mut self,
        uid: &str,
        hangs: bool,
        run: Duration,
        rx: &mut mpsc::UnboundedReceiver<Outcome>,
    ) -> bool {
        let mut started = false;
        loop {
            let outcome = tokio::select! {
                o = rx.recv() => o,
                _ = self.stop.wait_for(|&s| s) => return false,
            };
            match outcome {
                Some(Outcome::Go) if started => {
                    self.stats.repeated_gos.fetch_add(1, Ordering::Relaxed);
                }
                Some(Outcome::Go) => {
                    started = true;
                    self.stats.gos.fetch_add(1, Ordering::Relaxed);
                    if hangs {
                        continue;
                    }
                    if !self.pause(run).await {
                        return false;
                    }
                    let sent = self.conn.client.publish(
                        topic(self.channel.name, "finished"),
                        QoS::AtLeastOnce,
                        false,
                        uid.to_owned(),
                    );
                    return tokio::select! {
                        r = sent => r.is_ok(),
                        _ = self.stop.wait_for(|&s| s) => false,
                    };
                }
                Some(Outcome::Expired) => {
                    self.stats.expired.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Some(Outcome::Rejected) => {
                    self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                None => return false,
            }
        }
    }

    /// Sleeps `d` unless the fleet stops first; false if it stopped.
    async fn pause(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.stop.wait_for(|&s| s) => false,
        }
    }
}

/// Records every message under `coordinosaur/#` with its arrival time.
pub struct Monitor {
    /// What arrived, in order.
    records: Arc<Mutex<Vec<Record>>>,
    /// Time zero of `Record::at`.
    epoch: Instant,
    /// The wall clock at `epoch`, in ms since the Unix epoch (the daemon's engine time base).
    epoch_wall_ms: u64,
    /// Reconnects where the broker had lost the monitor's session (its log may have a gap).
    sessions_lost: Arc<AtomicUsize>,
    /// The event-loop task.
    task: JoinHandle<()>,
}

impl Monitor {
    /// Connects with a persistent session, subscribes to `coordinosaur/#` at QoS 1 and returns
    /// once the SUBACK arrived (up to 10 s).
    pub async fn start(port: u16) -> Monitor {
        let (client, mut eventloop) = persistent_client(port, &unique_id("monitor"));
        let records: Arc<Mutex<Vec<Record>>> = Arc::default();
        let sessions_lost = Arc::new(AtomicUsize::new(0));
        let epoch = Instant::now();
        let epoch_wall_ms = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970")
                .as_millis(),
        )
        .expect("ms fit in u64");
        let (ready_tx, mut ready) = watch::channel(false);
        let task = {
            let records = Arc::clone(&records);
            let sessions_lost = Arc::clone(&sessions_lost);
            tokio::spawn(async move {
                let filter = format!("{PREFIX}/#");
                let mut connacks = 0u64;
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::Publish(p))) => lock(&records).push(Record {
                            at: epoch.elapsed(),
                            topic: p.topic,
                            payload: p.payload.to_vec(),
                            dup: p.dup,
                        }),
                        Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                            connacks += 1;
                            if connacks > 1 && !ack.session_present {
                                sessions_lost.fetch_add(1, Ordering::Relaxed);
                            }
                            // Every time: a resumed session may lack a subscription the
                            // broker could not set up again (nats-server).
                            if let Err(e) = client.try_subscribe(&filter, QoS::AtLeastOnce) {
                                eprintln!("monitor: subscribe not queued: {e}");
                            }
                        }
                        Ok(Event::Incoming(Packet::SubAck(ack)))
                            if ack.return_codes.contains(&SubscribeReasonCode::Failure) =>
                        {
                            let (client, filter) = (client.clone(), filter.clone());
                            tokio::spawn(async move {
                                tokio::time::sleep(RESUBSCRIBE_AFTER_REFUSAL).await;
                                if let Err(e) = client.try_subscribe(&filter, QoS::AtLeastOnce) {
                                    eprintln!("monitor: subscribe not queued: {e}");
                                }
                            });
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            ready_tx.send_replace(true);
                        }
                        Ok(_) => {}
                        Err(rumqttc::ConnectionError::RequestsDone) => return,
                        Err(_) => tokio::time::sleep(RECONNECT_BACKOFF).await,
                    }
                }
            })
        };
        let subscribed = tokio::time::timeout(DEFAULT_TIMEOUT, ready.wait_for(|&r| r)).await;
        assert!(
            matches!(subscribed, Ok(Ok(_))),
            "monitor: no SUBACK within {DEFAULT_TIMEOUT:?}"
        );
        Monitor {
            records,
            epoch,
            epoch_wall_ms,
            sessions_lost,
            task,
        }
    }

    /// The wall clock at the monitor's time zero, in ms since the Unix epoch.
    pub fn epoch_wall_ms(&self) -> u64 {
        self.epoch_wall_ms
    }

    /// Time since the monitor started (the time base of `Record::at`).
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// A copy of everything received so far.
    pub fn records(&self) -> Vec<Record> {
        lock(&self.records).clone()
    }

    /// Messages received so far.
    pub fn len(&self) -> usize {
        lock(&self.records).len()
    }

    /// How many `go` messages arrived for `channel` (repeats included).
    pub fn gos(&self, channel: &str) -> usize {
        let prefix = topic(channel, "go/");
        lock(&self.records)
            .iter()
            .filter(|r| r.topic.starts_with(&prefix))
            .count()
    }

    /// Reconnects where the broker had lost the monitor's session.
    pub fn sessions_lost(&self) -> usize {
        self.sessions_lost.load(Ordering::Relaxed)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A fault run: the fleet, its monitor and what happened to them, checked at the end.
pub struct Run {
    /// The load.
    pub spec: FleetSpec,
    /// The recorder.
    pub monitor: Monitor,
    /// The workers.
    pub fleet: Fleet,
    /// How to read the log (outages are added by the test).
    pub options: CheckOptions,
    /// The daemon's log, whose grant times the quota check uses (see
    /// [`CheckOptions::decided`]); every check reads it again.
    pub daemon_log: Option<std::path::PathBuf>,
    /// The logs of further daemons deciding in the same run (standby coordinators that took
    /// over), read like `daemon_log`.
    pub more_logs: Vec<std::path::PathBuf>,
    /// What the test did and when, printed with the report.
    notes: Vec<String>,
}

impl Run {
    /// Starts the monitor, then the fleet, against the broker on `port`.
    pub async fn start(port: u16, spec: FleetSpec) -> Run {
        Run::start_on(&[port], spec).await
    }

    /// [`Run::start`] over several brokers: the monitor on the first, the fleet's connections
    /// spread over all of them.
    pub async fn start_on(ports: &[u16], spec: FleetSpec) -> Run {
        let monitor = Monitor::start(ports[0]).await;
        let seed = seed_from_env();
        let fleet = Fleet::start_on(ports, &spec, seed).await;
        let mut run = Run {
            spec,
            monitor,
            fleet,
            options: CheckOptions::default(),
            daemon_log: None,
            more_logs: Vec::new(),
            notes: Vec::new(),
        };
        run.options.monitor_epoch_ms = Some(run.monitor.epoch_wall_ms());
        run.note(&format!(
            "{} workers, {} jobs over {} channels and {} connections, seed {seed}",
            run.spec.workers(),
            run.spec.jobs(),
            run.spec.channels.len(),
            run.spec.connections
        ));
        run
    }

    /// Adds a timed note to the report (e.g. "daemon killed").
    pub fn note(&mut self, text: &str) {
        let line = format!("{:.3} s: {text}", self.monitor.now().as_secs_f64());
        eprintln!("[fault run] {line}");
        self.notes.push(line);
    }

    /// Waits until `cond` holds over the monitor's log (checked every 20 ms), up to `within`.
    /// Panics with `what` and the current report if it never does.
    pub async fn wait_until(
        &mut self,
        what: &str,
        within: Duration,
        mut cond: impl FnMut(&Monitor) -> bool,
    ) {
        let deadline = Instant::now() + within;
        while !cond(&self.monitor) {
            if Instant::now() >= deadline {
                let report = self.check();
                panic!("fault run: {what} did not happen within {within:?}\n{report}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.note(what);
    }

    /// Checks the log as it is now.
    pub fn check(&self) -> Report {
        // Records first: every go they hold was logged before it was published.
        let records = self.monitor.records();
        let mut options = self.options.clone();
        if self.daemon_log.is_some() {
            let log: String = self
                .daemon_log
                .iter()
                .chain(&self.more_logs)
                .map(|path| std::fs::read_to_string(path).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n");
            options.decided = checker::grant_times(&log);
        }
        let mut report = checker::check(&self.spec.rules(), &records, &self.fleet.sent(), &options);
        report.notes = self.notes.clone();
        report.notes.push(self.fleet.summary());
        report.notes.push(format!(
            "monitor: {} messages, sessions lost {}",
            self.monitor.len(),
            self.monitor.sessions_lost()
        ));
        report
    }

    /// Lets the run finish: waits until every worker is done and every job is accounted for in
    /// the log, then listens `QUIET_AFTER` more for late messages. Gives up when `deadline`
    /// (from the monitor's start) passes, or when nothing arrived on the monitor for `stall`
    /// (a lost job never ends by itself). Returns the final report.
    pub async fn settle(&mut self, deadline: Duration, stall: Duration) -> Report {
        let mut last_len = self.monitor.len();
        let mut last_change = Instant::now();
        loop {
            let report = self.check();
            if self.fleet.all_done() && report.all_accounted() {
                self.note("every worker done and every job accounted for");
                break;
            }
            if self.monitor.now() >= deadline {
                self.note("deadline reached before every job was accounted for");
                break;
            }
            let len = self.monitor.len();
            if len != last_len {
                last_len = len;
                last_change = Instant::now();
            } else if last_change.elapsed() >= stall {
                self.note(&format!(
                    "nothing arrived for {stall:?}: the run is stuck, checking it as it is"
                ));
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        tokio::time::sleep(QUIET_AFTER).await;
        self.fleet.stop();
        self.check()
    }
}
