//! The leader lease: a key in a JetStream KV bucket whose `max_age` is the lease, created by
//! whoever finds it absent and renewed (revision-checked) by its holder. The holder counts its
//! lease from the moment it *sent* each successful renewal, and only for part of the lease
//! ([`valid_for`]): the server counts from when it stored the renewal, which is later, so the
//! holder always stops deciding before the key can expire and be created by another node.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use tokio::sync::watch;
use tokio::time::Instant;

/// The key holding the leader's node id.
pub const LEADER_KEY: &str = "leader";

/// How often the holder renews, and a standby tries to take the lease: a quarter of it.
pub fn renew_every(lease: Duration) -> Duration {
    lease / 4
}

/// How long after sending a successful renewal the holder may still decide: 80% of the lease.
/// The other 20% covers the server storing the renewal later than it was sent and the two
/// hosts' clocks running at slightly different rates.
pub fn valid_for(lease: Duration) -> Duration {
    lease - lease / 5
}

/// What the driver and the journal check before acting as leader. Cloned freely; all clones
/// see the same lease.
#[derive(Debug, Clone)]
pub struct LeaseGuard {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The instant the nanosecond counts start from.
    base: Instant,
    /// Nanoseconds after `base` at which the lease stops being ours.
    until: AtomicU64,
    /// Why the lease was lost, once it is.
    lost: watch::Sender<Option<String>>,
}

impl LeaseGuard {
    /// A lease valid until `until`.
    pub fn new(until: Instant) -> LeaseGuard {
        let base = Instant::now();
        let guard = LeaseGuard {
            inner: Arc::new(Inner {
                base,
                until: AtomicU64::new(0),
                lost: watch::channel(None).0,
            }),
        };
        guard.extend(until);
        guard
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.inner.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Moves the end of the lease to `until` (never backwards).
    pub fn extend(&self, until: Instant) {
        self.inner
            .until
            .fetch_max(self.nanos(until), Ordering::AcqRel);
    }

    /// Whether the lease is still ours at `now`.
    pub fn valid_at(&self, now: Instant) -> bool {
        self.inner.lost.borrow().is_none()
            && self.nanos(now) < self.inner.until.load(Ordering::Acquire)
    }

    /// Whether the lease is ours now.
    pub fn valid(&self) -> bool {
        self.valid_at(Instant::now())
    }

    /// The end of the lease.
    pub fn until(&self) -> Instant {
        self.inner.base + Duration::from_nanos(self.inner.until.load(Ordering::Acquire))
    }

    /// Marks the lease lost (the first reason given is kept).
    pub fn lose(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.inner.lost.send_if_modified(|lost| {
            if lost.is_none() {
                *lost = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// Why the lease was lost, if it was.
    pub fn lost_reason(&self) -> Option<String> {
        self.inner.lost.borrow().clone()
    }

    /// Completes once the lease is lost or runs out, with the reason.
    pub async fn lost(&self) -> String {
        let mut rx = self.inner.lost.subscribe();
        loop {
            if let Some(reason) = rx.borrow_and_update().clone() {
                return reason;
            }
            let until = self.until();
            tokio::select! {
                _ = rx.changed() => {}
                () = tokio::time::sleep_until(until) => {
                    if !self.valid() && self.lost_reason().is_none() {
                        let late = Instant::now().saturating_duration_since(until);
                        self.lose(format!("the lease ran out {} ago without a renewal (paused or cut off from the cluster)", humantime::format_duration(Duration::from_millis(late.as_millis() as u64))));
                    }
                }
            }
        }
    }
}

/// Tries once to take the lease: `Some(revision)` if this node now holds it.
pub async fn try_acquire(store: &kv::Store, node: &str) -> Result<Option<u64>, String> {
    match store
        .create(LEADER_KEY, node.as_bytes().to_vec().into())
        .await
    {
        Ok(revision) => Ok(Some(revision)),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// The node named in the lease key, if any.
pub async fn holder(store: &kv::Store) -> Option<String> {
    store
        .get(LEADER_KEY)
        .await
        .ok()
        .flatten()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// Renews the lease (taken at `revision`, first sent at `sent`) until it is lost, keeping
/// `guard` up to date. Returns once the lease is lost, having marked `guard`.
pub async fn hold(
    store: kv::Store,
    node: String,
    mut revision: u64,
    lease: Duration,
    guard: LeaseGuard,
) {
    let every = renew_every(lease);
    let mut next = Instant::now() + every;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            reason = guard.lost() => {
                tracing::error!(%reason, "leader lease lost");
                return;
            }
        }
        let sent = Instant::now();
        if !guard.valid_at(sent) {
            // `lost()` names the reason on its next pass.
            continue;
        }
        let deadline = guard.until();
        let renewal = tokio::time::timeout_at(
            deadline,
            store.update(LEADER_KEY, node.as_bytes().to_vec().into(), revision),
        )
        .await;
        match renewal {
            Ok(Ok(rev)) => {
                revision = rev;
                guard.extend(sent + valid_for(lease));
                metrics::counter!("coordinosaur_lease_renewals_total", "result" => "ok")
                    .increment(1);
                next = sent + every;
            }
            Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                guard.lose("another coordinator holds the leader lease");
            }
            Ok(Err(e)) => {
                metrics::counter!("coordinosaur_lease_renewals_total", "result" => "error")
                    .increment(1);
                tracing::warn!(cause = %e, "leader lease renewal failed; retrying");
                next = Instant::now() + every / 2;
            }
            Err(_) => {
                guard.lose("no lease renewal was acknowledged in time (cut off from the cluster, or quorum lost)");
            }
        }
    }
}

/// Gives the lease up at once if `node` still holds it (clean shutdown), so a standby need
/// not wait for it to expire.
pub async fn release(store: &kv::Store, node: &str) {
    let entry = match store.entry(LEADER_KEY).await {
        Ok(Some(entry))
            if entry.operation == kv::Operation::Put && entry.value == node.as_bytes() =>
        {
            entry
        }
        Ok(_) => return,
        Err(e) => {
            tracing::warn!(cause = %e, "could not read the leader lease to release it; standbys take over once it expires");
            return;
        }
    };
    if let Err(e) = store
        .delete_expect_revision(LEADER_KEY, Some(entry.revision))
        .await
    {
        tracing::warn!(cause = %e, "could not release the leader lease; standbys take over once it expires");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_stops_before_the_server_can_expire_the_key() {
        for ms in [500u64, 2000, 60_000] {
            let lease = Duration::from_millis(ms);
            assert!(valid_for(lease) < lease);
            // Three renewals can fail in a row before the holder steps down.
            assert!(renew_every(lease) * 3 <= valid_for(lease));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_guard_runs_out_without_renewals_and_says_why() {
        let start = Instant::now();
        let guard = LeaseGuard::new(start + Duration::from_secs(1));
        assert!(guard.valid());
        guard.extend(start + Duration::from_millis(500)); // never backwards
        assert!(guard.valid_at(start + Duration::from_millis(900)));
        let reason = guard.lost().await;
        assert!(Instant::now() >= start + Duration::from_secs(1));
        assert!(reason.contains("ran out"), "{reason}");
        assert!(!guard.valid());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_guard_stays_lost_even_if_extended() {
        let guard = LeaseGuard::new(Instant::now() + Duration::from_secs(10));
        guard.lose("fenced");
        guard.extend(Instant::now() + Duration::from_secs(20));
        assert!(!guard.valid());
        assert_eq!(guard.lost().await, "fenced");
    }
}
