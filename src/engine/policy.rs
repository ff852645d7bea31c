//! The hooks a channel's policy may implement, as the engine sees them. The engine calls these
//! synchronously at the points where it decides; what runs behind them (a wasm component, a test
//! double) is the caller's business, so the engine stays free of wasmtime types and I/O.

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

/// Per-channel policy hooks. Only called for channels whose options name a policy.
pub trait Policies {
    /// On register.
    fn admit(&mut self, channel: &ChannelView<'_>, job: &JobInfo<'_>) -> Admission;
    /// When a slot and quota room are free for `job`, the next in queue order.
    fn before_grant(&mut self, channel: &ChannelView<'_>, job: &JobInfo<'_>) -> Decision;
    /// After something happened to a job.
    fn on_event(&mut self, channel: &ChannelView<'_>, event: JobEvent, job: &JobInfo<'_>);
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
