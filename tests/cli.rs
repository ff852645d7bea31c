//! The command line: `check-config`, `explain`, and `serve` with the embedded broker.

mod common;

use std::fs::File;
use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{free_port, topic, unique_id, Client, Daemon, DEFAULT_TIMEOUT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/coordinosaur.toml");

/// Runs `coordinosaur --config CONFIG ARGS...` to completion (these commands exit at once).
fn run(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coordinosaur"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run the coordinosaur binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_config_accepts_the_shipped_file() {
    let out = run(Path::new(SHIPPED), &["check-config"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains(": OK"), "{stdout}");
    assert!(stdout.contains("channel rules: 1"), "{stdout}");
}

#[test]
fn check_config_names_the_key_or_pattern_and_line_of_a_mistake() {
    let cases: [(&str, &str, usize, &[&str]); 4] = [
        (
            "unknown key",
            "[defaults]\nmax_concurrent_jobs = 2\nmax_jobs = 3\n",
            3,
            &["max_jobs"],
        ),
        (
            "bad regex",
            "[defaults]\nmax_concurrent_jobs = 1\n\n[[channels]]\npattern = \"test(.+\"\n",
            5,
            &["pattern", "test(.+"],
        ),
        (
            "negative limit",
            "[[channels]]\npattern = \"x\"\nquotas = [\n  { interval = 60, limit = -1 },\n]\n",
            4,
            &["limit", "-1"],
        ),
        (
            "negative max_concurrent_jobs",
            "[defaults]\nmax_concurrent_jobs = -1\n",
            2,
            &["max_concurrent_jobs"],
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (name, config, line, needles) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, config).unwrap();
        let out = run(&path, &["check-config"]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {out:?}");
        assert!(
            stderr.contains(&path.display().to_string()),
            "{name}: no file name in {stderr}"
        );
        assert!(
            stderr.contains(&format!("line {line}")),
            "{name}: no line {line} in {stderr}"
        );
        for needle in needles {
            assert!(stderr.contains(needle), "{name}: no {needle:?} in {stderr}");
        }
        assert!(out.stdout.is_empty(), "{name}: {}", text(&out.stdout));
        // `serve` refuses the same file the same way, before touching the network.
        let serve = run(&path, &["serve"]);
        assert_eq!(serve.status.code(), Some(2), "{name}: serve {serve:?}");
    }
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    for args in [&["check-config"][..], &["explain", "x"], &[]] {
        let out = run(&path, args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(
            stderr.contains("cannot read config file") && stderr.contains("nope.toml"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn explain_names_the_matching_pattern_and_the_options() {
    let out = run(Path::new(SHIPPED), &["explain", "test1"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("pattern \"test(.+)\""), "{stdout}");
    assert!(stdout.contains("max_concurrent_jobs = 2"), "{stdout}");
    assert!(stdout.contains("timeout_offset = 1s"), "{stdout}");
    assert!(stdout.contains("minute: 15 per 1m"), "{stdout}");
    assert!(stdout.contains("hour: 100 per 1h"), "{stdout}");
}

#[test]
fn explain_says_when_defaults_apply() {
    for channel in ["other", "test", "atest1"] {
        let out = run(Path::new(SHIPPED), &["explain", channel]);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert!(stdout.contains("defaults apply"), "{channel}: {stdout}");
        assert!(
            stdout.contains("max_concurrent_jobs = 1"),
            "{channel}: {stdout}"
        );
        assert!(stdout.contains("quotas: none"), "{channel}: {stdout}");
    }
}

#[tokio::test]
async fn embedded_broker_serves_clients_without_mosquitto() {
    let port = free_port();
    let config = format!(
        "[mqtt]\nclient_id = \"{}\"\n\n[embedded_broker]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n",
        unique_id("coordinosaur-embedded")
    );
    let _daemon = Daemon::start_with_config(port, &config, "coordinosaur").await;
    let mut c = Client::connect(port, &unique_id("worker")).await;
    c.subscribe(&topic("ch", "go/+")).await;
    c.register("ch", "a", 30.0).await;
    c.register("ch", "b", 30.0).await;
    assert_eq!(c.next_go("ch").await, "a");
    c.finished("ch", "a").await;
    assert_eq!(c.next_go("ch").await, "b");
    let state = c.state("ch").await;
    assert_eq!(state["running"], serde_json::json!(["b"]), "{state}");
}

#[test]
fn embedded_broker_on_a_taken_port_exits_non_zero_and_says_why() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coordinosaur.toml");
    std::fs::write(
        &path,
        format!("[embedded_broker]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_coordinosaur"))
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + DEFAULT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the daemon still runs although its broker port is taken");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "{status}: {stderr}");
    assert!(stderr.contains("already in use"), "{stderr}");
    assert!(stderr.contains("[mqtt]"), "{stderr}");
    assert!(stderr.contains(&port.to_string()), "{stderr}");
    drop(held);
}

/// A daemon process, killed on drop if the test did not stop it.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connects as `id`, publishes one QoS 1 message, waits for its PUBACK and disconnects with a
/// DISCONNECT packet before closing the socket, as `mosquitto_pub` does.
async fn publish_once(port: u16, id: &str) -> Result<(), String> {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client
        .try_publish("other/topic", QoS::AtLeastOnce, false, "hi")
        .expect("queue the publish");
    let exchange = async {
        let mut disconnecting = false;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    client.try_disconnect().expect("queue DISCONNECT");
                    disconnecting = true;
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(()),
                Ok(_) => {}
                // The broker may close the socket on DISCONNECT before rumqttc reports sending
                // it: that is the clean end, not a failure.
                Err(_) if disconnecting => return Ok(()),
                Err(e) => return Err(format!("talk to the embedded broker: {e:?}")),
            }
        }
    };
    tokio::time::timeout(DEFAULT_TIMEOUT, exchange)
        .await
        .expect("publish and disconnect within 10 s")
}

/// Normal use with the shipped config (embedded rumqttd, the default log filter): clients that
/// connect, publish and disconnect cleanly, then a SIGTERM. rumqttd logs each clean disconnect
/// at `error` ("no-connection id N is already gone" or "router-drop error=Recv(Disconnected)",
/// whichever side notices first); none of that may reach the daemon's output.
#[tokio::test]
async fn clean_disconnects_log_no_error_with_the_shipped_config() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(SHIPPED).unwrap();
    let listen = "listen = \"127.0.0.1:1883\"";
    assert!(shipped.contains(listen), "the shipped config changed");
    let config = dir.path().join("coordinosaur.toml");
    let ours = format!("listen = \"127.0.0.1:{port}\"");
    std::fs::write(&config, shipped.replace(listen, &ours)).unwrap();
    let log = dir.path().join("stderr.log");
    let child = Command::new(env!("CARGO_BIN_EXE_coordinosaur"))
        .arg("--config")
        .arg(&config)
        .current_dir(dir.path())
        // The default filter, as a user gets it.
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut daemon = KillOnDrop(child);
    let mut worker = Client::connect(port, &unique_id("worker")).await;
    worker.subscribe(&topic("ch", "go/+")).await;
    // rumqttd 0.20 sometimes resets a fresh connection before its PUBACK on a loaded machine
    // (seen in about 1 run in 3 with a full test suite beside it; nothing logged): such a
    // connection never disconnects cleanly, so it is tried again. Its reset must not log an
    // ERROR either (checked below).
    for i in 0..5 {
        let mut attempt = 0;
        while let Err(e) = publish_once(port, &unique_id(&format!("pub{i}"))).await {
            attempt += 1;
            assert!(
                attempt < 5,
                "{e}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
    }
    // A round trip through the daemon after the disconnects; then a moment for rumqttd's link
    // threads, which log after the router has dropped a connection.
    worker.register("ch", "after", 30.0).await;
    assert_eq!(worker.next_go("ch").await, "after");
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(worker);
    kill(Pid::from_raw(daemon.0.id() as i32), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + DEFAULT_TIMEOUT;
    while daemon.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "no exit within 10 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let output = std::fs::read_to_string(&log).unwrap();
    assert!(
        output.contains("embedded MQTT broker listening"),
        "{output}"
    );
    let errors: Vec<&str> = output.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "errors logged:\n{}", errors.join("\n"));
}
