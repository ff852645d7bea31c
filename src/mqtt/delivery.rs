//! Which of the daemon's QoS 1 publishes the broker acknowledged: a pure state machine fed with
//! rumqttc's events, so that a `go` whose PUBACK came back is journaled as delivered and never
//! said again after a restart or a lost broker session.
//!
//! rumqttc gives a packet id to a publish only when its event loop sends it, and reports that
//! as `Outgoing::Publish(pkid)`; the broker's `PubAck(pkid)` names the same id. The driver is
//! the only task that publishes, and before each publish request it queues a [`Sent`] saying
//! what the publish is ([`Tracker::handle_queued`]). rumqttc takes requests in the order they
//! were made, so the n-th `Outgoing::Publish` of a packet id not in flight is the n-th queued
//! `Sent`. Three cases need care (rumqttc 0.25 `eventloop.rs` and `state.rs`):
//!
//! - **Resends.** After a reconnect that resumes the session, rumqttc sends the publishes that
//!   were in flight again with their packet ids: an `Outgoing::Publish` for an id still in
//!   flight is a resend and takes no new `Sent`. Except grants: their `go`s are taken out of
//!   rumqttc's pending queue before it resends ([`Tracker::handle_connack`] says which), because
//!   a job may have finished while the connection was down (its worker got the `go`, only the
//!   broker's acknowledgement was lost) and a `go` resent as it was would reach it after its
//!   `finished`. The driver says `go` again instead, once it has read what the broker queued for
//!   it, and only to jobs still running.
//! - **Requests pending at a connection loss.** rumqttc moves the requests it had not read yet
//!   into its pending queue ([`Tracker::handle_connection_lost`] counts the publishes among
//!   them) and sends them after the reconnect, in order, as new publishes. But if the broker no
//!   longer has the session, rumqttc drops the whole pending queue: in-flight publishes and
//!   those unsent requests alike. [`Tracker::handle_connack`] then forgets exactly as many.
//! - **Collisions.** A publish whose new packet id is still in flight (a broker acknowledging
//!   out of order) is held back (`Outgoing::AwaitAck(pkid)`) and sent once that id is
//!   acknowledged, with an `Outgoing::Publish` of its own.
//!
//! A publish the broker never acknowledged is simply not reported: the grant stays
//! undelivered, and the driver says `go` again when it must.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// What one publish request was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// The `go` of a grant.
    Grant(Grant),
    /// Anything else the daemon publishes (expired, rejected, state, the sync marker).
    Other,
}

/// A grant whose `go` was published: what the engine needs to mark it delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Channel name.
    pub channel: Arc<str>,
    /// Job id.
    pub uid: Arc<str>,
    /// The job's sequence number.
    pub seq: u64,
}

/// Matches the broker's acknowledgements to the publishes they acknowledge.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Publish requests made and not yet seen going out, oldest first.
    queued: VecDeque<Sent>,
    /// Publishes sent and not acknowledged, by packet id.
    inflight: HashMap<u16, Sent>,
    /// A publish held back because its packet id was still in flight.
    collided: Option<(u16, Sent)>,
    /// How many of the oldest `queued` requests sit in rumqttc's pending queue since the last
    /// connection loss (lost with it if the broker has no session for us).
    pending: usize,
}

impl Tracker {
    /// A publish request is about to be made (called before the request, in request order).
    pub fn handle_queued(&mut self, sent: Sent) {
        self.queued.push_back(sent);
    }

    /// rumqttc sent a publish with packet id `pkid`.
    pub fn handle_outgoing_publish(&mut self, pkid: u16) {
        if self.inflight.contains_key(&pkid) {
            return; // a resend after resuming the session
        }
        let sent = match self.collided.take() {
            Some((id, sent)) if id == pkid => sent,
            other => {
                self.collided = other;
                self.next_queued()
            }
        };
        self.inflight.insert(pkid, sent);
    }

    /// rumqttc held a publish back: its packet id `pkid` is still in flight.
    pub fn handle_await_ack(&mut self, pkid: u16) {
        let sent = self.next_queued();
        self.collided = Some((pkid, sent));
    }

    /// The broker acknowledged packet id `pkid`: the grant it carried, if any, is delivered.
    pub fn handle_puback(&mut self, pkid: u16) -> Option<Grant> {
        match self.inflight.remove(&pkid)? {
            Sent::Grant(grant) => Some(grant),
            Sent::Other => None,
        }
    }

    /// The connection was lost and rumqttc's pending queue now holds `unsent` publish requests
    /// that had not been sent yet (publishes without a packet id). Called after every failed
    /// poll until the next ConnAck: the pending queue only grows until then.
    pub fn handle_connection_lost(&mut self, unsent: usize) {
        self.pending = unsent.min(self.queued.len());
    }

    /// Connected again; `pending` is rumqttc's pending queue, in order: `Some(packet id)` for a
    /// publish (0 if it was never sent), `None` for any other request. Returns how many grants'
    /// `go`s will not reach the broker as they were sent, and which entries of `pending` to
    /// take out (`true`).
    ///
    /// Without a session rumqttc dropped every publish in flight and every pending request (its
    /// queue is empty by now): every grant among them is lost. With the session resumed, the
    /// grants' `go`s in the queue (resends and unsent alike) are to be taken out and forgotten
    /// here; everything else is resent as rumqttc would.
    pub fn handle_connack(
        &mut self,
        session_present: bool,
        pending: &[Option<u16>],
    ) -> (usize, Vec<bool>) {
        let unsent = std::mem::take(&mut self.pending);
        if session_present {
            return self.withhold_grants(unsent, pending);
        }
        (self.drop_session(unsent), vec![false; pending.len()])
    }

    /// The session resumed: forgets the grants among the `pending` publishes (the first
    /// `unsent` queued requests are its publishes without a packet id, in order).
    fn withhold_grants(&mut self, unsent: usize, pending: &[Option<u16>]) -> (usize, Vec<bool>) {
        let mut kept = VecDeque::new();
        let mut taken = 0;
        let mut withheld = 0;
        let out = pending
            .iter()
            .map(|entry| {
                let grant = match *entry {
                    Some(0) if taken < unsent => {
                        taken += 1;
                        match self.queued.pop_front() {
                            Some(Sent::Grant(_)) => true,
                            Some(other) => {
                                kept.push_back(other);
                                false
                            }
                            None => false,
                        }
                    }
                    Some(pkid) if pkid != 0 => match self.inflight.get(&pkid) {
                        Some(Sent::Grant(_)) => {
                            self.inflight.remove(&pkid);
                            true
                        }
                        _ => false,
                    },
                    _ => false,
                };
                withheld += usize::from(grant);
                grant
            })
            .collect();
        // The unsent requests kept go out first, as they were queued.
        while let Some(sent) = kept.pop_back() {
            self.queued.push_front(sent);
        }
        (withheld, out)
    }

    /// The session is gone with everything rumqttc held: returns how many grants that was.
    fn drop_session(&mut self, pending: usize) -> usize {
        let lost = self
            .inflight
            .drain()
            .map(|(_, sent)| sent)
            .chain(self.collided.take().map(|(_, sent)| sent))
            .chain(self.queued.drain(..pending))
            .filter(|sent| matches!(sent, Sent::Grant(_)))
            .count();
        lost
    }

    /// Publishes sent and not acknowledged.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    fn next_queued(&mut self) -> Sent {
        // Invariant: the driver queues a `Sent` before every publish request, so one is here.
        // Should it ever be missing, the publish is not tracked (never reported delivered):
        // the safe side, since an undelivered grant only risks a repeated `go`.
        self.queued.pop_front().unwrap_or(Sent::Other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(uid: &str) -> Sent {
        Sent::Grant(Grant {
            channel: "c".into(),
            uid: uid.into(),
            seq: 0,
        })
    }

    fn uid(g: Option<Grant>) -> Option<String> {
        g.map(|g| g.uid.to_string())
    }

    #[test]
    fn acknowledgements_name_the_publish_they_acknowledge() {
        let mut t = Tracker::default();
        t.handle_queued(grant("a"));
        t.handle_queued(Sent::Other);
        t.handle_queued(grant("b"));
        t.handle_outgoing_publish(1);
        t.handle_outgoing_publish(2);
        t.handle_outgoing_publish(3);
        assert_eq!(uid(t.handle_puback(3)), Some("b".into()));
        assert_eq!(uid(t.handle_puback(2)), None);
        assert_eq!(uid(t.handle_puback(1)), Some("a".into()));
        assert_eq!(uid(t.handle_puback(1)), None, "an id acknowledged twice");
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn packet_ids_are_reused_once_acknowledged() {
        let mut t = Tracker::default();
        t.handle_queued(grant("a"));
        t.handle_outgoing_publish(1);
        assert_eq!(uid(t.handle_puback(1)), Some("a".into()));
        t.handle_queued(grant("b"));
        t.handle_outgoing_publish(1);
        assert_eq!(uid(t.handle_puback(1)), Some("b".into()));
    }

    #[test]
    fn a_resend_after_resuming_the_session_takes_no_new_request() {
        let mut t = Tracker::default();
        t.handle_queued(Sent::Other); // x
        t.handle_queued(grant("b"));
        t.handle_queued(Sent::Other); // y
        t.handle_outgoing_publish(1);
        // Lost before `b` and `y` were sent: rumqttc holds `x` (id 1) and the unsent two.
        t.handle_connection_lost(2);
        t.handle_connection_lost(2);
        assert_eq!(
            t.handle_connack(true, &[Some(1), Some(0), Some(0)]),
            (1, vec![false, true, false]),
            "b's go is withheld"
        );
        t.handle_outgoing_publish(1); // x again
        t.handle_outgoing_publish(2); // y, new
        t.handle_queued(grant("c"));
        t.handle_outgoing_publish(3);
        assert_eq!(uid(t.handle_puback(1)), None);
        assert_eq!(uid(t.handle_puback(2)), None);
        assert_eq!(uid(t.handle_puback(3)), Some("c".into()), "still in step");
        assert_eq!(t.in_flight(), 0);
    }

    /// A resumed session: the grants' `go`s among rumqttc's resends (in flight) and its unsent
    /// requests are taken out and forgotten; other publishes and requests stay.
    #[test]
    fn grants_pending_when_a_session_resumes_are_withheld_not_resent() {
        let mut t = Tracker::default();
        t.handle_queued(grant("a"));
        t.handle_queued(Sent::Other);
        t.handle_queued(grant("b"));
        t.handle_outgoing_publish(1); // a
        t.handle_outgoing_publish(2); // other
        t.handle_connection_lost(1);
        assert_eq!(
            t.handle_connack(true, &[Some(1), Some(2), Some(0), None]),
            (2, vec![true, false, true, false])
        );
        assert_eq!(t.in_flight(), 1, "the other publish is resent");
        assert_eq!(uid(t.handle_puback(1)), None, "a's go is forgotten");
        t.handle_outgoing_publish(2); // the other publish again
        assert_eq!(uid(t.handle_puback(2)), None);
        t.handle_queued(grant("c"));
        t.handle_outgoing_publish(1);
        assert_eq!(uid(t.handle_puback(1)), Some("c".into()));
    }

    #[test]
    fn a_lost_session_drops_what_was_in_flight_and_pending_but_not_later_requests() {
        let mut t = Tracker::default();
        t.handle_queued(grant("a"));
        t.handle_queued(grant("b"));
        t.handle_outgoing_publish(1);
        t.handle_connection_lost(1);
        // Requested after the loss: still in rumqttc's request channel, sent after the ConnAck.
        t.handle_queued(grant("c"));
        assert_eq!(
            t.handle_connack(false, &[]),
            (2, vec![]),
            "a (in flight) and b (pending) are gone"
        );
        t.handle_outgoing_publish(1);
        assert_eq!(uid(t.handle_puback(1)), Some("c".into()));
    }

    #[test]
    fn a_collided_publish_is_matched_when_it_finally_goes_out() {
        let mut t = Tracker::default();
        t.handle_queued(grant("a"));
        t.handle_outgoing_publish(1);
        t.handle_queued(grant("b"));
        t.handle_await_ack(1); // b got id 1 while a still holds it
        assert_eq!(uid(t.handle_puback(1)), Some("a".into()));
        t.handle_outgoing_publish(1); // b goes out
        t.handle_queued(grant("c"));
        t.handle_outgoing_publish(2);
        assert_eq!(uid(t.handle_puback(1)), Some("b".into()));
        assert_eq!(uid(t.handle_puback(2)), Some("c".into()));
    }

    #[test]
    fn several_losses_before_a_connack_count_the_pending_queue_once() {
        let mut t = Tracker::default();
        for u in ["a", "b", "c"] {
            t.handle_queued(grant(u));
        }
        t.handle_connection_lost(2);
        t.handle_connection_lost(3); // a failed reconnect drained one more request
        assert_eq!(t.handle_connack(false, &[]).0, 3);
        t.handle_queued(grant("d"));
        t.handle_outgoing_publish(1);
        assert_eq!(uid(t.handle_puback(1)), Some("d".into()));
    }
}
