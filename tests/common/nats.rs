//! A real NATS cluster for the high-availability tests: three `nats-server` processes on free
//! loopback ports, clustered, each with JetStream (its own store dir) and an MQTT listener, so
//! workers speak MQTT to any node and coordinators keep their journal and lease in JetStream.
//! Nodes can be killed (SIGKILL) and restarted on the same ports and store.
//!
//! `mqtt { ack_wait: "1s" }`, as README "High availability" recommends: a QoS 1 request the
//! broker delivered to a leader that died before acknowledging it is delivered again to the
//! next leader after `ack_wait` (nats-server's default is 30 s, which would stall every job
//! whose `finished` the dead leader had read but not journaled).

use std::fs::{self, OpenOptions};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{free_port, tail};

/// How long a node may take to accept connections after it starts.
const LISTEN_WITHIN: Duration = Duration::from_secs(10);
/// How long the cluster may take to elect a JetStream meta leader and answer MQTT (QoS 1 needs
/// JetStream).
const FORMED_WITHIN: Duration = Duration::from_secs(30);

/// The `nats-server` the HA tests run: `COORDINOSAUR_NATS_SERVER` if set, else the pinned one
/// `tools/nats-server/install.sh` puts in the repository (scripts/test.sh runs it), else the
/// first on `PATH` or in /usr/sbin.
pub fn executable() -> Option<PathBuf> {
    if let Some(exe) = std::env::var_os("COORDINOSAUR_NATS_SERVER") {
        return Some(PathBuf::from(exe));
    }
    let pinned =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/nats-server/.venv/bin/nats-server");
    if pinned.is_file() {
        return Some(pinned);
    }
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nats-server"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin/nats-server", "/usr/bin/nats-server"].map(PathBuf::from))
        .find(|p| p.is_file())
}

/// Debian's packaged `nats-server` (2.9.10 on this distribution), if installed: the oldest
/// server the daemon supports.
pub fn debian_executable() -> Option<PathBuf> {
    Some(PathBuf::from("/usr/sbin/nats-server")).filter(|p| p.is_file())
}

/// `exe --version` as (major, minor, patch), e.g. `nats-server: v2.15.1` -> (2, 15, 1).
pub fn version(exe: &Path) -> (u32, u32, u32) {
    let out = Command::new(exe)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("run {} --version: {e}", exe.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    let numbers: Vec<u32> = text
        .trim()
        .rsplit('v')
        .next()
        .unwrap_or_default()
        .split('.')
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    match numbers[..] {
        [major, minor, patch, ..] => (major, minor, patch),
        _ => panic!("unexpected {} --version output: {text}", exe.display()),
    }
}

/// One node's ports.
#[derive(Debug, Clone, Copy)]
pub struct NodePorts {
    /// Client (NATS) port.
    pub client: u16,
    /// Cluster route port.
    pub route: u16,
    /// MQTT listener port.
    pub mqtt: u16,
    /// HTTP monitoring port (`/jsz`, `/connz`...), for a post-mortem of a held cluster.
    pub http: u16,
}

/// A three-node cluster; every node is killed on drop.
pub struct NatsCluster {
    dir: TempDir,
    exe: PathBuf,
    nodes: Vec<NodePorts>,
    children: Vec<Option<Child>>,
}

impl NatsCluster {
    /// Starts `n` nodes of [`executable`] and waits until they accept connections and
    /// JetStream answers.
    pub fn start(n: usize) -> NatsCluster {
        let exe = executable().unwrap_or_else(|| {
            panic!("nats-server is not installed: run scripts/test.sh (it installs it), or tools/nats-server/install.sh")
        });
        NatsCluster::start_with(&exe, n)
    }

    /// [`NatsCluster::start`] with the server at `exe`. The free ports are picked before the
    /// servers bind them, so another process can take one meanwhile: a node that exits with
    /// "address already in use" makes a new cluster on new ports (at most 3 tries).
    pub fn start_with(exe: &Path, n: usize) -> NatsCluster {
        let mut tries = 1;
        loop {
            match NatsCluster::try_start(exe, n) {
                Ok(cluster) => return cluster,
                Err(e) if e.contains("address already in use") && tries < 3 => {
                    eprintln!("a NATS port was taken before its server bound it; new ports:\n{e}");
                    tries += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn try_start(exe: &Path, n: usize) -> Result<NatsCluster, String> {
        let exe = exe.to_owned();
        let dir = tempfile::Builder::new()
            .prefix("coordinosaur-nats-")
            .tempdir()
            .expect("temp dir for the NATS cluster");
        let nodes: Vec<NodePorts> = (0..n)
            .map(|_| NodePorts {
                client: free_port(),
                route: free_port(),
                mqtt: free_port(),
                http: free_port(),
            })
            .collect();
        let mut cluster = NatsCluster {
            dir,
            exe,
            nodes,
            children: (0..n).map(|_| None).collect(),
        };
        for i in 0..n {
            cluster.write_config(i);
            cluster.spawn(i);
        }
        for i in 0..n {
            cluster.listening(i)?;
        }
        Ok(cluster)
    }

    fn config_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{i}.conf"))
    }

    /// Node `i`'s log.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{i}.log"))
    }

    fn write_config(&self, i: usize) {
        let routes: Vec<String> = self
            .nodes
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{}", p.route))
            .collect();
        let p = self.nodes[i];
        let store = self.dir.path().join(format!("js{i}"));
        let config = format!(
            "server_name: n{i}\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: \"{}\" }}\n\
             cluster {{ name: c1, listen: 127.0.0.1:{}, routes: [{}] }}\n\
             mqtt {{ listen: 127.0.0.1:{}, ack_wait: \"{}\" }}\nhttp: 127.0.0.1:{}\n",
            p.client,
            store.display(),
            p.route,
            routes.join(", "),
            p.mqtt,
            std::env::var("COORDINOSAUR_NATS_ACK_WAIT").unwrap_or_else(|_| "1s".into()),
            p.http
        );
        fs::write(self.config_path(i), config).expect("write the NATS config");
    }

    fn spawn(&mut self, i: usize) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("open the NATS log");
        let child = Command::new(&self.exe)
            .arg("-c")
            .arg(self.config_path(i))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        self.children[i] = Some(child);
    }

    fn wait_listening(&mut self, i: usize) {
        if let Err(e) = self.listening(i) {
            panic!("{e}");
        }
    }

    /// Waits until node `i` accepts connections; `Err` (with its log) if it exited or did not
    /// listen in time.
    fn listening(&mut self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + LISTEN_WITHIN;
        let p = self.nodes[i];
        while [p.client, p.mqtt]
            .iter()
            .any(|port| TcpStream::connect(("127.0.0.1", *port)).is_err())
        {
            if let Some(Some(status)) = self.children[i]
                .as_mut()
                .map(|c| c.try_wait().ok().flatten())
            {
                return Err(format!(
                    "nats-server n{i} exited ({status}):\n{}",
                    tail(&self.log(i), 40)
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "nats-server n{i} not listening within {LISTEN_WITHIN:?}:\n{}",
                    tail(&self.log(i), 40)
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Waits until JetStream answers through every node: an MQTT QoS 1 round trip needs it.
    pub async fn wait_formed(&self) {
        let deadline = tokio::time::Instant::now() + FORMED_WITHIN;
        for p in &self.nodes {
            loop {
                // A raw `$JS.API.INFO`: async-nats's typed account query cannot read 2.9's reply.
                let ok = async {
                    let client = async_nats::connect(format!("127.0.0.1:{}", p.client))
                        .await
                        .ok()?;
                    let reply = client.request("$JS.API.INFO", "".into()).await.ok()?;
                    let text = String::from_utf8_lossy(&reply.payload).into_owned();
                    (text.contains("account_info_response") && !text.contains("\"error\""))
                        .then_some(())
                };
                if tokio::time::timeout(Duration::from_secs(2), ok)
                    .await
                    .ok()
                    .flatten()
                    .is_some()
                {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the NATS cluster did not form within {FORMED_WITHIN:?}:\n{}",
                    tail(&self.log(0), 40)
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// The nodes' ports.
    pub fn nodes(&self) -> &[NodePorts] {
        &self.nodes
    }

    /// The process ids of the running nodes (for CPU accounting and a watchdog).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().flatten().map(Child::id).collect()
    }

    /// The MQTT ports of every node.
    pub fn mqtt_ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|p| p.mqtt).collect()
    }

    /// `servers = [...]` for `[state.jetstream]`.
    pub fn servers_toml(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|p| format!("\"nats://127.0.0.1:{}\"", p.client))
            .collect();
        format!("[{}]", urls.join(", "))
    }

    /// Node `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    /// Each node's log and the name its copy gets in a failed test's post-mortem.
    pub fn log_files(&self) -> Vec<(PathBuf, String)> {
        (0..self.nodes.len())
            .map(|i| (self.log_path(i), format!("nats-n{i}.log")))
            .collect()
    }

    /// What node `i`'s monitoring endpoint reports of the JetStream stream whose name starts
    /// with `prefix` (`/jsz` stream detail: `state`, `cluster`, ...); `None` if node `i` does
    /// not answer or knows no such stream.
    pub fn stream_detail(&self, i: usize, prefix: &str) -> Option<serde_json::Value> {
        let url = format!("http://127.0.0.1:{}/jsz?streams=true", self.nodes[i].http);
        let body = ureq::get(&url)
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()?;
        let jsz: serde_json::Value = serde_json::from_str(&body).ok()?;
        jsz["account_details"]
            .as_array()?
            .iter()
            .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
            .find(|s| s["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
            .cloned()
    }

    /// The node that leads the JetStream stream whose name starts with `prefix` (e.g. `KV_`,
    /// the lease bucket), as node `i`'s monitoring endpoint reports it; `None` if it names
    /// none (no leader, or node `i` does not answer).
    pub fn stream_leader(&self, i: usize, prefix: &str) -> Option<usize> {
        self.stream_detail(i, prefix)?["cluster"]["leader"]
            .as_str()?
            .strip_prefix('n')?
            .parse()
            .ok()
    }

    /// Kills node `i` (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on its ports and store, and waits until it listens.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_listening(i);
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            for i in 0..self.children.len() {
                eprintln!(
                    "--- nats-server n{i} log (tail) ---\n{}",
                    tail(&self.log(i), 30)
                );
            }
        }
    }
}
