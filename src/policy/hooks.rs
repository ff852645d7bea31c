//! The engine's [`Policies`] hooks on top of [`PolicyHost`]: engine types in, WIT types out, and
//! the `on_policy_error` fallback when a call fails.

use super::compile::wit;
use super::PolicyHost;
use crate::engine::{Admission, ChannelView, Decision, JobEvent, JobInfo, OnPolicyError, Policies};

/// Which hook is calling, for logs.
#[derive(Debug, Clone, Copy)]
pub(super) enum Hook {
    Admit,
    BeforeGrant,
    OnEvent,
}

impl Hook {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Hook::Admit => "admit",
            Hook::BeforeGrant => "before-grant",
            Hook::OnEvent => "on-event",
        }
    }
}

fn job(view: &ChannelView<'_>, job: &JobInfo<'_>) -> wit::Job {
    wit::Job {
        uid: job.uid.to_owned(),
        channel: view.channel.to_owned(),
        timeout_ms: job.timeout.0,
        registered_at_ms: job.registered_at.0,
        meta: job.meta.unwrap_or("{}").to_owned(),
    }
}

fn state(view: &ChannelView<'_>) -> wit::ChannelState {
    wit::ChannelState {
        channel: view.channel.to_owned(),
        max_concurrent_jobs: view.options.max_concurrent_jobs,
        running: view.running,
        waiting: view.waiting,
        now_ms: view.now.0,
    }
}

impl Policies for PolicyHost {
    fn admit(&mut self, view: &ChannelView<'_>, info: &JobInfo<'_>) -> Admission {
        let (j, s) = (job(view, info), state(view));
        match self.call(view, Hook::Admit, |p, store| p.call_admit(store, &j, &s)) {
            Some(wit::Admission::Accept(priority)) => Admission::Accept(priority),
            Some(wit::Admission::Reject(reason)) => Admission::Reject(reason),
            None => match view.options.on_policy_error {
                OnPolicyError::Open => Admission::Accept(0),
                OnPolicyError::Closed => {
                    Admission::Reject("policy error (on_policy_error = closed)".into())
                }
            },
        }
    }

    fn before_grant(&mut self, view: &ChannelView<'_>, info: &JobInfo<'_>) -> Decision {
        let (j, s) = (job(view, info), state(view));
        match self.call(view, Hook::BeforeGrant, |p, store| {
            p.call_before_grant(store, &j, &s)
        }) {
            Some(wit::Decision::Grant) => Decision::Grant,
            Some(wit::Decision::Defer) => Decision::Defer,
            Some(wit::Decision::Veto(reason)) => Decision::Veto(reason),
            None => match view.options.on_policy_error {
                OnPolicyError::Open => Decision::Grant,
                OnPolicyError::Closed => {
                    Decision::Veto("policy error (on_policy_error = closed)".into())
                }
            },
        }
    }

    fn on_event(&mut self, view: &ChannelView<'_>, event: JobEvent, info: &JobInfo<'_>) {
        let kind = match event {
            JobEvent::Granted => wit::EventKind::Granted,
            JobEvent::Finished => wit::EventKind::Finished,
            JobEvent::Aborted => wit::EventKind::Aborted,
            JobEvent::Expired => wit::EventKind::Expired,
            JobEvent::Cancelled => wit::EventKind::Cancelled,
        };
        let ev = wit::Event {
            kind,
            job: job(view, info),
        };
        let s = state(view);
        self.call(view, Hook::OnEvent, |p, store| {
            p.call_on_event(store, &ev, &s)
        });
    }
}
