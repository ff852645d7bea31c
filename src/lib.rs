//! coordinosaur coordinates jobs over MQTT: workers ask a channel for permission to run and the
//! daemon answers `go` when the channel's semaphore, leases and sliding-window quotas allow.
//!
//! The crate is a pure core with thin shells around it:
//! - [`engine`]: the deterministic state machine. Inputs and the current time go in, decisions
//!   (grant, expire, reject, state) come out; it never reads a clock or does I/O.
//! - [`protocol`]: topic grammar and payload codec, pure functions between MQTT messages and
//!   engine inputs and outputs.
//! - [`config`]: `coordinosaur.toml`, validated at load, resolving each channel's options.
//! - [`mqtt`]: the rumqttc event loop: connect, resubscribe, decode, forward through a bounded
//!   channel; the outbox task through which the driver publishes without waiting; and the pure
//!   tracker of which grants' `go` the broker acknowledged.
//! - [`driver`]: the task owning the engine: a thin `select!` that sleeps exactly until the next
//!   deadline, with its decisions in pure parts (the commit gate, the `go`-again schedule, the
//!   activity summary).
//! - [`state`]: the journal and snapshots (group commit, recovery, format versions, the lock),
//!   on local files or on a NATS JetStream stream.
//! - [`ha`]: standbys on the JetStream backend: a standby follows the journal stream and takes
//!   the leader lease when it is free; a leader that loses it stops (fail-stop).
//! - [`policy`]: the wasmtime host behind the engine's `Policies` trait, and policy hot reload
//!   ([`policy::hot_reload`]). The engine calls policies synchronously through a trait it
//!   defines, as quinn-proto calls its crypto session: a hook costs microseconds, and the engine
//!   stays free of wasmtime.
//! - [`config_reload`], [`watch`]: live config reload (SIGHUP, file changes) and the settled
//!   file watching it shares with policy hot reload.
//! - [`metrics`]: Prometheus metric names and the bounded channel label.
//! - [`cli`]: the client commands `run` (gate a command behind a channel) and `status`, which
//!   talk to a running daemon over MQTT like any worker, and `policy check` / `policy try`,
//!   which run a policy through the host code without a broker.
//! - [`replay`]: `coordinosaur replay`, which re-runs the journaled period through the engine
//!   (a discrete-event simulation) under the recorded limits or a candidate config and policy.
//! - `broker` (feature `embedded-broker`): an in-process rumqttd for machines without a broker.

pub mod cli;
pub mod config;
pub mod config_reload;
pub mod driver;
pub mod engine;
pub mod ha;
pub mod metrics;
pub mod mqtt;
pub mod policy;
pub mod protocol;
pub mod replay;
pub mod state;
pub mod watch;

#[cfg(feature = "embedded-broker")]
pub mod broker;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;

use config::Config;

/// Runs the daemon with `config` until `shutdown` completes, then disconnects cleanly. With
/// `config_path`, the file is re-read on SIGHUP or when it changes (see [`config_reload`]).
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    shutdown: impl Future,
) -> anyhow::Result<()> {
    let (decode_limits, limits_rx) = tokio::sync::watch::channel(config.limits.decode());
    let mut settings = mqtt_settings(&config, limits_rx)?;
    tokio::pin!(shutdown);
    // First: a second daemon on the same state dir must stop before it touches the broker.
    let mut state = open_state(&config).await?;
    let _broker = start_embedded_broker(&config, &mut settings).await?;
    tracing::info!(broker = %settings.broker.address(), prefix = settings.prefix, channel_rules = config.channels.len(), "starting");

    let config_metrics = config.metrics.clone();
    start_metrics(&config_metrics)?;
    let (runtime, policy_watch) = start_policies(&config).await?;
    // With the JetStream backend: a standby until this node takes the leader lease; only the
    // leader connects to MQTT.
    let mut leader = None;
    if let Some(js) = config.state.jetstream() {
        let node = js.node_id();
        let Some(takeover) = ha::standby(js, &node, shutdown.as_mut()).await? else {
            tracing::info!("shut down as a standby");
            return Ok(());
        };
        state = Some((takeover.journal, takeover.snapshot, takeover.recent));
        leader = Some(Leader {
            cluster: takeover.cluster,
            guard: takeover.guard,
            node,
        });
    }
    let configs = start_config_reload(config_path, policy_watch, decode_limits);
    let settings_prefix = settings.prefix.clone();
    let (client, eventloop) = mqtt::connect(&settings);
    let (tx, rx) = mpsc::channel(mqtt::INBOUND_CAPACITY);
    let (sent_tx, sent_rx) = mpsc::unbounded_channel();
    let (prefix, nonce) = (settings.prefix.clone(), settings.nonce.clone());
    let mqtt_task = tokio::spawn(mqtt::run(client.clone(), eventloop, settings, sent_rx, tx));

    let limits = config.limits.engine();
    let engine = engine::Engine::with_limits(
        Box::new(move |channel| config.channel_options(channel)),
        limits,
    );
    let (outbox, outbox_task) = mqtt::outbox::Outbox::start(client.clone(), sent_tx);
    let sink = mqtt::MqttSink {
        outbox,
        prefix,
        nonce,
        leader: leader.as_ref().map(|l| leader_record(&l.node)),
    };
    let control = driver::Control {
        policies: Some(runtime),
        configs,
        metrics: metrics::Recorder::new(config_metrics.max_channels),
        state,
        prefix: settings_prefix,
    };
    let stopped = driver::run(engine, driver::Clock::new(), rx, sink, control, shutdown).await;
    if let driver::Stopped::Deposed(reason) = stopped {
        // Fail-stop: nothing held is published; the supervisor restarts this as a standby.
        mqtt_task.abort();
        anyhow::bail!(
            "stepped down as leader: {reason}; restart coordinosaur to rejoin as a standby"
        );
    }
    tracing::info!("shutting down");
    disconnect(client, outbox_task, mqtt_task, leader).await;
    Ok(())
}

/// The MQTT connection's settings from `[mqtt]`, with the message limits that a reloaded config
/// may change.
fn mqtt_settings(
    config: &Config,
    limits: tokio::sync::watch::Receiver<protocol::DecodeLimits>,
) -> anyhow::Result<mqtt::Settings> {
    Ok(mqtt::Settings {
        broker: mqtt::Broker::from_config(&config.mqtt).context("MQTT TLS settings")?,
        client_id: config.mqtt.client_id.clone(),
        clean_session: config.mqtt.clean_session,
        prefix: config.mqtt.topic_prefix.clone(),
        limits,
        nonce: mqtt::Settings::new_nonce(),
    })
}

/// Serves Prometheus metrics when `[metrics] listen` is set.
fn start_metrics(config: &config::MetricsConfig) -> anyhow::Result<()> {
    if let Some(addr) = config.listen {
        metrics::install(addr)?;
        tracing::info!(listen = %addr, "serving Prometheus metrics on /metrics");
    }
    Ok(())
}

/// This node's leadership on the JetStream backend: the lease to release at a clean shutdown.
struct Leader {
    /// The cluster holding the lease.
    cluster: state::jetstream::Cluster,
    /// The lease.
    guard: state::jetstream::LeaseGuard,
    /// This node's id.
    node: String,
}

/// Starts config reload (or, without a config file, only keeps the policy files watched) and
/// returns where the reloaded configs reach the driver. A reloaded config's message limits
/// apply in the MQTT task at once, through `decode_limits`; the rest in the driver.
fn start_config_reload(
    config_path: Option<PathBuf>,
    policy_watch: config_reload::PolicyWatch,
    decode_limits: tokio::sync::watch::Sender<protocol::DecodeLimits>,
) -> mpsc::UnboundedReceiver<config_reload::NewConfig> {
    let (config_tx, mut reloaded) = mpsc::unbounded_channel::<config_reload::NewConfig>();
    let (to_driver, configs) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(new) = reloaded.recv().await {
            let limits = new.config.limits.decode();
            if limits != *decode_limits.borrow() {
                tracing::info!(?limits, "message limits changed");
                decode_limits.send_replace(limits);
            }
            if to_driver.send(new).is_err() {
                break;
            }
        }
    });
    if let Some(path) = config_path {
        tokio::spawn(config_reload::run(path, policy_watch, config_tx));
    } else {
        // No file to re-read: keep watching the policies for as long as the daemon runs.
        tokio::spawn(async move {
            let _keep = policy_watch;
            config_tx.closed().await;
        });
    }
    configs
}

/// After the driver stopped: lets the queued publishes out, disconnects from the broker and,
/// as leader, releases the lease.
async fn disconnect(
    client: rumqttc::AsyncClient,
    outbox_task: tokio::task::JoinHandle<()>,
    mqtt_task: tokio::task::JoinHandle<()>,
    leader: Option<Leader>,
) {
    // The driver dropped its outbox: once the task has handed everything to rumqttc, queued
    // publishes go out before the DISCONNECT, which is queued behind them.
    if tokio::time::timeout(Duration::from_secs(3), outbox_task)
        .await
        .is_err()
    {
        tracing::warn!("publishes still queued 3 s after shutdown; disconnecting anyway");
    }
    let _ = client.try_disconnect();
    if tokio::time::timeout(Duration::from_secs(3), mqtt_task)
        .await
        .is_err()
    {
        tracing::warn!("MQTT connection did not close within 3 s");
    }
    // Disconnected: a standby may take over at once instead of waiting out the lease.
    if let Some(Leader {
        cluster,
        guard,
        node,
    }) = &leader
    {
        if guard.valid() {
            state::jetstream::lease::release(&cluster.leases, node).await;
        }
    }
}

/// The retained record of who leads: `{"node": ..., "since_ms": <epoch ms>}`.
fn leader_record(node: &str) -> Vec<u8> {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    serde_json::json!({"node": node, "since_ms": since})
        .to_string()
        .into_bytes()
}

/// Opens the state dir (taking its lock) and restores the last run's state, unless
/// persistence is off.
async fn open_state(
    config: &Config,
) -> anyhow::Result<Option<(state::Journal, engine::Snapshot, Vec<state::Registered>)>> {
    if config.state.jetstream().is_some() {
        return Ok(None);
    }
    let Some(dir) = config.state.dir().map(ToOwned::to_owned) else {
        tracing::warn!("[state] dir = \"\": persistence is off; a restart forgets every job");
        return Ok(None);
    };
    let durability = config.state.durability;
    let quotas = config.clone();
    let keep_grants = move |channel: &str| {
        let options = quotas.channel_options(channel);
        options
            .quotas
            .iter()
            .map(|q| q.limit as usize)
            .max()
            .unwrap_or(0)
    };
    let started = std::time::Instant::now();
    let (snapshot, recovery, journal) =
        tokio::task::spawn_blocking(move || state::open(&dir, durability, keep_grants))
            .await
            .context("state start-up")??;
    for warning in &recovery.warnings {
        tracing::warn!("state: {warning}");
    }
    let (waiting, running) = snapshot.counts();
    let (dir, durability, generation) = journal.describe();
    tracing::info!(
        dir = %dir.display(),
        %durability,
        generation,
        base = recovery.base,
        journals = recovery.journals,
        changes = recovery.changes,
        torn_bytes = recovery.torn_bytes,
        channels = snapshot.channels.len(),
        waiting,
        running,
        took_ms = started.elapsed().as_millis(),
        "state restored"
    );
    Ok(Some((
        state::Journal::File(Box::new(journal)),
        snapshot,
        recovery.recent_registrations,
    )))
}

/// Compiles every configured policy (a bad one stops start-up) and starts watching their files.
async fn start_policies(
    config: &Config,
) -> anyhow::Result<(driver::PolicyRuntime, config_reload::PolicyWatch)> {
    let paths = config.policy_paths();
    let sandbox = config.policy_sandbox.clone();
    let preload = paths.clone();
    let cache = config.policy_cache.clone();
    let rollback = config.policy_rollback;
    let (host, compiler) = tokio::task::spawn_blocking(move || {
        // No policy, no cache folder: the state dir stays as the journal left it.
        let compiler = if preload.is_empty() {
            policy::Compiler::new()?
        } else {
            with_cache(policy::Compiler::new()?, &cache)
        };
        let mut host = policy::PolicyHost::new(compiler.clone(), &sandbox);
        host.set_rollback(rollback);
        host.preload(&preload)?;
        Ok::<_, policy::PolicyError>((host, compiler))
    })
    .await
    .context("policy start-up")??;
    let (tx, updates) = mpsc::unbounded_channel();
    let mut watch = config_reload::PolicyWatch {
        compiler,
        updates: tx,
        watcher: None,
        paths: Vec::new(),
    };
    watch.follow(paths);
    Ok((driver::PolicyRuntime { host, updates }, watch))
}

/// Adds the `[policy_cache]` to `compiler`; a cache that cannot be opened is logged and skipped
/// (policies then compile on every load, as without a cache).
fn with_cache(compiler: policy::Compiler, config: &config::PolicyCacheConfig) -> policy::Compiler {
    let Some(dir) = config.dir() else {
        return compiler;
    };
    match policy::PolicyCache::open(dir, config.max_bytes) {
        Ok(cache) => compiler.with_cache(cache),
        Err(e) => {
            tracing::warn!(cache = %dir.display(), cause = %e, "cannot open the policy cache; policies compile on every load");
            compiler
        }
    }
}

#[cfg(feature = "embedded-broker")]
async fn start_embedded_broker(
    config: &Config,
    settings: &mut mqtt::Settings,
) -> anyhow::Result<Option<broker::EmbeddedBroker>> {
    if !config.embedded_broker.enabled {
        return Ok(None);
    }
    if config.mqtt.keep_alive.is_zero() {
        anyhow::bail!("[mqtt] keep_alive = 0 is refused by the embedded broker; use at least 1s");
    }
    if config.mqtt.tls.is_some() {
        anyhow::bail!("[mqtt.tls] is set, but the embedded broker has no TLS listener: remove [mqtt.tls] or set [embedded_broker] enabled = false");
    }
    let listen = config.embedded_broker.listen;
    // start() blocks until the broker accepts connections (bounded, 5 s).
    let broker = tokio::task::spawn_blocking(move || broker::start(listen))
        .await
        .context("embedded broker start-up")??;
    let addr = broker.local_addr();
    // Connect to our own broker; an unspecified listen address is reached through loopback.
    settings.broker.host = if addr.ip().is_unspecified() {
        "127.0.0.1".into()
    } else {
        addr.ip().to_string()
    };
    settings.broker.port = addr.port();
    tracing::info!(listen = %addr, "embedded broker started");
    Ok(Some(broker))
}

#[cfg(not(feature = "embedded-broker"))]
async fn start_embedded_broker(
    config: &Config,
    _settings: &mut mqtt::Settings,
) -> anyhow::Result<Option<()>> {
    if config.embedded_broker.enabled {
        anyhow::bail!("[embedded_broker] enabled = true, but this build has no embedded broker (cargo feature `embedded-broker`); set enabled = false and point [mqtt] at a broker");
    }
    Ok(None)
}
