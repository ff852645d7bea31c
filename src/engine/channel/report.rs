//! What the channel reports: its `state`, and the read-only views the engine's queries use.

use std::sync::Arc;

use super::Channel;
use crate::engine::fencing::RunningJob;
use crate::engine::policy::Policies;
use crate::engine::{ChannelState, QuotaState, Time};

impl Channel {
    pub(crate) fn state(&self, now: Time, hooks: &dyn Policies) -> ChannelState {
        let quotas: Vec<QuotaState> = self
            .windows
            .iter()
            .map(|w| QuotaState {
                name: w.spec.name.clone(),
                interval_ms: w.spec.interval.0,
                limit: w.spec.limit,
                used: w.used(now),
                next_opening: w.blocked_until(now, 1),
            })
            .collect();
        let next_window_opening = quotas.iter().filter_map(|q| q.next_opening).max();
        ChannelState {
            channel: self.name.to_string(),
            max_concurrent_jobs: self.opts.max_concurrent_jobs,
            timeout_offset_ms: self.opts.timeout_offset.0,
            running: self.leases.values().map(|u| u.to_string()).collect(),
            running_count: self.running(),
            running_units: (self.running_units != self.running() as u64)
                .then_some(self.running_units),
            running_jobs: self
                .leases
                .iter()
                .map(|((deadline, _), uid)| RunningJob {
                    uid: uid.to_string(),
                    token: self.jobs.get(uid).map_or(0, |j| j.token),
                    deadline: deadline.0,
                    cost: self.jobs.get(uid).map_or(1, |j| j.cost),
                })
                .collect(),
            waiting: self.waiting(),
            quotas,
            next_window_opening,
            policy: self.opts.policy.as_ref().map(|p| p.display().to_string()),
            quota_held_ms: self.quota_held(now).0,
            now,
            waiting_jobs: None,
            shadow: (self.opts.policy_shadow.as_ref())
                .and_then(|shadow| hooks.shadow_report(&self.name, shadow))
                .map(Box::new),
        }
    }

    /// Extra registration fields of a known job (the tests recount waiting bytes with it).
    #[cfg(test)]
    pub(crate) fn meta(&self, uid: &str) -> Option<&str> {
        self.jobs.get(uid)?.meta.as_deref()
    }

    /// Waiting uids in grant order (tests and snapshots).
    pub(crate) fn queued(&self) -> impl Iterator<Item = &Arc<str>> {
        self.queue.values()
    }

    /// Running uids with their lease deadlines.
    pub(crate) fn leases(&self) -> impl Iterator<Item = (&Arc<str>, Time)> {
        self.leases.iter().map(|((t, _), u)| (u, *t))
    }
}
