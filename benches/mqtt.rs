//! End-to-end benchmark: the real daemon through a real Mosquitto on loopback, against a null
//! responder that answers every `register` with `go` at once (the broker-bound ceiling).
//!
//! Run with `cargo bench --bench mqtt`. One Mosquitto serves every run. The three responders are
//! separate processes, each with its own topic prefix (`cdnull`, `cdinfo`, ...: all of the same
//! length, so packets are the same size); they are measured one after the other, never at the
//! same time, interleaved in rounds so that drifting load from other processes on the machine
//! hits them alike. An idle responder only holds its connection.
//! - `daemon, shipped defaults`: the release binary as `coordinosaur.toml` ships it (less the
//!   embedded broker): durable state with `durability = "fsync"`, `RUST_LOG` unset (`info`),
//!   stderr to a file; only the channels' limits are opened for the load. Its latency is judged
//!   against the null responder's plus one `fdatasync`, measured on the same disk in the same run
//!   (the `fdatasync` line of the report);
//! - `daemon (log=info)`: the release binary with `RUST_LOG` unset and durable state off,
//!   stderr to a file;
//! - `daemon (log=warn)`: the same with `RUST_LOG=warn`;
//! - `null responder`: this bench binary re-executed with `--null-responder PORT PREFIX ct`:
//!   one rumqttc client subscribed to `PREFIX/+/register`, answering `go/{uid}` at QoS 1 at
//!   once, ignoring `finished`, on a current-thread tokio runtime; the reference for the ratios;
//! - `null responder (multi-thread rt)`: the same on a multi-thread runtime, as the daemon uses
//!   (a control: how much of the gap is the runtime flavour).
//!
//! The load generator is the same for every responder: per-worker rumqttc clients (one TCP
//! connection each, as real workers have), QoS 1 both ways, each worker with a fixed uid that it
//! registers again after every `finished`. CPU use of Mosquitto, the responder and this process
//! is sampled from `/proc/PID/stat` over each throughput window. Everything is bounded in time; a
//! watchdog kills the children and exits after 5 minutes.
//!
//! `cargo bench --bench mqtt -- --durability` compares the daemon with durable state off,
//! `durability = "os"` and `durability = "fsync"` (all at `RUST_LOG=warn`; the other runs turn
//! state off, so they measure the engine and MQTT alone).
//!
//! `cargo bench --bench mqtt -- --policies` runs the policy comparison instead: the daemon with
//! the `priority` policy on every channel against the daemon with no policy (both at
//! `RUST_LOG=warn`, every register carrying a `priority` field), same rounds and load; then the
//! end-to-end hot reload latency (rename `deny` over `priority`, poll with registrations of a
//! denied tenant until the first `rejected`, and back). See [`policy_bench`].
//!
//! `cargo bench --bench mqtt -- --progress` measures what `"progress": true` costs with 10,000
//! waiting jobs under churn (see [`progress`]).
//!
//! `cargo bench --bench mqtt -- --ha` measures the high-availability backend instead: a 3-node
//! NATS cluster (the tests' [`common::nats::NatsCluster`]: JetStream R=3, an MQTT listener on each
//! node, `mqtt { ack_wait: "1s" }`) replaces Mosquitto, and the null responder, the daemon with
//! `[state] backend = "jetstream"` (shipped defaults: a leader plus one standby) and the daemon with
//! the shipped file journal all go through node 0's MQTT listener, with a bounded load
//! ([`HA_WORKERS`] workers); a second null responder, also subscribed to `finished`, is the
//! control for the broker's cost of the message the daemon reads and the null responder does
//! not. Lost cycles (no reply within [`REPLY_TIMEOUT`]) are counted, not waited for. See
//! [`ha_bench`].

use std::fmt::Write as _;
use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::{mpsc, oneshot, Barrier};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// The tests' harness: the guest policies (`policies::policy_wasm`) and the NATS cluster.
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "mqtt/progress.rs"]
mod progress;

/// Rounds: in each, every responder is measured once, one after the other.
const ROUNDS: usize = 5;
/// Latency test: warm-up cycles (before the first round), then measured cycles per round.
const LAT_WARMUP: usize = 200;
const LAT_SAMPLES: usize = 600;
/// Throughput test shape.
const WORKERS: usize = 64;
const CHANNELS: usize = 8;
/// Per round and responder.
const TP_WARMUP: Duration = Duration::from_secs(1);
const TP_MEASURE: Duration = Duration::from_secs(2);
/// Longest wait for any single reply before a worker gives up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// The whole bench is killed after this long.
const WATCHDOG: Duration = Duration::from_secs(300);
/// The same for `--ha` (cluster start-up and slower MQTT sessions on nats-server).
const HA_WATCHDOG: Duration = Duration::from_secs(600);
/// Workers of the throughput test with `--ha`: a bounded load, since nats-server 2.9.10's MQTT
/// listener loses QoS 1 messages at high rates to subscribers that acknowledge late (the daemon
/// acknowledges a request after its journal commit; see tests/ha.rs).
const HA_WORKERS: usize = 16;
/// Job timeout in every register, in seconds: no lease ever expires during a run.
const JOB_TIMEOUT_S: u64 = 600;

/// Child processes to kill if the watchdog fires.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--null-responder") {
        let port = args
            .get(i + 1)
            .and_then(|p| p.parse().ok())
            .expect("--null-responder PORT PREFIX");
        let prefix = args.get(i + 2).expect("--null-responder PORT PREFIX");
        let multi_thread = args.get(i + 3).is_some_and(|a| a == "mt");
        let finished = args.get(i + 4).is_some_and(|a| a == "fin");
        null_responder(port, prefix, multi_thread, finished);
        return;
    }
    // `cargo bench --bench mqtt -- --policies`: the policy comparison instead of the default run.
    let policy_mode = args.iter().any(|a| a == "--policies");
    // `cargo bench --bench mqtt -- --ha`: the JetStream backend on a NATS cluster.
    let ha_mode = args.iter().any(|a| a == "--ha");
    let mosquitto_exe = find_mosquitto();
    if ha_mode && common::nats::executable().is_none() {
        println!(
            "nats-server not found (apt-get install -y nats-server); skipping the HA benchmark"
        );
        return;
    }
    if !ha_mode && mosquitto_exe.is_none() {
        println!("mosquitto not found (apt-get install -y mosquitto); skipping the MQTT benchmark");
        return;
    }
    let watchdog = if ha_mode { HA_WATCHDOG } else { WATCHDOG };
    std::thread::spawn(move || {
        std::thread::sleep(watchdog);
        eprintln!("watchdog: the benchmark ran over {watchdog:?}; killing children and exiting");
        kill_children();
        std::process::exit(1);
    });

    eprintln!(
        "load average at start: {}",
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let dir = tempfile::Builder::new()
        .prefix("coordinosaur-bench-")
        .tempdir()
        .expect("temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if ha_mode {
        ha_bench(&rt, dir.path());
        return;
    }
    let broker = Proc::mosquitto(&mosquitto_exe.expect("checked above"), dir.path());

    if policy_mode {
        policy_bench(&rt, broker, dir.path());
        return;
    }
    // `cargo bench --bench mqtt -- --progress`: position messages with a long queue.
    if args.iter().any(|a| a == "--progress") {
        progress::run(&rt, broker, dir.path());
        return;
    }
    // `cargo bench --bench mqtt -- --durability`: what the journal costs, per setting.
    if args.iter().any(|a| a == "--durability") {
        let responders = [
            Responder::StateDaemon { durability: "off" },
            Responder::StateDaemon { durability: "os" },
            Responder::StateDaemon {
                durability: "fsync",
            },
        ];
        let (results, procs) = compare(&rt, &broker.as_broker(), dir.path(), &responders, WORKERS);
        drop(procs);
        drop(broker);
        print_report(&results);
        return;
    }
    let fsync = fdatasync_latency(dir.path());
    let responders = [
        Responder::Null {
            multi_thread: false,
        },
        Responder::Shipped,
        Responder::Daemon { log: "info" },
        Responder::Daemon { log: "warn" },
        Responder::Null { multi_thread: true },
    ];
    let (results, procs) = compare(&rt, &broker.as_broker(), dir.path(), &responders, WORKERS);
    drop(procs);
    drop(broker);
    print_report(&results);
    println!(
        "\nfdatasync of 64 bytes on the bench's disk ({} samples): p50 {:.0} us, p99 {:.0} us",
        fsync.len(),
        percentile(&fsync, 0.5),
        percentile(&fsync, 0.99)
    );
}

/// Latency of appending 64 bytes and `fdatasync`ing them (what one journal
/// commit with `durability = "fsync"` costs at least), in `dir`.
fn fdatasync_latency(dir: &Path) -> Vec<Duration> {
    use std::os::unix::fs::FileExt as _;
    let path = dir.join("fdatasync-probe");
    let file = fs::File::create(&path).expect("create the fdatasync probe");
    let mut samples = Vec::with_capacity(1_000);
    for i in 0..1_000u64 {
        let started = Instant::now();
        file.write_all_at(&[0x5a; 64], i * 64)
            .expect("write the probe");
        file.sync_data().expect("fdatasync the probe");
        samples.push(started.elapsed());
    }
    let _ = fs::remove_file(&path);
    samples
}

/// Spawns `responders`, waits until each is ready, and measures them in interleaved rounds
/// (latency then throughput with `workers` workers, one responder after the other). Returns the
/// outcomes and the still-running responder processes (their logs' sizes are already in the
/// outcomes).
fn compare(
    rt: &tokio::runtime::Runtime,
    broker: &Broker,
    dir: &Path,
    responders: &[Responder],
    workers: usize,
) -> (Vec<Outcome>, Vec<Proc>) {
    let port = broker.port;
    // Each responder's processes (a leader and a standby for the JetStream backend).
    let procs: Vec<Vec<Proc>> = responders
        .iter()
        .map(|r| rt.block_on(r.start(port, dir)))
        .collect();
    let mut results: Vec<Outcome> = responders
        .iter()
        .map(|r| Outcome {
            name: r.name(),
            latency: Latency {
                samples: Vec::new(),
                lost: 0,
            },
            throughput: Throughput::default(),
            rounds: Vec::new(),
            log_bytes: 0,
            workers,
        })
        .collect();
    let mut lat_conns: Vec<(Job, Conn)> = responders
        .iter()
        .map(|r| {
            let job = Job::new(r.prefix(), "lat", "lat-0", &r.fields(0));
            let conn = rt.block_on(Conn::connect(
                port,
                &format!("bench-lat-{}", r.prefix()),
                vec![job.go.clone()],
            ));
            (job, conn)
        })
        .collect();
    for (i, (job, conn)) in lat_conns.iter_mut().enumerate() {
        let mut warm_up = Latency {
            samples: Vec::new(),
            lost: 0,
        };
        rt.block_on(latency_run(job, conn, LAT_WARMUP, &mut warm_up));
        if warm_up.lost > 0 {
            eprintln!(
                "{}: {} cycles lost in the warm-up",
                results[i].name, warm_up.lost
            );
        }
    }
    for round in 0..ROUNDS {
        for (i, r) in responders.iter().enumerate() {
            let (job, conn) = &mut lat_conns[i];
            rt.block_on(latency_run(job, conn, LAT_SAMPLES, &mut results[i].latency));
            let responder_pids: Vec<u32> = procs[i].iter().map(Proc::pid).collect();
            let tp = rt.block_on(throughput_run(
                port,
                r,
                round,
                workers,
                &broker.pids,
                &responder_pids,
            ));
            eprintln!(
                "round {round} {}: {:.0} cycles/s, {} lost cycles",
                r.name(),
                tp.cycles as f64 / tp.secs,
                tp.errors
            );
            results[i].rounds.push(tp.cycles as f64 / tp.secs);
            results[i].throughput.add(tp);
        }
    }
    drop(lat_conns);
    for (i, group) in procs.iter().enumerate() {
        results[i].log_bytes = group.iter().map(Proc::log_len).sum();
    }
    (results, procs.into_iter().flatten().collect())
}

/// The MQTT broker the responders and the load generator use: its port, and the processes whose
/// CPU time counts as the broker's (one Mosquitto, or every node of the NATS cluster).
struct Broker {
    port: u16,
    pids: Vec<u32>,
}

// ---------------------------------------------------------------------------------------------
// Processes

enum Responder {
    /// The null responder, on a current-thread (`false`) or multi-thread (`true`, like the
    /// daemon's) tokio runtime.
    Null { multi_thread: bool },
    /// The current-thread null responder also subscribed to `PREFIX/+/finished` (and ignoring
    /// it), so that the broker delivers as many messages per cycle as to the daemon; a control
    /// for `--ha`, where the broker's cost per message dominates.
    NullFinished,
    /// The daemon as shipped: fsync journal, default log level.
    Shipped,
    /// The daemon with durable state off, at log level `log`.
    Daemon { log: &'static str },
    /// The daemon at `RUST_LOG=warn` with the `priority` policy on every channel (`true`) or
    /// with no policy at all (`false`); see [`policy_bench`].
    PolicyDaemon { policy: bool },
    /// The daemon at `RUST_LOG=warn` with durable state: `"off"` (`dir = ""`), `"os"` or
    /// `"fsync"`; see `--durability`.
    StateDaemon { durability: &'static str },
    /// The daemon with `[state] backend = "jetstream"` on the NATS cluster `servers` (a TOML
    /// array), shipped defaults otherwise: two processes, a leader and a standby; see `--ha`.
    JetStream { servers: String },
}

impl Responder {
    /// Topic prefix: every responder has its own, all of the same length.
    fn prefix(&self) -> &'static str {
        match self {
            Responder::Null {
                multi_thread: false,
            } => "cdnull",
            Responder::Null { multi_thread: true } => "cdnmtr",
            Responder::NullFinished => "cdnfin",
            Responder::Shipped => "cdship",
            Responder::Daemon { log: "info" } => "cdinfo",
            Responder::Daemon { .. } => "cdwarn",
            Responder::PolicyDaemon { policy: true } => "cdprio",
            Responder::PolicyDaemon { policy: false } => "cdnopo",
            Responder::StateDaemon { durability: "off" } => "cdsoff",
            Responder::StateDaemon { durability: "os" } => "cdstos",
            Responder::StateDaemon { .. } => "cdsync",
            Responder::JetStream { .. } => "cdjets",
        }
    }

    fn name(&self) -> String {
        match self {
            Responder::Null {
                multi_thread: false,
            } => "null responder".into(),
            Responder::Null { multi_thread: true } => "null responder (multi-thread rt)".into(),
            Responder::NullFinished => "null responder subscribed to finished (control)".into(),
            Responder::Shipped => "daemon, shipped defaults (fsync, info)".into(),
            Responder::Daemon { log } => format!("daemon, state off (log={log})"),
            Responder::PolicyDaemon { policy: true } => "daemon, policy priority".into(),
            Responder::PolicyDaemon { policy: false } => "daemon, no policy".into(),
            Responder::StateDaemon { durability } => format!("daemon, state {durability}"),
            Responder::JetStream { .. } => {
                "daemon, jetstream backend (leader + standby, shipped defaults)".into()
            }
        }
    }

    /// Extra registration fields sent by the load generator (the `priority` the policy reads;
    /// sent to both policy-mode daemons so that packets are the same size).
    fn fields(&self, worker: usize) -> String {
        match self {
            Responder::PolicyDaemon { .. } => format!(",\"priority\":{}", worker % 4),
            _ => String::new(),
        }
    }

    /// Spawns the responder's processes and waits until they are ready: one, or for
    /// [`Responder::JetStream`] a leader (ready when it answers on MQTT) and then a standby
    /// (ready when it follows the journal).
    async fn start(&self, broker_port: u16, dir: &Path) -> Vec<Proc> {
        let mut leader = self.spawn(broker_port, dir, 0);
        wait_ready(broker_port, self, &mut leader).await;
        let mut procs = vec![leader];
        if let Responder::JetStream { .. } = self {
            let mut standby = self.spawn(broker_port, dir, 1);
            let deadline = Instant::now() + Duration::from_secs(30);
            while !fs::read_to_string(&standby.log)
                .unwrap_or_default()
                .contains("standby: following the journal")
            {
                assert!(
                    standby.running() && Instant::now() < deadline,
                    "the standby did not follow the journal within 30 s:\n{}",
                    fs::read_to_string(&standby.log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            procs.push(standby);
        }
        procs
    }

    /// Spawns process `node` of the responder (0 unless it has a standby).
    fn spawn(&self, broker_port: u16, dir: &Path, node: usize) -> Proc {
        let run = self.prefix();
        let log = dir.join(format!("responder-{run}-{node}.log"));
        let out = fs::File::create(&log).expect("responder log");
        let mut cmd = match self {
            Responder::Null { .. } | Responder::NullFinished => {
                let multi_thread = matches!(self, Responder::Null { multi_thread: true });
                let mut c = Command::new(std::env::current_exe().expect("current exe"));
                c.arg("--null-responder")
                    .arg(broker_port.to_string())
                    .arg(self.prefix())
                    .arg(if multi_thread { "mt" } else { "ct" });
                if let Responder::NullFinished = self {
                    c.arg("fin");
                }
                c
            }
            Responder::Shipped => daemon_command(
                dir,
                broker_port,
                run,
                node,
                &format!("dir = \"state-{run}\""),
                "",
                "info",
            ),
            // Only what the backend needs: lease, replicas and log level as shipped.
            Responder::JetStream { servers } => daemon_command(
                dir,
                broker_port,
                run,
                node,
                &format!(
                    "backend = \"jetstream\"\n\n[state.jetstream]\nservers = {servers}\n\
                     stream = \"{run}\"\nnode_id = \"c{node}\""
                ),
                "",
                "info",
            ),
            // State off: these runs measure the engine and MQTT; `--durability` adds the journal.
            Responder::Daemon { log } => {
                daemon_command(dir, broker_port, run, node, "dir = \"\"", "", log)
            }
            Responder::PolicyDaemon { policy } => {
                let policy_lines = if *policy {
                    format!(
                        "policy = \"{}\"\n\n[[channels]]\npattern = \"rl\"\n\
                         policy = \"{}\"\npolicy_config = {{ tenants = [\"evil\"] }}\n",
                        dir.join("policies").join("priority.wasm").display(),
                        dir.join("reload").join("active.wasm").display()
                    )
                } else {
                    String::new()
                };
                daemon_command(
                    dir,
                    broker_port,
                    run,
                    node,
                    "dir = \"\"",
                    &policy_lines,
                    "warn",
                )
            }
            Responder::StateDaemon { durability } => {
                let state = match *durability {
                    "off" => "dir = \"\"".to_owned(),
                    d => format!("dir = \"state-{run}\"\ndurability = \"{d}\""),
                };
                daemon_command(dir, broker_port, run, node, &state, "", "warn")
            }
        };
        let child = cmd
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone log handle"))
            .stderr(out)
            .spawn()
            .expect("spawn responder");
        Proc::new(child, 0, log)
    }
}

/// The release daemon with its own config in `dir` (one per `run` and `node`): topic prefix and
/// client id from `run` (shared by a leader and its standbys), the given `[state]` lines,
/// `[defaults] max_concurrent_jobs = 1000000` followed by `defaults_extra` (more keys and
/// tables), and `RUST_LOG=log` (`info`: unset, the daemon's default).
fn daemon_command(
    dir: &Path,
    broker_port: u16,
    run: &str,
    node: usize,
    state: &str,
    defaults_extra: &str,
    log: &str,
) -> Command {
    let config = dir.join(format!("coordinosaur-{run}-{node}.toml"));
    fs::write(
        &config,
        format!(
            "[mqtt]\nhost = \"127.0.0.1\"\nport = {broker_port}\n\
             client_id = \"coordinosaur-bench-{run}\"\ntopic_prefix = \"{run}\"\n\n\
             [state]\n{state}\n\n[defaults]\nmax_concurrent_jobs = 1000000\n{defaults_extra}"
        ),
    )
    .expect("write daemon config");
    let mut c = Command::new(env!("CARGO_BIN_EXE_coordinosaur"));
    c.arg("--config").arg(config).env("NO_COLOR", "1");
    if log == "info" {
        c.env_remove("RUST_LOG");
    } else {
        c.env("RUST_LOG", log);
    }
    c
}

/// A child process, killed on drop.
struct Proc {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Proc {
    fn new(child: Child, port: u16, log: PathBuf) -> Proc {
        CHILDREN.lock().expect("lock").push(child.id());
        Proc {
            child: Some(child),
            port,
            log,
        }
    }

    fn mosquitto(exe: &Path, dir: &Path) -> Proc {
        for _ in 0..3 {
            let port = free_port();
            let conf = dir.join("mosquitto.conf");
            fs::write(
                &conf,
                format!(
                    "listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n\
                     max_queued_messages 0\npersistence false\nuser root\nlog_dest stderr\n\
                     log_type error\nlog_type warning\n"
                ),
            )
            .expect("write mosquitto.conf");
            let log = dir.join("mosquitto.log");
            let out = fs::File::create(&log).expect("mosquitto log");
            let child = Command::new(exe)
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("clone log handle"))
                .stderr(out)
                .spawn()
                .expect("spawn mosquitto");
            let mut proc = Proc::new(child, port, log);
            let deadline = Instant::now() + Duration::from_secs(10);
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            while Instant::now() < deadline && proc.running() {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return proc;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!(
                "mosquitto did not start on port {port}: {}",
                fs::read_to_string(&proc.log).unwrap_or_default()
            );
            proc.stop();
        }
        panic!("mosquitto did not start after 3 attempts");
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// This process as the bench's broker.
    fn as_broker(&self) -> Broker {
        Broker {
            port: self.port,
            pids: vec![self.pid()],
        }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    fn log_len(&self) -> u64 {
        fs::metadata(&self.log).map_or(0, |m| m.len())
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            CHILDREN.lock().expect("lock").retain(|p| *p != child.id());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn kill_children() {
    for pid in CHILDREN.lock().map(|c| c.clone()).unwrap_or_default() {
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    }
}

fn find_mosquitto() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("mosquitto"))
        .chain(["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"].map(PathBuf::from))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

// ---------------------------------------------------------------------------------------------
// MQTT client

/// One rumqttc connection: the event loop runs in its own task, which never awaits the client;
/// incoming publishes come out of `rx`.
struct Conn {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Publish>,
    task: JoinHandle<()>,
}

impl Conn {
    /// Connects and returns once every filter is subscribed (SUBACK), within 10 s.
    async fn connect(port: u16, id: &str, filters: Vec<String>) -> Conn {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_inflight(100);
        let (client, mut eventloop) = AsyncClient::new(opts, 256);
        eventloop.network_options.set_tcp_nodelay(true);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let sub = client.clone();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for f in &filters {
                            let _ = sub.try_subscribe(f.as_str(), QoS::AtLeastOnce);
                        }
                        if filters.is_empty() {
                            ready.take().map(|r| r.send(()));
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        // One SUBACK per filter; the broker answers them in order.
                        ready.take().map(|r| r.send(()));
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("client: connection error: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        timeout(Duration::from_secs(10), ready_rx)
            .await
            .expect("connect + subscribe within 10 s")
            .expect("event loop alive");
        Conn { client, rx, task }
    }

    /// Waits for a publish on exactly `topic`, dropping others.
    async fn wait_for(&mut self, topic: &str) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(p)) if p.topic == topic => return Ok(()),
                Ok(Some(_)) => {}
                Ok(None) => return Err("event loop ended".into()),
                Err(_) => return Err(format!("no {topic} within {REPLY_TIMEOUT:?}")),
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A worker's fixed identity: its channel and uid, and the topics they give.
struct Job {
    register: String,
    finished: String,
    go: String,
    body: String,
    uid: String,
}

impl Job {
    /// `fields`: extra registration fields, each with a leading comma (`,"priority":3`).
    fn new(prefix: &str, channel: &str, uid: &str, fields: &str) -> Job {
        Job {
            register: format!("{prefix}/{channel}/register"),
            finished: format!("{prefix}/{channel}/finished"),
            go: format!("{prefix}/{channel}/go/{uid}"),
            body: format!("{{\"uid\":\"{uid}\",\"timeout\":{JOB_TIMEOUT_S}{fields}}}"),
            uid: uid.to_owned(),
        }
    }

    /// After a lost cycle: `finished` for the uid, which ends the job if only its `go` was lost
    /// (the daemon ignores a register for a uid it runs) and is ignored otherwise.
    async fn abandon(&self, conn: &mut Conn) {
        let _ = conn
            .client
            .publish(&self.finished, QoS::AtLeastOnce, false, self.uid.clone())
            .await;
    }

    /// register -> go -> finished; returns the register -> go latency.
    async fn cycle(&self, conn: &mut Conn) -> Result<Duration, String> {
        let t0 = Instant::now();
        conn.client
            .publish(&self.register, QoS::AtLeastOnce, false, self.body.clone())
            .await
            .map_err(|e| e.to_string())?;
        conn.wait_for(&self.go).await?;
        let latency = t0.elapsed();
        conn.client
            .publish(&self.finished, QoS::AtLeastOnce, false, self.uid.clone())
            .await
            .map_err(|e| e.to_string())?;
        Ok(latency)
    }
}

// ---------------------------------------------------------------------------------------------
// Readiness

async fn wait_ready(port: u16, responder: &Responder, proc: &mut Proc) {
    // The daemon must answer `infos` with `state`; the null responder answers only registers.
    let prefix = responder.prefix();
    let (listen, ask, body) = match responder {
        Responder::Shipped
        | Responder::Daemon { .. }
        | Responder::PolicyDaemon { .. }
        | Responder::StateDaemon { .. }
        | Responder::JetStream { .. } => (
            format!("{prefix}/__ready/state"),
            format!("{prefix}/__ready/infos"),
            String::new(),
        ),
        Responder::Null { .. } | Responder::NullFinished => (
            format!("{prefix}/__ready/go/probe"),
            format!("{prefix}/__ready/register"),
            format!("{{\"uid\":\"probe\",\"timeout\":{JOB_TIMEOUT_S}}}"),
        ),
    };
    let mut conn =
        Conn::connect(port, &format!("bench-ready-{prefix}"), vec![listen.clone()]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            proc.running(),
            "responder exited before it was ready:\n{}",
            fs::read_to_string(&proc.log).unwrap_or_default()
        );
        assert!(Instant::now() < deadline, "responder not ready within 20 s");
        conn.client
            .publish(ask.as_str(), QoS::AtLeastOnce, false, body.clone())
            .await
            .expect("probe publish");
        if let Ok(Some(p)) = timeout(Duration::from_millis(100), conn.rx.recv()).await {
            if p.topic == listen {
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Latency: one worker, sequential cycles on an idle channel

struct Latency {
    samples: Vec<Duration>,
    /// Cycles whose reply did not come within [`REPLY_TIMEOUT`].
    lost: u64,
}

impl Latency {
    fn pct(&self, q: f64) -> f64 {
        percentile(&self.samples, q)
    }
}

/// Microseconds at quantile `q` of `samples` (sorted in place by the caller or not at all).
fn percentile(samples: &[Duration], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v = samples.to_vec();
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i].as_secs_f64() * 1e6
}

/// `n` sequential cycles; their register -> go latencies are appended to `latency`, lost ones
/// counted there.
async fn latency_run(job: &Job, conn: &mut Conn, n: usize, latency: &mut Latency) {
    for _ in 0..n {
        match job.cycle(conn).await {
            Ok(l) => latency.samples.push(l),
            Err(e) => {
                eprintln!("latency worker: {e}");
                latency.lost += 1;
                job.abandon(conn).await;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Throughput: 64 workers over 8 channels, each with its own connection

/// Raw counts from one or more measured windows.
#[derive(Default)]
struct Throughput {
    cycles: u64,
    secs: f64,
    errors: u64,
    /// register -> go under load, in the measured windows.
    latency: Vec<Duration>,
    /// CPU ticks (1/100 s) over the measured windows.
    ticks_broker: u64,
    ticks_responder: u64,
    ticks_bench: u64,
    /// Machine-wide busy and total ticks (all cores) over the measured windows.
    machine_busy: u64,
    machine_all: u64,
}

impl Throughput {
    fn add(&mut self, o: Throughput) {
        self.cycles += o.cycles;
        self.secs += o.secs;
        self.errors += o.errors;
        self.latency.extend(o.latency);
        self.ticks_broker += o.ticks_broker;
        self.ticks_responder += o.ticks_responder;
        self.ticks_bench += o.ticks_bench;
        self.machine_busy += o.machine_busy;
        self.machine_all += o.machine_all;
    }

    fn cycles_per_s(&self) -> f64 {
        self.cycles as f64 / self.secs
    }

    /// CPU% (100 = one core) of `ticks` over the measured time.
    fn cpu(&self, ticks: u64) -> f64 {
        ticks as f64 / self.secs
    }

    /// CPU microseconds per completed cycle.
    fn cpu_us_per_cycle(&self, ticks: u64) -> f64 {
        ticks as f64 * 10_000.0 / self.cycles.max(1) as f64
    }

    /// Share of all cores busy, in %.
    fn machine_busy_pct(&self) -> f64 {
        self.machine_busy as f64 * 100.0 / self.machine_all.max(1) as f64
    }
}

#[derive(Default)]
struct Shared {
    cycles: AtomicU64,
    measuring: AtomicBool,
    stop: AtomicBool,
}

/// One throughput window with `n_workers` workers; the CPU of `broker_pids` and
/// `responder_pids` is sampled over it.
async fn throughput_run(
    port: u16,
    responder: &Responder,
    round: usize,
    n_workers: usize,
    broker_pids: &[u32],
    responder_pids: &[u32],
) -> Throughput {
    let prefix = responder.prefix();
    let shared = Arc::new(Shared::default());
    let barrier = Arc::new(Barrier::new(n_workers + 1));
    let mut workers = Vec::new();
    for k in 0..n_workers {
        let shared = shared.clone();
        let barrier = barrier.clone();
        let prefix = prefix.to_owned();
        let fields = responder.fields(k);
        workers.push(tokio::spawn(async move {
            // A fresh uid per round: the last `finished` of a round may be lost when its
            // connection is dropped, and the daemon ignores a register for a uid it still runs.
            let uid = format!("w{k}-r{round}");
            let job = Job::new(&prefix, &format!("tp{}", k % CHANNELS), &uid, &fields);
            let id = format!("bench-tp-{prefix}-{round}-{k}");
            let mut conn = Conn::connect(port, &id, vec![job.go.clone()]).await;
            barrier.wait().await;
            let mut lat = Vec::new();
            let mut errors = 0u64;
            while !shared.stop.load(Ordering::Relaxed) {
                match job.cycle(&mut conn).await {
                    Ok(l) => {
                        shared.cycles.fetch_add(1, Ordering::Relaxed);
                        if shared.measuring.load(Ordering::Relaxed) {
                            lat.push(l);
                        }
                    }
                    Err(e) => {
                        eprintln!("worker {k}: {e}");
                        errors += 1;
                        job.abandon(&mut conn).await;
                    }
                }
            }
            (lat, errors)
        }));
    }
    barrier.wait().await;
    tokio::time::sleep(TP_WARMUP).await;
    let c0 = shared.cycles.load(Ordering::Relaxed);
    let cpu0 = CpuSample::take(broker_pids, responder_pids);
    let t0 = Instant::now();
    shared.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(TP_MEASURE).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let c1 = shared.cycles.load(Ordering::Relaxed);
    let elapsed = t0.elapsed();
    let cpu1 = CpuSample::take(broker_pids, responder_pids);
    shared.stop.store(true, Ordering::Relaxed);

    let mut latency = Vec::new();
    let mut errors = 0;
    for w in workers {
        let abort = w.abort_handle();
        match timeout(REPLY_TIMEOUT + Duration::from_secs(1), w).await {
            Ok(Ok((l, e))) => {
                latency.extend(l);
                errors += e;
            }
            Ok(Err(e)) => {
                eprintln!("worker task failed: {e}");
                errors += 1;
            }
            Err(_) => {
                abort.abort();
                errors += 1;
            }
        }
    }
    let d = |a: Option<u64>, b: Option<u64>| b.unwrap_or(0).saturating_sub(a.unwrap_or(0));
    let (busy0, all0) = cpu0.machine.unwrap_or((0, 0));
    let (busy1, all1) = cpu1.machine.unwrap_or((0, 0));
    Throughput {
        cycles: c1 - c0,
        secs: elapsed.as_secs_f64(),
        errors,
        latency,
        ticks_broker: d(cpu0.broker, cpu1.broker),
        ticks_responder: d(cpu0.responder, cpu1.responder),
        ticks_bench: d(cpu0.bench, cpu1.bench),
        machine_busy: busy1.saturating_sub(busy0),
        machine_all: all1.saturating_sub(all0),
    }
}

/// CPU time (utime + stime, in clock ticks of 1/100 s) of the processes of interest, and the
/// machine's busy and total ticks.
struct CpuSample {
    broker: Option<u64>,
    responder: Option<u64>,
    bench: Option<u64>,
    machine: Option<(u64, u64)>,
}

impl CpuSample {
    /// Sums over `broker` and over `responder`.
    fn take(broker: &[u32], responder: &[u32]) -> CpuSample {
        let sum = |pids: &[u32]| {
            pids.iter()
                .map(|p| proc_ticks(&format!("/proc/{p}/stat")))
                .sum::<Option<u64>>()
        };
        CpuSample {
            broker: sum(broker),
            responder: sum(responder),
            bench: proc_ticks("/proc/self/stat"),
            machine: machine_ticks(),
        }
    }
}

fn proc_ticks(path: &str) -> Option<u64> {
    let stat = fs::read_to_string(path).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after ") ".
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn machine_ticks() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let all: u64 = v.iter().take(8).sum();
    // idle + iowait
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((all - idle, all))
}

// ---------------------------------------------------------------------------------------------
// Null responder (a child process)

/// Answers every `PREFIX/+/register` with `PREFIX/{channel}/go/{uid}` at QoS 1; with `finished`
/// also subscribed to `PREFIX/+/finished`, which it ignores. Runs until killed.
fn null_responder(port: u16, prefix: &str, multi_thread: bool, finished: bool) {
    let rt = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    }
    .enable_all()
    .build()
    .expect("tokio runtime");
    rt.block_on(async move {
        let mut opts = MqttOptions::new(format!("null-responder-{prefix}"), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_inflight(500);
        let (client, mut eventloop) = AsyncClient::new(opts, 1024);
        eventloop.network_options.set_tcp_nodelay(true);
        // Publishing happens in its own task: the polling loop never awaits the client.
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, String)>();
        let publisher = client.clone();
        tokio::spawn(async move {
            while let Some((topic, uid)) = rx.recv().await {
                if let Err(e) = publisher.publish(topic, QoS::AtLeastOnce, false, uid).await {
                    eprintln!("null responder: publish failed: {e}");
                }
            }
        });
        let filter = format!("{prefix}/+/register");
        let finished_filter = format!("{prefix}/+/finished");
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe(filter.as_str(), QoS::AtLeastOnce);
                    if finished {
                        let _ = client.try_subscribe(finished_filter.as_str(), QoS::AtLeastOnce);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic.ends_with("/finished") => {}
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let Some(channel) = p.topic.split('/').nth(1) else {
                        continue;
                    };
                    let Some(uid) = parse_uid(&p.payload) else {
                        continue;
                    };
                    let topic = format!("{prefix}/{channel}/go/{uid}");
                    if tx.send((topic, uid)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("null responder: connection error: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
}

fn parse_uid(payload: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    match v.get("uid")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// High availability: `--ha`

/// The null responder (and its control subscribed to `finished`), the daemon on the JetStream
/// backend (a leader and a standby, shipped defaults) and the daemon with the shipped file
/// journal (`fsync`), all through node 0's MQTT listener of one 3-node NATS cluster, in
/// interleaved rounds with [`HA_WORKERS`] workers.
fn ha_bench(rt: &tokio::runtime::Runtime, dir: &Path) {
    let version = common::nats::executable()
        .and_then(|exe| Command::new(exe).arg("--version").output().ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cluster = common::nats::NatsCluster::start(3);
    let pids = cluster.pids();
    CHILDREN.lock().expect("lock").extend(&pids);
    rt.block_on(cluster.wait_formed());
    let broker = Broker {
        port: cluster.mqtt_ports()[0],
        pids: pids.clone(),
    };
    let responders = [
        Responder::Null {
            multi_thread: false,
        },
        Responder::NullFinished,
        Responder::JetStream {
            servers: cluster.servers_toml(),
        },
        Responder::Shipped,
    ];
    let (results, procs) = compare(rt, &broker, dir, &responders, HA_WORKERS);
    drop(procs);
    drop(cluster);
    CHILDREN.lock().expect("lock").retain(|p| !pids.contains(p));
    println!("\nBroker: a 3-node NATS cluster ({version}), JetStream R=3, MQTT on node 0");
    print_report(&results);
}

// ---------------------------------------------------------------------------------------------
// Policies: `--policies`

/// Tries of the reload latency measurement (alternately deny over priority and back).
const RELOAD_TRIES: usize = 6;
/// Pause between two polls of the reload measurement (each poll is one register round trip).
const RELOAD_POLL: Duration = Duration::from_millis(2);

/// The daemon with the `priority` policy against the daemon with none (both at log=warn,
/// same load with a `priority` field in every register), in interleaved rounds; then the
/// end-to-end reload latency on the policy daemon.
fn policy_bench(rt: &tokio::runtime::Runtime, broker: Proc, dir: &Path) {
    eprintln!("building the guest policies (cd policies && cargo build --release) ...");
    for (folder, file, krate) in [
        ("policies", "priority.wasm", "priority"),
        ("reload", "active.wasm", "priority"),
        ("reload", "priority.wasm", "priority"),
        ("reload", "deny.wasm", "deny"),
    ] {
        fs::create_dir_all(dir.join(folder)).expect("policy folder");
        fs::copy(
            common::policies::policy_wasm(krate),
            dir.join(folder).join(file),
        )
        .expect("copy policy");
    }
    let responders = [
        Responder::PolicyDaemon { policy: false },
        Responder::PolicyDaemon { policy: true },
    ];
    let (results, mut procs) = compare(rt, &broker.as_broker(), dir, &responders, WORKERS);
    let reload = rt.block_on(reload_latency(broker.port, dir));
    for p in &mut procs {
        p.stop();
    }
    drop(broker);
    print_report(&results);
    print_policy_report(&results, &reload);
}

/// One reload: which policy was renamed into place and how long until its first decision.
struct Reload {
    new_policy: &'static str,
    latency: Duration,
    polls: u32,
}

/// Renames `deny` (then `priority`, alternately) over the `rl` channel's policy file and polls
/// with registrations of tenant `evil` until one is decided by the new policy: `rejected` once
/// deny is in, `go` once priority is back.
async fn reload_latency(port: u16, dir: &Path) -> Vec<Reload> {
    let prefix = Responder::PolicyDaemon { policy: true }.prefix();
    let folder = dir.join("reload");
    let active = folder.join("active.wasm");
    let mut conn = Conn::connect(port, "bench-reload", vec![format!("{prefix}/rl/+/+")]).await;
    let mut out = Vec::new();
    for attempt in 0..RELOAD_TRIES {
        let new_policy = if attempt % 2 == 0 { "deny" } else { "priority" };
        let tmp = folder.join("active.wasm.tmp");
        fs::copy(folder.join(format!("{new_policy}.wasm")), &tmp).expect("copy the new policy");
        let renamed = Instant::now();
        fs::rename(&tmp, &active).expect("rename the new policy into place");
        let mut polls = 0u32;
        loop {
            assert!(
                renamed.elapsed() < Duration::from_secs(20),
                "no decision by {new_policy} within 20 s of the rename"
            );
            polls += 1;
            let uid = format!("rl{attempt}-{polls}");
            let body =
                format!("{{\"uid\":\"{uid}\",\"timeout\":{JOB_TIMEOUT_S},\"tenant\":\"evil\"}}");
            conn.client
                .publish(
                    format!("{prefix}/rl/register"),
                    QoS::AtLeastOnce,
                    false,
                    body,
                )
                .await
                .expect("publish register");
            let (go, rejected) = (
                format!("{prefix}/rl/go/{uid}"),
                format!("{prefix}/rl/rejected/{uid}"),
            );
            let granted = loop {
                match timeout(REPLY_TIMEOUT, conn.rx.recv()).await {
                    Ok(Some(p)) if p.topic == go => break true,
                    Ok(Some(p)) if p.topic == rejected => break false,
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("event loop ended"),
                    Err(_) => panic!("no go or rejected for {uid} within {REPLY_TIMEOUT:?}"),
                }
            };
            let at = renamed.elapsed();
            if granted {
                conn.client
                    .publish(
                        format!("{prefix}/rl/finished"),
                        QoS::AtLeastOnce,
                        false,
                        uid,
                    )
                    .await
                    .expect("publish finished");
            }
            if granted == (new_policy == "priority") {
                out.push(Reload {
                    new_policy,
                    latency: at,
                    polls,
                });
                break;
            }
            tokio::time::sleep(RELOAD_POLL).await;
        }
        eprintln!(
            "reload {attempt}: {new_policy} deciding after {:?}",
            out[attempt].latency
        );
        // Let the watcher settle before the next rename.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    out
}

fn print_policy_report(results: &[Outcome], reload: &[Reload]) {
    let mut s = String::new();
    let find = |name: &str| results.iter().find(|r| r.name == name);
    if let (Some(none), Some(prio)) = (find("daemon, no policy"), find("daemon, policy priority")) {
        let ratio = prio.throughput.cycles_per_s() / none.throughput.cycles_per_s();
        let (_, best_none) = min_max(none.rounds.iter().copied());
        let (_, best_prio) = min_max(prio.rounds.iter().copied());
        let per_round: Vec<String> = prio
            .rounds
            .iter()
            .zip(&none.rounds)
            .map(|(p, n)| format!("{:.2}", p / n))
            .collect();
        let cpu = |o: &Outcome| o.throughput.cpu_us_per_cycle(o.throughput.ticks_responder);
        let _ = writeln!(
            s,
            "\n## Policy priority / no policy (target: throughput >= 0.8x)\n\
             | throughput ratio | per round | best-round ratio | target met | daemon CPU us/cycle: priority / none | latency p50 ratio |\n\
             |---:|---|---:|---|---:|---:|\n\
             | {ratio:.2} | {} | {:.2} | {} | {:.1} / {:.1} | {:.2} |",
            per_round.join(", "),
            best_prio / best_none,
            yes_no(ratio >= 0.8),
            cpu(prio),
            cpu(none),
            prio.latency.pct(0.5) / none.latency.pct(0.5),
        );
    }
    if !reload.is_empty() {
        let mut all: Vec<Duration> = reload.iter().map(|r| r.latency).collect();
        all.sort_unstable();
        let median = all[all.len() / 2].as_secs_f64() * 1e3;
        let _ = writeln!(
            s,
            "\n## Reload latency: rename -> first decision by the new policy (target < 500 ms)\n\
             | try | new policy | ms | polls |\n|---:|---|---:|---:|"
        );
        for (i, r) in reload.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {i} | {} | {:.1} | {} |",
                r.new_policy,
                r.latency.as_secs_f64() * 1e3,
                r.polls
            );
        }
        let _ = writeln!(
            s,
            "\nMedian {median:.1} ms, min-max {:.1}-{:.1} ms (poll every {RELOAD_POLL:?} + one round trip): target {}",
            all[0].as_secs_f64() * 1e3,
            all[all.len() - 1].as_secs_f64() * 1e3,
            if median < 500.0 { "met" } else { "NOT met" }
        );
    }
    println!("{s}");
}

// ---------------------------------------------------------------------------------------------
// Report

struct Outcome {
    name: String,
    latency: Latency,
    /// All rounds together.
    throughput: Throughput,
    /// cycles/s of each round.
    rounds: Vec<f64>,
    log_bytes: u64,
    /// Workers of the throughput test.
    workers: usize,
}

fn print_report(results: &[Outcome]) {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nMachine: {} CPUs; load average at the end: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let _ = writeln!(
        s,
        "\n## register -> go latency, idle channel (1 worker, sequential, QoS 1; {ROUNDS} rounds x {LAT_SAMPLES} samples after {LAT_WARMUP} warm-up)"
    );
    let _ = writeln!(
        s,
        "| responder | p50 us | p99 us | max us | p99 per round, min-max us | lost cycles |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    for r in results {
        let (lo, hi) = min_max(
            r.latency
                .samples
                .chunks(LAT_SAMPLES)
                .map(|c| percentile(c, 0.99)),
        );
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.0} | {lo:.0}-{hi:.0} | {} |",
            r.name,
            r.latency.pct(0.5),
            r.latency.pct(0.99),
            r.latency.pct(1.0),
            r.latency.lost
        );
    }
    let _ = writeln!(
        s,
        "\n## Full-cycle throughput ({} workers, one connection each, {CHANNELS} channels; {ROUNDS} rounds x {}s after {}s warm-up)",
        results.first().map_or(WORKERS, |r| r.workers),
        TP_MEASURE.as_secs(),
        TP_WARMUP.as_secs()
    );
    let _ = writeln!(
        s,
        "| responder | cycles/s | per round, min-max | lost cycles | reg->go p50 us | p99 us | CPU% broker | CPU% responder | CPU% load gen | CPU% other processes | machine busy % | CPU us/cycle: broker | responder | load gen | responder log bytes |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    for r in results {
        let t = &r.throughput;
        let (lo, hi) = min_max(r.rounds.iter().copied());
        let ours = t.cpu(t.ticks_broker) + t.cpu(t.ticks_responder) + t.cpu(t.ticks_bench);
        let _ = writeln!(
            s,
            "| {} | {:.0} | {lo:.0}-{hi:.0} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {} |",
            r.name,
            t.cycles_per_s(),
            t.errors,
            percentile(&t.latency, 0.5),
            percentile(&t.latency, 0.99),
            t.cpu(t.ticks_broker),
            t.cpu(t.ticks_responder),
            t.cpu(t.ticks_bench),
            (t.machine_busy_pct() * cores - ours).max(0.0),
            t.machine_busy_pct(),
            t.cpu_us_per_cycle(t.ticks_broker),
            t.cpu_us_per_cycle(t.ticks_responder),
            t.cpu_us_per_cycle(t.ticks_bench),
            r.log_bytes
        );
    }
    if let Some(null) = results.iter().find(|r| r.name == "null responder") {
        let _ = writeln!(s, "\n## Daemon / null responder (targets: latency p99 <= 1.2x and < 2000 us; throughput >= 0.8x)");
        let _ = writeln!(
            s,
            "| daemon run | p99 ratio | p99 us | latency target met | throughput ratio | throughput target met | best-round p99 ratio | best-round throughput ratio |"
        );
        let _ = writeln!(s, "|---|---:|---:|---|---:|---|---:|---:|");
        // Best round: lowest p99 and highest cycles/s of any round, the least disturbed by
        // other processes on the machine.
        let best = |o: &Outcome| {
            let (p99, _) = min_max(
                o.latency
                    .samples
                    .chunks(LAT_SAMPLES)
                    .map(|c| percentile(c, 0.99)),
            );
            let (_, tp) = min_max(o.rounds.iter().copied());
            (p99, tp)
        };
        let (null_p99, null_tp) = best(null);
        for r in results.iter().filter(|r| !r.name.starts_with("null")) {
            let p99 = r.latency.pct(0.99);
            let lat_ratio = p99 / null.latency.pct(0.99);
            let tp_ratio = r.throughput.cycles_per_s() / null.throughput.cycles_per_s();
            let _ = writeln!(
                s,
                "| {} | {:.2} | {:.0} | {} | {:.2} | {} | {:.2} | {:.2} |",
                r.name,
                lat_ratio,
                p99,
                yes_no(lat_ratio <= 1.2 && p99 < 2000.0),
                tp_ratio,
                yes_no(tp_ratio >= 0.8),
                best(r).0 / null_p99,
                best(r).1 / null_tp
            );
        }
    }
    println!("{s}");
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}

fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}
