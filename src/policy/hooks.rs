//! The engine's [`Policies`] hooks on top of [`PolicyHost`]: engine types in, WIT types of the
//! policy's version out, and the `on_policy_error` fallback when a call fails. A 0.2.0 policy
//! is asked only for the hooks its `init` declared; the others get the engine's own decision.
//!
//! A channel's shadow policy (`policy_shadow`) gets every call the deciding one gets, on its own
//! instance, after it; its answer (or the built-in one, for a hook it does not implement) is
//! compared with the answer that decided, and never used. Its failures are its own: counted,
//! and it is suspended when they come too often.

use std::path::Path;

use super::compile::{v2, wit, Bindings, StoreState};
use super::host::{Call, Role};
use super::PolicyHost;
use crate::engine::{
    Admission, ChannelView, Decision, JobEvent, JobInfo, OnPolicyError, Policies, ShadowReport,
};
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

/// Whether two admissions mean the same: the same verdict, and the same priority if accepted
/// (rejection reasons may differ).
fn same_admission(a: &Admission, b: &Admission) -> bool {
    match (a, b) {
        (Admission::Accept(p), Admission::Accept(q)) => p == q,
        (Admission::Reject(_), Admission::Reject(_)) => true,
        _ => false,
    }
}

/// Whether two decisions mean the same (veto reasons may differ).
fn same_decision(a: &Decision, b: &Decision) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

impl PolicyHost {
    fn admit_as(
        &mut self,
        role: Role,
        view: &ChannelView<'_>,
        info: &JobInfo<'_>,
    ) -> Call<Admission> {
        self.call_as(role, view, Hook::Admit, |bindings, store| match bindings {
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
        })
    }

    fn before_grant_as(
        &mut self,
        role: Role,
        view: &ChannelView<'_>,
        info: &JobInfo<'_>,
    ) -> Call<Decision> {
        self.call_as(
            role,
            view,
            Hook::BeforeGrant,
            |bindings, store| match bindings {
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
            },
        )
    }

    fn on_event_as(
        &mut self,
        role: Role,
        view: &ChannelView<'_>,
        event: JobEvent,
        info: &JobInfo<'_>,
    ) {
        self.call_as(
            role,
            view,
            Hook::OnEvent,
            |bindings, store| match bindings {
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
            },
        );
    }

    /// Whether `view`'s channel has a shadow that still runs.
    fn shadowed(&mut self, view: &ChannelView<'_>) -> bool {
        view.options.policy_shadow.is_some() && !self.shadow_suspended(view)
    }
}

impl<R> Call<R> {
    /// The policy's answer, `builtin` for a hook it does not implement, `None` if it failed.
    fn or_builtin(self, builtin: R) -> Option<R> {
        match self {
            Call::Done(answer) => Some(answer),
            Call::Skipped => Some(builtin),
            Call::Failed => None,
        }
    }
}

impl PolicyHost {
    /// Counts the shadow's answer (`None`: its call failed) against the one that decided.
    fn compare<R: std::fmt::Debug>(
        &mut self,
        view: &ChannelView<'_>,
        hook: Hook,
        uid: &str,
        decided: &R,
        shadow: Option<R>,
        same: fn(&R, &R) -> bool,
    ) {
        if let Some(shadow) = shadow {
            let agreed = same(decided, &shadow);
            self.shadow_compared(view, hook, uid, agreed, || {
                (format!("{decided:?}"), format!("{shadow:?}"))
            });
        }
    }
}

impl Policies for PolicyHost {
    fn admit(&mut self, view: &ChannelView<'_>, info: &JobInfo<'_>) -> Admission {
        let builtin = || Admission::Accept(0);
        let decided =
            (self.admit_as(Role::Live, view, info).or_builtin(builtin())).unwrap_or_else(|| {
                match view.options.on_policy_error {
                    OnPolicyError::Open => builtin(),
                    OnPolicyError::Closed => {
                        Admission::Reject("policy error (on_policy_error = closed)".into())
                    }
                }
            });
        if self.shadowed(view) {
            let shadow = (self.admit_as(Role::Shadow, view, info)).or_builtin(builtin());
            self.compare(
                view,
                Hook::Admit,
                info.uid,
                &decided,
                shadow,
                same_admission,
            );
        }
        decided
    }

    fn before_grant(&mut self, view: &ChannelView<'_>, info: &JobInfo<'_>) -> Decision {
        let decided = (self
            .before_grant_as(Role::Live, view, info)
            .or_builtin(Decision::Grant))
        .unwrap_or_else(|| match view.options.on_policy_error {
            OnPolicyError::Open => Decision::Grant,
            OnPolicyError::Closed => {
                Decision::Veto("policy error (on_policy_error = closed)".into())
            }
        });
        if self.shadowed(view) {
            let shadow =
                (self.before_grant_as(Role::Shadow, view, info)).or_builtin(Decision::Grant);
            self.compare(
                view,
                Hook::BeforeGrant,
                info.uid,
                &decided,
                shadow,
                same_decision,
            );
        }
        decided
    }

    fn on_event(&mut self, view: &ChannelView<'_>, event: JobEvent, info: &JobInfo<'_>) {
        self.on_event_as(Role::Live, view, event, info);
        if self.shadowed(view) {
            self.on_event_as(Role::Shadow, view, event, info);
        }
    }

    fn shadow_report(&self, channel: &str, shadow: &Path) -> Option<ShadowReport> {
        Some(self.shadow(channel, shadow))
    }
}
