//! What each event does: a request, a timer, a connection, a config or policy reload, fed
//! to the engine (or to the pure parts beside it) with the current time.

use tracing::{debug, info, warn};

use super::log_report;
use super::{Driver, LostSession, Resent, Sink, RESUBSCRIBE_GRACE, SYNC_PATIENCE};
use crate::config_reload::NewConfig;
use crate::engine::Input;
use crate::mqtt::{Ack, Inbound};
use crate::policy::hot_reload::Update;
use crate::protocol::Rejection;

impl<S: Sink> Driver<S> {
    pub(super) fn input(&mut self, input: Input) {
        // A delivery changes no gauge; it comes once per grant.
        if let (Some(channel), false) = (input.channel(), matches!(input, Input::Delivered { .. }))
        {
            self.touched.push(channel.to_owned());
        }
        let now = self.clock.now();
        let (engine, hooks) = self.split();
        engine.handle_with(now, input, hooks);
    }

    pub(super) fn timeout(&mut self) {
        if let Some(journal) = self.journal.as_mut() {
            journal.poll(self.clock.instant().into_std());
        }
        let now = self.clock.now();
        let (engine, hooks) = self.split();
        engine.handle_timeout_with(now, hooks);
        if let Some(r) = self.summary.poll_report(now) {
            log_report(&r);
        }
        if let Some(Resent { synced: false }) = self.resend.handle_timeout(now, &mut self.engine) {
            warn!(
                "the sync marker did not come back within {SYNC_PATIENCE}; sending go again \
                 without knowing whether a finished is still queued (may the daemon's broker \
                 user publish to PREFIX/_coordinosaur/sync?)"
            );
        }
    }

    pub(super) async fn connected(&mut self, session_present: bool, grants_lost: usize) {
        let now = self.clock.now();
        let lost =
            self.resend
                .handle_connected(now, session_present, grants_lost, &mut self.engine);
        if let Some(LostSession { unacknowledged }) = lost {
            warn!(unacknowledged, grants_lost, "the broker lost our session (restarted without persistence?): go will be said again to running jobs whose go it never acknowledged, once the backlog is read and workers had {RESUBSCRIBE_GRACE} to subscribe again");
        }
        self.sink.mark().await;
    }

    /// One message from the MQTT adapter. Requests only feed the engine; what else comes
    /// (a connection, the sync marker, a refused message) first flushes what earlier messages
    /// of the same event decided, so it is handled in the order it arrived.
    pub(super) async fn inbound(&mut self, msg: Inbound) {
        match msg {
            Inbound::Input(input, ack) => {
                let redelivered = ack.as_ref().is_some_and(Ack::redelivered);
                self.acks.extend(ack);
                let now = self.clock.now();
                match input {
                    Input::Register(reg) if self.redelivery.is_repeat(&reg, redelivered, now) => {
                        info!(
                            channel = reg.channel,
                            uid = reg.uid,
                            "register delivered again by the broker; already applied: ignored"
                        );
                    }
                    Input::Register(reg) => {
                        self.redelivery.applied(&reg, now);
                        self.input(Input::Register(reg));
                    }
                    input => self.input(input),
                }
            }
            Inbound::Ignored(ack) => self.acks.push(ack),
            Inbound::Delivered(grant) => self.input(Input::Delivered {
                channel: grant.channel,
                uid: grant.uid,
                seq: grant.seq,
            }),
            Inbound::Rejected {
                topic,
                rejection,
                ack,
            } => {
                self.flush().await;
                self.acks.extend(ack);
                self.refused(topic, rejection).await;
            }
            Inbound::Connected {
                session_present,
                grants_lost,
            } => {
                self.flush().await;
                self.connected(session_present, grants_lost).await;
            }
            Inbound::Synced(ack) => {
                self.flush().await;
                self.acks.extend(ack);
                self.resend.handle_synced();
                debug!("synced: every request the broker queued for us has been read");
            }
        }
    }

    pub(super) async fn refused(&mut self, topic: String, rejection: Rejection) {
        warn!(topic, reason = %rejection.error, uid = rejection.uid.as_deref(), "message refused");
        self.metrics
            .rejection(rejection.channel.as_deref().unwrap_or(""), "invalid");
        if let Some(out) = rejection.to_output() {
            self.publish(out).await;
        }
    }

    pub(super) fn config(&mut self, new: NewConfig) {
        let NewConfig { config, policies } = new;
        if let Some(rt) = self.policies.as_mut() {
            // Compiled by the config task: nothing is compiled on this thread.
            rt.host.install(policies);
            rt.host.set_rollback(config.policy_rollback);
        }
        let now = self.clock.now();
        let limits = config.limits.engine();
        if limits != self.engine.limits() {
            info!(?limits, "limits changed");
            self.engine.set_limits(limits);
        }
        let (engine, hooks) = self.split();
        let report = engine.reconfigure(
            now,
            Box::new(move |channel| config.channel_options(channel)),
            hooks,
        );
        for (channel, keys) in &report {
            info!(%channel, changed = ?keys, "channel reconfigured");
        }
        info!(channels_changed = report.len(), "config applied");
    }

    /// Swaps a reloaded policy in between two events and re-ranks the waiting jobs it governs.
    pub(super) fn policy_update(&mut self, update: Update) {
        let now = self.clock.now();
        let Some(rt) = self.policies.as_mut() else {
            return;
        };
        let path = update.path;
        match update.result {
            Ok(compiled) if rt.host.rolled_back_version(&compiled) => {
                info!(policy = %path.display(), "policy file unchanged since its version was rolled back; not tried again until it changes");
            }
            Ok(compiled) => {
                let compile_ms = compiled.compile_time.as_millis();
                let moved = rt.host.swap(compiled, now);
                // Only channels that took the new version: one whose init refused it keeps its old
                // instance, and asking that one again would double-count in stateful policies.
                self.engine.readmit_channels(now, &moved, &mut rt.host);
                metrics::counter!("coordinosaur_policy_reloads_total", "result" => "ok")
                    .increment(1);
                info!(
                    policy = %path.display(),
                    channels = moved.len(),
                    compile_ms,
                    took_ms = update.seen_at.elapsed().as_millis(),
                    "policy swapped"
                );
            }
            Err(e) => {
                metrics::counter!("coordinosaur_policy_reloads_total", "result" => "error")
                    .increment(1);
                warn!(policy = %path.display(), cause = %e, "policy reload failed; the last good version stays");
            }
        }
    }

    /// Re-ranks the queues of channels whose policy the host rolled back during the last event
    /// (a swapped-in version that failed too often): the restored version sets the priorities.
    pub(super) fn readmit_rolled_back(&mut self) {
        let Some(rt) = self.policies.as_mut() else {
            return;
        };
        let moved = rt.host.take_rolled_back();
        if !moved.is_empty() {
            let now = self.clock.now();
            self.engine.readmit_channels(now, &moved, &mut rt.host);
        }
    }
}
