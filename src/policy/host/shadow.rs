//! Shadow policies (`policy_shadow`): each channel's comparison record, its failures, and
//! its suspension when it fails too often. The calls themselves go through `call_as` with
//! `Role::Shadow`.

use std::path::Path;
use std::sync::Arc;

use tracing::{debug, warn};

use super::{PolicyHost, Role};
use crate::engine::{ChannelView, ShadowReport};
use crate::policy::hooks::Hook;
use crate::policy::rollback::Breaker;

/// A channel's shadow policy: what it agreed with, and whether it still runs.
pub(super) struct Shadow {
    /// The file and config the counts are about; other ones start from zero.
    pub(super) path: Arc<Path>,
    pub(super) config: Arc<str>,
    pub(super) report: ShadowReport,
    pub(super) breaker: Breaker,
}

impl PolicyHost {
    /// How `channel`'s shadow `path` compares so far (zero counts before its first call).
    pub fn shadow(&self, channel: &str, path: &Path) -> ShadowReport {
        match self.shadows.get(channel) {
            Some(s) if *s.path == *path => s.report.clone(),
            _ => ShadowReport {
                policy: path.display().to_string(),
                ..ShadowReport::default()
            },
        }
    }

    /// The comparison record of `channel`'s shadow as the view's options name it, started
    /// afresh when the file or config changed; `None` without a shadow.
    fn shadow_mut(&mut self, view: &ChannelView<'_>) -> Option<&mut Shadow> {
        let path = view.options.policy_shadow.as_ref()?;
        let config = &view.options.policy_config;
        let fresh = !self
            .shadows
            .get(view.channel)
            .is_some_and(|s| s.path == *path && s.config == *config);
        if fresh {
            let shadow = Shadow {
                path: path.clone(),
                config: config.clone(),
                report: ShadowReport {
                    policy: path.display().to_string(),
                    ..ShadowReport::default()
                },
                breaker: Breaker::sliding(self.rollback),
            };
            self.shadows.insert(Arc::from(view.channel), shadow);
        }
        self.shadows.get_mut(view.channel)
    }

    /// A failed shadow call: counted, logged, and the shadow suspended when it fails too often.
    /// Nothing reaches the channel.
    pub(super) fn shadow_failed(&mut self, view: &ChannelView<'_>, hook: Hook, cause: &str) {
        let rollback = self.rollback;
        let Some(shadow) = self.shadow_mut(view) else {
            return;
        };
        shadow.report.failures += 1;
        let policy = shadow.report.policy.clone();
        metrics::counter!("coordinosaur_shadow_failures_total", "policy" => policy.clone())
            .increment(1);
        if shadow.breaker.record(view.now) {
            let reason = format!(
                "failed {} times within {}: suspended until its file or the channel's options change",
                rollback.failures, rollback.window
            );
            warn!(
                channel = view.channel,
                policy,
                ?hook,
                cause,
                reason,
                "shadow policy suspended"
            );
            shadow.report.suspended = Some(reason);
            // Its instance is not needed until then.
            self.slots[Role::Shadow as usize].remove(view.channel);
        } else {
            debug!(
                channel = view.channel,
                policy,
                ?hook,
                cause,
                "shadow policy call failed; the channel is not affected"
            );
        }
    }

    /// Records one compared answer of `view`'s shadow; `agreed` or not.
    pub(in crate::policy) fn shadow_compared(
        &mut self,
        view: &ChannelView<'_>,
        hook: Hook,
        uid: &str,
        agreed: bool,
        answers: impl FnOnce() -> (String, String),
    ) {
        let Some(shadow) = self.shadow_mut(view) else {
            return;
        };
        let counts = match hook {
            Hook::Admit => &mut shadow.report.admit,
            Hook::BeforeGrant => &mut shadow.report.before_grant,
            Hook::OnEvent => return,
        };
        counts.compared += 1;
        let policy = shadow.report.policy.clone();
        metrics::counter!("coordinosaur_shadow_calls_total", "policy" => policy.clone(), "hook" => hook.as_str())
            .increment(1);
        if !agreed {
            counts.disagreed += 1;
            metrics::counter!("coordinosaur_shadow_disagreements_total", "policy" => policy.clone(), "hook" => hook.as_str())
                .increment(1);
            let (live, candidate) = answers();
            debug!(
                channel = view.channel,
                uid,
                ?hook,
                live,
                shadow = candidate,
                policy,
                "shadow policy disagrees"
            );
        }
    }

    /// Whether `view`'s shadow was suspended for failing too often.
    pub(in crate::policy) fn shadow_suspended(&mut self, view: &ChannelView<'_>) -> bool {
        self.shadow_mut(view)
            .is_some_and(|s| s.report.suspended.is_some())
    }
}
