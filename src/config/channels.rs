//! `[defaults]` and `[[channels]]`: per-channel options, and how a channel's options resolve.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::duration::{self, ConfigDuration};
use super::values::{ChannelPattern, LogLevel, QuotaInterval, QuotaLimit, QuotaName};
use super::{line_of, located};
use crate::engine::{ChannelOptions, Millis, OnPolicyError, QuotaSpec};

/// One entry of a `quotas` list, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuota {
    interval: QuotaInterval,
    limit: QuotaLimit,
    #[serde(default)]
    name: Option<QuotaName>,
    #[serde(default)]
    log: LogLevel,
}

/// A `quotas` list; spans locate a duplicate name.
type RawQuotas = Vec<Spanned<RawQuota>>;

/// `on_policy_error` as written.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawOnPolicyError {
    Open,
    Closed,
}

impl From<RawOnPolicyError> for OnPolicyError {
    fn from(raw: RawOnPolicyError) -> OnPolicyError {
        match raw {
            RawOnPolicyError::Open => OnPolicyError::Open,
            RawOnPolicyError::Closed => OnPolicyError::Closed,
        }
    }
}

/// The policy keys shared by `[defaults]` and `[[channels]]`, resolved.
#[derive(Debug, Clone, Default)]
struct PolicyKeys {
    /// `Some(None)`: `policy = ""` turns an inherited policy off.
    policy: Option<Option<Arc<Path>>>,
    policy_config: Option<Arc<str>>,
    on_policy_error: Option<OnPolicyError>,
    /// `Some(None)`: `policy_shadow = ""` turns an inherited shadow off.
    policy_shadow: Option<Option<Arc<Path>>>,
}

/// The policy keys as written, before paths are resolved.
#[derive(Debug)]
struct RawPolicyKeys {
    policy: Option<String>,
    config: Option<toml::Table>,
    on_error: Option<RawOnPolicyError>,
    shadow: Option<String>,
}

impl PolicyKeys {
    fn resolve(raw: RawPolicyKeys, base: &Path) -> PolicyKeys {
        let RawPolicyKeys {
            policy,
            config,
            on_error,
            shadow,
        } = raw;
        // A relative path is relative to the config file's folder, not the working directory;
        // an empty one turns an inherited file off.
        let path = |p: String| (!p.is_empty()).then(|| Arc::from(base.join(p).as_path()));
        PolicyKeys {
            policy: policy.map(path),
            policy_shadow: shadow.map(path),
            // A TOML table always has a JSON form (serializing it cannot fail).
            policy_config: config.map(|t| Arc::from(serde_json::to_string(&t).unwrap_or_default())),
            on_policy_error: on_error.map(Into::into),
        }
    }

    fn apply(&self, options: &mut ChannelOptions) {
        if let Some(policy) = &self.policy {
            options.policy.clone_from(policy);
        }
        if let Some(config) = &self.policy_config {
            options.policy_config = config.clone();
        }
        if let Some(on_error) = self.on_policy_error {
            options.on_policy_error = on_error;
        }
        if let Some(shadow) = &self.policy_shadow {
            options.policy_shadow.clone_from(shadow);
        }
    }

    /// The policy files these keys name (live and shadow).
    fn paths(&self) -> impl Iterator<Item = Arc<Path>> + '_ {
        [&self.policy, &self.policy_shadow]
            .into_iter()
            .filter_map(|p| p.clone().flatten())
    }
}

/// `[defaults]` as written.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawDefaults {
    #[serde(deserialize_with = "duration::millis")]
    timeout_offset: Millis,
    max_concurrent_jobs: u32,
    quotas: RawQuotas,
    policy: Option<String>,
    policy_config: Option<toml::Table>,
    on_policy_error: Option<RawOnPolicyError>,
    policy_shadow: Option<String>,
}

impl Default for RawDefaults {
    fn default() -> Self {
        let engine = ChannelOptions::default();
        RawDefaults {
            timeout_offset: engine.timeout_offset,
            max_concurrent_jobs: engine.max_concurrent_jobs,
            quotas: Vec::new(),
            policy: None,
            policy_config: None,
            on_policy_error: None,
            policy_shadow: None,
        }
    }
}

impl RawDefaults {
    /// Checks the quota list and turns the table into engine options; `base` is the folder
    /// relative policy paths start from.
    pub(super) fn resolve(self, text: &str, base: &Path) -> Result<ChannelOptions, String> {
        let mut options = ChannelOptions {
            max_concurrent_jobs: self.max_concurrent_jobs,
            timeout_offset: self.timeout_offset,
            quotas: resolve_quotas(self.quotas, text)?,
            ..ChannelOptions::default()
        };
        let keys = RawPolicyKeys {
            policy: self.policy,
            config: self.policy_config,
            on_error: self.on_policy_error,
            shadow: self.policy_shadow,
        };
        PolicyKeys::resolve(keys, base).apply(&mut options);
        Ok(options)
    }
}

/// One `[[channels]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawChannel {
    pattern: Spanned<ChannelPattern>,
    #[serde(default)]
    timeout_offset: Option<ConfigDuration>,
    #[serde(default)]
    max_concurrent_jobs: Option<u32>,
    #[serde(default)]
    quotas: Option<RawQuotas>,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    policy_config: Option<toml::Table>,
    #[serde(default)]
    on_policy_error: Option<RawOnPolicyError>,
    #[serde(default)]
    policy_shadow: Option<String>,
}

impl RawChannel {
    /// Checks the quota list and records where the entry's pattern is written.
    pub(super) fn resolve(self, text: &str, base: &Path) -> Result<ChannelRule, String> {
        Ok(ChannelRule {
            line: line_of(text, self.pattern.span().start),
            pattern: self.pattern.into_inner(),
            timeout_offset: self.timeout_offset.map(ConfigDuration::millis),
            max_concurrent_jobs: self.max_concurrent_jobs,
            quotas: self.quotas.map(|q| resolve_quotas(q, text)).transpose()?,
            policy: PolicyKeys::resolve(
                RawPolicyKeys {
                    policy: self.policy,
                    config: self.policy_config,
                    on_error: self.on_policy_error,
                    shadow: self.policy_shadow,
                },
                base,
            ),
        })
    }
}

/// Fills in default names and rejects a name used twice in one list.
fn resolve_quotas(raw: RawQuotas, text: &str) -> Result<Vec<QuotaSpec>, String> {
    let mut first_use: HashMap<String, usize> = HashMap::new();
    let mut specs = Vec::with_capacity(raw.len());
    for entry in raw {
        let span = entry.span();
        let quota = entry.into_inner();
        let interval = quota.interval.0;
        let explicit = quota.name.is_some();
        let name = quota.name.map_or_else(|| interval.to_string(), |n| n.0);
        if let Some(first) = first_use.get(&name) {
            let how = if explicit {
                String::new()
            } else {
                format!(", the default name for interval {interval}; give one of them a `name`")
            };
            return Err(located(
                text,
                span,
                &format!(
                    "duplicate quota name {name:?} (first used at line {first}{how}); \
                     names must be unique within one quotas list"
                ),
            ));
        }
        first_use.insert(name.clone(), line_of(text, span.start));
        specs.push(QuotaSpec {
            name,
            interval,
            limit: quota.limit.0,
            log: quota.log.into(),
        });
    }
    Ok(specs)
}

/// One validated `[[channels]]` entry: it applies to every channel its pattern matches, and
/// overrides only the keys it names.
#[derive(Debug, Clone)]
pub struct ChannelRule {
    /// Matched against the start of the channel name.
    pub pattern: ChannelPattern,
    /// Line of the entry's `pattern` key in the config file (1-based).
    pub line: usize,
    /// Overrides `timeout_offset` when set.
    pub timeout_offset: Option<Millis>,
    /// Overrides `max_concurrent_jobs` when set.
    pub max_concurrent_jobs: Option<u32>,
    /// Replaces the whole quota set when set (an empty list removes all quotas).
    pub quotas: Option<Vec<QuotaSpec>>,
    /// `policy`, `policy_config`, `on_policy_error` and `policy_shadow`, each overriding when
    /// set.
    policy: PolicyKeys,
}

impl ChannelRule {
    /// Overrides the keys this entry names.
    pub fn apply(&self, options: &mut ChannelOptions) {
        if let Some(offset) = self.timeout_offset {
            options.timeout_offset = offset;
        }
        if let Some(max) = self.max_concurrent_jobs {
            options.max_concurrent_jobs = max;
        }
        if let Some(quotas) = &self.quotas {
            options.quotas.clone_from(quotas);
        }
        self.policy.apply(options);
    }

    /// The policy files this entry names (`policy` and `policy_shadow`).
    pub fn policy_paths(&self) -> impl Iterator<Item = Arc<Path>> + '_ {
        self.policy.paths()
    }

    /// The keys this entry sets, in schema order.
    pub fn keys(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.timeout_offset.is_some() {
            keys.push("timeout_offset");
        }
        if self.max_concurrent_jobs.is_some() {
            keys.push("max_concurrent_jobs");
        }
        if self.quotas.is_some() {
            keys.push("quotas");
        }
        if self.policy.policy.is_some() {
            keys.push("policy");
        }
        if self.policy.policy_config.is_some() {
            keys.push("policy_config");
        }
        if self.policy.on_policy_error.is_some() {
            keys.push("on_policy_error");
        }
        if self.policy.policy_shadow.is_some() {
            keys.push("policy_shadow");
        }
        keys
    }
}
