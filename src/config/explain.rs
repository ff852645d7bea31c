//! Why a channel gets the options it gets: the report behind `coordinosaur explain CHANNEL`.

use std::fmt;

use crate::engine::{ChannelOptions, QuotaLog};

/// A channel's resolved options and the `[[channels]]` entries that shaped them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The channel asked about.
    pub channel: String,
    /// What the engine will use for it: `[defaults]` with every matching entry applied.
    pub options: ChannelOptions,
    /// The matching entries, in file order (later ones won where keys overlap).
    pub matched: Vec<MatchedRule>,
}

/// One `[[channels]]` entry that matched the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchedRule {
    /// Position among the `[[channels]]` entries, counting from 1.
    pub number: usize,
    /// The pattern as written.
    pub pattern: String,
    /// Line of its `pattern` key in the config file.
    pub line: usize,
    /// The keys it set, in schema order.
    pub keys: Vec<&'static str>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "channel {:?}", self.channel)?;
        if self.matched.is_empty() {
            writeln!(f, "  matched: no [[channels]] entry; defaults apply")?;
        }
        for rule in &self.matched {
            let keys = if rule.keys.is_empty() {
                "sets nothing".to_owned()
            } else {
                rule.keys.join(", ")
            };
            writeln!(
                f,
                "  matched: [[channels]] #{} pattern {:?} (line {}): {keys}",
                rule.number, rule.pattern, rule.line
            )?;
        }
        let options = &self.options;
        writeln!(f, "  max_concurrent_jobs = {}", options.max_concurrent_jobs)?;
        writeln!(f, "  timeout_offset = {}", options.timeout_offset)?;
        match &options.policy {
            Some(path) => writeln!(
                f,
                "  policy = {} (on_policy_error = {:?}, policy_config = {})",
                path.display(),
                options.on_policy_error,
                options.policy_config
            )?,
            None => writeln!(f, "  policy: none")?,
        }
        if let Some(shadow) = &options.policy_shadow {
            writeln!(
                f,
                "  policy_shadow = {} (decides nothing)",
                shadow.display()
            )?;
        }
        if options.quotas.is_empty() {
            return writeln!(f, "  quotas: none");
        }
        writeln!(f, "  quotas:")?;
        for quota in &options.quotas {
            let disabled = if quota.limit == 0 { ", disabled" } else { "" };
            writeln!(
                f,
                "    {}: {} per {} (log {}{disabled})",
                quota.name,
                quota.limit,
                quota.interval,
                log_text(quota.log)
            )?;
        }
        Ok(())
    }
}

/// The config spelling of a log level.
pub(super) fn log_text(log: QuotaLog) -> &'static str {
    match log {
        QuotaLog::Quiet => "q",
        QuotaLog::Verbose => "v",
        QuotaLog::VeryVerbose => "vv",
    }
}
