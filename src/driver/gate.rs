//! The commit gate: what the daemon publishes (and the requests it acknowledges) waits for the
//! journal batch it depends on. A pure part with the engine's shape: `handle_*` in,
//! [`CommitGate::poll_released`] out.
//!
//! The rule: an event that changed state submits a batch, and its outputs wait for that batch.
//! An event without changes still waits for the last batch while any batch is uncommitted or
//! anything is held: its outputs can reveal earlier changes (a `state` reply counts jobs whose
//! `register` had no output of its own), and nothing published may show what a crash could
//! still undo, nor overtake what is held. Batches commit in order, so the held items form one
//! queue in batch order and leave it from the front.

use std::collections::VecDeque;

/// Items (outputs, acknowledgements) held until the journal batch they depend on commits.
#[derive(Debug)]
pub struct CommitGate<T> {
    /// Held items with the batch each waits for; batch ids never decrease along the queue.
    held: VecDeque<(u64, T)>,
    /// The last batch submitted (0: none yet).
    submitted: u64,
    /// The last batch known to be committed; never above `submitted`.
    committed: u64,
}

impl<T> Default for CommitGate<T> {
    fn default() -> Self {
        CommitGate {
            held: VecDeque::new(),
            submitted: 0,
            committed: 0,
        }
    }
}

impl<T> CommitGate<T> {
    /// The journal took batch `id` (ids increase by submission).
    pub fn handle_submitted(&mut self, id: u64) {
        self.submitted = self.submitted.max(id);
    }

    /// The journal committed every batch up to `id`.
    pub fn handle_committed(&mut self, id: u64) {
        self.committed = self.committed.max(id);
    }

    /// An item of the current event: returned at once if nothing uncommitted comes before it,
    /// else held (see the module doc).
    pub fn handle_item(&mut self, item: T) -> Option<T> {
        if self.committed >= self.submitted && self.held.is_empty() {
            return Some(item);
        }
        self.held.push_back((self.submitted, item));
        None
    }

    /// The next held item whose batch is committed, in order.
    pub fn poll_released(&mut self) -> Option<T> {
        if self.held.front()?.0 <= self.committed {
            self.held.pop_front().map(|(_, item)| item)
        } else {
            None
        }
    }

    /// How many items are held.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn released(g: &mut CommitGate<&'static str>) -> Vec<&'static str> {
        std::iter::from_fn(|| g.poll_released()).collect()
    }

    #[test]
    fn without_a_journal_everything_passes() {
        let mut g = CommitGate::default();
        assert_eq!(g.handle_item("go a"), Some("go a"));
        assert_eq!(g.held(), 0);
    }

    #[test]
    fn outputs_wait_for_their_batch_and_leave_in_order() {
        let mut g = CommitGate::default();
        g.handle_submitted(1);
        assert_eq!(g.handle_item("go a"), None);
        assert_eq!(g.handle_item("ack register a"), None);
        g.handle_submitted(2);
        assert_eq!(g.handle_item("go b"), None);
        assert!(released(&mut g).is_empty());
        g.handle_committed(1);
        assert_eq!(released(&mut g), ["go a", "ack register a"]);
        g.handle_committed(2);
        assert_eq!(released(&mut g), ["go b"]);
        assert_eq!(
            g.handle_item("state"),
            Some("state"),
            "all committed: passes"
        );
    }

    /// A reply from an event without changes must not show, or overtake, what is not durable.
    #[test]
    fn an_event_without_changes_waits_for_the_last_uncommitted_batch() {
        let mut g = CommitGate::default();
        g.handle_submitted(1);
        assert_eq!(g.handle_item("go a"), None);
        // `infos`: no change of its own, but batch 1 (the register it would count) is pending.
        assert_eq!(g.handle_item("state"), None);
        g.handle_committed(1);
        assert_eq!(released(&mut g), ["go a", "state"]);
    }

    /// Committed but still queued items keep their place: a later output does not overtake.
    #[test]
    fn nothing_overtakes_what_is_held() {
        let mut g = CommitGate::default();
        g.handle_submitted(1);
        assert_eq!(g.handle_item("go a"), None);
        g.handle_committed(1);
        assert_eq!(g.handle_item("state"), None, "go a is still queued");
        assert_eq!(released(&mut g), ["go a", "state"]);
    }

    #[test]
    fn a_group_commit_releases_several_batches_at_once() {
        let mut g = CommitGate::default();
        for (id, item) in [(1, "a"), (2, "b"), (3, "c")] {
            g.handle_submitted(id);
            assert_eq!(g.handle_item(item), None);
        }
        g.handle_committed(2);
        assert_eq!(released(&mut g), ["a", "b"]);
        g.handle_committed(3);
        assert_eq!(released(&mut g), ["c"]);
    }
}
