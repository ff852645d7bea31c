//! New versions of a policy file: swapping them in, their probation, and rolling a version
//! that fails too often back to the previous one (`[policy_rollback]`).

use std::path::Path;
use std::sync::Arc;

use tracing::warn;

use super::{PolicyHost, Role, Slot};
use crate::engine::{ChannelView, Time};
use crate::policy::compile::CompiledPolicy;
use crate::policy::rollback::Breaker;

/// A swapped-in version on probation: failing too often soon after the swap brings `previous`
/// back.
pub(super) struct Probation {
    pub(super) new: Arc<CompiledPolicy>,
    pub(super) previous: Arc<CompiledPolicy>,
    pub(super) breaker: Breaker,
}

impl PolicyHost {
    /// Lets channels that refused (a version of) `path` try it again on their next call.
    pub(super) fn forget_refusals(&mut self, path: &Path) {
        for slot in self.slots.iter_mut().flat_map(|s| s.values_mut()) {
            if slot.refused.as_ref().is_some_and(|(p, _)| **p == *path) {
                slot.refused = None;
            }
        }
    }

    /// Swaps in a newly compiled version of a file at engine time `now`. Channels using it get
    /// a new instance (with `init` run) right away; a channel whose `init` fails keeps its old
    /// instance. The version is then on probation (`[policy_rollback]`). A file whose content
    /// is the version rolled back last time is not tried again. Returns the channels whose
    /// deciding policy is now the new version.
    pub fn swap(&mut self, compiled: CompiledPolicy, now: Time) -> Vec<Arc<str>> {
        let path: Arc<Path> = Arc::from(compiled.path.as_path());
        if self.rolled_back_version(&compiled) {
            return Vec::new();
        }
        self.rejected.remove(&path);
        let compiled = Arc::new(compiled);
        let previous = self.compiled.insert(path.clone(), compiled.clone());
        self.stats.swaps += 1;
        self.probation.remove(&path);
        if let Some(previous) = previous.filter(|_| self.rollback.failures > 0) {
            let breaker = Breaker::probation(self.rollback, now);
            let new = compiled.clone();
            let probation = Probation {
                new,
                previous,
                breaker,
            };
            self.probation.insert(path.clone(), probation);
        }
        // A config that this file's old version refused gets another try on the next call.
        self.forget_refusals(&path);
        // A new version of a candidate: its counts start again, and a suspended one runs again
        // (its instance is created on the next call).
        self.shadows.retain(|_, s| *s.path != *path);
        let mut moved = Vec::new();
        for role in [Role::Live, Role::Shadow] {
            let channels: Vec<(Arc<str>, Arc<str>)> = self.slots[role as usize]
                .iter()
                .filter(|(_, s)| *s.compiled.path == *path)
                .map(|(c, s)| (c.clone(), s.config.clone()))
                .collect();
            for (channel, config) in channels {
                match self.instantiate(&compiled, &channel, &config) {
                    Ok(live) => {
                        let slot = Slot::live(compiled.clone(), config, live);
                        self.slots[role as usize].insert(channel.clone(), slot);
                        if role == Role::Live {
                            moved.push(channel);
                        }
                    }
                    Err(cause) => {
                        warn!(%channel, policy = %path.display(), ?role, cause, "new policy refused; channel keeps the old one");
                    }
                }
            }
        }
        moved
    }

    /// Whether `compiled` is the content of its file that was rolled back last: [`swap`] does
    /// not try it again until the file changes.
    ///
    /// [`swap`]: PolicyHost::swap
    pub fn rolled_back_version(&self, compiled: &CompiledPolicy) -> bool {
        self.rejected.get(compiled.path.as_path()) == Some(&compiled.digest)
    }

    /// Brings back the version `path` had before its swap, after it failed too often on
    /// probation: every channel on the failed version gets an instance of the previous one
    /// on its next call, and the failed content is not tried again until the file changes.
    fn roll_back(&mut self, path: &Arc<Path>) {
        let Some(probation) = self.probation.remove(path) else {
            return;
        };
        let Probation { new, previous, .. } = probation;
        self.rejected.insert(path.clone(), new.digest);
        self.compiled.insert(path.clone(), previous.clone());
        self.stats.rollbacks += 1;
        metrics::counter!("coordinosaur_policy_rollbacks_total", "policy" => path.display().to_string())
            .increment(1);
        for role in [Role::Live, Role::Shadow] {
            for (channel, slot) in &mut self.slots[role as usize] {
                if Arc::ptr_eq(&slot.compiled, &new) {
                    *slot = Slot {
                        compiled: previous.clone(),
                        config: slot.config.clone(),
                        live: None,
                        broken: None,
                        refused: None,
                    };
                    if role == Role::Live {
                        self.rolled_back.push(channel.clone());
                    }
                }
            }
        }
        warn!(
            policy = %path.display(),
            failures = self.rollback.failures,
            window_ms = self.rollback.window.0,
            channels = self.rolled_back.len(),
            "policy rolled back to its previous version: the swapped-in version failed too often after the swap; the file is not tried again until it changes"
        );
    }

    /// A failed call of `view`'s deciding policy: rolls its file back if that version is on
    /// probation and has now failed too often.
    pub(super) fn count_probation_failure(&mut self, view: &ChannelView<'_>) {
        let Some(slot) = self.slots[Role::Live as usize].get(view.channel) else {
            return;
        };
        let path: Arc<Path> = Arc::from(slot.compiled.path.as_path());
        let Some(probation) = self.probation.get_mut(&path) else {
            return;
        };
        if Arc::ptr_eq(&probation.new, &slot.compiled) && probation.breaker.record(view.now) {
            self.roll_back(&path);
        }
    }
}
