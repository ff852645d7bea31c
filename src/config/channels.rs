//! `[defaults]` and `[[channels]]`: per-channel options, and how a channel's options resolve.

use std::collections::HashMap;

use serde::Deserialize;
use toml::Spanned;

use super::duration::{self, ConfigDuration};
use super::values::{ChannelPattern, LogLevel, QuotaInterval, QuotaLimit, QuotaName};
use super::{line_of, located};
use crate::engine::{ChannelOptions, Millis, QuotaSpec};

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

/// `[defaults]` as written.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawDefaults {
    #[serde(deserialize_with = "duration::millis")]
    timeout_offset: Millis,
    max_concurrent_jobs: u32,
    quotas: RawQuotas,
}

impl Default for RawDefaults {
    fn default() -> Self {
        let engine = ChannelOptions::default();
        RawDefaults {
            timeout_offset: engine.timeout_offset,
            max_concurrent_jobs: engine.max_concurrent_jobs,
            quotas: Vec::new(),
        }
    }
}

impl RawDefaults {
    /// Checks the quota list and turns the table into engine options.
    pub(super) fn resolve(self, text: &str) -> Result<ChannelOptions, String> {
        Ok(ChannelOptions {
            max_concurrent_jobs: self.max_concurrent_jobs,
            timeout_offset: self.timeout_offset,
            quotas: resolve_quotas(self.quotas, text)?,
        })
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
}

impl RawChannel {
    /// Checks the quota list and records where the entry's pattern is written.
    pub(super) fn resolve(self, text: &str) -> Result<ChannelRule, String> {
        Ok(ChannelRule {
            line: line_of(text, self.pattern.span().start),
            pattern: self.pattern.into_inner(),
            timeout_offset: self.timeout_offset.map(ConfigDuration::millis),
            max_concurrent_jobs: self.max_concurrent_jobs,
            quotas: self.quotas.map(|q| resolve_quotas(q, text)).transpose()?,
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
        keys
    }
}
