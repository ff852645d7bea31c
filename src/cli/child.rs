//! Starting `run`'s command so that it dies with `run`, even when `run` dies of SIGKILL.
//!
//! `run` holds its slot through an MQTT will: once the broker sees `run`'s connection go, it
//! publishes `aborted` and the daemon hands the slot to the next job at once. SIGINT and SIGTERM
//! are forwarded to the command, but SIGKILL (`kill -9`, the OOM killer) cannot be caught, and a
//! command that outlived `run` would run beside the next job. So the child asks the kernel, before
//! it executes the command, for SIGKILL when its parent goes (Linux's `PR_SET_PDEATHSIG`).
//!
//! What this does not cover:
//! - The kernel sends the signal when the *thread* that forked the child ends, not the process.
//!   [`RunThread`] makes sure that thread is the one blocked in `run`'s runtime, which lives until
//!   the command is reaped.
//! - Only the command itself gets the signal: processes it started do not inherit the setting.
//!   A shell wrapper should `exec` its last command (`sh -c 'prepare; exec job'`).
//! - The kernel clears the setting when the command is set-user-ID or set-group-ID.
//! - A lost host: nothing runs to kill anything; the broker's will fires after 1.5 x keep-alive.

use std::io;
use std::marker::PhantomData;

use nix::errno::Errno;
use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::unistd::{getpid, getppid};
use tokio::process::{Child, Command};

/// Proof that its holder runs on the thread that blocks in `run`'s runtime (the one that called
/// [`super::run::main`]): that thread lives until the command has been reaped, since every path
/// of `run` waits for the command before it returns.
///
/// Neither `Send` nor `Sync`, so a `RunThread` (or a reference to one) cannot move to another
/// thread, such as a `spawn_blocking` closure or a multi-thread runtime's worker, which may end
/// while `run` lives and would take the command down with it.
pub struct RunThread(PhantomData<*const ()>);

impl RunThread {
    /// To be called only on a thread that outlives the commands spawned with the result.
    pub(super) fn here() -> RunThread {
        RunThread(PhantomData)
    }
}

/// Spawns `command` (on this thread, see [`RunThread`]) so that it gets SIGKILL when `run`
/// dies.
pub fn spawn(command: &mut Command, _on: &RunThread) -> io::Result<Child> {
    die_with_parent(command);
    command.spawn()
}

/// Makes the child of `command` ask for SIGKILL when its parent dies, and exit at once if the
/// parent is already gone by then (it may die between `fork` and `prctl`; the child would then
/// belong to another parent and never get the signal).
#[allow(
    unsafe_code,
    reason = "pre_exec is unsafe; the closure is audited to make only async-signal-safe calls"
)]
fn die_with_parent(command: &mut Command) {
    let parent = getpid();
    // SAFETY: the closure runs in the child between `fork` and `exec`, where another thread of
    // the parent may have held a lock (the allocator's included), so it must only make
    // async-signal-safe calls. It makes two system calls, prctl(2) and getppid(2), reads
    // `errno` on failure, and returns an `io::Error` made from a raw OS error code, which
    // holds the code inline and does not allocate. It captures only `parent`, a `Copy` pid.
    // It neither allocates, takes a lock, nor touches memory shared with the parent.
    unsafe {
        command.pre_exec(move || {
            prctl::set_pdeathsig(Signal::SIGKILL)?;
            if getppid() != parent {
                // The parent died before prctl: std reports the error and the child exits
                // without running the command.
                return Err(Errno::ESRCH.into());
            }
            Ok(())
        });
    }
}
