//! A real Mosquitto per test, on a free loopback port, killed on drop.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{free_port, tail, DEFAULT_TIMEOUT};

/// Where Mosquitto lives when it is not on `PATH` (Debian installs it in `/usr/sbin`).
const FALLBACK_PATHS: [&str; 2] = ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"];

/// How long `restart` keeps retrying while the old port is still held (TIME_WAIT and the like).
const RESTART_RETRY: Duration = Duration::from_secs(5);

/// How many fresh ports `start` tries when another process takes the one it picked.
const START_ATTEMPTS: usize = 3;

/// How long `terminate` waits for Mosquitto to save its database and exit after SIGTERM.
const TERMINATE_WAIT: Duration = Duration::from_secs(10);

/// The broker a test talks to. Today only Mosquitto; a fallback (e.g. the daemon's embedded broker
/// when Mosquitto is missing) becomes another variant, and tests written against this type keep working.
pub enum TestBroker {
    /// A `mosquitto` child process.
    Mosquitto(Mosquitto),
}

impl TestBroker {
    /// Starts the best available broker; panics with an install hint if there is none.
    pub fn start() -> TestBroker {
        TestBroker::Mosquitto(Mosquitto::start())
    }

    /// The loopback port the broker listens on.
    pub fn port(&self) -> u16 {
        match self {
            TestBroker::Mosquitto(m) => m.port(),
        }
    }

    /// Stops the broker (clients see their connection drop).
    pub fn stop(&mut self) {
        match self {
            TestBroker::Mosquitto(m) => m.stop(),
        }
    }

    /// Starts the broker again on the same port.
    pub fn restart(&mut self) {
        match self {
            TestBroker::Mosquitto(m) => m.restart(),
        }
    }

    /// What the broker logged so far.
    pub fn log(&self) -> String {
        match self {
            TestBroker::Mosquitto(m) => m.log(),
        }
    }
}

/// A `mosquitto -c FILE` child listening on `127.0.0.1:port`, with its config and log in a temp dir.
///
/// Start-up and restart block the calling thread (up to 10 s); on a current-thread tokio runtime the
/// clients' event loops simply resume afterwards.
pub struct Mosquitto {
    /// The port in the config; kept across `restart`.
    port: u16,
    /// The executable found by [`Mosquitto::executable`].
    exe: PathBuf,
    /// Holds `mosquitto.conf` and `mosquitto.log`; removed on drop.
    dir: TempDir,
    /// The running broker, `None` after `stop`.
    child: Option<Child>,
    /// Config lines appended after the harness's own (see [`Mosquitto::start_with`]).
    extra: String,
    /// Whether Mosquitto keeps its sessions in `mosquitto.db` in `dir` (see
    /// [`Mosquitto::start_persistent`]).
    persistent: bool,
}

impl Mosquitto {
    /// The `mosquitto` executable: the first one on `PATH`, else a well-known system path.
    pub fn executable() -> Option<PathBuf> {
        let on_path = std::env::var_os("PATH")
            .map(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join("mosquitto"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        on_path
            .into_iter()
            .chain(FALLBACK_PATHS.iter().map(PathBuf::from))
            .find(|p| p.is_file())
    }

    /// Whether Mosquitto is installed.
    pub fn available() -> bool {
        Self::executable().is_some()
    }

    /// Starts Mosquitto on a free loopback port and returns once it accepts TCP connections.
    ///
    /// Panics if Mosquitto is not installed, or if it does not come up within 10 s (with its log).
    pub fn start() -> Mosquitto {
        Mosquitto::start_with("")
    }

    /// Like [`Mosquitto::start`], with `extra` config lines written after the harness's own, so
    /// they can override them (Mosquitto keeps the last value of a global option), e.g.
    /// `allow_anonymous false`, `password_file PATH`, `acl_file PATH`. Paths must be absolute;
    /// the broker runs as root (`user root`), so it can read files in any temp dir.
    pub fn start_with(extra: &str) -> Mosquitto {
        Mosquitto::start_inner(extra, false)
    }

    /// Like [`Mosquitto::start`], with `persistence true` and the database in the broker's temp
    /// dir: persistent sessions (their subscriptions and queued QoS 1 messages) survive
    /// [`Mosquitto::terminate`] + [`Mosquitto::restart`]. Mosquitto 2.0.11 writes the database
    /// when it exits on SIGTERM (its log says "Saving in-memory database"), not on SIGKILL, so
    /// [`Mosquitto::stop`] loses what changed since start-up.
    pub fn start_persistent() -> Mosquitto {
        Mosquitto::start_inner("", true)
    }

    fn start_inner(extra: &str, persistent: bool) -> Mosquitto {
        let exe = Self::executable()
            .unwrap_or_else(|| panic!("mosquitto is not installed: run scripts/test.sh (it installs it), or apt-get install -y mosquitto mosquitto-clients"));
        let dir = tempfile::Builder::new()
            .prefix("coordinosaur-mosquitto-")
            .tempdir()
            .expect("create a temp dir for mosquitto");
        let mut broker = Mosquitto {
            port: 0,
            exe,
            dir,
            child: None,
            extra: extra.to_owned(),
            persistent,
        };
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            broker.port = free_port();
            broker.write_config();
            match broker.spawn() {
                Ok(()) => return broker,
                // Most likely another process took the port between `free_port` and the bind.
                Err(e) => last_error = e,
            }
        }
        panic!(
            "mosquitto did not start after {START_ATTEMPTS} attempts: {last_error}\n--- mosquitto log ---\n{}",
            tail(&broker.log(), 40)
        );
    }

    /// The loopback port Mosquitto listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Everything Mosquitto wrote to stdout and stderr so far, across restarts.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills Mosquitto and waits for it to exit. Does nothing if it is not running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Killing an already exited child fails harmlessly; `wait` reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops Mosquitto the way a service manager does (SIGTERM), so that it saves its database
    /// when persistent, and waits up to 10 s for it to exit (then kills it). Does nothing if it
    /// is not running.
    pub fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
        // Fails only if the child already exited; `wait` below reaps it either way.
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + TERMINATE_WAIT;
        while matches!(child.try_wait(), Ok(None)) {
            if Instant::now() >= deadline {
                self.note_in_log("--- harness: mosquitto ignored SIGTERM, killing it ---");
                let _ = child.kill();
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = child.wait();
    }

    /// Freezes Mosquitto (SIGSTOP): connections stay open but nothing is read or answered, so a
    /// client's QoS 1 publish stays unacknowledged. `stop` or `restart` (SIGKILL) ends it.
    pub fn freeze(&self) {
        let child = self.child.as_ref().expect("mosquitto is running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP mosquitto");
    }

    /// Whether Mosquitto saved its database since start-up (its log says so).
    pub fn saved_database(&self) -> bool {
        self.log().contains("Saving in-memory database")
    }

    /// Stops Mosquitto if needed and starts it again on the same port, retrying the bind for up to
    /// 5 s in case the port is not free yet. Panics with the log if it cannot come back.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + RESTART_RETRY;
        loop {
            self.note_in_log("--- harness: restarting mosquitto ---");
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() < deadline => {
                    self.note_in_log(&format!("--- harness: restart failed ({e}), retrying ---"));
                    thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!(
                    "mosquitto did not restart on port {}: {e}\n--- mosquitto log ---\n{}",
                    self.port,
                    tail(&self.log(), 40)
                ),
            }
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    fn write_config(&self) {
        // `max_queued_messages 0` lifts the default cap of 1000 queued QoS 1 messages per client, so
        // a burst to a slow test client is never dropped silently. `user root` keeps root from
        // dropping to the `mosquitto` user (which could not write into our temp dir).
        let config = format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             set_tcp_nodelay true\n\
             persistence false\n\
             max_queued_messages 0\n\
             user root\n\
             log_dest stderr\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n\
             log_type information\n\
             connection_messages true\n",
            port = self.port
        );
        let persistence = if self.persistent {
            // Mosquitto wants the trailing slash on a directory.
            format!(
                "persistence true\npersistence_location {}/\n",
                self.dir.path().display()
            )
        } else {
            String::new()
        };
        let config = format!("{config}{persistence}{}\n", self.extra);
        fs::write(self.config_path(), config).expect("write mosquitto.conf");
    }

    fn note_in_log(&self, line: &str) {
        if let Ok(mut f) = open_append(&self.log_path()) {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Spawns `mosquitto -c FILE` and waits until the port accepts TCP. On failure the child is
    /// killed and reaped, and the error says why (exit status or timeout).
    fn spawn(&mut self) -> Result<(), String> {
        let log = open_append(&self.log_path()).map_err(|e| format!("open mosquitto.log: {e}"))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("clone log handle: {e}"))?;
        let mut child = Command::new(&self.exe)
            .arg("-c")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.exe.display()))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + DEFAULT_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("mosquitto exited at start-up with {status}"));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "port {} not accepting after {DEFAULT_TIMEOUT:?}",
                    self.port
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!(
                "--- mosquitto log (port {}), last lines ---\n{}",
                self.port,
                tail(&self.log(), 30)
            );
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}
