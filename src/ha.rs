//! High availability: a coordinator with `[state] backend = "jetstream"` starts as a standby
//! that follows the journal stream into a warm [`Replica`] and tries to take the leader lease
//! every quarter of `leader_lease`. Once it holds the lease it reads the stream to its end,
//! appends a leader marker right after it (so that nothing a deposed leader appends later can
//! land) and hands the caught-up state to the driver, which then decides as leader until the
//! lease is lost; a leader that loses its lease or is fenced stops at once (fail-stop, like a
//! Kubernetes controller that loses its lease) and is restarted by its supervisor as a standby.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::JetStreamConfig;
use crate::engine::Snapshot;
use crate::state::jetstream::{self, lease, Cluster, LeaseGuard, Replica, ReplicaError, Tail};
use crate::state::{Journal, Registered};

/// What a standby hands the driver once it leads.
#[derive(Debug)]
pub struct Takeover {
    /// The journal to append to (after the leader marker).
    pub journal: Journal,
    /// The state at the end of the stream.
    pub snapshot: Snapshot,
    /// The last registrations in the stream, against the broker's redeliveries.
    pub recent: Vec<Registered>,
    /// The cluster, to release the lease at a clean shutdown.
    pub cluster: Cluster,
    /// The lease.
    pub guard: LeaseGuard,
}

/// Follows the journal as a standby until this node takes the lease (returns the takeover) or
/// `shutdown` completes (returns `None`).
pub async fn standby(
    cfg: &JetStreamConfig,
    node: &str,
    mut shutdown: Pin<&mut impl Future>,
) -> anyhow::Result<Option<Takeover>> {
    metrics::gauge!("coordinosaur_leader", "node" => node.to_owned()).set(0.0);
    let started = Instant::now();
    // A standby that cannot reach the cluster keeps trying: it is no use to anyone dead.
    let mut pause = Duration::from_millis(200);
    let (cluster, mut follower) = loop {
        let attempt = async {
            let cluster = jetstream::connect(cfg, node).await?;
            let follower = Follower::start(&cluster).await?;
            Ok::<_, anyhow::Error>((cluster, follower))
        };
        tokio::select! {
            _ = shutdown.as_mut() => return Ok(None),
            result = attempt => match result {
                Ok(ready) => break ready,
                Err(e) => {
                    tracing::warn!(cause = %format!("{e:#}"), "standby: cannot use the JetStream cluster yet; retrying");
                    tokio::select! {
                        _ = shutdown.as_mut() => return Ok(None),
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            },
        }
    };
    tracing::info!(
        node,
        applied = follower.replica.applied(),
        took_ms = started.elapsed().as_millis(),
        "standby: following the journal; taking over when the leader lease is free"
    );
    let every = lease::renew_every(cfg.leader_lease);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_holder: Option<String> = None;
    loop {
        tokio::select! {
            _ = shutdown.as_mut() => return Ok(None),
            _ = follower.step(&cluster) => {}
            _ = tick.tick() => {
                if let Ok(last) = cluster.last_sequence().await {
                    let lag = last.saturating_sub(follower.replica.applied());
                    metrics::gauge!("coordinosaur_standby_lag_messages").set(lag as f64);
                }
                let sent = Instant::now();
                let attempt = tokio::time::timeout(every, lease::try_acquire(&cluster.leases, node));
                match attempt.await.unwrap_or_else(|_| Err("no answer within a renewal period".into())) {
                    Ok(Some(revision)) => {
                        let guard = LeaseGuard::new(sent + lease::valid_for(cfg.leader_lease));
                        tokio::spawn(lease::hold(
                            cluster.leases.clone(),
                            node.to_owned(),
                            revision,
                            cfg.leader_lease,
                            guard.clone(),
                        ));
                        return take_over(cfg, node, cluster, follower, guard).await.map(Some);
                    }
                    Ok(None) => {
                        let holder = tokio::time::timeout(every, lease::holder(&cluster.leases))
                            .await
                            .ok()
                            .flatten();
                        if holder != last_holder {
                            tracing::info!(leader = holder.as_deref().unwrap_or("?"), "standby: another coordinator leads");
                            last_holder = holder;
                        }
                    }
                    Err(e) => tracing::warn!(cause = %e, "standby: cannot reach the leader lease; retrying"),
                }
            }
        }
    }
}

/// Pause between two attempts of a take-over step that failed.
const TAKEOVER_RETRY: Duration = Duration::from_millis(100);

/// Reads the stream to its end, appends the leader marker right after it, and starts the
/// journal there.
async fn take_over(
    cfg: &JetStreamConfig,
    node: &str,
    cluster: Cluster,
    mut follower: Follower,
    guard: LeaseGuard,
) -> anyhow::Result<Takeover> {
    let started = Instant::now();
    // Where a slow take-over spends its time, for the log line below.
    let (mut reading_end, mut catching_up, mut marking) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let marker = loop {
        if let Some(reason) = guard
            .lost_reason()
            .or_else(|| (!guard.valid()).then(|| "the lease ran out while catching up".to_owned()))
        {
            anyhow::bail!("lost the leader lease before taking over: {reason}");
        }
        // Errors here are retried while the lease holds: on nats-server 2.9 a stream created a
        // moment ago can still be unknown to the node we talk to ("no stream found for given
        // subject"), and giving up would leave no leader until a supervisor restarts us.
        let phase = Instant::now();
        let read = cluster.last_sequence().await;
        reading_end += phase.elapsed();
        let last = match read {
            Ok(last) => last,
            Err(e) => {
                tracing::warn!(cause = %e, "take-over: cannot read the journal's end yet; retrying while the lease holds");
                tokio::time::sleep(TAKEOVER_RETRY).await;
                continue;
            }
        };
        let phase = Instant::now();
        let mut idle = 0;
        while follower.replica.applied() < last || follower.replica.mid_batch() {
            let read = tokio::time::timeout(Duration::from_secs(1), follower.step(&cluster)).await;
            idle = if read == Ok(true) { 0 } else { idle + 1 };
            // Records are missing and the tail delivered nothing for 2 s: its consumer (one
            // replica) may have died with a NATS node, and the client recreates it only after
            // missed heartbeats and its own backoff (up to 10 s between attempts; seen: 8-9 s
            // take-overs). Follow the journal anew from here instead.
            if idle >= 2 && follower.tail.is_some() {
                tracing::info!("take-over: the journal tail delivers nothing; following it anew");
                follower.tail = None;
                idle = 0;
            }
            if !guard.valid() {
                anyhow::bail!("lost the leader lease while catching up with the journal");
            }
        }
        catching_up += phase.elapsed();
        let phase = Instant::now();
        let marked = cluster.mark_leader(node, last).await;
        marking += phase.elapsed();
        match marked {
            Ok(Some(seq)) => {
                follower.replica.apply(seq, false, &[])?;
                break seq;
            }
            // A deposed leader appended after we read the end: read it too, then mark again.
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(cause = %e, "take-over: cannot append the leader marker yet; retrying while the lease holds");
                tokio::time::sleep(TAKEOVER_RETRY).await;
            }
        }
    };
    let caught_up_from = follower.replica.changes();
    let (snapshot, recent) = follower.replica.into_parts();
    let (waiting, running) = snapshot.counts();
    tracing::info!(
        node,
        marker,
        changes_since_snapshot = caught_up_from,
        waiting,
        running,
        took_ms = started.elapsed().as_millis(),
        reading_end_ms = reading_end.as_millis(),
        catching_up_ms = catching_up.as_millis(),
        marking_ms = marking.as_millis(),
        "took over as leader"
    );
    metrics::counter!("coordinosaur_failovers_total").increment(1);
    metrics::gauge!("coordinosaur_leader", "node" => node.to_owned()).set(1.0);
    metrics::gauge!("coordinosaur_standby_lag_messages").set(0.0);
    let journal = jetstream::StreamJournal::start(
        &cluster,
        node,
        marker,
        cfg.snapshot_after_bytes,
        guard.clone(),
    );
    Ok(Takeover {
        journal: Journal::Stream(journal),
        snapshot,
        recent,
        cluster,
        guard,
    })
}

/// The replica and the consumer feeding it.
struct Follower {
    replica: Replica,
    tail: Option<Tail>,
}

impl Follower {
    async fn start(cluster: &Cluster) -> anyhow::Result<Follower> {
        let replica = cluster.replica().await?;
        let tail = cluster.tail(replica.applied() + 1).await?;
        Ok(Follower {
            replica,
            tail: Some(tail),
        })
    }

    /// Folds in the next journal message (or re-subscribes after a gap or an error); true if
    /// a message was read.
    async fn step(&mut self, cluster: &Cluster) -> bool {
        let Some(tail) = self.tail.as_mut() else {
            self.resubscribe(cluster).await;
            return false;
        };
        match tail.next().await {
            Some(Ok(m)) => {
                match self.replica.apply(m.seq, m.more, &m.payload) {
                    Ok(()) => {}
                    Err(ReplicaError::Gap { expected, got }) => {
                        tracing::info!(expected, got, "standby: journal purged past this replica; reloading the newest snapshot");
                        match cluster.replica().await {
                            Ok(r) => self.replica = r,
                            Err(e) => {
                                tracing::warn!(cause = %e, "standby: cannot reload the snapshot")
                            }
                        }
                        self.tail = None;
                    }
                    Err(e) => {
                        // Never guessed at: stay behind (and never take over from a damaged state).
                        tracing::error!(cause = %e, "standby: journal message unreadable");
                        self.tail = None;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                true
            }
            Some(Err(e)) => {
                tracing::warn!(cause = %e, "standby: following the journal failed; re-subscribing");
                self.tail = None;
                false
            }
            None => {
                self.tail = None;
                false
            }
        }
    }

    async fn resubscribe(&mut self, cluster: &Cluster) {
        match cluster.tail(self.replica.applied() + 1).await {
            Ok(t) => self.tail = Some(t),
            Err(e) => {
                tracing::warn!(cause = %e, "standby: cannot follow the journal; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
