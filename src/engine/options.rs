//! The rules a channel runs under, as the engine sees them: already validated, in engine units.

use std::path::Path;
use std::sync::Arc;

use super::Millis;

/// How loudly a quota reports that it held a job back (`log` in the config, as in the original).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaLog {
    /// Say nothing (`"q"`).
    #[default]
    Quiet,
    /// Log at `info` each time the limit holds a job back (`"v"`).
    Verbose,
    /// Also log at `debug` every grant counted against the window (`"vv"`).
    VeryVerbose,
}

/// One sliding-window quota: at most `limit` grants in any window of `interval`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QuotaSpec {
    /// Unique within a channel; defaults to the interval's text (e.g. `"60s"`).
    pub name: String,
    /// Window length. A grant counts against the window while `now <= granted_at + interval`.
    pub interval: Millis,
    /// Grants allowed per window. 0 disables the window, as in the original.
    pub limit: u32,
    /// Logging level for this window.
    pub log: QuotaLog,
}

/// The effective options of one channel, fixed when the channel is first seen
/// (only `concurrency/set` changes the running limit afterwards).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelOptions {
    /// Jobs allowed to run at once. 0 pauses the channel.
    pub max_concurrent_jobs: u32,
    /// Added to every job's own timeout to give its lease length.
    pub timeout_offset: Millis,
    /// All windows apply at once; a grant needs room in every one of them.
    pub quotas: Vec<QuotaSpec>,
    /// The policy component deciding admission and grant order, if any.
    pub policy: Option<Arc<Path>>,
    /// The policy's `policy_config` table as JSON text (`{}` if none).
    pub policy_config: Arc<str>,
    /// Fallback when the policy fails.
    pub on_policy_error: OnPolicyError,
    /// A candidate policy that gets the same hook calls as `policy` (with the same
    /// `policy_config`) on its own instance and never decides: its disagreements are counted.
    pub policy_shadow: Option<Arc<Path>>,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        ChannelOptions {
            max_concurrent_jobs: 1,
            timeout_offset: Millis(0),
            quotas: Vec::new(),
            policy: None,
            policy_config: Arc::from("{}"),
            on_policy_error: OnPolicyError::Open,
            policy_shadow: None,
        }
    }
}

/// What to do when a channel's policy traps, times out or returns nonsense.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnPolicyError {
    /// Fall back to the built-in behaviour for that decision (accept, grant).
    #[default]
    Open,
    /// Reject the job.
    Closed,
}
