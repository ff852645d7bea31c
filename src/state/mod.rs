//! Durable state: a checksummed, append-only journal of engine
//! [`Change`](crate::engine::Change)s plus snapshots.
//!
//! Layout of the state dir: `lock` (held with an OS file lock while a daemon runs; holds its
//! pid), `snapshot.N` (the whole durable state when generation N began; generation 0 starts
//! empty and has none) and `journal.N` (every change of generation N, in order). A daemon starts
//! by folding the newest usable generation's snapshot and journals into one [`Snapshot`], writes
//! that as the snapshot of a new generation, and journals from there. The journal is compacted
//! the same way while running, once it outgrows its snapshot. Files of generations older than
//! the previous snapshot are deleted, so a damaged newest snapshot can still be recovered from
//! the one before it and both generations' journals. Start-up's part is [`restore`].
//!
//! Writes happen on a dedicated thread ([`writer`]) with group commit: every batch the driver
//! hands over while one write and `fdatasync` are in progress goes out in the next single write
//! and sync. The driver publishes a batch's effects only once the thread reports it committed.

mod format;
mod group;
pub mod jetstream;
mod journal;
pub mod read;
mod restore;
mod writer;

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use std::sync::Arc;

use crate::engine::{Millis, Snapshot};
pub use group::{Urgency, DEFER_MAX};
pub use journal::Journal;
pub(crate) use restore::note_registration;
use restore::{cut_torn_write, generation_of, recover, Files};
pub use writer::FileJournal;

/// How hard a commit tries to survive a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// `fdatasync` before publishing: survives a power cut or kernel crash.
    #[default]
    Fsync,
    /// Written to the OS before publishing, synced by the OS later: survives the daemon's crash
    /// or kill -9, not a power cut.
    Os,
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Durability::Fsync => "fsync",
            Durability::Os => "os",
        })
    }
}

/// Why the state dir could not be used. Each message names the path and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Another process holds the lock.
    #[error("state dir {} is in use by another coordinosaur{}; stop it, or give this one its own [state] dir", dir.display(), holder.as_deref().map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked {
        /// The state dir.
        dir: PathBuf,
        /// The pid written by the holder, if readable.
        holder: Option<String>,
    },
    /// A file operation failed.
    #[error("state dir {}: cannot {what} {}: {cause}", dir.display(), path.display())]
    Io {
        /// The state dir.
        dir: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// What the OS said: part of the message, not the error's `source()`, so that a
        /// report of the whole chain (`{:#}`) does not say it twice.
        cause: io::Error,
    },
    /// No generation could be restored.
    #[error("state dir {}: cannot restore: {reason}. Nothing was changed; to start empty, move the dir aside (the old files stay there for inspection)", dir.display())]
    Unrecoverable {
        /// The state dir.
        dir: PathBuf,
        /// What is damaged.
        reason: String,
    },
}

/// What start-up found and restored.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Generation whose snapshot (or empty start, for 0) was the base.
    pub base: u64,
    /// Journals folded in.
    pub journals: usize,
    /// Changes folded in.
    pub changes: usize,
    /// Bytes dropped from the end of the last journal (a torn write).
    pub torn_bytes: u64,
    /// The last journal and the length of its intact part, if a torn write follows it.
    torn_journal: Option<(PathBuf, u64)>,
    /// Problems worked around (a damaged snapshot skipped, a damaged record): each is logged.
    pub warnings: Vec<String>,
    /// The last registrations the journal applied (at most [`RECENT_REGISTRATIONS`], oldest
    /// first): the broker redelivers a request whose acknowledgement a crash cut off, and a
    /// redelivered `register` of a job that has ended since must not start it again.
    pub recent_registrations: Vec<Registered>,
}

/// How many of the last registrations recovery remembers. The broker redelivers at most the
/// messages it had in flight to the daemon (Mosquitto's `max_inflight_messages`, 20 by default).
pub const RECENT_REGISTRATIONS: usize = 4096;

/// A registration the journal applied, as a redelivered `register` would decode.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Registered {
    /// Channel name.
    pub channel: Arc<str>,
    /// Job id.
    pub uid: Arc<str>,
    /// The job's own timeout.
    pub timeout: Millis,
    /// Extra registration fields.
    pub meta: Option<Arc<str>>,
}

/// An open state dir: the lock, and where the next generation goes.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    /// Held for the daemon's lifetime; the OS releases it when the process dies.
    _lock: File,
}

/// Opens `dir` (creating it), takes its lock, restores the newest usable generation and starts
/// a new one. Returns the restored state, what was done, and the journal to append to.
///
/// `keep_grants(channel)` is how many of a channel's most recent grant times its quota windows
/// can count (its largest quota limit); older ones are left out of the new generation, which
/// otherwise would carry every grant journalled since the last compaction into the next.
pub fn open(
    dir: &Path,
    durability: Durability,
    keep_grants: impl Fn(&str) -> usize,
) -> Result<(Snapshot, Recovery, FileJournal), StateError> {
    let io_err = |what, path: &Path| {
        let dir = dir.to_owned();
        let path = path.to_owned();
        move |cause| StateError::Io {
            dir,
            what,
            path,
            cause,
        }
    };
    fs::create_dir_all(dir).map_err(io_err("create the folder", dir))?;
    let lock = lock(dir)?;
    let files = Files::scan(dir).map_err(io_err("list", dir))?;
    let (mut snapshot, recovery) = recover(dir, &files)?;
    snapshot.trim(keep_grants);
    if let Some((path, intact)) = &recovery.torn_journal {
        cut_torn_write(path, *intact).map_err(io_err("cut the torn write off", path))?;
    }
    let generation = files.newest().map_or(0, |g| g + 1);
    let store = Store {
        dir: dir.to_owned(),
        _lock: lock,
    };
    let journal = FileJournal::start(store, generation, recovery.base, &snapshot, durability)
        .map_err(|(what, path, cause)| StateError::Io {
            dir: dir.to_owned(),
            what,
            path,
            cause,
        })?;
    Ok((snapshot, recovery, journal))
}

/// Takes the dir's lock file, or says who holds it.
fn lock(dir: &Path) -> Result<File, StateError> {
    let path = dir.join("lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|cause| StateError::Io {
            dir: dir.to_owned(),
            what: "open the lock file",
            path: path.clone(),
            cause,
        })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let holder = fs::read_to_string(&path)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty());
            return Err(StateError::Locked {
                dir: dir.to_owned(),
                holder,
            });
        }
        Err(fs::TryLockError::Error(cause)) => {
            return Err(StateError::Io {
                dir: dir.to_owned(),
                what: "lock",
                path,
                cause,
            })
        }
    }
    let wrote = file
        .set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    if let Err(e) = wrote {
        // The lock itself is what counts; the pid is only for the message of a second daemon.
        tracing::warn!(path = %path.display(), cause = %e, "could not write the pid into the lock file");
    }
    Ok(file)
}

pub(crate) fn snapshot_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("snapshot.{generation}"))
}

pub(crate) fn journal_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("journal.{generation}"))
}

#[cfg(test)]
pub(crate) mod tests;
