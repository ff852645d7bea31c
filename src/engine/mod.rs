//! The rules engine: a deterministic state machine with injected time.
mod options;
mod time;

pub use options::{ChannelOptions, QuotaLog, QuotaSpec};
pub use time::{Millis, Time};
