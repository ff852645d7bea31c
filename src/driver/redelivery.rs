//! Requests the broker delivers twice. The daemon acknowledges a request only once its effects
//! are journaled, so a crash (or a lost connection, or a paused leader losing its broker session
//! to the next one) between the journal and the acknowledgement makes the broker deliver it
//! again, with the DUP flag. Most requests are idempotent (a `register` of a uid still known is
//! ignored, a `finished` of an unknown uid too), but a `register` whose job has ended since (its
//! lease ran out while the daemon was down, or its `finished` was journaled as well) would start
//! the job again: a phantom grant nobody waits for, or a second run of a job that already ran.
//!
//! When the copy comes depends on the broker: Mosquitto resends what was in flight as soon as
//! the session is resumed, before anything new; nats-server's MQTT listener resends it once its
//! `ack_wait` has passed since the first delivery, so it can come after newer requests and after
//! the sync marker. The guard therefore keeps, for [`HOLD`], every registration it saw applied:
//! the journal's last ones (handed over by recovery or by a standby's replica) from the start,
//! and each one the daemon applies while it runs. A redelivered (DUP) `register` identical to one
//! of them is the same request and is only acknowledged. A pure part with the engine's shape:
//! time is passed in.
//!
//! Only DUP deliveries are checked, and the broker sets DUP only on a message it delivered to
//! this client id before: one a previous process (or this one, before a reconnect) received. The
//! one request this can wrongly drop is a re-registration of the same uid with the very same
//! fields, within [`HOLD`] of the first, whose own first delivery was lost with a crashed process.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use crate::engine::{Millis, Registration, Time};
use crate::state::Registered;

/// How long a registration stays recognized after it was applied (or after the daemon started,
/// for those recovery hands over): well past any broker's redelivery delay (nats-server's
/// `ack_wait` is 30 s by default; README recommends 1 s).
pub const HOLD: Millis = Millis(300_000);

/// Registrations remembered at most, whatever their age: bounds memory (about 3 MiB) under a
/// flood of registrations, at the price of a shorter [`HOLD`] beyond 218 a second (still
/// 13 s at 5,000 a second).
pub const MAX_REMEMBERED: usize = 65_536;

/// Registrations recently applied, as digests, while redeliveries can still arrive.
#[derive(Debug, Default)]
pub struct RedeliveryGuard {
    /// When each remembered registration stops counting, oldest first.
    order: VecDeque<(Time, u128)>,
    /// The digests in `order`, each with how many times it is there.
    known: HashMap<u128, u32>,
}

impl RedeliveryGuard {
    /// A guard over the registrations recovery found in the journal, from `now`.
    pub fn new(recent: Vec<Registered>, now: Time) -> RedeliveryGuard {
        let mut guard = RedeliveryGuard::default();
        for r in recent {
            guard.remember(
                digest(&r.channel, &r.uid, r.timeout, r.meta.as_deref()),
                now,
            );
        }
        guard
    }

    /// Whether `reg`, delivered at `now` (`redelivered`: DUP set), is one already applied.
    pub fn is_repeat(&mut self, reg: &Registration, redelivered: bool, now: Time) -> bool {
        self.expire(now);
        redelivered && self.known.contains_key(&registration_digest(reg))
    }

    /// `reg` is being applied at `now`: a copy the broker delivers again is a repeat.
    pub fn applied(&mut self, reg: &Registration, now: Time) {
        self.remember(registration_digest(reg), now);
    }

    fn remember(&mut self, digest: u128, now: Time) {
        self.expire(now);
        if self.order.len() == MAX_REMEMBERED {
            if let Some((_, oldest)) = self.order.pop_front() {
                self.forget(oldest);
            }
        }
        self.order.push_back((now + HOLD, digest));
        *self.known.entry(digest).or_default() += 1;
    }

    /// Drops what is past its hold at `now`.
    fn expire(&mut self, now: Time) {
        while let Some(&(until, digest)) = self.order.front() {
            if until > now {
                break;
            }
            self.order.pop_front();
            self.forget(digest);
        }
    }

    /// One copy of `digest` left `order`: forgotten with its last copy.
    fn forget(&mut self, digest: u128) {
        if let Some(copies) = self.known.get_mut(&digest) {
            *copies -= 1;
            if *copies == 0 {
                self.known.remove(&digest);
            }
        }
    }

    /// Registrations remembered now.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

fn registration_digest(reg: &Registration) -> u128 {
    digest(&reg.channel, &reg.uid, reg.timeout, reg.meta.as_deref())
}

/// 128 bits over what makes two registrations the same request: two passes of the standard
/// hasher with its fixed keys (`DefaultHasher::new`: the same within a process, which is all a
/// digest needs; none is stored), each over a different prefix.
fn digest(channel: &str, uid: &str, timeout: Millis, meta: Option<&str>) -> u128 {
    let half = |salt: u8| {
        let mut h = std::hash::DefaultHasher::new();
        (salt, channel, uid, timeout.0, meta).hash(&mut h);
        h.finish()
    };
    (u128::from(half(0)) << 64) | u128::from(half(1))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    const T0: Time = Time(1_000_000);

    #[test]
    fn only_a_redelivered_identical_registration_is_a_repeat() {
        let meta = Some("{\"t\":1}");
        let mut g = RedeliveryGuard::new(vec![applied("a", 1_000, meta)], T0);
        assert!(g.is_repeat(&reg("a", 1_000, meta), true, T0));
        assert!(
            !g.is_repeat(&reg("a", 1_000, meta), false, T0),
            "a first delivery is a new request, even with the same fields"
        );
        assert!(!g.is_repeat(&reg("a", 2_000, meta), true, T0));
        assert!(!g.is_repeat(&reg("a", 1_000, None), true, T0));
        assert!(!g.is_repeat(&reg("b", 1_000, meta), true, T0));
    }

    #[test]
    fn a_copy_after_newer_requests_is_still_a_repeat_until_the_hold_ends() {
        // nats-server resends after ack_wait: long after the sync marker came back.
        let mut g = RedeliveryGuard::new(vec![applied("old", 1_000, None)], T0);
        let later = T0 + Millis(30_000);
        g.applied(&reg("new", 1_000, None), later);
        assert!(g.is_repeat(&reg("old", 1_000, None), true, later));
        assert!(g.is_repeat(&reg("new", 1_000, None), true, later));
        let end_of_old = T0 + HOLD;
        assert!(!g.is_repeat(&reg("old", 1_000, None), true, end_of_old));
        assert!(g.is_repeat(&reg("new", 1_000, None), true, end_of_old));
        assert!(!g.is_repeat(&reg("new", 1_000, None), true, later + HOLD));
        assert!(g.is_empty());
    }

    #[test]
    fn memory_is_bounded_by_count_and_the_newest_are_kept() {
        let mut g = RedeliveryGuard::default();
        for i in 0..MAX_REMEMBERED + 10 {
            g.applied(&reg(&format!("j{i}"), 1_000, None), T0);
        }
        assert_eq!(g.len(), MAX_REMEMBERED);
        assert_eq!(g.known.len(), MAX_REMEMBERED);
        assert!(!g.is_repeat(&reg("j0", 1_000, None), true, T0), "evicted");
        let newest = format!("j{}", MAX_REMEMBERED + 9);
        assert!(g.is_repeat(&reg(&newest, 1_000, None), true, T0));
    }

    #[test]
    fn the_same_registration_applied_twice_stays_known_until_its_last_hold_ends() {
        let mut g = RedeliveryGuard::default();
        g.applied(&reg("a", 1_000, None), T0);
        let second = T0 + Millis(100_000);
        g.applied(&reg("a", 1_000, None), second);
        assert!(g.is_repeat(&reg("a", 1_000, None), true, T0 + HOLD));
        assert!(!g.is_repeat(&reg("a", 1_000, None), true, second + HOLD));
    }

    #[test]
    fn digests_are_stable_and_tell_fields_apart() {
        let d = |c: &str, u: &str, t: u64, m: Option<&str>| digest(c, u, Millis(t), m);
        assert_eq!(d("c", "a", 1, None), d("c", "a", 1, None));
        assert_ne!(d("c", "a", 1, None), d("c", "a", 1, Some("")));
        assert_ne!(d("ca", "", 1, None), d("c", "a", 1, None));
        assert_ne!(d("c", "a", 1, None), d("c", "a", 2, None));
    }
}
