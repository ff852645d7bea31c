//! The real `coordinosaur` binary as a child process, pointed at a test broker.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tempfile::TempDir;
use tokio::time::Instant;

use super::{tail, unique_id, Client, DEFAULT_TIMEOUT, PREFIX};

/// The channel the readiness probe asks about.
const READY_CHANNEL: &str = "__ready";
/// How long `start` waits for the daemon to answer the probe.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the probe asks.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// Lines of the log printed when a test fails.
const LOG_TAIL: usize = 80;

/// How a daemon run that should refuse to start ended: see [`run_to_exit`].
#[derive(Debug)]
pub struct Exited {
    /// The exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stdout and stderr.
    pub output: String,
}

/// Runs `coordinosaur --config CONFIG` in `cwd` until it exits by itself, as a start-up that is
/// expected to fail does (a second daemon on a locked state dir, a state dir it cannot restore).
/// Returns its exit status and output. Panics, killing it, if it is still running after 20 s:
/// then it started although it should not have.
pub fn run_to_exit(config: &Path, cwd: &Path) -> Exited {
    // A file rather than a pipe: a daemon that does start would fill a pipe nobody reads.
    let mut out = tempfile::tempfile().expect("a temp file for the daemon's output");
    let child = Command::new(env!("CARGO_BIN_EXE_coordinosaur"))
        .arg("--config")
        .arg(config)
        .current_dir(cwd)
        .env("RUST_LOG", "coordinosaur=debug")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone the output file handle"))
        .stderr(out.try_clone().expect("clone the output file handle"))
        .spawn();
    let mut child = child.expect("spawn the coordinosaur binary");
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for coordinosaur") {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let mut output = String::new();
            let _ = out.rewind().and_then(|()| out.read_to_string(&mut output));
            panic!(
                "coordinosaur still runs after {READY_TIMEOUT:?} although it should have refused \
                 to start; its output:\n{}",
                tail(&output, LOG_TAIL)
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut output = String::new();
    out.rewind()
        .and_then(|()| out.read_to_string(&mut output))
        .expect("read the daemon's output");
    Exited { status, output }
}

/// How to run the daemon beyond its config file.
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// Extra environment variables for the daemon process (e.g. its MQTT credentials).
    pub env: Vec<(String, String)>,
    /// User name and password the readiness probe logs in with, for brokers that refuse
    /// anonymous clients. The probe needs the rights of a worker: publish `infos`, read `state`.
    pub probe_login: Option<(String, String)>,
    /// TLS settings of the readiness probe, for a broker with a TLS listener.
    pub probe_tls: Option<Arc<rustls::ClientConfig>>,
    /// Return as soon as the process is started instead of waiting until it answers: for a
    /// daemon that is expected not to reach the broker (check it with [`Daemon::wait_log`]).
    pub skip_ready: bool,
    /// How long to wait until the daemon answers, if not 20 s: a daemon that compiles large
    /// policies (the JavaScript and Python ones) at start-up takes longer.
    pub ready_timeout: Option<Duration>,
}

/// A running daemon: `coordinosaur --config FILE`, with `RUST_LOG=coordinosaur=debug` and its
/// stdout and stderr in a log file. Killed on drop; if the test is failing, the log tail is printed.
///
/// The working directory is the daemon's temp dir, so relative paths in the config (journal,
/// policies) land there and survive [`Daemon::kill`] + [`Daemon::spawn_again`].
pub struct Daemon {
    /// Port of the broker the daemon uses (the external one, or its embedded one).
    broker_port: u16,
    /// Topic prefix the readiness probe uses (the config's `topic_prefix`).
    prefix: String,
    /// Holds `coordinosaur.toml` and `daemon.log`; removed on drop.
    dir: TempDir,
    /// The running process, `None` after `kill`.
    child: Option<Child>,
    /// Environment and probe login, kept for `spawn_again`.
    options: DaemonOptions,
}

impl Daemon {
    /// Writes the config (an `[mqtt]` table for the broker on `broker_port` with a unique client
    /// id, plus `extra_toml`), starts the daemon and returns once it answers on MQTT: a probe
    /// client subscribed to `coordinosaur/__ready/state` publishes `coordinosaur/__ready/infos`
    /// every 100 ms until a state message arrives. Panics with the log after 20 s, or if the
    /// daemon exits first.
    ///
    /// `extra_toml` may hold any tables except `[mqtt]` (`[defaults]`, `[[channels]]`,
    /// `[limits]`, `[mqtt.tls]`, ...). It is written before the `[mqtt]` table, so top-level
    /// keys in it stay top-level (TOML allows a sub-table before its parent's header).
    pub async fn start(broker_port: u16, extra_toml: &str) -> Daemon {
        Daemon::start_with_options(broker_port, extra_toml, DaemonOptions::default()).await
    }

    /// [`Daemon::start`] with extra environment variables and a login for the readiness probe.
    pub async fn start_with_options(
        broker_port: u16,
        extra_toml: &str,
        options: DaemonOptions,
    ) -> Daemon {
        let config = format!(
            "{extra_toml}\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {broker_port}\nclient_id = \"{}\"\n",
            unique_id("coordinosaur-test")
        );
        Daemon::spawn_in_new_dir(broker_port, &config, PREFIX, options).await
    }

    /// Lower-level [`Daemon::start`]: writes `config` verbatim (it must set `[mqtt]` itself, or
    /// enable `[embedded_broker]`), starts the daemon and waits until it answers `infos` on
    /// `{prefix}/__ready/infos` through the broker on `broker_port`. `prefix` must be the
    /// config's `topic_prefix`, and `broker_port` the port the daemon's broker listens on (for an
    /// embedded broker, the port of its `listen` address; the probe retries until it is up).
    pub async fn start_with_config(broker_port: u16, config: &str, prefix: &str) -> Daemon {
        Daemon::spawn_in_new_dir(broker_port, config, prefix, DaemonOptions::default()).await
    }

    /// [`Daemon::start_with_config`] (prefix `coordinosaur`) with options, e.g. `skip_ready`
    /// for a standby coordinator that does not answer until it leads.
    pub async fn start_config_with_options(
        broker_port: u16,
        config: &str,
        options: DaemonOptions,
    ) -> Daemon {
        Daemon::spawn_in_new_dir(broker_port, config, PREFIX, options).await
    }

    async fn spawn_in_new_dir(
        broker_port: u16,
        config: &str,
        prefix: &str,
        options: DaemonOptions,
    ) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("coordinosaur-daemon-")
            .tempdir()
            .expect("create a temp dir for the daemon");
        fs::write(dir.path().join("coordinosaur.toml"), config).expect("write coordinosaur.toml");
        let mut daemon = Daemon {
            broker_port,
            prefix: prefix.to_owned(),
            dir,
            child: None,
            options,
        };
        daemon.spawn_again().await;
        daemon
    }

    /// Starts the daemon again with the same config, client id and directory (after
    /// [`Daemon::kill`], or to simulate a restart), and waits until it is ready as in `start`
    /// (unless [`DaemonOptions::skip_ready`]).
    /// Kills the current process first if it is still running.
    pub async fn spawn_again(&mut self) {
        self.kill();
        self.note_in_log("--- harness: starting coordinosaur ---");
        let log = open_log(&self.log_path());
        let log_err = log.try_clone().expect("clone the daemon log handle");
        let child = Command::new(env!("CARGO_BIN_EXE_coordinosaur"))
            .arg("--config")
            .arg(self.config_path())
            .current_dir(self.dir.path())
            .env("RUST_LOG", "coordinosaur=debug")
            .env("RUST_BACKTRACE", "1")
            .env("NO_COLOR", "1")
            .envs(self.options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .expect("spawn the coordinosaur binary");
        self.child = Some(child);
        if !self.options.skip_ready {
            self.wait_ready().await;
        }
    }

    /// Runs another `coordinosaur` with this daemon's config and working directory until it exits
    /// by itself (see [`run_to_exit`]): for start-ups that must fail, e.g. while this one holds
    /// the state dir, or after its state files were damaged.
    pub fn run_to_exit(&self) -> Exited {
        run_to_exit(&self.config_path(), self.dir.path())
    }

    /// Drops the extra environment variables for the next [`Daemon::spawn_again`] (e.g. a fault
    /// point that should fire only once).
    pub fn clear_env(&mut self) {
        self.options.env.clear();
    }

    /// Kills the daemon (SIGKILL, no clean shutdown) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Killing an already exited child fails harmlessly; `wait` reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Everything the daemon wrote to stdout and stderr so far, across restarts.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits (up to 10 s) until the log contains `needle`, since a log line may be written just
    /// after the MQTT message that caused it. Panics with the log tail otherwise.
    pub async fn wait_log(&self, needle: &str) {
        self.wait_log_count(needle, 1).await;
    }

    /// Waits (up to 10 s) until the log contains `needle` at least `n` times, e.g. to see a
    /// failing connection retried. Panics with the log tail otherwise.
    pub async fn wait_log_count(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + DEFAULT_TIMEOUT;
        while self.log().matches(needle).count() < n {
            assert!(
                Instant::now() < deadline,
                "daemon log has {needle:?} fewer than {n} times after {DEFAULT_TIMEOUT:?}\n--- log tail ---\n{}",
                tail(&self.log(), LOG_TAIL)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Port of the broker the daemon uses.
    pub fn broker_port(&self) -> u16 {
        self.broker_port
    }

    /// The daemon's working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Process id of the running daemon.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (e.g. "HUP") to the daemon with kill(1).
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("daemon is running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// The config file given with `--config`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("coordinosaur.toml")
    }

    /// The daemon's log (stdout and stderr of every process started in this dir).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    fn note_in_log(&self, line: &str) {
        let _ = writeln!(open_log(&self.log_path()), "{line}");
    }

    /// Probes until the daemon answers `infos` on the ready channel (for a daemon started
    /// with [`DaemonOptions::skip_ready`] that is expected to answer now, e.g. a standby
    /// coordinator that took the lead).
    ///
    /// Assumes `state` replies are not retained: a retained one from an earlier run would
    /// answer the probe before the new process is up.
    pub async fn wait_ready(&mut self) {
        let login = self.options.probe_login.as_ref();
        let login = login.map(|(user, password)| (user.as_str(), password.as_str()));
        let tls = self.options.probe_tls.clone();
        let mut probe =
            Client::connect_secure(self.broker_port, &unique_id("ready-probe"), login, tls).await;
        let state_topic = format!("{}/{READY_CHANNEL}/state", self.prefix);
        let infos_topic = format!("{}/{READY_CHANNEL}/infos", self.prefix);
        probe.subscribe(&state_topic).await;
        let ready_timeout = self.options.ready_timeout.unwrap_or(READY_TIMEOUT);
        let deadline = Instant::now() + ready_timeout;
        loop {
            if !self.is_running() {
                // Drop prints the log tail.
                panic!("coordinosaur exited before it was ready; its log follows");
            }
            if Instant::now() >= deadline {
                panic!(
                    "coordinosaur did not answer {infos_topic} within {ready_timeout:?}; its log follows"
                );
            }
            probe.publish(&infos_topic, Vec::new()).await;
            if probe.recv(PROBE_INTERVAL).await.is_some() {
                return;
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!(
                "--- coordinosaur log (broker port {}), last {LOG_TAIL} lines ---\n{}",
                self.broker_port,
                tail(&self.log(), LOG_TAIL)
            );
        }
    }
}

fn open_log(path: &Path) -> fs::File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open the daemon log")
}
