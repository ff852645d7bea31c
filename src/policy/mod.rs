//! The policy host: per-channel WebAssembly components (WIT world `coordinosaur:policy/policy`,
//! in `wit/`) run by wasmtime behind the engine's [`Policies`](crate::engine::Policies) hooks.
//!
//! - [`compile`]: one compiled, type-checked, pre-instantiated component per policy file,
//!   shared by every channel that uses it.
//! - [`PolicyHost`]: one instance per channel, created on first use; every call runs under an
//!   epoch deadline and a memory cap. A trap or a timeout falls back to the built-in decision
//!   (`on_policy_error = "open"`) or rejects (`"closed"`), is logged with the channel, hook and
//!   cause, and the instance is rebuilt from the pre-instantiated component. A new file or
//!   `policy_config` whose `init` fails leaves a working channel on its previous instance;
//!   only a channel with nothing to keep falls back.
//! - [`PolicyCache`]: compiled components on disk, authenticated by a per-cache key, so a
//!   restart or a swap back to a known version does not recompile.
//! - `wasi`: what WASI gives a guest: engine-time clocks and `wasi:random` seeded per channel,
//!   nothing of the host.
//! - `budget`: the CPU-time budget of a call from a per-thread sample of the CPU clock, so a
//!   call makes no system call for it.
//! - `rollback`: when a hot-swapped version goes back to the previous one (too many failed
//!   calls soon after the swap) and when a shadow policy is suspended; pure, in engine time.
//! - Shadow policies (`policy_shadow`): a second instance per channel that gets the same calls
//!   and is only compared (`hooks`).
//! - [`hot_reload`]: a notify watcher on the policy folders that recompiles a changed file off the
//!   async runtime and hands it to the driver, which swaps it in between two events.

mod budget;
mod cache;
mod compile;
mod hooks;
mod host;
pub mod hot_reload;
mod meta;
mod rollback;
mod wasi;

pub use cache::PolicyCache;
pub use compile::{CompiledPolicy, Compiler};
pub use host::{PolicyHost, PolicyStats};

use std::path::PathBuf;

/// Why a policy file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy {}: {source}", path.display())]
    Read {
        /// The policy file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Not a component wasmtime can compile.
    #[error("cannot compile policy {}: {cause:#}", path.display())]
    Compile {
        /// The policy file.
        path: PathBuf,
        /// wasmtime's reason.
        cause: wasmtime::Error,
    },
    /// A component, but not of the `coordinosaur:policy/policy` world (missing or mistyped
    /// exports, unknown imports).
    #[error("policy {} does not implement the coordinosaur:policy world: {cause:#}", path.display())]
    Interface {
        /// The policy file.
        path: PathBuf,
        /// What did not match.
        cause: wasmtime::Error,
    },
    /// The wasmtime engine could not be set up.
    #[error("cannot set up the policy runtime: {0:#}")]
    Runtime(wasmtime::Error),
}
