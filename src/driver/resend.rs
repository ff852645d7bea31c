//! When to say `go` again: a pure schedule beside the engine. The engine knows which running jobs
//! may have lost their `go` (restored from the journal unacknowledged, or running when the broker
//! lost the daemon's session); this decides when to tell them, with injected time.
//!
//! The same holds after a reconnect that resumed the session: the `go`s that were in flight
//! are not resent as they were (a job may have finished meanwhile) but said again from here to
//! the jobs that still run.
//!
//! The repeated `go` waits until the daemon has read what the broker queued for it while it was
//! away (its sync marker came back), so that a job whose `finished` was queued is not told `go`
//! again; after a lost broker session it also waits [`RESUBSCRIBE_GRACE`] for workers to
//! subscribe again; and it goes out at [`SYNC_PATIENCE`] after the connect at the latest, marker
//! or not (a broker that refuses the marker topic must not hold jobs back forever).

use crate::engine::{Engine, Millis, Time};

/// How long after connecting to wait for the sync marker before saying `go` again anyway.
pub const SYNC_PATIENCE: Millis = Millis(10_000);

/// After a broker lost every session, how long workers get to reconnect and subscribe again
/// before running jobs are told `go` once more.
pub const RESUBSCRIBE_GRACE: Millis = Millis(1_000);

/// The schedule of the next repeated `go`.
#[derive(Debug, Default)]
pub struct Resend {
    /// The sync marker of the current connection came back.
    synced: bool,
    /// Connected at least once (a later connect without a session means the broker lost it).
    connected_before: bool,
    /// Workers' grace to subscribe again after a lost broker session.
    not_before: Option<Time>,
    /// Say it even without the marker.
    give_up_at: Option<Time>,
}

/// What a connect found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LostSession {
    /// Running jobs whose `go` the broker never acknowledged, now marked to hear it again.
    pub unacknowledged: usize,
}

/// A due repeat, handed back by [`Resend::handle_timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resent {
    /// Whether the sync marker had come back (else the daemon gave up waiting for it).
    pub synced: bool,
}

impl Resend {
    /// Connected to the broker at `now`. If the broker lost a session the daemon had, or kept
    /// it but `withheld` grants' `go`s were not sent again as they were (the MQTT adapter leaves
    /// them out of its resends), marks the running jobs whose `go` it never acknowledged in
    /// `engine`; a lost session is reported, with how many.
    pub fn handle_connected(
        &mut self,
        now: Time,
        session_present: bool,
        withheld: usize,
        engine: &mut Engine,
    ) -> Option<LostSession> {
        self.synced = false;
        let mut lost = None;
        if !session_present && self.connected_before {
            let unacknowledged = engine.redeliver_running();
            if unacknowledged > 0 {
                self.not_before = Some(now + RESUBSCRIBE_GRACE);
                lost = Some(LostSession { unacknowledged });
            }
        } else if session_present && withheld > 0 {
            // Workers kept their sessions too: no grace to subscribe again.
            engine.redeliver_running();
        }
        self.connected_before = true;
        if engine.awaits_redelivery() && self.give_up_at.is_none() {
            self.give_up_at = Some(now + SYNC_PATIENCE);
        }
        lost
    }

    /// The sync marker of the current connection came back.
    pub fn handle_synced(&mut self) {
        self.synced = true;
    }

    /// When [`Resend::handle_timeout`] has work, if any job waits for a repeated `go`. Before
    /// the marker that is the give-up time; after it, at once or after the grace.
    pub fn next_deadline(&self, engine: &Engine) -> Option<Time> {
        if !engine.awaits_redelivery() {
            return None;
        }
        let ready = self.synced.then(|| self.not_before.unwrap_or(Time(0)));
        match (ready, self.give_up_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// At `now`: if the repeat is due, has `engine` say `go` again and returns how it went.
    pub fn handle_timeout(&mut self, now: Time, engine: &mut Engine) -> Option<Resent> {
        if self.next_deadline(engine)? > now {
            return None;
        }
        let synced = self.synced;
        *self = Resend {
            synced,
            connected_before: self.connected_before,
            ..Resend::default()
        };
        engine.redeliver();
        Some(Resent { synced })
    }
}

#[cfg(test)]
mod tests;
