//! Group commit with `durability = "fsync"`: which submitted batches the writer writes, and
//! when it syncs them. A pure part with the engine's shape: batches in ([`Grouping::handle_batch`]),
//! what to do out ([`Grouping::poll`]), and the time to wake up ([`Grouping::deadline`]);
//! [`super::writer`] does the I/O, on the driver's thread (which sleeps until the deadline) or
//! on the writer thread when that has taken over.
//!
//! Batches differ in who waits for them:
//! - [`Urgency::Now`]: a decision will be published once the batch is durable, so the writer
//!   syncs as soon as it has read what is queued (every batch queued beside it shares the sync);
//! - [`Urgency::Soon`]: only the broker's acknowledgements of the batch's requests wait for it
//!   (a `finished` that freed nothing, a `register` that queued): it is held, unwritten, for at
//!   most [`DEFER_MAX`] so that the next `Now` batch syncs it too. A worker that reports
//!   `finished` and registers again at once then pays one `fdatasync` for the pair, not two in a
//!   row. Its requests stay unacknowledged until it is synced: a crash loses nothing;
//! - [`Urgency::Lazy`]: nothing waits and losing it costs at most a repeated `go` (only the
//!   broker's acknowledgements of `go`s): committed once written, synced with the next sync.
//!
//! Batches commit in order, so a `Lazy` batch behind a held `Soon` batch waits with it.
//!
//! The JetStream journal syncs nothing itself, but each append is a message the cluster
//! replicates and the standbys read, and the cluster's CPU per message is what the daemon's
//! throughput through it depends on: [`Coalesce`] holds its `Soon` and `Lazy` batches the
//! same way, so that the next `Now` batch carries them in one message.

use std::time::{Duration, Instant};

use crate::engine::Change;

/// Longest time a [`Urgency::Soon`] batch waits for a [`Urgency::Now`] batch to share its sync.
pub const DEFER_MAX: Duration = Duration::from_millis(2);

/// How soon a batch must be durable (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// Outputs wait for it: synced at once.
    Now,
    /// Only acknowledgements wait for it: synced with the next `Now` batch, within [`DEFER_MAX`].
    Soon,
    /// Nothing waits for it: committed once written, synced along with a later batch.
    Lazy,
}

impl Urgency {
    /// The urgency of a batch of `changes` that its submitter says is `asked`: a batch of
    /// nothing but the broker's acknowledgements of `go`s ([`Change::Delivered`], with the
    /// [`Change::Clock`] stamp before them) is [`Urgency::Lazy`] whatever the submitter says.
    /// Nothing waits on it, and losing it to a crash only means a repeated `go`.
    pub fn of(changes: &[Change], asked: Urgency) -> Urgency {
        match changes
            .iter()
            .all(|c| matches!(c, Change::Delivered { .. } | Change::Clock { .. }))
        {
            true => Urgency::Lazy,
            false => asked,
        }
    }
}

/// What the writer does with the batches it has read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Keep them queued (a `Soon` batch waits for company), or there is nothing to write.
    Hold,
    /// Write them without a sync (only `Lazy` batches), and report them committed.
    Write,
    /// Write and sync them, and report them committed.
    Sync,
}

/// The batches read but not yet written, by urgency.
#[derive(Debug, Default)]
pub struct Grouping {
    /// Any batch read since the last flush.
    pending: bool,
    /// A `Now` batch is among them.
    now: bool,
    /// When the oldest held `Soon` batch was read.
    soon_since: Option<Instant>,
}

impl Grouping {
    /// The writer read a batch of `urgency` at `now`.
    pub fn handle_batch(&mut self, urgency: Urgency, now: Instant) {
        self.pending = true;
        match urgency {
            Urgency::Now => self.now = true,
            Urgency::Soon => {
                self.soon_since.get_or_insert(now);
            }
            Urgency::Lazy => {}
        }
    }

    /// What to do with what was read, once nothing more is queued (or the group is full, or the
    /// deadline passed): hold, write, or write and sync.
    pub fn poll(&mut self, now: Instant) -> Flush {
        let due = self.deadline().is_some_and(|d| now >= d);
        self.take(due)
    }

    /// Everything read must be written now (before a rotation, a hand-back or the end): synced
    /// if anything but `Lazy` batches is among it.
    pub fn poll_all(&mut self) -> Flush {
        self.take(true)
    }

    /// The flush for what was read; a held `Soon` batch is synced only if `force`d. Starts the
    /// next group unless it holds.
    fn take(&mut self, force: bool) -> Flush {
        let held = self.soon_since.is_some();
        let flush = match (self.pending, self.now || (held && force), held) {
            (false, _, _) => Flush::Hold,
            (true, true, _) => Flush::Sync,
            (true, false, true) => return Flush::Hold,
            (true, false, false) => Flush::Write,
        };
        *self = Grouping::default();
        flush
    }

    /// When a held `Soon` batch must be synced even if no `Now` batch came.
    pub fn deadline(&self) -> Option<Instant> {
        self.soon_since.map(|t| t + DEFER_MAX)
    }
}

/// Group commit for a journal whose every append is one replicated message (the JetStream
/// journal): encoded batches go out at once if a decision waits for them ([`Urgency::Now`]);
/// the others are held, at most [`DEFER_MAX`] and at most `max` bytes, to go out with the next.
/// A pure part: batches in, what to append out (the id of its last batch, and the bytes of
/// all), and the time to wake up.
#[derive(Debug)]
pub struct Coalesce {
    /// Encoded batches held, in order.
    bytes: Vec<u8>,
    /// The id of the last of them.
    last_id: u64,
    grouping: Grouping,
    /// Held bytes that go out whatever their urgency.
    max: usize,
}

impl Coalesce {
    /// Holds at most `max` bytes of batches.
    pub fn new(max: usize) -> Coalesce {
        Coalesce {
            bytes: Vec::new(),
            last_id: 0,
            grouping: Grouping::default(),
            max,
        }
    }

    /// Batch `id` (encoded: `bytes`) of `urgency` was submitted at `now`: returns what to
    /// append now, if anything (this batch and every one held before it).
    pub fn handle_batch(
        &mut self,
        id: u64,
        bytes: &[u8],
        urgency: Urgency,
        now: Instant,
    ) -> Option<(u64, Vec<u8>)> {
        self.bytes.extend_from_slice(bytes);
        self.last_id = id;
        // Nothing is written without going out: a lazy batch waits like a `Soon` one.
        let urgency = match urgency {
            Urgency::Lazy => Urgency::Soon,
            u => u,
        };
        self.grouping.handle_batch(urgency, now);
        match self.bytes.len() >= self.max {
            true => self.poll_all(),
            false => self.poll(now),
        }
    }

    /// What to append at `now`: the held batches once their [`Self::deadline`] has passed.
    pub fn poll(&mut self, now: Instant) -> Option<(u64, Vec<u8>)> {
        let flush = self.grouping.poll(now);
        self.take(flush)
    }

    /// Everything held (before a snapshot, or at the end).
    pub fn poll_all(&mut self) -> Option<(u64, Vec<u8>)> {
        let flush = self.grouping.poll_all();
        self.take(flush)
    }

    /// When the held batches must go out even if no `Now` batch comes.
    pub fn deadline(&self) -> Option<Instant> {
        self.grouping.deadline()
    }

    fn take(&mut self, flush: Flush) -> Option<(u64, Vec<u8>)> {
        match flush {
            Flush::Hold => None,
            Flush::Write | Flush::Sync => Some((self.last_id, std::mem::take(&mut self.bytes))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        // A fixed origin: only differences matter.
        static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *ORIGIN.get_or_init(Instant::now) + Duration::from_millis(ms)
    }

    #[test]
    fn nothing_read_is_nothing_to_do() {
        let mut g = Grouping::default();
        assert_eq!(g.poll(at(0)), Flush::Hold);
        assert_eq!(g.poll_all(), Flush::Hold);
        assert_eq!(g.deadline(), None);
    }

    #[test]
    fn a_now_batch_is_synced_at_once_with_everything_beside_it() {
        let mut g = Grouping::default();
        g.handle_batch(Urgency::Lazy, at(0));
        g.handle_batch(Urgency::Soon, at(0));
        g.handle_batch(Urgency::Now, at(0));
        assert_eq!(g.poll(at(0)), Flush::Sync);
        // And the group starts afresh.
        assert_eq!(g.poll(at(0)), Flush::Hold);
        assert_eq!(g.deadline(), None);
    }

    #[test]
    fn lazy_batches_alone_are_written_without_a_sync() {
        let mut g = Grouping::default();
        g.handle_batch(Urgency::Lazy, at(0));
        g.handle_batch(Urgency::Lazy, at(0));
        assert_eq!(g.poll(at(0)), Flush::Write);
    }

    #[test]
    fn a_soon_batch_waits_for_a_now_batch_to_share_its_sync() {
        let mut g = Grouping::default();
        g.handle_batch(Urgency::Soon, at(10));
        assert_eq!(g.poll(at(10)), Flush::Hold);
        assert_eq!(g.deadline(), Some(at(10) + DEFER_MAX));
        // A lazy batch behind it waits too (batches commit in order).
        g.handle_batch(Urgency::Lazy, at(11));
        assert_eq!(g.poll(at(11)), Flush::Hold);
        g.handle_batch(Urgency::Now, at(11));
        assert_eq!(g.poll(at(11)), Flush::Sync);
        assert_eq!(g.deadline(), None);
    }

    #[test]
    fn a_soon_batch_alone_is_synced_at_its_deadline() {
        let mut g = Grouping::default();
        g.handle_batch(Urgency::Soon, at(10));
        // A later Soon batch does not push the deadline back.
        g.handle_batch(Urgency::Soon, at(11));
        assert_eq!(g.deadline(), Some(at(10) + DEFER_MAX));
        let just_before = at(10) + DEFER_MAX - Duration::from_micros(1);
        assert_eq!(g.poll(just_before), Flush::Hold);
        assert_eq!(g.poll(at(10) + DEFER_MAX), Flush::Sync);
        assert_eq!(g.deadline(), None);
    }

    #[test]
    fn everything_is_flushed_before_a_rotation_or_the_end() {
        let mut g = Grouping::default();
        g.handle_batch(Urgency::Soon, at(0));
        assert_eq!(g.poll_all(), Flush::Sync);
        g.handle_batch(Urgency::Lazy, at(0));
        assert_eq!(g.poll_all(), Flush::Write);
        assert_eq!(g.poll_all(), Flush::Hold);
    }

    #[test]
    fn a_batch_of_delivered_acknowledgements_alone_is_lazy() {
        let delivered = Change::Delivered {
            channel: "c".into(),
            uid: "u".into(),
            seq: 1,
        };
        assert_eq!(
            Urgency::of(std::slice::from_ref(&delivered), Urgency::Now),
            Urgency::Lazy
        );
        let clock = Change::Clock {
            at: crate::engine::Time(5),
        };
        assert_eq!(
            Urgency::of(&[clock, delivered.clone()], Urgency::Soon),
            Urgency::Lazy
        );
        assert_eq!(
            Urgency::of(&[delivered, Change::Started], Urgency::Soon),
            Urgency::Soon
        );
        assert_eq!(Urgency::of(&[], Urgency::Soon), Urgency::Lazy);
    }

    #[test]
    fn coalesce_sends_a_now_batch_at_once_with_those_held_before_it() {
        let mut c = Coalesce::new(1 << 20);
        assert_eq!(c.handle_batch(1, b"ack", Urgency::Lazy, at(0)), None);
        assert_eq!(c.handle_batch(2, b"fin", Urgency::Soon, at(1)), None);
        assert_eq!(c.deadline(), Some(at(0) + DEFER_MAX));
        assert_eq!(
            c.handle_batch(3, b"go", Urgency::Now, at(1)),
            Some((3, b"ackfingo".to_vec()))
        );
        assert_eq!(c.deadline(), None);
        assert_eq!(c.poll_all(), None);
        // Alone, a Now batch goes out by itself.
        assert_eq!(
            c.handle_batch(4, b"go", Urgency::Now, at(5)),
            Some((4, b"go".to_vec()))
        );
    }

    #[test]
    fn coalesce_sends_held_batches_at_their_deadline() {
        let mut c = Coalesce::new(1 << 20);
        assert_eq!(c.handle_batch(7, b"ack", Urgency::Lazy, at(10)), None);
        assert_eq!(c.handle_batch(8, b"fin", Urgency::Soon, at(11)), None);
        let due = at(10) + DEFER_MAX;
        assert_eq!(c.deadline(), Some(due));
        assert_eq!(c.poll(due - Duration::from_micros(1)), None);
        assert_eq!(c.poll(due), Some((8, b"ackfin".to_vec())));
        assert_eq!(c.deadline(), None);
        assert_eq!(c.poll(at(100)), None);
    }

    #[test]
    fn coalesce_holds_no_more_than_its_bound() {
        let mut c = Coalesce::new(6);
        assert_eq!(c.handle_batch(1, b"abc", Urgency::Soon, at(0)), None);
        assert_eq!(
            c.handle_batch(2, b"def", Urgency::Lazy, at(0)),
            Some((2, b"abcdef".to_vec()))
        );
        assert_eq!(c.deadline(), None);
    }

    #[test]
    fn coalesce_gives_up_everything_held_when_asked() {
        let mut c = Coalesce::new(1 << 20);
        assert_eq!(c.handle_batch(1, b"a", Urgency::Soon, at(0)), None);
        assert_eq!(c.poll_all(), Some((1, b"a".to_vec())));
        assert_eq!(c.poll_all(), None);
    }
}
