//! The engine's durable side: recording [`Change`](super::Change)s for the journal, export and
//! restore of a [`Snapshot`](super::Snapshot), and saying `go` again to running jobs whose `go`
//! the broker may never have received.

use std::collections::BTreeMap;

use super::{Change, Engine, Policies, Snapshot, Time};

impl Engine {
    /// Starts or stops recording [`Change`]s for a journal (off by default).
    pub fn record_changes(&mut self, on: bool) {
        self.log.enabled = on;
        if !on {
            self.log.changes.clear();
        }
    }

    /// Records every channel's limits, after the time: a new journal generation begins, and
    /// `replay` may read it without the ones before.
    pub fn journal_limits(&mut self) {
        self.log.restamp();
        for ch in &self.channels {
            self.log.push(|| ch.limits_change());
        }
    }

    /// Moves the changes made since the last call into `into` (nothing unless recording).
    pub fn take_changes(&mut self, into: &mut Vec<Change>) {
        into.append(&mut self.log.changes);
    }

    /// Everything durable, as of now: what [`Engine::restore`] takes back. A channel with
    /// nothing durable is left out; its last fencing token goes into the snapshot's floor.
    pub fn export(&self) -> Snapshot {
        let mut token_floor = self.token_floor;
        let mut channels = BTreeMap::new();
        for c in &self.channels {
            match c.export() {
                Some(snap) => {
                    channels.insert(c.name.clone(), snap);
                }
                None => token_floor = token_floor.max(c.last_token()),
            }
        }
        Snapshot {
            channels,
            token_floor,
        }
    }

    /// Takes back a snapshot into a fresh engine at `now` (the daemon's start): channels are
    /// created with the current config's options (even past `max_channels`: nothing restored is
    /// dropped), waiting jobs keep their order, running jobs their wall-clock lease ends. Leases
    /// that ended while the daemon was down expire at once (`Expired`); then the channels grant
    /// what they allow. Restoring into a channel that already has a job with the same uid keeps
    /// the existing job. The still-running jobs are remembered for [`Engine::redeliver`]. Each
    /// restored channel goes on from its own last fencing token; channels created later start
    /// above the snapshot's floor.
    pub fn restore(&mut self, now: Time, snapshot: Snapshot, hooks: &mut dyn Policies) {
        self.now = self.now.max(now);
        let now = self.now;
        self.log.at(now);
        self.log.push(|| Change::Started);
        let mut restored = Vec::new();
        for (name, snap) in snapshot.channels {
            let id = match self.by_name.get(&name) {
                Some(id) => *id,
                None => self.insert_channel(&name, 0),
            };
            let live = self.channels[id].restore(snap, now);
            let ch = &self.channels[id];
            self.log.push(|| ch.limits_change());
            self.redeliveries
                .extend(live.into_iter().map(|(uid, seq)| (id, uid, seq)));
            restored.push(id);
        }
        self.token_floor = self.token_floor.max(snapshot.token_floor);
        for id in restored {
            let ch = &mut self.channels[id];
            ch.expire(now, hooks, &mut self.outputs, &mut self.log);
            self.settle(id, now, hooks);
        }
    }

    /// Says `go` again ([`Output::GoAgain`](super::Output::GoAgain)) for every job marked by
    /// [`Engine::restore`] or [`Engine::redeliver_running`] that still runs under the same grant
    /// and whose `go` the broker has still not acknowledged. The driver calls it once the requests
    /// queued for it while it was away have been read, so that a job whose `finished` was among
    /// them gets no second `go`. Later calls do nothing until jobs are marked again.
    pub fn redeliver(&mut self) {
        for (id, uid, seq) in std::mem::take(&mut self.redeliveries) {
            let ch = &self.channels[id];
            if let Some(again) = ch.go_again(uid, seq, self.now) {
                self.outputs.push_back(again);
            }
        }
    }

    /// Marks every running job whose `go` the broker has not acknowledged for
    /// [`Engine::redeliver`] (after the broker lost the daemon's session, and with it the
    /// publishes in flight). Returns how many.
    pub fn redeliver_running(&mut self) -> usize {
        self.redeliveries.clear();
        for (index, ch) in self.channels.iter().enumerate() {
            self.redeliveries
                .extend(ch.undelivered_jobs().map(|(uid, seq)| (index, uid, seq)));
        }
        self.redeliveries.len()
    }

    /// Whether restored jobs still wait for [`Engine::redeliver`].
    pub fn awaits_redelivery(&self) -> bool {
        !self.redeliveries.is_empty()
    }
}
