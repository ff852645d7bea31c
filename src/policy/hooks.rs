//! The engine's [`Policies`] hooks on top of [`PolicyHost`]: engine types in, WIT types of the
//! policy's version out, and the `on_policy_error` fallback when a call fails. A 0.2.0 policy
//! is asked only for the hooks its `init` declared; the others get the engine's own decision.

use super::compile::{v2, wit, Bindings, StoreState};
use super::host::Call;
use super::PolicyHost;
use crate::engine::{Admission, ChannelView, Decision, JobEvent, JobInfo, OnPolicyError, Policies};
use wasmtime::Store;

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

    /// Whether the instance wants this hook called: always for 0.1.0, as declared for 0.2.0.
    pub(super) fn declared_by(self, bindings: &Bindings) -> bool {
        let Bindings::V2(_, hooks) = bindings else {
            return true;
        };
        hooks.contains(match self {
            Hook::Admit => v2::wit::Hooks::ADMIT,
            Hook::BeforeGrant => v2::wit::Hooks::BEFORE_GRANT,
            Hook::OnEvent => v2::wit::Hooks::ON_EVENT,
        })
    }
}

fn job_v1(view: &ChannelView<'_>, job: &JobInfo<'_>) -> wit::Job {
    wit::Job {
        uid: job.uid.to_owned(),
        channel: view.channel.to_owned(),
        timeout_ms: job.timeout.0,
        registered_at_ms: job.registered_at.0,
        meta: job.meta.unwrap_or("{}").to_owned(),
    }
}

fn state_v1(view: &ChannelView<'_>) -> wit::ChannelState {
    wit::ChannelState {
        channel: view.channel.to_owned(),
        max_concurrent_jobs: view.options.max_concurrent_jobs,
        running: view.running,
        waiting: view.waiting,
        now_ms: view.now.0,
    }
}

fn job_v2(job: &JobInfo<'_>) -> v2::wit::Job {
    v2::wit::Job {
        uid: job.uid.to_owned(),
        timeout_ms: job.timeout.0,
        registered_at_ms: job.registered_at.0,
    }
}

fn state_v2(view: &ChannelView<'_>) -> v2::wit::ChannelState {
    v2::wit::ChannelState {
        max_concurrent_jobs: view.options.max_concurrent_jobs,
        running: view.running,
        waiting: view.waiting,
        now_ms: view.now.0,
    }
}

/// Runs a 0.2.0 call with `job`'s registration fields readable through `job-meta`, and
/// clears them afterwards (the buffer keeps its capacity).
fn with_meta<R>(
    store: &mut Store<StoreState>,
    job: &JobInfo<'_>,
    call: impl FnOnce(&mut Store<StoreState>) -> wasmtime::Result<R>,
) -> wasmtime::Result<R> {
    store.data_mut().meta.push_str(job.meta.unwrap_or(""));
    let result = call(store);
    store.data_mut().meta.clear();
    result
}

fn kind_v1(event: JobEvent) -> wit::EventKind {
    match event {
        JobEvent::Granted => wit::EventKind::Granted,
        JobEvent::Finished => wit::EventKind::Finished,
        JobEvent::Aborted => wit::EventKind::Aborted,
        JobEvent::Expired => wit::EventKind::Expired,
        JobEvent::Cancelled => wit::EventKind::Cancelled,
    }
}

fn kind_v2(event: JobEvent) -> v2::wit::EventKind {
    match event {
        JobEvent::Granted => v2::wit::EventKind::Granted,
        JobEvent::Finished => v2::wit::EventKind::Finished,
        JobEvent::Aborted => v2::wit::EventKind::Aborted,
        JobEvent::Expired => v2::wit::EventKind::Expired,
        JobEvent::Cancelled => v2::wit::EventKind::Cancelled,
    }
}

impl Policies for PolicyHost {
    fn admit(&mut self, view: &ChannelView<'_>, info: &JobInfo<'_>) -> Admission {
        let call = self.call(view, Hook::Admit, |bindings, store| match bindings {
            Bindings::V1(p) => match p.call_admit(store, &job_v1(view, info), &state_v1(view))? {
                wit::Admission::Accept(priority) => Ok(Admission::Accept(priority)),
                wit::Admission::Reject(reason) => Ok(Admission::Reject(reason)),
            },
            Bindings::V2(p, _) => {
                let (j, s) = (job_v2(info), state_v2(view));
                match with_meta(store, info, |store| p.call_admit(store, &j, s))? {
                    v2::wit::Admission::Accept(priority) => Ok(Admission::Accept(priority)),
                    v2::wit::Admission::Reject(reason) => Ok(Admission::Reject(reason)),
                }
            }
        });
        match call {
            Call::Done(admission) => admission,
            Call::Skipped => Admission::Accept(0),
            Call::Failed => match view.options.on_policy_error {
                OnPolicyError::Open => Admission::Accept(0),
                OnPolicyError::Closed => {
                    Admission::Reject("policy error (on_policy_error = closed)".into())
                }
            },
        }
    }

    fn before_grant(&mut self, view: &ChannelView<'_>, info: &JobInfo<'_>) -> Decision {
        let call = self.call(view, Hook::BeforeGrant, |bindings, store| match bindings {
            Bindings::V1(p) => {
                match p.call_before_grant(store, &job_v1(view, info), &state_v1(view))? {
                    wit::Decision::Grant => Ok(Decision::Grant),
                    wit::Decision::Defer => Ok(Decision::Defer),
                    wit::Decision::Veto(reason) => Ok(Decision::Veto(reason)),
                }
            }
            Bindings::V2(p, _) => {
                let (j, s) = (job_v2(info), state_v2(view));
                match with_meta(store, info, |store| p.call_before_grant(store, &j, s))? {
                    v2::wit::Decision::Grant => Ok(Decision::Grant),
                    v2::wit::Decision::Defer => Ok(Decision::Defer),
                    v2::wit::Decision::Veto(reason) => Ok(Decision::Veto(reason)),
                }
            }
        });
        match call {
            Call::Done(decision) => decision,
            Call::Skipped => Decision::Grant,
            Call::Failed => match view.options.on_policy_error {
                OnPolicyError::Open => Decision::Grant,
                OnPolicyError::Closed => {
                    Decision::Veto("policy error (on_policy_error = closed)".into())
                }
            },
        }
    }

    fn on_event(&mut self, view: &ChannelView<'_>, event: JobEvent, info: &JobInfo<'_>) {
        self.call(view, Hook::OnEvent, |bindings, store| match bindings {
            Bindings::V1(p) => {
                let ev = wit::Event {
                    kind: kind_v1(event),
                    job: job_v1(view, info),
                };
                p.call_on_event(store, &ev, &state_v1(view))
            }
            Bindings::V2(p, _) => {
                let ev = v2::wit::Event {
                    kind: kind_v2(event),
                    job: job_v2(info),
                };
                let s = state_v2(view);
                with_meta(store, info, |store| p.call_on_event(store, &ev, s))
            }
        });
    }
}
