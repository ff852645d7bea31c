//! Set-up shared by the engine's test modules.

use super::*;

/// An engine recording its changes whose every channel has `max` slots and one quiet quota
/// window `q{interval}` per `(interval ms, limit)`.
pub(super) fn engine(max: u32, quotas: &[(u64, u32)]) -> Engine {
    let o = ChannelOptions {
        max_concurrent_jobs: max,
        quotas: quotas
            .iter()
            .map(|&(interval, limit)| QuotaSpec {
                name: format!("q{interval}"),
                interval: Millis(interval),
                limit,
                log: QuotaLog::Quiet,
            })
            .collect(),
        ..ChannelOptions::default()
    };
    let mut e = Engine::new(Box::new(move |_| o.clone()));
    e.record_changes(true);
    e
}
