//! What the channel asks of and tells its policy: the view it is shown, `admit` again after a
//! swap, `before_grant`, job events and policy rejections.

use std::cmp::Reverse;
use std::sync::Arc;

use super::{Channel, Job};
use crate::engine::durable::{Change, ChangeLog, Exit};
use crate::engine::policy::{Admission, ChannelView, Decision, JobEvent, Policies};
use crate::engine::{Output, RejectKind, Time};

impl Channel {
    /// Asks the policy again for the priority of every waiting job (after a policy swap).
    /// Jobs it now rejects leave the queue and are reported.
    pub(crate) fn readmit(
        &mut self,
        now: Time,
        hooks: &mut dyn Policies,
        out: &mut impl Extend<Output>,
        log: &mut ChangeLog,
    ) {
        if self.opts.policy.is_none() {
            return;
        }
        let waiting: Vec<_> = std::mem::take(&mut self.queue).into_iter().collect();
        self.queued_bytes = 0;
        for ((_, seq), uid) in waiting {
            let view = self.view(now);
            let Some(job) = self.jobs.get(&uid) else {
                continue;
            };
            match hooks.admit(&view, &job.info(&uid)) {
                Admission::Accept(p) => {
                    let mut bytes = 0;
                    if let Some(job) = self.jobs.get_mut(&uid) {
                        bytes = job.bytes(&uid);
                        if job.priority != p {
                            job.priority = p;
                            log.push(|| Change::Reprioritized {
                                channel: self.name.clone(),
                                uid: uid.clone(),
                                priority: p,
                            });
                        }
                    }
                    self.enqueue((Reverse(p), seq), uid, bytes);
                }
                Admission::Reject(reason) => {
                    if let Some(job) = self.jobs.remove(&uid) {
                        self.unwatch(&uid, &job);
                    }
                    log.push(|| self.removed(&uid, Exit::Rejected));
                    out.extend([self.policy_rejection(uid, reason)]);
                }
            }
        }
    }

    /// The policy's decision on granting `uid` now (always `Grant` without a policy).
    pub(super) fn consult(&self, now: Time, hooks: &mut dyn Policies, uid: &str) -> Decision {
        match self.jobs.get(uid) {
            Some(job) if self.consults_hooks() => {
                hooks.before_grant(&self.view(now), &job.info(uid))
            }
            _ => Decision::Grant,
        }
    }

    /// Whether the hooks are called: the channel has a policy, or a shadow policy that sees
    /// the same calls (a channel with only a shadow gets the built-in decisions).
    pub(super) fn consults_hooks(&self) -> bool {
        self.opts.policy.is_some() || self.opts.policy_shadow.is_some()
    }

    /// The channel as shown to its policy.
    pub(super) fn view(&self, now: Time) -> ChannelView<'_> {
        ChannelView {
            channel: &self.name,
            options: &self.opts,
            running: u32::try_from(self.running()).unwrap_or(u32::MAX),
            waiting: u32::try_from(self.waiting()).unwrap_or(u32::MAX),
            now,
        }
    }

    /// Tells the policy, if any, what happened to a job.
    pub(super) fn notify(
        &self,
        now: Time,
        hooks: &mut dyn Policies,
        event: JobEvent,
        uid: &str,
        job: &Job,
    ) {
        if self.consults_hooks() {
            hooks.on_event(&self.view(now), event, &job.info(uid));
        }
    }

    /// `rejected/{uid}` on behalf of the channel's policy.
    pub(super) fn policy_rejection(&self, uid: impl Into<Arc<str>>, reason: String) -> Output {
        Output::Rejected {
            kind: RejectKind::Policy,
            channel: self.name.clone(),
            uid: uid.into(),
            reason,
        }
    }
}
