//! Shared harness for the integration tests: a real broker, the real daemon and an MQTT test client.
//!
//! Every file in `tests/` compiles this module on its own (`mod common;`), so helpers that one test
//! file does not use are not dead code in general: hence the crate-wide `dead_code` allowance below.
//!
//! - [`broker`]: [`Mosquitto`] on a free loopback port per test, behind [`TestBroker`] so that a
//!   fallback broker can be added as another variant.
//! - [`daemon`]: [`Daemon`] runs the `coordinosaur` binary against a broker and waits until it answers.
//! - [`client`]: [`Client`], an async rumqttc client with bounded waits and protocol helpers.
//! - [`policies`]: the policy components of `policies/`, built once per test process.
//! - [`relay`]: a TCP relay that can hold back a broker's PUBACKs and cut connections.
//! - [`fleet`]: load for fault tests (hundreds of workers over several channels) and a monitor
//!   that records every message; [`checker`] replays the monitor's log against the limits.
//!
//! Every wait is bounded (by default [`DEFAULT_TIMEOUT`]); nothing uses fixed ports or paused time.
#![allow(
    dead_code,
    unused_imports,
    reason = "each integration test file compiles this module separately and uses only part of it"
)]

pub mod broker;
pub mod checker;
pub mod client;
pub mod daemon;
pub mod fleet;
pub mod nats;
pub mod policies;
pub mod relay;

use std::net::TcpListener;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use broker::{Mosquitto, TestBroker};
pub use client::{topic, topic_matches, Client, Message};
pub use daemon::{run_to_exit, Daemon, DaemonOptions, Exited};

/// Upper bound for a single wait in the harness: generous, so that tests stay reliable on a loaded
/// 2-core machine, yet a hang still fails the test instead of stalling the run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// First topic level of every coordinosaur topic.
pub const PREFIX: &str = "coordinosaur";

/// The daemon's answers on a channel: what a worker of the original protocol subscribes to.
pub const ANSWERS: &[&str] = &["go/+", "expired/+", "rejected/+"];

/// A loopback TCP port that was free a moment ago (bind `127.0.0.1:0`, read the port, drop).
///
/// Another process may take it before it is used again; callers that bind it retry with a new one.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port");
    listener
        .local_addr()
        .expect("local address of a bound listener")
        .port()
}

/// A client `worker-PID-N` on the broker at `port` (logged in with `login`, user and password,
/// when given), subscribed to each of `actions` (e.g. `"go/+"`) on each channel in `channels`.
pub async fn worker(
    port: u16,
    login: Option<(&str, &str)>,
    channels: &[&str],
    actions: &[&str],
) -> Client {
    let client = Client::connect_with(port, &unique_id("worker"), login).await;
    for channel in channels {
        for action in actions {
            client.subscribe(&topic(channel, action)).await;
        }
    }
    client
}

/// A broker, a daemon with `extra_toml` (see [`Daemon::start`]) and a [`worker`] subscribed to
/// `actions` on each of `channels`: the set-up of most end-to-end tests.
pub async fn setup(
    extra_toml: &str,
    channels: &[&str],
    actions: &[&str],
) -> (TestBroker, Daemon, Client) {
    let broker = TestBroker::start();
    let daemon = Daemon::start(broker.port(), extra_toml).await;
    let client = worker(broker.port(), None, channels, actions).await;
    (broker, daemon, client)
}

/// An id that is unique within this machine for the life of the test run: `PREFIX-PID-N`.
pub fn unique_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Runs the `coordinosaur` binary with `args` to completion, in the temp dir (so no
/// `./coordinosaur.toml` is picked up by accident) and bounded by [`DEFAULT_TIMEOUT`]. Returns
/// the exit code, stdout and stderr.
pub async fn run_binary(args: &[&str]) -> (Option<i32>, String, String) {
    let out = tokio::time::timeout(
        DEFAULT_TIMEOUT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_coordinosaur"))
            .args(args)
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("coordinosaur {args:?} did not exit within {DEFAULT_TIMEOUT:?}"))
    .expect("run the coordinosaur binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The last `lines` lines of `text`, for failure messages.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Writes `bytes` where the records of the journal at `path` end, as a write cut short by a
/// crash leaves them: journals are preallocated (format 6), so the records are followed by
/// zeros, and a torn write lands on those zeros rather than after the end of the file.
pub fn write_at_journal_end(path: &std::path::Path, bytes: &[u8]) {
    use std::os::unix::fs::FileExt as _;
    let data = std::fs::read(path).expect("read the journal");
    // After the 8-byte magic: `[len: u32 LE][crc32: u32 LE][payload]` until a zero header.
    let mut at = 8;
    while at + 8 <= data.len() && data[at..at + 8] != [0; 8] {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
        at += 8 + len;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open the journal")
        .write_all_at(bytes, at as u64)
        .expect("write into the journal");
}
