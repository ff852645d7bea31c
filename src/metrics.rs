//! Prometheus metrics: names, labels and the bounded channel label.
//!
//! Recording goes through the `metrics` facade, which costs nothing until [`install`] sets the
//! Prometheus recorder (when `[metrics] listen` is configured). Per-channel series carry a
//! `channel` label for the first `max_channels` channels seen; later channels share the label
//! value `_other`, so a client inventing channel names cannot grow the series without bound.
//! Gauges (running, waiting) exist only for labelled channels.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use crate::engine::{Engine, Output};

/// Label value for channels beyond `max_channels`.
pub const OTHER: &str = "_other";

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Binding or installing the exporter failed.
    #[error("cannot serve metrics on {addr}: {cause}")]
    Install {
        /// The configured address.
        addr: SocketAddr,
        /// What went wrong.
        cause: String,
    },
}

/// Whether [`install`] set the recorder: measurements that cost something to take (a clock
/// pair per policy call) are skipped until then.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Whether metrics are exported (`[metrics] listen`).
pub fn installed() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

/// Serves Prometheus text on `http://addr/metrics` from the current tokio runtime.
pub fn install(addr: SocketAddr) -> Result<(), MetricsError> {
    let buckets = [
        0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
    ];
    // Policy calls take microseconds: their own buckets, or every call lands in the first one.
    let call_buckets = [1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 1e-3, 1e-2, 0.1];
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            Matcher::Full("coordinosaur_queue_wait_seconds".into()),
            &buckets,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("coordinosaur_policy_call_seconds".into()),
                &call_buckets,
            )
        })
        .and_then(|b| b.install())
        .map_err(|e| MetricsError::Install {
            addr,
            cause: e.to_string(),
        })?;
    describe();
    INSTALLED.store(true, Ordering::Relaxed);
    Ok(())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("coordinosaur_grants_total", "Jobs granted (go published).");
    describe_counter!(
        "coordinosaur_rejections_total",
        "Requests refused, by reason: invalid, renew, policy, limit."
    );
    describe_counter!("coordinosaur_expirations_total", "Leases that ran out.");
    describe_counter!(
        "coordinosaur_ended_total",
        "Jobs ended by finished or aborted (cancelled while waiting included)."
    );
    describe_histogram!(
        "coordinosaur_queue_wait_seconds",
        Unit::Seconds,
        "Time from register to go."
    );
    describe_gauge!("coordinosaur_running", "Jobs holding a slot.");
    describe_gauge!("coordinosaur_waiting", "Jobs queued.");
    describe_counter!(
        "coordinosaur_quota_held_milliseconds_total",
        Unit::Milliseconds,
        "Time quotas kept a waiting job from a free slot."
    );
    describe_histogram!(
        "coordinosaur_policy_call_seconds",
        Unit::Seconds,
        "Duration of policy hook calls."
    );
    describe_counter!(
        "coordinosaur_policy_failures_total",
        "Policy calls that trapped, timed out or had no usable instance."
    );
    describe_counter!(
        "coordinosaur_policy_reloads_total",
        "Policy files swapped in (result=ok) or refused (result=error)."
    );
    describe_counter!(
        "coordinosaur_position_messages_total",
        "Queue position messages published to jobs registered with \"progress\": true."
    );
    describe_counter!(
        "coordinosaur_policy_rollbacks_total",
        "Swapped-in policy versions rolled back to the previous one after failing too often."
    );
    describe_counter!(
        "coordinosaur_shadow_calls_total",
        "Shadow policy answers compared with the deciding policy's, by policy and hook."
    );
    describe_counter!(
        "coordinosaur_shadow_disagreements_total",
        "Compared shadow policy answers that differed from the deciding policy's."
    );
    describe_counter!(
        "coordinosaur_shadow_failures_total",
        "Shadow policy calls that failed (the channel is not affected)."
    );
    describe_gauge!(
        "coordinosaur_waiting_bytes",
        Unit::Bytes,
        "Bytes held by waiting jobs in all channels, as [limits] max_waiting_bytes counts them."
    );
    describe_gauge!(
        "coordinosaur_publish_backlog",
        "Publishes and acknowledgements decided but not yet handed to the MQTT client."
    );
    describe_counter!(
        "coordinosaur_broker_connects_total",
        "Connections to the broker (the first one included)."
    );
    describe_counter!(
        "coordinosaur_subscriptions_refused_total",
        "SubAcks in which the broker refused a filter (each is followed by a retry)."
    );
    describe_counter!(
        "coordinosaur_go_republished_total",
        "go said again to running jobs whose first go the broker never acknowledged."
    );
    describe_histogram!(
        "coordinosaur_journal_commit_seconds",
        Unit::Seconds,
        "Write (and sync) of one group of journal batches."
    );
    describe_gauge!(
        "coordinosaur_journal_bytes",
        Unit::Bytes,
        "Size of the current journal."
    );
    describe_counter!(
        "coordinosaur_journal_write_errors_total",
        "Failed journal writes (decisions are held until a retry works)."
    );
    describe_gauge!(
        "coordinosaur_leader",
        "1 on the coordinator that holds the leader lease (JetStream backend), 0 on a standby."
    );
    describe_counter!(
        "coordinosaur_failovers_total",
        "Times this process took the leader lease over (its first start included)."
    );
    describe_gauge!(
        "coordinosaur_standby_lag_messages",
        "Journal messages a standby has not folded in yet."
    );
    describe_histogram!(
        "coordinosaur_journal_append_seconds",
        Unit::Seconds,
        "JetStream journal: from sending a message to the stream's acknowledgement (quorum)."
    );
    describe_counter!(
        "coordinosaur_lease_renewals_total",
        "Leader lease renewals, by result (ok, error)."
    );
    describe_counter!(
        "coordinosaur_snapshots_total",
        "Snapshots written to the JetStream object store, by result (ok, error)."
    );
}

/// Maps channels to bounded label values and records engine outputs.
#[derive(Debug)]
pub struct Recorder {
    labelled: HashSet<Arc<str>>,
    max_channels: usize,
}

impl Recorder {
    /// At most `max_channels` distinct channel labels.
    pub fn new(max_channels: usize) -> Recorder {
        Recorder {
            labelled: HashSet::new(),
            max_channels,
        }
    }

    /// The label value for `channel`.
    pub fn label(&mut self, channel: &str) -> Option<Arc<str>> {
        if let Some(c) = self.labelled.get(channel) {
            return Some(c.clone());
        }
        if self.labelled.len() < self.max_channels {
            let c: Arc<str> = channel.into();
            self.labelled.insert(c.clone());
            return Some(c);
        }
        None
    }

    fn label_text(&mut self, channel: &str) -> String {
        self.label(channel)
            .map_or_else(|| OTHER.to_owned(), |c| c.to_string())
    }

    /// Counts one decision.
    pub fn output(&mut self, out: &Output) {
        match out {
            Output::Go {
                channel, waited, ..
            } => {
                let ch = self.label_text(channel);
                counter!("coordinosaur_grants_total", "channel" => ch.clone()).increment(1);
                histogram!("coordinosaur_queue_wait_seconds", "channel" => ch)
                    .record(waited.0 as f64 / 1000.0);
            }
            Output::Expired { channel, .. } => {
                counter!("coordinosaur_expirations_total", "channel" => self.label_text(channel))
                    .increment(1);
            }
            Output::Rejected { channel, kind, .. } => {
                // Invalid messages are counted where they are decoded, with or without a uid.
                if *kind != crate::engine::RejectKind::Invalid {
                    self.rejection(channel, kind.as_str());
                }
            }
            Output::Ended {
                channel, reason, ..
            } => {
                let reason = match reason {
                    crate::engine::EndReason::Finished => "finished",
                    crate::engine::EndReason::Aborted => "aborted",
                };
                counter!("coordinosaur_ended_total", "channel" => self.label_text(channel), "reason" => reason).increment(1);
            }
            Output::GoAgain { channel, .. } => {
                counter!("coordinosaur_go_republished_total", "channel" => self.label_text(channel))
                    .increment(1);
            }
            Output::Stale {
                channel, action, ..
            } => {
                counter!("coordinosaur_stale_tokens_total", "channel" => self.label_text(channel), "action" => action.as_str()).increment(1);
            }
            Output::Position { channel, .. } => {
                counter!("coordinosaur_position_messages_total", "channel" => self.label_text(channel))
                    .increment(1);
            }
            Output::State(_) | Output::AllStates(_) => {}
        }
    }

    /// Counts a refusal.
    pub fn rejection(&mut self, channel: &str, reason: &'static str) {
        counter!("coordinosaur_rejections_total", "channel" => self.label_text(channel), "reason" => reason).increment(1);
    }

    /// Sets the gauges of `channel` from the engine (labelled channels only), and the
    /// daemon-wide waiting bytes.
    pub fn channel_gauges(&mut self, engine: &Engine, channel: &str) {
        gauge!("coordinosaur_waiting_bytes").set(engine.waiting_bytes() as f64);
        // Only channels that exist: `infos` on invented names must not use up labels.
        let Some((running, waiting)) = engine.counts(channel) else {
            return;
        };
        let Some(label) = self.label(channel) else {
            return;
        };
        let ch = label.to_string();
        gauge!("coordinosaur_running", "channel" => ch.clone()).set(running as f64);
        gauge!("coordinosaur_waiting", "channel" => ch.clone()).set(waiting as f64);
        if let Some(held) = engine.quota_held(channel) {
            counter!("coordinosaur_quota_held_milliseconds_total", "channel" => ch)
                .absolute(held.0);
        }
    }
}
