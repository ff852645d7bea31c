//! The daemon-wide tables: `[mqtt]`, `[embedded_broker]`, `[limits]`, `[policy_sandbox]`,
//! `[metrics]` and `[state]`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::jetstream::{Backend, JetStreamConfig};
use super::{duration, values, TlsConfig};
use crate::engine::{EngineLimits, Millis};
use crate::protocol::DecodeLimits;
use crate::state::Durability;

/// `[mqtt]`: how to reach the broker and which topics are ours.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker host name or address (`127.0.0.1`).
    pub host: String,
    /// Broker TCP port (1883).
    pub port: u16,
    /// MQTT client id (`coordinosaur`).
    pub client_id: String,
    /// Broker user name; `None` when absent or empty in the file.
    #[serde(deserialize_with = "values::optional_text")]
    pub username: Option<String>,
    /// Broker password; `None` when absent or empty in the file.
    #[serde(deserialize_with = "values::optional_text")]
    pub password: Option<String>,
    /// First topic level (`coordinosaur`): non-empty, no `+`/`#`, no leading or trailing `/`.
    #[serde(deserialize_with = "values::topic_prefix")]
    pub topic_prefix: String,
    /// MQTT keep-alive (30 s): zero (off) or between 1 s and 65535 s, so rumqttc accepts it.
    #[serde(deserialize_with = "values::keep_alive")]
    pub keep_alive: Duration,
    /// Whether to start a fresh MQTT session on every connect (false). With a persistent
    /// session (false), the broker keeps the daemon's subscriptions under its `client_id` and
    /// queues the QoS 1 requests clients publish while the daemon is down or reconnecting.
    pub clean_session: bool,
    /// `[mqtt.tls]`: connect over TLS (`None`: plain TCP).
    pub tls: Option<TlsConfig>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            host: Ipv4Addr::LOCALHOST.to_string(),
            port: 1883,
            client_id: "coordinosaur".to_owned(),
            username: None,
            password: None,
            topic_prefix: "coordinosaur".to_owned(),
            keep_alive: Duration::from_secs(30),
            clean_session: false,
            tls: None,
        }
    }
}

impl MqttConfig {
    /// `host:port`, with an IPv6 host in brackets.
    pub fn broker_address(&self) -> String {
        host_port(&self.host, self.port)
    }
}

/// `[embedded_broker]`: an MQTT broker run inside the daemon, for machines without one.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedBrokerConfig {
    /// Whether to start it (off by default).
    pub enabled: bool,
    /// Address it listens on (`127.0.0.1:1883`).
    pub listen: SocketAddr,
}

impl Default for EmbeddedBrokerConfig {
    fn default() -> Self {
        EmbeddedBrokerConfig {
            enabled: false,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 1883)),
        }
    }
}

/// `[limits]`: bounds on what clients may send.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted payload in bytes (65536, at least 64).
    #[serde(deserialize_with = "values::max_payload")]
    pub max_payload: usize,
    /// Longest job timeout a register may ask for (365 days); longer ones are rejected.
    #[serde(deserialize_with = "duration::millis")]
    pub max_timeout: Millis,
    /// Longest uid accepted, in bytes (1024); a uid becomes a topic level of `go/{uid}`.
    #[serde(deserialize_with = "values::max_uid_len")]
    pub max_uid_len: usize,
    /// Channels the daemon will create (10,000); a register for one more is rejected.
    #[serde(deserialize_with = "values::at_least_one")]
    pub max_channels: usize,
    /// Jobs one channel may hold waiting (100,000); a register past it is rejected.
    #[serde(deserialize_with = "values::at_least_one")]
    pub max_waiting_per_channel: usize,
    /// Bytes all waiting jobs together may hold (256 MiB), each counted as its uid, its extra
    /// fields and a fixed overhead; a register past it is rejected unless it is granted at once.
    #[serde(deserialize_with = "values::max_waiting_bytes")]
    pub max_waiting_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // The engine's and the decoder's own defaults: one place for each.
        let engine = EngineLimits::default();
        let decode = DecodeLimits::default();
        Limits {
            max_payload: decode.max_payload,
            max_timeout: decode.max_timeout,
            max_uid_len: decode.max_uid_len,
            max_channels: engine.max_channels,
            max_waiting_per_channel: engine.max_waiting_per_channel,
            max_waiting_bytes: engine.max_waiting_bytes,
        }
    }
}

impl Limits {
    /// The limits the engine enforces.
    pub fn engine(&self) -> EngineLimits {
        EngineLimits {
            max_channels: self.max_channels,
            max_waiting_per_channel: self.max_waiting_per_channel,
            max_waiting_bytes: self.max_waiting_bytes,
        }
    }

    /// The limits applied while decoding messages.
    pub fn decode(&self) -> DecodeLimits {
        DecodeLimits {
            max_payload: self.max_payload,
            max_timeout: self.max_timeout,
            max_uid_len: self.max_uid_len,
        }
    }
}

/// `[policy_sandbox]`: what one policy call may use.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySandbox {
    /// Wall-clock budget of one hook call (10 ms); a call over it is interrupted.
    #[serde(deserialize_with = "duration::millis")]
    pub call_timeout: Millis,
    /// Linear memory one policy instance may grow to, in bytes (16 MiB).
    pub max_memory: usize,
}

impl Default for PolicySandbox {
    fn default() -> Self {
        PolicySandbox {
            call_timeout: Millis(10),
            max_memory: 16 << 20,
        }
    }
}

/// `[policy_rollback]`: when a hot-swapped policy goes back to its previous version, and when a
/// failing shadow policy is suspended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyRollback {
    /// Failed calls (traps, budget or memory overruns, no usable instance) that roll a swapped
    /// version back when they happen within `window` after the swap; 0 turns rollback off (3).
    pub failures: u32,
    /// How long after a swap its failures count (60 s). A shadow policy failing `failures`
    /// times within any such span is suspended until its file or the channel's options change.
    #[serde(deserialize_with = "duration::millis")]
    pub window: Millis,
}

impl Default for PolicyRollback {
    fn default() -> Self {
        PolicyRollback {
            failures: 3,
            window: Millis(60_000),
        }
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where to serve `/metrics` (off when absent), e.g. `127.0.0.1:9464`.
    pub listen: Option<SocketAddr>,
    /// Channels that get their own `channel` label; later ones are counted under `_other`, so
    /// the number of series stays bounded however many channels clients invent (100).
    pub max_channels: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: None,
            max_channels: 100,
        }
    }
}

/// `[state]`: where and how durably the journal is kept.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    /// Folder of the journal, snapshots and lock file (`state`, beside the config file); an
    /// empty string turns persistence off.
    pub dir: PathBuf,
    /// `fsync` (default): a decision is synced to disk before it is published; `os`: written
    /// to the OS only (survives kill -9, not a power cut).
    pub durability: Durability,
    /// `file` (default): the journal in `dir`; `jetstream`: a replicated stream on a NATS
    /// cluster, with standby coordinators (`[state.jetstream]`).
    pub backend: Backend,
    /// `[state.jetstream]`, used when `backend = "jetstream"`.
    pub jetstream: JetStreamConfig,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: PathBuf::from("state"),
            durability: Durability::default(),
            backend: Backend::default(),
            jetstream: JetStreamConfig::default(),
        }
    }
}

impl StateConfig {
    /// The JetStream settings, if that is the backend.
    pub fn jetstream(&self) -> Option<&JetStreamConfig> {
        (self.backend == Backend::Jetstream).then_some(&self.jetstream)
    }

    /// The state folder, or `None` if persistence is off (or lives in JetStream).
    pub fn dir(&self) -> Option<&Path> {
        if self.backend == Backend::Jetstream {
            return None;
        }
        (!self.dir.as_os_str().is_empty()).then_some(self.dir.as_path())
    }
}

/// `host:port`, with an IPv6 host in brackets: the one spelling of a broker address in logs and
/// messages.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
