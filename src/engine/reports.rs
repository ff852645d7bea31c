//! Reports: the `infos` replies and the cheap read-only queries the driver and metrics use.
//!
//! The daemon-wide `infos` reply ([`Output::AllStates`](super::Output::AllStates)) is as large
//! as every channel's state together, so it is rate-limited: at most one per
//! [`ALL_STATES_INTERVAL`]. The first request is answered at once; requests during the following
//! interval are answered together, once, at its end (a deadline like any other).

use std::sync::Arc;

use super::{Channel, ChannelState, Engine, Millis, NoPolicies, Output, Policies, Time};

/// Shortest time between two daemon-wide state reports ([`Output::AllStates`]).
pub const ALL_STATES_INTERVAL: Millis = Millis(1_000);

/// The rate limit of the daemon-wide state report.
#[derive(Debug, Default)]
pub(super) struct AllStatesLimit {
    /// When the last report went out.
    last: Option<Time>,
    /// A request came after `last` and waits for the report at `last + ALL_STATES_INTERVAL`.
    pending: bool,
}

impl AllStatesLimit {
    /// When a waiting request is due, if one waits.
    pub(super) fn due(&self) -> Option<Time> {
        self.last
            .filter(|_| self.pending)
            .map(|t| t + ALL_STATES_INTERVAL)
    }
}

impl Engine {
    /// `infos` on a channel: its state now (with its first waiting jobs if `jobs`), or the state
    /// a new channel of that name would have.
    pub(super) fn handle_infos(
        &mut self,
        now: Time,
        channel: &str,
        jobs: bool,
        hooks: &dyn Policies,
    ) {
        let mut state = match self.by_name.get(channel) {
            Some(id) => self.channels[*id].state(now, hooks),
            // Report what the channel would be without creating it: `infos` must not grow state.
            None => Channel::new(channel.into(), (self.resolver)(channel)).state(now, hooks),
        };
        if jobs {
            let listed = self.channel(channel).map(|c| c.waiting_jobs(now));
            state.waiting_jobs = Some(listed.unwrap_or_default());
        }
        self.outputs.push_back(Output::State(state));
    }

    /// `PREFIX/infos`: a report now if none went out in the last interval; otherwise the
    /// request waits for the report at the interval's end (one report for all of them). A
    /// report sent at this very time already answers it.
    pub(super) fn handle_infos_all(&mut self, now: Time, hooks: &dyn Policies) {
        match self.all_states.last {
            Some(last) if now < last + ALL_STATES_INTERVAL => {
                if last < now {
                    self.all_states.pending = true;
                }
            }
            _ => self.report_all_states(now, hooks),
        }
    }

    /// Every channel's state, by name.
    pub(super) fn report_all_states(&mut self, now: Time, hooks: &dyn Policies) {
        let mut all: Vec<ChannelState> =
            self.channels.iter().map(|c| c.state(now, hooks)).collect();
        all.sort_by(|a, b| a.channel.cmp(&b.channel));
        self.outputs.push_back(Output::AllStates(all));
        self.all_states = AllStatesLimit {
            last: Some(now),
            pending: false,
        };
    }

    /// The state of `channel` at the engine's current time (`None` if it was never seen).
    pub fn channel_state(&self, channel: &str) -> Option<ChannelState> {
        let id = *self.by_name.get(channel)?;
        Some(self.channels[id].state(self.now, &NoPolicies))
    }

    /// Waiting uids of `channel` in the order they will be granted.
    pub fn waiting(&self, channel: &str) -> Vec<Arc<str>> {
        self.channel(channel)
            .map(|c| c.queued().cloned().collect())
            .unwrap_or_default()
    }

    /// Running uids of `channel` with their lease deadlines.
    pub fn running(&self, channel: &str) -> Vec<(Arc<str>, Time)> {
        self.channel(channel)
            .map(|c| c.leases().map(|(u, t)| (u.clone(), t)).collect())
            .unwrap_or_default()
    }

    /// `(running, waiting)` of a known channel, cheaply (for gauges).
    pub fn counts(&self, channel: &str) -> Option<(usize, usize)> {
        self.channel(channel).map(|c| (c.running(), c.waiting()))
    }

    /// Total time quotas held `channel` back, in milliseconds (for metrics).
    pub fn quota_held(&self, channel: &str) -> Option<Millis> {
        self.channel(channel).map(|c| c.quota_held(self.now))
    }

    /// Number of channels seen so far.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Bytes held by waiting jobs over all channels, as `max_waiting_bytes` counts them.
    pub fn waiting_bytes(&self) -> usize {
        self.waiting_bytes
    }
}
