//! Write a coordinosaur policy as a Rust trait.
//!
//! A policy is a WebAssembly component implementing the world `policy` of
//! `wit/v0.2/policy.wit` (package `coordinosaur:policy@0.2.0`). This crate hides
//! the bindings: implement [`Policy`] on a `Default` type and call
//! [`export_policy!`] once.
//!
//! ```ignore
//! use coordinosaur_policy::{export_policy, Admission, ChannelState, Job, Policy};
//!
//! #[derive(Default)]
//! struct Lifo;
//!
//! impl Policy for Lifo {
//!     fn admit(&mut self, job: &Job, _state: &ChannelState) -> Admission {
//!         Admission::Accept(job.registered_at_ms as i64)
//!     }
//! }
//!
//! export_policy!(Lifo);
//! ```
//!
//! - [`types`]: plain Rust mirrors of the WIT types ([`Job`], [`ChannelState`],
//!   [`Admission`], [`Decision`], [`Event`]) plus helpers to read the
//!   registration fields ([`Job::meta_i64`], [`Job::meta_str`]).
//! - [`log`]: the `log` import, as functions and `info!`-style macros.
//! - The bindings and the glue behind [`export_policy!`] exist only on
//!   `target_family = "wasm"`; natively the macro expands to nothing, so a
//!   policy crate's logic is unit-tested with a plain `cargo test --target
//!   x86_64-unknown-linux-gnu`.

pub mod log;
pub mod types;

#[cfg(target_family = "wasm")]
#[doc(hidden)]
pub mod __private;

pub use serde_json;
pub use types::{Admission, ChannelState, Decision, Event, EventKind, Hooks, Job, MetaError};

/// A policy: one value per channel instance, created with `Default` and then
/// configured by [`Policy::init`].
///
/// Every hook has a default that does what the engine would do without a
/// policy (accept at priority 0, grant, ignore events).
pub trait Policy: Default + 'static {
    /// The hooks the host calls (all by default). The host skips the others and uses its
    /// built-in decision instead, which saves a component call per job and per event: a policy
    /// that only orders the queue sets `const HOOKS: Hooks = Hooks::ADMIT;`. A hook left out
    /// here is never called, even if implemented.
    const HOOKS: Hooks = Hooks::ALL;

    /// Called once before any other hook with the channel's `policy_config`
    /// (an empty object if none). An error keeps the previous policy.
    fn init(&mut self, config: &serde_json::Value) -> Result<(), String> {
        let _ = config;
        Ok(())
    }

    /// A job registers: accept it with a queue priority (higher first, FIFO
    /// among equals) or reject it.
    fn admit(&mut self, job: &Job, state: &ChannelState) -> Admission {
        let _ = (job, state);
        Admission::Accept(0)
    }

    /// The engine could grant `job` now: grant, defer or veto it.
    fn before_grant(&mut self, job: &Job, state: &ChannelState) -> Decision {
        let _ = (job, state);
        Decision::Grant
    }

    /// Something happened to a job on the channel.
    fn on_event(&mut self, event: &Event, state: &ChannelState) {
        let _ = (event, state);
    }
}

/// Export a [`Policy`] type as the component's `policy` world.
///
/// Use once per crate, with a type implementing [`Policy`]:
/// `coordinosaur_policy::export_policy!(MyPolicy);`. The crate must have
/// `crate-type = ["cdylib"]`. One value of the type lives per component
/// instance (that is, per channel), created on `init` (or on the first hook
/// if the host never calls `init`).
///
/// On non-wasm targets this expands to nothing.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        #[cfg(target_family = "wasm")]
        const _: () = {
            ::std::thread_local! {
                /// The instance's one policy value; wasm instances are single-threaded.
                static POLICY: ::std::cell::RefCell<::std::option::Option<$policy>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            struct CoordinosaurPolicyExport;

            impl $crate::__private::Guest for CoordinosaurPolicyExport {
                fn init(
                    channel: ::std::string::String,
                    config: ::std::string::String,
                ) -> ::std::result::Result<$crate::__private::WitHooks, ::std::string::String> {
                    $crate::__private::init(&POLICY, channel, config)
                }
                fn admit(
                    job: $crate::__private::WitJob,
                    state: $crate::__private::WitChannelState,
                ) -> $crate::__private::WitAdmission {
                    $crate::__private::admit(&POLICY, job, state)
                }
                fn before_grant(
                    job: $crate::__private::WitJob,
                    state: $crate::__private::WitChannelState,
                ) -> $crate::__private::WitDecision {
                    $crate::__private::before_grant(&POLICY, job, state)
                }
                fn on_event(
                    event: $crate::__private::WitEvent,
                    state: $crate::__private::WitChannelState,
                ) {
                    $crate::__private::on_event(&POLICY, event, state)
                }
            }

            $crate::__private::bindings::__export_policy_world!(CoordinosaurPolicyExport with_types_in $crate::__private::bindings);
        };
    };
}
