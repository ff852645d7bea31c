//! Restoring a state dir at start-up: which generations are there, the newest usable one's
//! snapshot with its journals folded in (skipping a damaged snapshot for the one before it), and
//! a torn last write cut off.

use std::collections::{BTreeSet, VecDeque};
use std::fs::{self, OpenOptions};
use std::io;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use super::{
    format, journal_path, snapshot_path, Recovery, Registered, StateError, RECENT_REGISTRATIONS,
};
use crate::engine::{Change, Snapshot};

/// The generations present in a state dir.
#[derive(Debug, Default)]
pub(super) struct Files {
    /// Generations with a snapshot file.
    pub(super) snapshots: BTreeSet<u64>,
    /// Generations with a journal file.
    pub(super) journals: BTreeSet<u64>,
}

impl Files {
    /// Lists the generations in `dir`.
    pub(super) fn scan(dir: &Path) -> io::Result<Files> {
        let mut files = Files::default();
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(g) = generation_of(name, "snapshot.") {
                files.snapshots.insert(g);
            } else if let Some(g) = generation_of(name, "journal.") {
                files.journals.insert(g);
            }
        }
        Ok(files)
    }

    /// The newest generation with any file.
    pub(super) fn newest(&self) -> Option<u64> {
        self.snapshots.iter().chain(&self.journals).max().copied()
    }

    /// Bases to try, newest first: each snapshot generation whose journal exists, then 0.
    fn bases(&self) -> Vec<u64> {
        let mut bases: Vec<u64> = self
            .snapshots
            .iter()
            .copied()
            .filter(|g| self.journals.contains(g))
            .collect();
        if !bases.contains(&0) {
            bases.push(0);
        }
        bases.sort_unstable_by(|a, b| b.cmp(a));
        bases
    }
}

/// The generation of a file named `{prefix}{N}`.
pub(super) fn generation_of(name: &str, prefix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Folds the newest usable generation into one snapshot.
pub(super) fn recover(dir: &Path, files: &Files) -> Result<(Snapshot, Recovery), StateError> {
    if files.newest().is_none() {
        return Ok((Snapshot::default(), Recovery::default()));
    }
    let newest_journal = files.journals.iter().max().copied().unwrap_or(0);
    let mut warnings = Vec::new();
    for base in files.bases() {
        // Every journal from the base on must be there, or changes would be missing.
        if let Some(gap) = (base..=newest_journal).find(|g| !files.journals.contains(g)) {
            warnings.push(format!(
                "generation {base} unusable: journal.{gap} is missing"
            ));
            continue;
        }
        let Some(snapshot) = base_snapshot(dir, files, base, &mut warnings)? else {
            continue;
        };
        let mut fold = Fold {
            dir,
            snapshot,
            recovery: Recovery {
                base,
                ..Recovery::default()
            },
            recent: VecDeque::new(),
        };
        for g in base..=newest_journal {
            if fold
                .journal(g, g == newest_journal, &mut warnings)?
                .is_break()
            {
                break;
            }
        }
        fold.recovery.warnings = warnings;
        fold.recovery.recent_registrations = fold.recent.into();
        return Ok((fold.snapshot, fold.recovery));
    }
    Err(StateError::Unrecoverable {
        dir: dir.to_owned(),
        reason: warnings.join("; "),
    })
}

/// The snapshot generation `base` starts from (empty for 0 without one), or `None` with a
/// warning when it is damaged and the generation before it should be tried.
fn base_snapshot(
    dir: &Path,
    files: &Files,
    base: u64,
    warnings: &mut Vec<String>,
) -> Result<Option<Snapshot>, StateError> {
    if base == 0 && !files.snapshots.contains(&0) {
        return Ok(Some(Snapshot::default()));
    }
    let path = snapshot_path(dir, base);
    let decoded = fs::read(&path)
        .map_err(|e| format::FormatError::Damaged(e.to_string()))
        .and_then(|bytes| format::decode_snapshot(&bytes));
    match decoded {
        Ok(s) => Ok(Some(s)),
        Err(format::FormatError::Newer(reason)) => Err(StateError::Unrecoverable {
            dir: dir.to_owned(),
            reason: format!("{}: {reason}", path.display()),
        }),
        Err(format::FormatError::Damaged(e)) => {
            warnings.push(format!(
                "{} is damaged ({e}); trying the generation before it",
                path.display()
            ));
            Ok(None)
        }
    }
}

/// One generation's journals being folded into its base snapshot.
struct Fold<'a> {
    /// The state dir.
    dir: &'a Path,
    /// The state so far.
    snapshot: Snapshot,
    /// What was done so far.
    recovery: Recovery,
    /// The last registrations applied (see [`note_registration`]).
    recent: VecDeque<Registered>,
}

impl Fold<'_> {
    /// Folds in `journal.{g}` (`last`: the newest). Breaks when damage means every later
    /// journal is lost.
    fn journal(
        &mut self,
        g: u64,
        last: bool,
        warnings: &mut Vec<String>,
    ) -> Result<ControlFlow<()>, StateError> {
        let path = journal_path(self.dir, g);
        let bytes = fs::read(&path).map_err(|cause| StateError::Io {
            dir: self.dir.to_owned(),
            what: "read",
            path: path.clone(),
            cause,
        })?;
        self.recovery.journals += 1;
        let Some(body) = self.body(&path, &bytes, last)? else {
            return Ok(ControlFlow::Continue(()));
        };
        let recs = format::records(body);
        for payload in &recs.payloads {
            // Checksummed, so an undecodable batch was written by a different version: refuse
            // rather than guess.
            let changes =
                format::decode_batch(payload).map_err(|e| self.unrecoverable(&path, e))?;
            self.apply(changes);
        }
        let Some(damage) = recs.damage else {
            return Ok(ControlFlow::Continue(()));
        };
        // What was written past the intact records: the zeros preallocated after it are not.
        let rest = &body[recs.good_len..];
        let dropped = rest.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1) as u64;
        self.recovery.torn_bytes += dropped;
        let at = recs.good_len + format::JOURNAL_MAGIC.len();
        if last {
            warnings.push(format!(
                "{}: dropped a torn last write of {dropped} bytes at offset {at} ({damage})",
                path.display()
            ));
            self.recovery.torn_journal = Some((path, at as u64));
            Ok(ControlFlow::Continue(()))
        } else {
            // Damage before the newest journal: later journals build on what is lost.
            warnings.push(format!(
                "{}: damaged at offset {at} ({damage}); {dropped} bytes and every later journal are lost",
                path.display()
            ));
            Ok(ControlFlow::Break(()))
        }
    }

    /// The records part of the journal at `path` (`bytes`), after its magic. `None`: the newest
    /// journal was created but its header never fully written, which reads as an empty journal.
    fn body<'b>(
        &mut self,
        path: &Path,
        bytes: &'b [u8],
        last: bool,
    ) -> Result<Option<&'b [u8]>, StateError> {
        let body = format::journal_body(bytes).map_err(|e| {
            let (format::FormatError::Newer(reason) | format::FormatError::Damaged(reason)) = e;
            self.unrecoverable(path, reason)
        })?;
        if body.is_some() {
            return Ok(body);
        }
        if bytes.len() < format::JOURNAL_MAGIC.len()
            && format::JOURNAL_MAGIC.starts_with(bytes)
            && last
        {
            self.recovery.torn_bytes += bytes.len() as u64;
            self.recovery.torn_journal = Some((path.to_owned(), 0));
            return Ok(None);
        }
        Err(StateError::Unrecoverable {
            dir: self.dir.to_owned(),
            reason: format!(
                "{} is not a coordinosaur journal (wrong magic bytes)",
                path.display()
            ),
        })
    }

    /// Applies one journalled batch.
    fn apply(&mut self, changes: Vec<Change>) {
        self.recovery.changes += changes.len();
        for change in changes {
            note_registration(&mut self.recent, &change);
            self.snapshot.apply(change);
        }
    }

    /// The state dir cannot be restored because of the file at `path`.
    fn unrecoverable(&self, path: &Path, reason: String) -> StateError {
        StateError::Unrecoverable {
            dir: self.dir.to_owned(),
            reason: format!("{}: {reason}", path.display()),
        }
    }
}

/// Remembers `change` if it is a registration, keeping the last [`RECENT_REGISTRATIONS`].
pub(crate) fn note_registration(recent: &mut VecDeque<Registered>, change: &Change) {
    if let Change::Queued {
        channel,
        uid,
        timeout,
        meta,
        ..
    } = change
    {
        if recent.len() == RECENT_REGISTRATIONS {
            recent.pop_front();
        }
        recent.push_back(Registered {
            channel: channel.clone(),
            uid: uid.clone(),
            timeout: *timeout,
            meta: meta.clone(),
        });
    }
}

/// Cuts a torn write off the end of the journal at `path`, keeping its first `intact` bytes (a
/// journal whose magic is incomplete becomes an empty journal). Once a newer generation starts,
/// this journal is no longer the last one, and a torn tail there would read as damage that
/// loses every later journal if an older generation ever has to be restored through it.
pub(super) fn cut_torn_write(path: &Path, intact: u64) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    if intact < format::JOURNAL_MAGIC.len() as u64 {
        file.set_len(0)?;
        file.write_all_at(format::JOURNAL_MAGIC, 0)?;
    } else {
        file.set_len(intact)?;
    }
    file.sync_all()
}
