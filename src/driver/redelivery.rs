//! Requests the broker delivers twice across a crash. The daemon acknowledges a request only
//! once its effects are journaled, so a crash between the journal and the acknowledgement makes
//! the broker deliver it again (with the DUP flag) after the restart. Most requests are
//! idempotent (a `register` of a uid still known is ignored, a `finished` of an unknown uid too),
//! but a `register` whose job has ended since (its lease ran out while the daemon was down, or
//! its `finished` was journaled as well) would start the job again: a phantom grant nobody waits
//! for, or a second run of a job that already ran.
//!
//! Recovery hands over the registrations the journal applied last ([`Registered`]); until the
//! daemon has read what the broker had queued for it (the sync marker), a redelivered `register`
//! identical to one of them is taken for the same request and only acknowledged. A pure part
//! with the engine's shape.

use std::collections::HashSet;

use crate::engine::Registration;
use crate::state::Registered;

/// Registrations already applied, while redeliveries can still arrive.
#[derive(Debug, Default)]
pub struct RedeliveryGuard {
    /// Journaled registrations of the last run; emptied once the backlog is read.
    applied: HashSet<Registered>,
}

impl RedeliveryGuard {
    /// A guard over the registrations recovery found in the journal.
    pub fn new(recent: Vec<Registered>) -> RedeliveryGuard {
        RedeliveryGuard {
            applied: recent.into_iter().collect(),
        }
    }

    /// Whether `reg`, delivered again by the broker (`redelivered`: DUP set), is one the journal
    /// already applied.
    pub fn is_repeat(&self, reg: &Registration, redelivered: bool) -> bool {
        if !redelivered || self.applied.is_empty() {
            return false;
        }
        self.applied.contains(&Registered {
            channel: reg.channel.as_str().into(),
            uid: reg.uid.as_str().into(),
            timeout: reg.timeout,
            meta: reg.meta.as_deref().map(Into::into),
        })
    }

    /// The sync marker came back: whatever the broker had queued has been read, redeliveries
    /// of the last run's requests are over.
    pub fn handle_synced(&mut self) {
        self.applied = HashSet::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Millis;

    fn reg(uid: &str, timeout: u64, meta: Option<&str>) -> Registration {
        Registration {
            channel: "c".into(),
            uid: uid.into(),
            timeout: Millis(timeout),
            priority: 0,
            meta: meta.map(Into::into),
            reply: Default::default(),
            cost: 1,
            progress: false,
        }
    }

    fn applied(uid: &str, timeout: u64, meta: Option<&str>) -> Registered {
        Registered {
            channel: "c".into(),
            uid: uid.into(),
            timeout: Millis(timeout),
            meta: meta.map(Into::into),
        }
    }

    #[test]
    fn only_a_redelivered_identical_registration_is_a_repeat_and_only_until_synced() {
        let mut g = RedeliveryGuard::new(vec![applied("a", 1_000, Some("{\"t\":1}"))]);
        assert!(g.is_repeat(&reg("a", 1_000, Some("{\"t\":1}")), true));
        assert!(
            !g.is_repeat(&reg("a", 1_000, Some("{\"t\":1}")), false),
            "a first delivery is a new request, even with the same fields"
        );
        assert!(!g.is_repeat(&reg("a", 2_000, Some("{\"t\":1}")), true));
        assert!(!g.is_repeat(&reg("a", 1_000, None), true));
        assert!(!g.is_repeat(&reg("b", 1_000, Some("{\"t\":1}")), true));
        g.handle_synced();
        assert!(!g.is_repeat(&reg("a", 1_000, Some("{\"t\":1}")), true));
    }
}
