//! The journal the driver writes through: files in the state dir, or a JetStream stream. Both
//! take batches, say which are committed, and compact; only the stream can be fenced by
//! another leader.

use std::time::{Duration, Instant};

use super::group::Urgency;
use super::jetstream::StreamJournal;
use super::FileJournal;
use crate::engine::{Change, Snapshot};

/// Where the driver records changes before publishing their effects.
#[derive(Debug)]
pub enum Journal {
    /// `[state] dir`, with group commit on a writer thread.
    File(Box<FileJournal>),
    /// A replicated JetStream stream (high availability).
    Stream(StreamJournal),
}

impl Journal {
    /// Queues one batch that a decision to publish waits for; returns its id.
    pub fn submit(&mut self, changes: &[Change]) -> u64 {
        self.submit_with(changes, Urgency::Now, Instant::now())
    }

    /// Queues one batch at `now`; `urgency` says who waits for it. A batch that only
    /// acknowledgements wait for ([`Urgency::Soon`]) may wait a moment for the next: the file
    /// journal's to share its sync, the stream's to share its message.
    pub fn submit_with(&mut self, changes: &[Change], urgency: Urgency, now: Instant) -> u64 {
        match self {
            Journal::File(j) => j.submit_with(changes, urgency, now),
            Journal::Stream(j) => j.submit_with(changes, urgency, now),
        }
    }

    /// The highest committed batch id.
    pub fn committed(&self) -> u64 {
        match self {
            Journal::File(j) => j.committed(),
            Journal::Stream(j) => j.committed(),
        }
    }

    /// Completes when more is committed.
    pub async fn advanced(&mut self) {
        match self {
            Journal::File(j) => j.advanced().await,
            Journal::Stream(j) => j.advanced().await,
        }
    }

    /// When batches held for a shared sync or message must be written even if nothing else
    /// comes (the file journal writing inline, or the stream); call [`Journal::poll`] then.
    pub fn deadline(&self) -> Option<Instant> {
        match self {
            Journal::File(j) => j.deadline(),
            Journal::Stream(j) => j.deadline(),
        }
    }

    /// Writes the batches whose [`Journal::deadline`] has passed at `now`.
    pub fn poll(&mut self, now: Instant) {
        match self {
            Journal::File(j) => j.poll(now),
            Journal::Stream(j) => j.poll(now),
        }
    }

    /// Whether it is time to compact.
    pub fn wants_compaction(&self) -> bool {
        match self {
            Journal::File(j) => j.wants_compaction(),
            Journal::Stream(j) => j.wants_compaction(),
        }
    }

    /// Starts a compaction from `snapshot`, the state after every batch submitted so far.
    pub fn compact(&mut self, snapshot: Snapshot) {
        match self {
            Journal::File(j) => j.compact(snapshot),
            Journal::Stream(j) => j.compact(snapshot),
        }
    }

    /// Completes when more is committed (`None`), or with the reason once this process may no
    /// longer write (another leader took over, or the lease ran out; never for files).
    pub async fn next_event(&mut self) -> Option<String> {
        match self {
            Journal::File(j) => {
                j.advanced().await;
                None
            }
            Journal::Stream(j) => {
                let guard = j.guard().clone();
                tokio::select! {
                    () = j.advanced() => None,
                    reason = guard.lost() => Some(reason),
                }
            }
        }
    }

    /// Whether this process may still publish decisions (always, for files; while the lease
    /// is ours, for the stream).
    pub fn may_publish(&self) -> bool {
        match self {
            Journal::File(_) => true,
            Journal::Stream(j) => j.may_publish(),
        }
    }

    /// Waits at most `patience` for what was submitted to commit; returns the last committed id.
    pub async fn close(self, patience: Duration) -> u64 {
        match self {
            // Closing waits for the writer thread: not on the runtime's thread.
            Journal::File(j) => tokio::task::spawn_blocking(move || j.close(patience))
                .await
                .unwrap_or(0),
            Journal::Stream(j) => j.close(patience).await,
        }
    }
}
