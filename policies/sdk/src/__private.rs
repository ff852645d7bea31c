//! Bindings and glue behind `export_policy!` (wasm only; not public API).

use std::cell::{Cell, RefCell};
use std::thread::LocalKey;

use crate::log::Level;
use crate::types::Meta;
use crate::{Admission, ChannelState, Decision, Event, EventKind, Hooks, Job, Policy};

/// wit-bindgen output for `wit/v0.2/policy.wit` (`coordinosaur:policy@0.2.0`), world `policy`.
#[allow(missing_docs, clippy::all, reason = "generated code")]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/v0.2",
        world: "policy",
        export_macro_name: "__export_policy_world",
        pub_export_macro: true,
        default_bindings_module: "coordinosaur_policy::__private::bindings",
    });
}

use bindings::coordinosaur::policy::{job_meta, log as wit_log, types as wit};
pub use bindings::Guest;

pub use wit::{
    Admission as WitAdmission, ChannelState as WitChannelState, Decision as WitDecision,
    Event as WitEvent, Hooks as WitHooks, Job as WitJob,
};

thread_local! {
    /// The channel's name, given once by `init` (0.2.0 calls no longer carry it).
    static CHANNEL: RefCell<String> = const { RefCell::new(String::new()) };
    /// Counts hook calls, so a [`Job`] kept past its call cannot read another job's fields.
    static CALL: Cell<u64> = const { Cell::new(0) };
}

/// The registration field `key` of the current call's job, as JSON text.
pub fn meta_field(call: u64, key: &str) -> Option<String> {
    check_call(call);
    job_meta::field(key)
}

/// All registration fields of the current call's job, as a JSON object in text.
pub fn meta_all(call: u64) -> String {
    check_call(call);
    job_meta::all()
}

/// The host answers for the job of the current call only.
fn check_call(call: u64) {
    if CALL.with(Cell::get) != call {
        let message =
            "a Job's registration fields were read after the hook call that received it; \
                       keep the fields you need (e.g. the tenant), not the Job";
        log(Level::Error, message);
        panic!("{message}");
    }
}

/// Starts a hook call: a new call number for the jobs it hands out.
fn next_call() -> u64 {
    CALL.with(|c| {
        c.set(c.get() + 1);
        c.get()
    })
}

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

/// `init`: a fresh policy value, configured from `config` (JSON text); answers the hooks the
/// policy declares ([`Policy::HOOKS`]).
pub fn init<P: Policy>(
    slot: &'static Slot<P>,
    channel: String,
    config: String,
) -> Result<wit::Hooks, String> {
    let config: serde_json::Value = serde_json::from_str(&config)
        .map_err(|e| format!("policy_config is not valid JSON: {e}"))?;
    CHANNEL.with(|c| *c.borrow_mut() = channel);
    let mut policy = P::default();
    let result = policy.init(&config);
    slot.with(|cell| *cell.borrow_mut() = Some(policy));
    result.map(|()| hooks(P::HOOKS))
}

fn hooks(declared: Hooks) -> wit::Hooks {
    let mut hooks = wit::Hooks::empty();
    if declared.admit {
        hooks = hooks | wit::Hooks::ADMIT;
    }
    if declared.before_grant {
        hooks = hooks | wit::Hooks::BEFORE_GRANT;
    }
    if declared.on_event {
        hooks = hooks | wit::Hooks::ON_EVENT;
    }
    hooks
}

/// `admit`, delegated to the instance's policy.
pub fn admit<P: Policy>(
    slot: &'static Slot<P>,
    job: WitJob,
    state: WitChannelState,
) -> WitAdmission {
    let call = next_call();
    let (job, state) = (job_from(job, call), state_from(state));
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
    let call = next_call();
    let (job, state) = (job_from(job, call), state_from(state));
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
        job: job_from(event.job, next_call()),
    };
    let state = state_from(state);
    with_policy(slot, |p| p.on_event(&event, &state));
}

/// Run `f` on the instance's policy, creating it with `Default` if `init`
/// was never called.
fn with_policy<P: Policy, R>(slot: &'static Slot<P>, f: impl FnOnce(&mut P) -> R) -> R {
    slot.with(|cell| f(cell.borrow_mut().get_or_insert_with(P::default)))
}

fn job_from(job: WitJob, call: u64) -> Job {
    Job {
        uid: job.uid,
        channel: CHANNEL.with(|c| c.borrow().clone()),
        timeout_ms: job.timeout_ms,
        registered_at_ms: job.registered_at_ms,
        meta: Meta::Host { call },
    }
}

fn state_from(state: WitChannelState) -> ChannelState {
    ChannelState {
        channel: CHANNEL.with(|c| c.borrow().clone()),
        max_concurrent_jobs: state.max_concurrent_jobs,
        running: state.running,
        waiting: state.waiting,
        now_ms: state.now_ms,
    }
}
