//! `[state] backend` and `[state.jetstream]`: the replicated journal and leader lease on a NATS
//! JetStream cluster (high availability). Checked here; connected in `state::jetstream`.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::duration::ConfigDuration;
use super::{values, TlsConfig};

/// Where the journal lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Files in `[state] dir` (one coordinator).
    #[default]
    File,
    /// A JetStream stream replicated by a NATS cluster; standby coordinators take over.
    Jetstream,
}

/// `[state.jetstream]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JetStreamConfig {
    /// NATS server URLs (`nats://host:port`); the client fails over between them.
    pub servers: Vec<String>,
    /// Stream name (`coordinosaur`); the KV bucket `{stream}_leader` and the object store
    /// `{stream}_snapshots` are named after it.
    #[serde(deserialize_with = "asset_name")]
    pub stream: String,
    /// JetStream replication factor (3): 1, 3 or 5 in practice; 1..=5 accepted.
    #[serde(deserialize_with = "replicas")]
    pub replicas: usize,
    /// How long a dead leader keeps the lease (2 s): a standby takes over within about this.
    #[serde(deserialize_with = "leader_lease")]
    pub leader_lease: Duration,
    /// This process's name in logs, `status` and metrics (default: `hostname-pid`).
    #[serde(deserialize_with = "values::optional_text")]
    pub node_id: Option<String>,
    /// NATS user name; `None` when absent or empty.
    #[serde(deserialize_with = "values::optional_text")]
    pub username: Option<String>,
    /// NATS password; `None` when absent or empty.
    #[serde(deserialize_with = "values::optional_text")]
    pub password: Option<String>,
    /// NATS token; `None` when absent or empty.
    #[serde(deserialize_with = "values::optional_text")]
    pub token: Option<String>,
    /// Journal bytes appended since the last snapshot that trigger a new one (16 MiB).
    pub snapshot_after_bytes: u64,
    /// `[state.jetstream.tls]`: the same keys as `[mqtt.tls]`.
    pub tls: Option<TlsConfig>,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        JetStreamConfig {
            servers: vec!["nats://127.0.0.1:4222".to_owned()],
            stream: "coordinosaur".to_owned(),
            replicas: 3,
            leader_lease: Duration::from_secs(2),
            node_id: None,
            username: None,
            password: None,
            token: None,
            snapshot_after_bytes: 16 << 20,
            tls: None,
        }
    }
}

impl JetStreamConfig {
    /// The node id: configured, or `hostname-pid`.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "coordinosaur".to_owned());
            format!("{host}-{}", std::process::id())
        })
    }

    /// Resolves TLS file paths against the config file's folder.
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        if let Some(tls) = &mut self.tls {
            tls.resolve_paths(base);
        }
    }

    /// Checks what a single key cannot: at least one server, each a URL NATS accepts.
    pub(super) fn check(&self) -> Result<(), String> {
        if self.servers.is_empty() {
            return Err("[state.jetstream] servers is empty: name at least one NATS server, e.g. [\"nats://127.0.0.1:4222\"]".into());
        }
        for server in &self.servers {
            if server.parse::<async_nats::ServerAddr>().is_err() {
                return Err(format!(
                    "[state.jetstream] servers: {server:?} is not a NATS URL (write e.g. \"nats://127.0.0.1:4222\")"
                ));
            }
        }
        if self.token.is_some() && (self.username.is_some() || self.password.is_some()) {
            return Err(
                "[state.jetstream]: set either token or username/password, not both".into(),
            );
        }
        if self.username.is_some() != self.password.is_some() {
            return Err("[state.jetstream]: username and password go together".into());
        }
        Ok(())
    }
}

/// A stream name also used inside KV and object store names: letters, digits, `_` and `-`.
fn asset_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(name)
    } else {
        Err(serde::de::Error::custom(format!(
            "stream must be 1-64 letters, digits, '_' or '-', got {name:?}"
        )))
    }
}

fn replicas<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = usize::deserialize(d)?;
    if (1..=5).contains(&n) {
        Ok(n)
    } else {
        Err(serde::de::Error::custom(format!(
            "replicas must be between 1 and 5 (JetStream's limit), got {n}"
        )))
    }
}

/// At least 500 ms (renewals go out every quarter of it) and at most a minute (a dead leader
/// would stall every channel that long).
fn leader_lease<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let ConfigDuration(value) = ConfigDuration::deserialize(d)?;
    if (Duration::from_millis(500)..=Duration::from_secs(60)).contains(&value) {
        Ok(value)
    } else {
        Err(serde::de::Error::custom(format!(
            "leader_lease must be between 500ms and 60s, got {}",
            humantime::format_duration(value)
        )))
    }
}
