//! The recorded policy decisions (each job's priority and a rejection) and the hooks a run
//! calls: those decisions for channels whose recorded limits say a policy decided, a real
//! policy host for channels given a policy file.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::sim::{JobKey, RECORDED_POLICY};
use crate::engine::{Admission, ChannelView, Decision, Exit, JobEvent, JobInfo, Policies, Time};

/// The recorded policy decisions of every job, for channels without a real policy file.
#[derive(Debug, Default)]
pub(super) struct Decisions {
    /// `(channel, uid)` to `(priority, rejected at or after)` of the job last noted.
    jobs: HashMap<JobKey, (i64, Option<Time>)>,
}

impl Decisions {
    pub(super) fn note(&mut self, job: &super::trace::Job) {
        let rejected = match job.left {
            Some((t, Exit::Rejected, _)) => Some(t),
            _ => None,
        };
        self.jobs.insert(
            (job.channel.clone(), job.uid.clone()),
            (job.priority, rejected),
        );
    }

    fn get(&self, channel: &str, uid: &str) -> Option<(i64, Option<Time>)> {
        self.jobs
            .get(&(Arc::from(channel), Arc::from(uid)))
            .copied()
    }
}

/// The hooks a run calls: recorded decisions for [`RECORDED_POLICY`], a real host otherwise.
pub(super) struct Hooks<'a, 'h> {
    /// Each job's recorded decisions.
    pub(super) decisions: &'a mut Decisions,
    /// The real policy host, if any file runs.
    pub(super) host: Option<&'a mut (dyn Policies + 'h)>,
}

impl Hooks<'_, '_> {
    fn recorded(view: &ChannelView<'_>) -> bool {
        view.options
            .policy
            .as_deref()
            .is_some_and(|p| p == Path::new(RECORDED_POLICY))
    }
}

impl Policies for Hooks<'_, '_> {
    fn admit(&mut self, view: &ChannelView<'_>, job: &JobInfo<'_>) -> Admission {
        match &mut self.host {
            Some(host) if !Self::recorded(view) => host.admit(view, job),
            _ => Admission::Accept(self.decisions.get(view.channel, job.uid).map_or(0, |d| d.0)),
        }
    }

    fn before_grant(&mut self, view: &ChannelView<'_>, job: &JobInfo<'_>) -> Decision {
        match &mut self.host {
            Some(host) if !Self::recorded(view) => host.before_grant(view, job),
            _ => match self.decisions.get(view.channel, job.uid) {
                Some((_, Some(t))) if view.now >= t => {
                    Decision::Veto("rejected by the recorded policy".into())
                }
                _ => Decision::Grant,
            },
        }
    }

    fn on_event(&mut self, view: &ChannelView<'_>, event: JobEvent, job: &JobInfo<'_>) {
        if let Some(host) = &mut self.host {
            if !Self::recorded(view) {
                host.on_event(view, event, job);
            }
        }
    }
}
