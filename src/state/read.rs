//! Reading a state dir's history without taking its lock, for `coordinosaur replay`: a daemon may
//! be running on it. Nothing is written, cut or deleted; a torn last record (a write in progress)
//! simply ends what is read.
//!
//! What is read: the oldest generation from which every later journal is present and of format
//! 4 or newer (older formats lack the times replay needs), its snapshot (the state when that
//! generation began; none for generation 0) and every journal from it on, in order. Generations
//! the daemon has already deleted, and journals of older formats, are history replay cannot
//! see: [`History::warnings`] says which.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{format, journal_path, snapshot_path, Files, StateError};
use crate::engine::{Change, Snapshot};

/// The first journal format that records what replay needs (engine times, how jobs left and
/// each channel's limits).
pub const REPLAY_FORMAT: u8 = 4;

/// What a state dir still holds of its history.
#[derive(Debug, Default)]
pub struct History {
    /// Durable state when the first journal read began (empty for generation 0).
    pub start: Snapshot,
    /// Generations whose journals were read, oldest first.
    pub generations: Vec<u64>,
    /// Every change of those journals, in the order the engine made them.
    pub changes: Vec<Change>,
    /// What could not be read, or was skipped, and why.
    pub warnings: Vec<String>,
}

/// Reads the history of the state dir `dir` without locking it. A daemon compacting at the
/// same moment may delete a file between listing and reading: the read is then tried again.
pub fn read_history(dir: &Path) -> Result<History, StateError> {
    let mut last = None;
    for _ in 0..3 {
        match try_read(dir) {
            Err(StateError::Io { cause, .. }) if cause.kind() == io::ErrorKind::NotFound => {
                last = Some(cause);
            }
            other => return other,
        }
    }
    Err(StateError::Io {
        dir: dir.to_owned(),
        what: "read",
        path: dir.to_owned(),
        cause: last.unwrap_or_else(|| io::Error::other("files kept disappearing")),
    })
}

/// One attempt of [`read_history`].
fn try_read(dir: &Path) -> Result<History, StateError> {
    let files = Files::scan(dir).map_err(io_err(dir, "list", dir))?;
    let mut warnings = Vec::new();
    let journals = replayable_journals(dir, &files, &mut warnings)?;
    let Some(&(first, _, _)) = journals.first() else {
        return Err(StateError::Unrecoverable {
            dir: dir.to_owned(),
            reason: format!(
                "no journal of format {REPLAY_FORMAT} or newer with its snapshot: nothing to \
                 replay ({})",
                warnings.join("; ")
            ),
        });
    };
    if first > 0 {
        warnings.push(format!(
            "history before generation {first} was compacted away: replay starts from \
             snapshot.{first}"
        ));
    }
    let mut history = History {
        start: start_snapshot(dir, first)?,
        ..History::default()
    };
    let count = journals.len();
    for (i, (g, path, bytes)) in journals.into_iter().enumerate() {
        history.generations.push(g);
        if !read_journal(&path, &bytes, &mut history)? && i + 1 < count {
            history.warnings.push(format!(
                "{}: damaged; the journals after it are left out",
                path.display()
            ));
            break;
        }
    }
    warnings.append(&mut history.warnings);
    history.warnings = warnings;
    Ok(history)
}

/// The journals replay can read, oldest first, with their paths and bytes: the newest unbroken
/// run of generations of format [`REPLAY_FORMAT`] or newer whose first has its snapshot (or is
/// generation 0). What is left out is said in `warnings`.
fn replayable_journals(
    dir: &Path,
    files: &Files,
    warnings: &mut Vec<String>,
) -> Result<Vec<(u64, PathBuf, Vec<u8>)>, StateError> {
    let Some(newest) = files.journals.iter().max().copied() else {
        return Err(StateError::Unrecoverable {
            dir: dir.to_owned(),
            reason: "no journal in it (is this a coordinosaur [state] dir?)".into(),
        });
    };
    // The oldest base with an unbroken run of journals up to the newest.
    let mut base = newest;
    while base > 0 && files.journals.contains(&(base - 1)) {
        base -= 1;
    }
    let mut journals = Vec::new();
    for g in base..=newest {
        let path = journal_path(dir, g);
        let bytes = fs::read(&path).map_err(io_err(dir, "read", &path))?;
        let format = journal_format(&bytes).map_err(|reason| StateError::Unrecoverable {
            dir: dir.to_owned(),
            reason: format!("{}: {reason}", path.display()),
        })?;
        if format.is_some_and(|f| f < REPLAY_FORMAT) {
            warnings.push(format!(
                "{} is of journal format {} (before {REPLAY_FORMAT}, which records times): its \
                 history is left out",
                path.display(),
                format.unwrap_or(0)
            ));
            journals.clear();
            continue;
        }
        journals.push((g, path, bytes));
    }
    // The base needs its snapshot (generation 0 starts empty).
    while let Some((g, path, _)) = journals.first() {
        if *g == 0 || files.snapshots.contains(g) {
            break;
        }
        warnings.push(format!(
            "{} has no snapshot.{g} to start from: left out",
            path.display()
        ));
        journals.remove(0);
    }
    Ok(journals)
}

/// The state when generation `first` began: empty for 0, else its snapshot.
fn start_snapshot(dir: &Path, first: u64) -> Result<Snapshot, StateError> {
    if first == 0 {
        return Ok(Snapshot::default());
    }
    let path = snapshot_path(dir, first);
    let bytes = fs::read(&path).map_err(io_err(dir, "read", &path))?;
    format::decode_snapshot(&bytes).map_err(|e| {
        let (format::FormatError::Newer(reason) | format::FormatError::Damaged(reason)) = e;
        StateError::Unrecoverable {
            dir: dir.to_owned(),
            reason: format!("{}: {reason}", path.display()),
        }
    })
}

/// The error for a failed `what` on `path` in the state dir `dir`.
fn io_err(dir: &Path, what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StateError {
    let (dir, path) = (dir.to_owned(), path.to_owned());
    move |cause| StateError::Io {
        dir,
        what,
        path,
        cause,
    }
}

/// The format digit of a journal file, `None` for a torn (or empty) magic.
fn journal_format(bytes: &[u8]) -> Result<Option<u8>, String> {
    match format::journal_body(bytes) {
        Ok(Some(_)) => Ok(bytes.get(6).map(|d| d - b'0')),
        Ok(None) if format::JOURNAL_MAGIC.starts_with(bytes) => Ok(None),
        Ok(None) => Err("not a coordinosaur journal (wrong magic bytes)".into()),
        Err(format::FormatError::Newer(e) | format::FormatError::Damaged(e)) => Err(e),
    }
}

/// Appends the changes of one journal; false if it ends in damage rather than cleanly (a torn
/// last write of a running daemon is that too, and harmless at the end of the newest journal).
fn read_journal(path: &Path, bytes: &[u8], history: &mut History) -> Result<bool, StateError> {
    let Ok(Some(body)) = format::journal_body(bytes) else {
        return Ok(true);
    };
    let recs = format::records(body);
    for payload in &recs.payloads {
        let changes = format::decode_batch(payload).map_err(|e| StateError::Unrecoverable {
            dir: path.parent().unwrap_or(Path::new(".")).to_owned(),
            reason: format!("{}: {e}", path.display()),
        })?;
        history.changes.extend(changes);
    }
    Ok(recs.damage.is_none())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::engine::{Millis, Time};
    use crate::state::{open, Durability};

    fn clock(at: u64) -> Change {
        Change::Clock { at: Time(at) }
    }

    fn queued(uid: &str, seq: u64) -> Change {
        Change::Queued {
            channel: Arc::from("ch"),
            uid: Arc::from(uid),
            seq,
            priority: 0,
            timeout: Millis(1_000),
            registered_at: Time(seq),
            meta: None,
        }
    }

    fn uids(history: &History) -> Vec<String> {
        (history.changes.iter())
            .filter_map(|c| match c {
                Change::Queued { uid, .. } => Some(uid.to_string()),
                _ => None,
            })
            .collect()
    }

    /// Opens a generation and commits `changes`; returns the journal, still open (locked).
    fn generation(dir: &Path, changes: &[Change]) -> crate::state::FileJournal {
        let (_, _, mut journal) = open(dir, Durability::Os, |_| usize::MAX).unwrap();
        let id = journal.submit(changes);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while journal.committed() < id && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(journal.committed() >= id);
        journal
    }

    #[test]
    fn reads_every_generation_kept_while_a_writer_holds_the_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let journal = generation(dir, &[clock(10), queued("a", 1)]);
        let history = read_history(dir).unwrap();
        assert_eq!(
            (history.generations.clone(), uids(&history)),
            (vec![0], vec!["a".into()])
        );
        assert!(history.warnings.is_empty(), "{:?}", history.warnings);
        journal.close(Duration::from_secs(5));

        let journal = generation(dir, &[clock(20), queued("b", 2)]);
        let history = read_history(dir).unwrap();
        assert_eq!(history.generations, [0, 1]);
        assert_eq!(uids(&history), ["a", "b"]);
        assert!(history.start.channels.is_empty());
        journal.close(Duration::from_secs(5));

        // A third generation: the daemon deletes generation 0, so replay starts from snapshot.1.
        let journal = generation(dir, &[clock(30), queued("c", 3)]);
        let history = read_history(dir).unwrap();
        assert_eq!(history.generations, [1, 2]);
        assert_eq!(uids(&history), ["b", "c"]);
        assert_eq!(
            history.start.channels["ch"].jobs.len(),
            1,
            "a, from snapshot.1"
        );
        assert!(
            history
                .warnings
                .iter()
                .any(|w| w.contains("compacted away")),
            "{:?}",
            history.warnings
        );
        journal.close(Duration::from_secs(5));
    }

    #[test]
    fn a_torn_last_record_ends_the_read_and_nothing_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        generation(dir, &[clock(10), queued("a", 1)]).close(Duration::from_secs(5));
        let path = journal_path(dir, 0);
        crate::state::tests::write_at_records_end(&path, &[200, 0, 0, 0, 1, 2, 3, 4, 5]);
        let before = fs::read(&path).unwrap();
        let history = read_history(dir).unwrap();
        assert_eq!(uids(&history), ["a"]);
        assert_eq!(
            fs::read(&path).unwrap(),
            before,
            "the torn tail is left alone"
        );
    }

    #[test]
    fn journals_before_format_4_are_left_out_with_a_note() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        generation(dir, &[clock(10), queued("a", 1)]).close(Duration::from_secs(5));
        let path = journal_path(dir, 0);
        let mut bytes = fs::read(&path).unwrap();
        bytes[..8].copy_from_slice(b"CDJRNL3\n");
        fs::write(&path, bytes).unwrap();
        let err = read_history(dir).unwrap_err().to_string();
        assert!(
            err.contains("nothing to replay") && err.contains("format 3"),
            "{err}"
        );
        generation(dir, &[clock(20), queued("b", 2)]).close(Duration::from_secs(5));
        let history = read_history(dir).unwrap();
        assert_eq!(
            (history.generations.clone(), uids(&history)),
            (vec![1], vec!["b".into()])
        );
        assert!(
            history
                .warnings
                .iter()
                .any(|w| w.contains("journal format 3")),
            "{:?}",
            history.warnings
        );
    }

    #[test]
    fn a_dir_without_journals_is_refused_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let err = read_history(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("no journal"), "{err}");
    }
}
