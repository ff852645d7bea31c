//! Bindings and glue behind `export_policy!` (wasm only; not public API).

use std::cell::RefCell;
use std::thread::LocalKey;

use crate::log::Level;
use crate::{Admission, ChannelState, Decision, Event, EventKind, Job, Policy};

/// wit-bindgen output for `wit/policy.wit`, world `policy`.
#[allow(missing_docs, clippy::all, reason = "generated code")]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "policy",
        export_macro_name: "__export_policy_world",
        pub_export_macro: true,
        default_bindings_module: "coordinosaur_policy::__private::bindings",
    });
}

use bindings::coordinosaur::policy::{log as wit_log, types as wit};
pub use bindings::Guest;

pub use wit::{
    Admission as WitAdmission, ChannelState as WitChannelState, Decision as WitDecision,
    Event as WitEvent, Job as WitJob,
};

/// Where `export_policy!` keeps the instance's policy value.
pub type Slot<P> = LocalKey<RefCell<Option<P>>>;

/// Send one line to the host's `log` import.
pub fn log(level: Level, message: &str) {
    let level = match level {
        Level::Trace => wit_log::Level::Trace,
        Level::Debug => wit_log::Level::Debug,
        Level::Info => wit_log::Level::Info,
        Level::Warn => wit_log::Level::Warn,
        Level::Error => wit_log::Level::Error,
    };
    wit_log::log(level, message);
}

/// `init`: a fresh policy value, configured from `config` (JSON text).
pub fn init<P: Policy>(slot: &'static Slot<P>, config: String) -> Result<(), String> {
    let config: serde_json::Value = serde_json::from_str(&config)
        .map_err(|e| format!("policy_config is not valid JSON: {e}"))?;
    let mut policy = P::default();
    let result = policy.init(&config);
    slot.with(|cell| *cell.borrow_mut() = Some(policy));
    result
}

/// `admit`, delegated to the instance's policy.
pub fn admit<P: Policy>(
    slot: &'static Slot<P>,
    job: WitJob,
    state: WitChannelState,
) -> WitAdmission {
    let (job, state) = (job_from(job), state_from(state));
    match with_policy(slot, |p| p.admit(&job, &state)) {
        Admission::Accept(priority) => WitAdmission::Accept(priority),
        Admission::Reject(reason) => WitAdmission::Reject(reason),
    }
}

/// `before-grant`, delegated to the instance's policy.
pub fn before_grant<P: Policy>(
    slot: &'static Slot<P>,
    job: WitJob,
    state: WitChannelState,
) -> WitDecision {
    let (job, state) = (job_from(job), state_from(state));
    match with_policy(slot, |p| p.before_grant(&job, &state)) {
        Decision::Grant => WitDecision::Grant,
        Decision::Defer => WitDecision::Defer,
        Decision::Veto(reason) => WitDecision::Veto(reason),
    }
}

/// `on-event`, delegated to the instance's policy.
pub fn on_event<P: Policy>(slot: &'static Slot<P>, event: WitEvent, state: WitChannelState) {
    let kind = match event.kind {
        wit::EventKind::Granted => EventKind::Granted,
        wit::EventKind::Finished => EventKind::Finished,
        wit::EventKind::Aborted => EventKind::Aborted,
        wit::EventKind::Expired => EventKind::Expired,
        wit::EventKind::Cancelled => EventKind::Cancelled,
    };
    let event = Event {
        kind,
        job: job_from(event.job),
    };
    let state = state_from(state);
    with_policy(slot, |p| p.on_event(&event, &state));
}

/// Run `f` on the instance's policy, creating it with `Default` if `init`
/// was never called.
fn with_policy<P: Policy, R>(slot: &'static Slot<P>, f: impl FnOnce(&mut P) -> R) -> R {
    slot.with(|cell| f(cell.borrow_mut().get_or_insert_with(P::default)))
}

fn job_from(job: WitJob) -> Job {
    Job {
        uid: job.uid,
        channel: job.channel,
        timeout_ms: job.timeout_ms,
        registered_at_ms: job.registered_at_ms,
        meta: job.meta,
    }
}

fn state_from(state: WitChannelState) -> ChannelState {
    ChannelState {
        channel: state.channel,
        max_concurrent_jobs: state.max_concurrent_jobs,
        running: state.running,
        waiting: state.waiting,
        now_ms: state.now_ms,
    }
}
