//! What is measured: the [`Responder`]s (the null responder, its controls and the daemon in
//! each configuration), how each is configured and started, and how the bench knows it is ready.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::QoS;
use tokio::time::timeout;

use crate::client::Conn;
use crate::process::Proc;
use crate::JOB_TIMEOUT_S;

pub enum Responder {
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
    /// with no policy at all (`false`); see [`policy_bench`](crate::policy::policy_bench).
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
    pub fn prefix(&self) -> &'static str {
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

    pub fn name(&self) -> String {
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
    pub fn fields(&self, worker: usize) -> String {
        match self {
            Responder::PolicyDaemon { .. } => format!(",\"priority\":{}", worker % 4),
            _ => String::new(),
        }
    }

    /// Spawns the responder's processes and waits until they are ready: one, or for
    /// [`Responder::JetStream`] a leader (ready when it answers on MQTT) and then a standby
    /// (ready when it follows the journal).
    pub async fn start(&self, broker_port: u16, dir: &Path) -> Vec<Proc> {
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
    pub fn spawn(&self, broker_port: u16, dir: &Path, node: usize) -> Proc {
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
pub fn daemon_command(
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

/// Returns once the responder just spawned as `proc` answers on the broker at `port` (within 20 s).
pub async fn wait_ready(port: u16, responder: &Responder, proc: &mut Proc) {
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
