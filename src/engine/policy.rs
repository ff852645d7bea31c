//! The hooks a channel's policy may implement, as the engine sees them. The engine calls these
//! synchronously at the points where it decides; what runs behind them (a wasm component, a test
//! double) is the caller's business, so the engine stays free of wasmtime types and I/O.

use std::path::Path;

use super::{ChannelOptions, Millis, Time};

/// A job as shown to a policy.
#[derive(Debug, Clone, Copy)]
pub struct JobInfo<'a> {
    /// Job id.
    pub uid: &'a str,
    /// The job's own timeout.
    pub timeout: Millis,
    /// When it registered.
    pub registered_at: Time,
    /// Extra registration fields (JSON object text), if any.
    pub meta: Option<&'a str>,
}

/// The channel at the moment of a hook call.
#[derive(Debug, Clone, Copy)]
pub struct ChannelView<'a> {
    /// Channel name.
    pub channel: &'a str,
    /// The channel's options, including which policy it uses and its config.
    pub options: &'a ChannelOptions,
    /// Jobs holding a slot.
    pub running: u32,
    /// Jobs queued.
    pub waiting: u32,
    /// Engine time of the call.
    pub now: Time,
}

/// A policy's answer to a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Queue with this priority: higher first, FIFO among equals.
    Accept(i64),
    /// Refuse; the client is told why.
    Reject(String),
}

/// A policy's answer when a job could be granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Grant it now.
    Grant,
    /// Keep it queued and offer the next job; asked again on the next event.
    Defer,
    /// Remove it from the queue; the client is told why.
    Veto(String),
}

/// What happened to a job, for policies that keep counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEvent {
    /// It got `go`.
    Granted,
    /// A running job sent `finished`.
    Finished,
    /// A running job sent `aborted`.
    Aborted,
    /// A running job's lease ran out.
    Expired,
    /// A waiting job was removed by `finished` or `aborted`.
    Cancelled,
}

/// How often a channel's shadow policy agreed with the deciding one, for `state` replies.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ShadowReport {
    /// The shadow policy file.
    pub policy: String,
    /// `admit` answers compared (verdict and priority).
    pub admit: Agreement,
    /// `before-grant` answers compared (grant, defer or veto).
    pub before_grant: Agreement,
    /// Shadow calls that failed (never compared, never affecting the channel).
    pub failures: u64,
    /// Why the shadow is not called any more (it failed too often), until its file or the
    /// channel's options change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspended: Option<String>,
}

/// Answers of one hook compared between the deciding policy and its shadow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Agreement {
    /// Calls whose answers were compared.
    pub compared: u64,
    /// Compared calls whose answers differed.
    pub disagreed: u64,
}

impl ShadowReport {
    /// Agreed answers over compared ones, both hooks together; `None` before any comparison.
    pub fn agreement_rate(&self) -> Option<f64> {
        let compared = self.admit.compared + self.before_grant.compared;
        let disagreed = self.admit.disagreed + self.before_grant.disagreed;
        (compared > 0).then(|| (compared - disagreed) as f64 / compared as f64)
    }
}

/// Per-channel policy hooks. Only called for channels whose options name a policy (or a
/// shadow policy).
pub trait Policies {
    /// On register.
    fn admit(&mut self, channel: &ChannelView<'_>, job: &JobInfo<'_>) -> Admission;
    /// When a slot and quota room are free for `job`, the next in queue order.
    fn before_grant(&mut self, channel: &ChannelView<'_>, job: &JobInfo<'_>) -> Decision;
    /// After something happened to a job.
    fn on_event(&mut self, channel: &ChannelView<'_>, event: JobEvent, job: &JobInfo<'_>);
    /// How `channel`'s shadow policy `shadow` compares with the deciding one so far; shown in
    /// `state` replies. `None` where nothing runs shadows.
    fn shadow_report(&self, _channel: &str, _shadow: &Path) -> Option<ShadowReport> {
        None
    }
}

/// The built-in behaviour: accept at priority 0, always grant.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPolicies;

impl Policies for NoPolicies {
    fn admit(&mut self, _: &ChannelView<'_>, _: &JobInfo<'_>) -> Admission {
        Admission::Accept(0)
    }
    fn before_grant(&mut self, _: &ChannelView<'_>, _: &JobInfo<'_>) -> Decision {
        Decision::Grant
    }
    fn on_event(&mut self, _: &ChannelView<'_>, _: JobEvent, _: &JobInfo<'_>) {}
}
