//! `coordinosaur.toml`: reading, validating and resolving the daemon's configuration.
//!
//! Every table is `deny_unknown_fields` and every value is checked while it is deserialized
//! (validated newtypes and `deserialize_with` helpers), so a mistake stops start-up with one
//! [`ConfigError`] whose message names the key or pattern and shows its line. Durations accept
//! `60`, `0.5`, `"60"` or a `humantime` string such as `"90s"` through one deserializer.
//!
//! A channel's options start from `[defaults]`; then every `[[channels]]` entry whose pattern
//! matches the start of the channel name (Python `re.match`, as in the original daemon) applies,
//! in file order, each overriding only the keys it names. A `quotas` list replaces the whole set.
//! [`Config::explain`] reports how that resolution went for one channel.

mod channels;
mod duration;
mod explain;
mod jetstream;
mod policy_cache;
mod settings;
mod tls;
mod values;

#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use channels::ChannelRule;
pub use duration::parse_duration_str as parse_duration;
pub use explain::{Explanation, MatchedRule};
pub use jetstream::{Backend, JetStreamConfig};
pub use policy_cache::PolicyCacheConfig;
pub use settings::{
    host_port, EmbeddedBrokerConfig, Limits, MetricsConfig, MqttConfig, PolicyRollback,
    PolicySandbox, StateConfig,
};
pub use tls::{ClientAuth, TlsConfig};
pub use values::ChannelPattern;

use crate::engine::ChannelOptions;

/// Environment variable that overrides `[mqtt] username` (see [`Config::apply_env`]).
pub const ENV_MQTT_USERNAME: &str = "COORDINOSAUR_MQTT_USERNAME";

/// Environment variable that overrides `[mqtt] password` (see [`Config::apply_env`]).
pub const ENV_MQTT_PASSWORD: &str = "COORDINOSAUR_MQTT_PASSWORD";

/// Environment variables that override `[state.jetstream] username`, `password` and `token`.
pub const ENV_NATS_USERNAME: &str = "COORDINOSAUR_NATS_USERNAME";
/// See [`ENV_NATS_USERNAME`].
pub const ENV_NATS_PASSWORD: &str = "COORDINOSAUR_NATS_PASSWORD";
/// See [`ENV_NATS_USERNAME`].
pub const ENV_NATS_TOKEN: &str = "COORDINOSAUR_NATS_TOKEN";

/// Why the configuration could not be loaded. Each message is meant to be shown to the user as-is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file asked for.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("invalid config file {}: {message}", path.display())]
    Invalid {
        /// The file (only used in messages when parsing text directly).
        path: PathBuf,
        /// What is wrong and where: line, column, the offending line, and the key or pattern.
        message: String,
    },
}

/// The whole validated configuration.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// `[mqtt]`: the broker connection and topic prefix.
    pub mqtt: MqttConfig,
    /// `[embedded_broker]`: the in-process broker (off by default).
    pub embedded_broker: EmbeddedBrokerConfig,
    /// `[limits]`: bounds on client requests.
    pub limits: Limits,
    /// `[policy_sandbox]`: time and memory budget of policy calls.
    pub policy_sandbox: PolicySandbox,
    /// `[policy_cache]`: compiled policies on disk (its `dir` is absolute once loaded).
    pub policy_cache: PolicyCacheConfig,
    /// `[policy_rollback]`: rollback of failing swapped policies, suspension of failing shadows.
    pub policy_rollback: PolicyRollback,
    /// `[metrics]`: the Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// `[state]`: the journal (its `dir` is absolute once loaded from a file).
    pub state: StateConfig,
    /// `[defaults]`: the options of a channel that no `[[channels]]` entry matches.
    pub defaults: ChannelOptions,
    /// `[[channels]]`, in file order; later entries override earlier ones.
    pub channels: Vec<ChannelRule>,
}

/// The file as written; the daemon-wide tables are already in their final form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    mqtt: MqttConfig,
    #[serde(default)]
    embedded_broker: EmbeddedBrokerConfig,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    policy_sandbox: PolicySandbox,
    #[serde(default)]
    policy_cache: PolicyCacheConfig,
    #[serde(default)]
    policy_rollback: PolicyRollback,
    #[serde(default)]
    metrics: MetricsConfig,
    #[serde(default)]
    state: StateConfig,
    #[serde(default)]
    defaults: channels::RawDefaults,
    #[serde(default)]
    channels: Vec<channels::RawChannel>,
}

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Validates config `text`; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message: message.trim_end().to_owned(),
        };
        // `from_str` keeps the input in the error, so its Display shows line, column and snippet.
        let raw: RawConfig = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        // `[defaults]` first: it is usually above `[[channels]]`, so errors come in file order.
        // Absolute, so policy paths and the events of the folder watcher compare equal.
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let base = std::path::absolute(parent).unwrap_or_else(|_| parent.to_owned());
        let base = base.as_path();
        let defaults = raw.defaults.resolve(text, base).map_err(invalid)?;
        let channels = raw
            .channels
            .into_iter()
            .map(|c| c.resolve(text, base))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        let mut mqtt = raw.mqtt;
        if let Some(tls) = &mut mqtt.tls {
            tls.resolve_paths(base);
        }
        let mut jetstream = raw.state.jetstream.clone();
        jetstream.resolve_paths(base);
        if raw.state.backend == Backend::Jetstream {
            jetstream.check().map_err(invalid)?;
            if raw.embedded_broker.enabled {
                return Err(invalid("[state] backend = \"jetstream\" needs one MQTT broker shared by every coordinator (e.g. the NATS cluster's MQTT listener), not each process's embedded broker: set [embedded_broker] enabled = false".into()));
            }
            if mqtt.clean_session {
                return Err(invalid("[state] backend = \"jetstream\" needs [mqtt] clean_session = false: the broker's session (and the requests queued in it) moves to each new leader".into()));
            }
        }
        let state_dir = raw.state.dir().map(|dir| base.join(dir));
        Ok(Config {
            policy_cache: raw.policy_cache.resolve(base, state_dir.as_deref()),
            mqtt,
            embedded_broker: raw.embedded_broker,
            limits: raw.limits,
            policy_sandbox: raw.policy_sandbox,
            policy_rollback: raw.policy_rollback,
            metrics: raw.metrics,
            state: StateConfig {
                // Relative to the config file, like policy paths; "" stays "" (off).
                dir: match raw.state.dir() {
                    Some(dir) => base.join(dir),
                    None => PathBuf::new(),
                },
                durability: raw.state.durability,
                backend: raw.state.backend,
                jetstream,
            },
            defaults,
            channels,
        })
    }

    /// Applies the environment's overrides: [`ENV_MQTT_USERNAME`] and [`ENV_MQTT_PASSWORD`]
    /// replace `[mqtt] username` and `password`, so secrets can stay out of the file. `env` looks
    /// a variable up (`|k| std::env::var(k).ok()` in the daemon); a variable that is set but
    /// empty means "none", as an empty value in the file does. Kept apart from
    /// [`Config::parse`] so that parsing stays a pure function of the text.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) {
        if let Some(user) = env(ENV_MQTT_USERNAME) {
            self.mqtt.username = (!user.is_empty()).then_some(user);
        }
        if let Some(password) = env(ENV_MQTT_PASSWORD) {
            self.mqtt.password = (!password.is_empty()).then_some(password);
        }
        let nats = &mut self.state.jetstream;
        for (key, slot) in [
            (ENV_NATS_USERNAME, &mut nats.username),
            (ENV_NATS_PASSWORD, &mut nats.password),
            (ENV_NATS_TOKEN, &mut nats.token),
        ] {
            if let Some(value) = env(key) {
                *slot = (!value.is_empty()).then_some(value);
            }
        }
    }

    /// The options of `channel`: `[defaults]`, then every matching `[[channels]]` entry in order.
    pub fn channel_options(&self, channel: &str) -> ChannelOptions {
        let mut options = self.defaults.clone();
        for rule in self.channels.iter().filter(|r| r.pattern.matches(channel)) {
            rule.apply(&mut options);
        }
        options
    }

    /// Like [`Config::channel_options`], but also says which entries matched and what they set.
    pub fn explain(&self, channel: &str) -> Explanation {
        let matched = self
            .channels
            .iter()
            .enumerate()
            .filter(|(_, rule)| rule.pattern.matches(channel))
            .map(|(i, rule)| MatchedRule {
                number: i + 1,
                pattern: rule.pattern.as_str().to_owned(),
                line: rule.line,
                keys: rule.keys(),
            })
            .collect();
        Explanation {
            channel: channel.to_owned(),
            options: self.channel_options(channel),
            matched,
        }
    }

    /// Every policy file named anywhere in the config, once each.
    pub fn policy_paths(&self) -> Vec<std::sync::Arc<Path>> {
        let defaults = [&self.defaults.policy, &self.defaults.policy_shadow];
        let mut paths: Vec<_> = defaults
            .into_iter()
            .filter_map(Clone::clone)
            .chain(self.channels.iter().flat_map(|c| c.policy_paths()))
            .collect();
        paths.sort();
        paths.dedup();
        paths
    }

    /// A few lines for `coordinosaur check-config` to print when the file is valid.
    pub fn summary(&self) -> String {
        let mqtt = &self.mqtt;
        let mut out = String::new();
        let user = mqtt
            .username
            .as_deref()
            .map_or_else(String::new, |u| format!(", user {u:?}"));
        let broker = if self.embedded_broker.enabled {
            format!("embedded, listening on {}", self.embedded_broker.listen)
        } else {
            "external".to_owned()
        };
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "broker: {} as {:?}{user}, keep-alive {} ({broker})",
            mqtt.broker_address(),
            mqtt.client_id,
            humantime::format_duration(mqtt.keep_alive),
        );
        let _ = writeln!(
            out,
            "session: {}",
            if mqtt.clean_session {
                "clean (nothing queued while the daemon is away)"
            } else {
                "persistent (the broker queues requests while the daemon is away)"
            }
        );
        let _ = writeln!(
            out,
            "tls: {}",
            mqtt.tls
                .as_ref()
                .map_or_else(|| "off (plain TCP)".to_owned(), TlsConfig::summary)
        );
        let _ = writeln!(out, "topic prefix: {}", mqtt.topic_prefix);
        let _ = match (self.state.jetstream(), self.state.dir()) {
            (Some(js), _) => writeln!(
                out,
                "state: jetstream stream {:?} on {} (replicas {}, leader lease {}, node {})",
                js.stream,
                js.servers.join(", "),
                js.replicas,
                humantime::format_duration(js.leader_lease),
                js.node_id()
            ),
            (None, Some(dir)) => writeln!(
                out,
                "state: {} (durability {})",
                dir.display(),
                self.state.durability
            ),
            (None, None) => writeln!(out, "state: off (a restart forgets every job)"),
        };
        let _ = writeln!(
            out,
            "limits: payload up to {} bytes, job timeout up to {}, uid up to {} bytes, \
             {} channels, {} waiting jobs per channel, {} bytes of waiting jobs in all",
            self.limits.max_payload,
            self.limits.max_timeout,
            self.limits.max_uid_len,
            self.limits.max_channels,
            self.limits.max_waiting_per_channel,
            self.limits.max_waiting_bytes
        );
        let defaults = &self.defaults;
        let _ = writeln!(
            out,
            "defaults: max_concurrent_jobs = {}, timeout_offset = {}, {} quota(s)",
            defaults.max_concurrent_jobs,
            defaults.timeout_offset,
            defaults.quotas.len()
        );
        let _ = write!(out, "channel rules: {}", self.channels.len());
        out
    }
}

/// 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// A message about `span` of `text`, laid out like toml's own errors so all errors read alike.
fn located(text: &str, span: Range<usize>, message: &str) -> String {
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let content = text[line_start..].lines().next().unwrap_or("");
    let line = line_of(text, start);
    let column = text[line_start..start].chars().count();
    let width = text[start..span.end.clamp(start, text.len())]
        .chars()
        .count()
        .clamp(1, content.chars().count().saturating_sub(column).max(1));
    let gutter = " ".repeat(line.to_string().len());
    format!(
        "error at line {line}, column {}\n{gutter} |\n{line} | {content}\n{gutter} | {}{}\n{message}",
        column + 1,
        " ".repeat(column),
        "^".repeat(width),
    )
}
