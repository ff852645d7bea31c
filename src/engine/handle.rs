//! Input handling: the `handle_*` method each [`Input`](super::Input) is dispatched to, and the
//! fencing check that turns away requests carrying a stale token.

use std::sync::Arc;

use super::{
    Change, ChannelId, EndReason, Engine, Millis, Output, Policies, Registration, RejectKind, Room,
    StaleAction, Time,
};

impl Engine {
    /// `register`: queues the job in its channel (creating the channel if `max_channels`
    /// allows, otherwise refusing the job) and grants what the channel then allows.
    pub(super) fn handle_register(
        &mut self,
        now: Time,
        reg: Registration,
        hooks: &mut dyn Policies,
    ) {
        let Some(id) = self.channel_id(&reg.channel) else {
            let max = self.limits.max_channels;
            self.outputs.push_back(Output::Rejected {
                channel: reg.channel.as_str().into(),
                uid: reg.uid.into(),
                kind: RejectKind::Limit,
                reason: format!(
                    "max_channels: the coordinator already has {max} channels, the limit \
                     ([limits] max_channels = {max}); use an existing channel"
                ),
            });
            return;
        };
        let room = Room {
            max_waiting: self.limits.max_waiting_per_channel,
            max_bytes: self.limits.max_waiting_bytes,
            used_bytes: self.waiting_bytes,
        };
        let channel = &mut self.channels[id];
        if channel.register(reg, now, room, hooks, &mut self.outputs, &mut self.log) {
            self.settle(id, now, hooks);
        }
    }

    /// `finished`/`aborted`: ends a running job or cancels a waiting one, unless its token is
    /// stale; unknown channels and uids are ignored.
    pub(super) fn handle_end(
        &mut self,
        now: Time,
        channel: &str,
        uid: &str,
        token: Option<u64>,
        reason: EndReason,
        hooks: &mut dyn Policies,
    ) {
        let Some(&id) = self.by_name.get(channel) else {
            tracing::debug!(channel, uid, ?reason, "end for unknown channel ignored");
            return;
        };
        let action = match reason {
            EndReason::Finished => StaleAction::Finished,
            EndReason::Aborted => StaleAction::Aborted,
        };
        if self.fenced_off(id, uid, token, action) {
            return;
        }
        let ch = &mut self.channels[id];
        let Some(was_running) =
            ch.remove(uid, reason == EndReason::Aborted, now, hooks, &mut self.log)
        else {
            tracing::debug!(channel, uid, ?reason, "end for unknown uid ignored");
            return;
        };
        self.outputs.push_back(Output::Ended {
            channel: ch.name.clone(),
            uid: uid.into(),
            reason,
            was_running,
        });
        self.settle(id, now, hooks);
    }

    /// `renew`: restarts a running job's lease; an unknown job or a stale token is answered with
    /// `rejected/{uid}`.
    pub(super) fn handle_renew(
        &mut self,
        now: Time,
        channel: &str,
        uid: &str,
        timeout: Millis,
        token: Option<u64>,
        hooks: &mut dyn Policies,
    ) {
        // Never creates a channel: a stray renew must not grow state.
        let id = self.by_name.get(channel).copied();
        if let Some(id) = id {
            if self.fenced_off(id, uid, token, StaleAction::Renew) {
                return;
            }
            if self.channels[id].renew(uid, timeout, now, &mut self.log) {
                self.settle(id, now, hooks);
                return;
            }
        }
        self.outputs.push_back(Output::Rejected {
            channel: channel.into(),
            uid: uid.into(),
            kind: RejectKind::Renew,
            reason: "renew: no such job (never registered, or its lease already ended)".into(),
        });
    }

    /// `concurrency/set`: the channel's new running limit (creating the channel if new and
    /// `max_channels` allows); running jobs are never revoked.
    pub(super) fn handle_set_concurrency(
        &mut self,
        now: Time,
        channel: &str,
        max: u32,
        hooks: &mut dyn Policies,
    ) {
        let Some(id) = self.channel_id(channel) else {
            // No uid to answer to: the refusal is only logged.
            tracing::warn!(
                channel,
                max_channels = self.limits.max_channels,
                "concurrency/set for a new channel refused: max_channels reached"
            );
            return;
        };
        let ch = &mut self.channels[id];
        ch.set_max(max);
        self.log.push(|| Change::Concurrency {
            channel: ch.name.clone(),
            configured: ch.configured_max(),
            max,
        });
        self.settle(id, now, hooks);
    }

    /// The broker acknowledged a `go`: it is not said again (unknown channels are ignored).
    pub(super) fn handle_delivered(&mut self, channel: &str, uid: &str, seq: u64) {
        if let Some(&id) = self.by_name.get(channel) {
            self.channels[id].mark_delivered(uid, seq, &mut self.log);
        }
    }

    /// Whether `token` is not the live grant's of `uid`, a job the channel knows: then the
    /// request is reported as [`Output::Stale`] (and a `renew` rejected) and must be ignored.
    /// A request without a token, or for an unknown uid, is never fenced off here.
    fn fenced_off(
        &mut self,
        id: ChannelId,
        uid: &str,
        token: Option<u64>,
        action: StaleAction,
    ) -> bool {
        let ch = &self.channels[id];
        let Some((token, live)) = token.and_then(|t| Some((t, ch.stale(uid, t)?))) else {
            return false;
        };
        let (channel, uid): (Arc<str>, Arc<str>) = (ch.name.clone(), uid.into());
        if action == StaleAction::Renew {
            let reason = match live {
                Some(live) => format!(
                    "renew: token {token} is not the live grant's ({live}): that lease ended and \
                     the job was granted again; stop work under token {token}"
                ),
                None => format!(
                    "renew: token {token} names no live grant: that lease ended and the job \
                     waits for a new one; stop work under token {token}"
                ),
            };
            self.outputs.push_back(Output::Rejected {
                channel: channel.clone(),
                uid: uid.clone(),
                kind: RejectKind::Renew,
                reason,
            });
        }
        self.outputs.push_back(Output::Stale {
            channel,
            uid,
            action,
            token,
            live,
        });
        true
    }
}
