//! Channel lifecycle and the limits on it: creating a channel on first sight (bounded by
//! [`EngineLimits`]), looking one up, and applying a reloaded config or policy to the existing
//! ones.

use std::sync::Arc;

use super::{Channel, ChannelId, ChannelOptions, Engine, Policies, Time};

/// Bounds on how much state clients can make the engine hold. A request that would go past one is
/// answered with `rejected/{uid}` ([`RejectKind::Limit`](super::RejectKind::Limit)) instead of
/// growing state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLimits {
    /// Channels the engine will create. Channels are never forgotten, so this bounds how many
    /// distinct channel names clients can ever use in the daemon's lifetime.
    pub max_channels: usize,
    /// Jobs one channel may hold waiting (running jobs are bounded by `max_concurrent_jobs`).
    pub max_waiting_per_channel: usize,
    /// Bytes all waiting jobs together may hold, each counted as [`job_bytes`](super::job_bytes)
    /// (its uid, its extra fields and [`JOB_OVERHEAD_BYTES`](super::JOB_OVERHEAD_BYTES)). A job
    /// that is granted at once never waits and is not refused by it.
    pub max_waiting_bytes: usize,
}

impl Default for EngineLimits {
    fn default() -> Self {
        EngineLimits {
            max_channels: 10_000,
            max_waiting_per_channel: 100_000,
            max_waiting_bytes: 256 << 20,
        }
    }
}

/// Resolves a channel's options from its name when the channel is first seen.
pub type Resolver = Box<dyn Fn(&str) -> ChannelOptions + Send>;

impl Engine {
    /// Replaces the limits (a reloaded config). Lowering one refuses new growth only: existing
    /// channels and waiting jobs stay.
    pub fn set_limits(&mut self, limits: EngineLimits) {
        self.limits = limits;
    }

    /// The limits in force.
    pub fn limits(&self) -> EngineLimits {
        self.limits
    }

    /// Takes a new resolver (a reloaded config) and re-resolves every known channel: new limits,
    /// quotas and policy mappings apply at once, running jobs are never revoked, quota history is
    /// kept by window name, and waiting jobs are re-admitted where the policy changed. Returns
    /// `(channel, changed keys)` for every channel that changed.
    pub fn reconfigure(
        &mut self,
        now: Time,
        resolver: Resolver,
        hooks: &mut dyn Policies,
    ) -> Vec<(Arc<str>, Vec<&'static str>)> {
        self.handle_timeout_with(now, hooks);
        let now = self.now;
        self.resolver = resolver;
        let mut report = Vec::new();
        for index in 0..self.channels.len() {
            let ch = &mut self.channels[index];
            let opts = (self.resolver)(&ch.name);
            let changed = ch.reconfigure(opts);
            if changed.is_empty() {
                continue;
            }
            if changed.contains(&"policy") {
                ch.readmit(now, hooks, &mut self.outputs, &mut self.log);
            }
            self.log.push(|| ch.limits_change());
            report.push((ch.name.clone(), changed));
            self.settle(index, now, hooks);
        }
        report
    }

    /// After a policy changed: asks it again for the priority of every waiting job in the named
    /// channels (those whose policy instance was actually replaced: what `PolicyHost::swap`
    /// returns), then grants what the new order allows. Unknown names are skipped.
    pub fn readmit_channels(&mut self, now: Time, channels: &[Arc<str>], hooks: &mut dyn Policies) {
        self.handle_timeout_with(now, hooks);
        let now = self.now;
        for name in channels {
            if let Some(&id) = self.by_name.get(name) {
                self.channels[id].readmit(now, hooks, &mut self.outputs, &mut self.log);
                self.settle(id, now, hooks);
            }
        }
    }

    pub(super) fn channel(&self, name: &str) -> Option<&Channel> {
        self.by_name.get(name).map(|id| &self.channels[*id])
    }

    /// The id of `name`, creating the channel with resolved options on first sight; `None` if
    /// it is new and `max_channels` channels already exist.
    pub(super) fn channel_id(&mut self, name: &str) -> Option<ChannelId> {
        if let Some(id) = self.by_name.get(name) {
            return Some(*id);
        }
        if self.channels.len() >= self.limits.max_channels {
            return None;
        }
        Some(self.create_channel(name))
    }

    /// Creates a channel with its resolved options, its fencing tokens above the floor.
    pub(super) fn create_channel(&mut self, name: &str) -> ChannelId {
        let id = self.insert_channel(name, self.token_floor);
        let ch = &self.channels[id];
        self.log.push(|| ch.limits_change());
        id
    }

    /// Creates a channel with its resolved options whose next grant gets token `last_token + 1`.
    pub(super) fn insert_channel(&mut self, name: &str, last_token: u64) -> ChannelId {
        let opts = (self.resolver)(name);
        let name: Arc<str> = name.into();
        let id = self.channels.len();
        tracing::debug!(channel = %name, ?opts, "new channel");
        self.channels
            .push(Channel::new(name.clone(), opts).with_last_token(last_token));
        self.by_name.insert(name, id);
        id
    }
}
