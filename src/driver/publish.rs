//! From decisions to the wire: each event's changes go to the journal, and its
//! acknowledgements and outputs through the [`CommitGate`](super::CommitGate) to the
//! [`Sink`], with one log line per output (`log_output`, kept in `mod.rs` for its log target).

use super::{log_output, Driver, Held, Sink, ABORT_BEFORE_GO};
use crate::engine::Output;
use crate::state::{Journal, Urgency};

impl<S: Sink> Driver<S> {
    /// Hands the changes behind this event's decisions to the journal, then acknowledges the
    /// event's requests and publishes its decisions as far as the gate lets them through (the
    /// rest waits for its batch); then refreshes the gauges of the channels involved.
    pub(super) async fn flush(&mut self) {
        self.readmit_rolled_back();
        self.outs
            .extend(std::iter::from_fn(|| self.engine.poll_output()));
        self.submit_changes(urgency(&self.outs));
        // Acknowledgements first: once a worker sees a decision, the broker has (on the same
        // connection, in order) the acknowledgements of every request behind it, so a crash
        // right after does not bring those requests back.
        for ack in std::mem::take(&mut self.acks) {
            if let Some(held) = self.gate.handle_item(Held::Ack(ack)) {
                self.let_go(held).await;
            }
        }
        let mut outs = std::mem::take(&mut self.outs);
        for out in outs.drain(..) {
            if let Some(channel) = out.channel() {
                if self.touched.last().map(String::as_str) != Some(channel) {
                    self.touched.push(channel.to_owned());
                }
            }
            if let Some(held) = self.gate.handle_item(Held::Out(out)) {
                self.let_go(held).await;
            }
        }
        self.outs = outs;
        self.touched.sort_unstable();
        self.touched.dedup();
        for channel in std::mem::take(&mut self.touched) {
            self.metrics.channel_gauges(&self.engine, &channel);
        }
    }

    /// Hands the engine's new changes to the journal as one batch, if there are any.
    pub(super) fn submit_changes(&mut self, urgency: Urgency) {
        let Some(journal) = self.journal.as_mut() else {
            return;
        };
        self.engine.take_changes(&mut self.changes);
        if self.changes.is_empty() {
            return;
        }
        let id = journal.submit_with(&self.changes, urgency, self.clock.instant().into_std());
        self.changes.clear();
        self.gate.handle_submitted(id);
        if journal.wants_compaction() {
            journal.compact(self.engine.export());
            // The new generation's journal starts with every channel's limits, for `replay`.
            self.engine.journal_limits();
        }
    }

    /// Publishes, in order, what the gate releases once the journal committed up to
    /// `committed` (by default, what it has committed now).
    pub(super) async fn release(&mut self, committed: Option<u64>) {
        let committed = committed.or_else(|| self.journal.as_ref().map(Journal::committed));
        if let Some(id) = committed {
            self.gate.handle_committed(id);
        }
        while let Some(held) = self.gate.poll_released() {
            self.let_go(held).await;
        }
    }

    pub(super) async fn let_go(&mut self, held: Held) {
        if self.deposed.is_some() {
            return;
        }
        if self.journal.as_ref().is_some_and(|j| !j.may_publish()) {
            self.deposed =
                Some("the leader lease ran out (paused, or cut off from the cluster)".into());
            return;
        }
        match held {
            Held::Out(out) => self.publish(out).await,
            Held::Ack(ack) => self.sink.ack(ack).await,
        }
    }

    pub(super) async fn publish(&mut self, out: Output) {
        if let (Some(uid), Output::Go { uid: going, .. }) = (&self.abort_before_go, &out) {
            if **going == **uid {
                tracing::error!(%uid, "{ABORT_BEFORE_GO}: aborting before publishing go");
                std::process::abort();
            }
        }
        log_output(&self.prefix, &out);
        self.summary.handle_output(self.clock.now(), &out);
        self.metrics.output(&out);
        self.sink.send(out).await;
    }
}

/// How soon the journal batch behind an event's `outs` must be durable: at once if a message
/// waits for it; otherwise (only acknowledgements, or outputs that are only logged, such as a
/// `finished` that freed a slot nobody waits for) it may wait a moment for the next batch to
/// share its sync.
pub(super) fn urgency(outs: &[Output]) -> Urgency {
    match outs.iter().any(Output::is_published) {
        true => Urgency::Now,
        false => Urgency::Soon,
    }
}
