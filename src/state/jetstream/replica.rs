//! A standby's warm copy of the leader's state: the newest snapshot plus every journal message
//! after it, folded as they arrive. Pure: messages go in with their stream sequence, and a gap
//! (messages purged under a slow standby) says to start again from the newest snapshot.

use std::collections::VecDeque;

use crate::engine::Snapshot;
use crate::state::{format, note_registration, Registered, RECENT_REGISTRATIONS};

/// Why a message could not be folded in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    /// The stream skipped messages this replica never saw (purged after a newer snapshot).
    #[error("journal message {got} arrived where {expected} was expected (purged after a newer snapshot)")]
    Gap {
        /// The sequence the replica needs next.
        expected: u64,
        /// The sequence that arrived.
        got: u64,
    },
    /// A message is damaged or of a newer format: never guessed at.
    #[error("journal message {seq}: {reason}")]
    Unreadable {
        /// Its stream sequence.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
}

/// The state as of stream sequence [`Replica::applied`].
#[derive(Debug, Default)]
pub struct Replica {
    snapshot: Snapshot,
    /// The last stream sequence folded in (or covered by the snapshot).
    applied: u64,
    /// Bytes of a batch split over several messages, waiting for its last part.
    partial: Vec<u8>,
    /// The last registrations folded in, against the broker's redeliveries after a failover.
    recent: VecDeque<Registered>,
    /// Changes folded in since the snapshot.
    changes: usize,
}

impl Replica {
    /// Starts from `snapshot`, which covers the stream up to sequence `covers`.
    pub fn new(snapshot: Snapshot, covers: u64) -> Replica {
        Replica {
            snapshot,
            applied: covers,
            ..Replica::default()
        }
    }

    /// The last stream sequence folded in.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Changes folded in since the snapshot.
    pub fn changes(&self) -> usize {
        self.changes
    }

    /// Whether a batch is half read (its later parts not yet seen).
    pub fn mid_batch(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Folds in journal message `seq`; `more` says that the next message continues its batch.
    /// Messages at or below [`Replica::applied`] are skipped (seen twice after a resubscribe).
    pub fn apply(&mut self, seq: u64, more: bool, payload: &[u8]) -> Result<(), ReplicaError> {
        if seq <= self.applied {
            return Ok(());
        }
        if seq != self.applied + 1 {
            return Err(ReplicaError::Gap {
                expected: self.applied + 1,
                got: seq,
            });
        }
        self.partial.extend_from_slice(payload);
        self.applied = seq;
        if more {
            return Ok(());
        }
        let bytes = std::mem::take(&mut self.partial);
        let records = format::records(&bytes);
        if let Some(damage) = records.damage {
            return Err(ReplicaError::Unreadable {
                seq,
                reason: damage,
            });
        }
        for payload in records.payloads {
            let changes = format::decode_batch(payload)
                .map_err(|reason| ReplicaError::Unreadable { seq, reason })?;
            self.changes += changes.len();
            for change in changes {
                note_registration(&mut self.recent, &change);
                self.snapshot.apply(change);
            }
        }
        Ok(())
    }

    /// The state to take over with, and the last registrations applied (oldest first).
    pub fn into_parts(self) -> (Snapshot, Vec<Registered>) {
        debug_assert!(self.recent.len() <= RECENT_REGISTRATIONS);
        (self.snapshot, self.recent.into())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::{Change, Millis, Time};

    fn queued(uid: &str, seq: u64) -> Change {
        Change::Queued {
            channel: Arc::from("ch"),
            uid: Arc::from(uid),
            seq,
            priority: 0,
            timeout: Millis(1000),
            registered_at: Time(5),
            meta: None,
        }
    }

    fn message(changes: &[Change]) -> Vec<u8> {
        format::encode_batch(changes)
    }

    #[test]
    fn folds_messages_in_order_and_skips_repeats() {
        let mut r = Replica::new(Snapshot::default(), 10);
        r.apply(11, false, &message(&[queued("a", 1)])).unwrap();
        // Two batches in one message.
        let mut two = message(&[queued("b", 2)]);
        two.extend(message(&[queued("c", 3)]));
        r.apply(12, false, &two).unwrap();
        // Seen again after a resubscribe: ignored.
        r.apply(12, false, &two).unwrap();
        assert_eq!(r.applied(), 12);
        assert_eq!(r.changes(), 3);
        let (snapshot, recent) = r.into_parts();
        assert_eq!(snapshot.counts(), (3, 0));
        let uids: Vec<_> = recent.iter().map(|r| r.uid.to_string()).collect();
        assert_eq!(uids, ["a", "b", "c"]);
    }

    #[test]
    fn a_batch_split_over_messages_applies_with_its_last_part() {
        let bytes = message(&[queued("a", 1), queued("b", 2)]);
        let (first, second) = bytes.split_at(bytes.len() / 2);
        let mut r = Replica::default();
        r.apply(1, true, first).unwrap();
        assert!(r.mid_batch());
        assert_eq!(r.changes(), 0);
        r.apply(2, false, second).unwrap();
        assert!(!r.mid_batch());
        assert_eq!(r.changes(), 2);
    }

    #[test]
    fn a_gap_is_reported_not_skipped() {
        let mut r = Replica::new(Snapshot::default(), 3);
        let err = r.apply(6, false, &message(&[queued("a", 1)])).unwrap_err();
        assert_eq!(
            err,
            ReplicaError::Gap {
                expected: 4,
                got: 6
            }
        );
        assert_eq!(r.applied(), 3);
    }

    #[test]
    fn damage_is_refused() {
        let mut bytes = message(&[queued("a", 1)]);
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let mut r = Replica::default();
        assert!(matches!(
            r.apply(1, false, &bytes),
            Err(ReplicaError::Unreadable { seq: 1, .. })
        ));
    }
}
