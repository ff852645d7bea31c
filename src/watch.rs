//! Watching files for changes that have settled: the shared mechanism behind policy hot reload
//! and config reload.
//!
//! Folders are watched rather than files, so that atomic renames and editors' save patterns
//! (which replace the inode) are seen; events are filtered to the files asked for. A file written
//! in place is reported once it has been quiet for [`SETTLE`], so a half-written file is never
//! read; a file renamed into place is complete and is reported at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use notify::event::{ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Quiet time after the last change to a file before it is reported.
pub const SETTLE: Duration = Duration::from_millis(100);

/// A settled change to one watched file.
#[derive(Debug, Clone)]
pub struct Change {
    /// The file.
    pub path: PathBuf,
    /// When its first event in this burst was seen.
    pub seen_at: Instant,
}

/// Keeps the OS watcher alive; dropping it stops the events (and then the settle task).
pub struct FileWatcher {
    _watcher: notify::RecommendedWatcher,
}

impl std::fmt::Debug for FileWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileWatcher")
    }
}

/// Watches `files` and returns settled changes. Must be called inside a tokio runtime.
pub fn watch(files: &[PathBuf]) -> notify::Result<(FileWatcher, mpsc::UnboundedReceiver<Change>)> {
    let wanted: Vec<PathBuf> = files.to_vec();
    let (raw_tx, raw_rx) = mpsc::unbounded_channel::<(PathBuf, bool)>();
    let filter = wanted.clone();
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(event) => {
                if matches!(event.kind, EventKind::Access(_)) {
                    return;
                }
                // A file renamed into place is complete: no need to wait for writes to settle.
                let renamed_into = matches!(
                    event.kind,
                    EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
                );
                for path in event.paths {
                    if filter.contains(&path) {
                        let _ = raw_tx.send((path, renamed_into));
                    }
                }
            }
            Err(e) => warn!(cause = %e, "file watcher error"),
        })?;
    let mut folders: Vec<PathBuf> = wanted.iter().map(|p| folder_of(p)).collect();
    folders.sort();
    folders.dedup();
    for folder in &folders {
        watcher.watch(folder, RecursiveMode::NonRecursive)?;
        debug!(folder = %folder.display(), "watching folder");
    }
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(settle(raw_rx, tx));
    Ok((FileWatcher { _watcher: watcher }, rx))
}

fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Reports each path once it has been quiet for [`SETTLE`] (at once when renamed into place).
async fn settle(
    mut raw: mpsc::UnboundedReceiver<(PathBuf, bool)>,
    out: mpsc::UnboundedSender<Change>,
) {
    // path -> (first seen, due)
    let mut pending: HashMap<PathBuf, (Instant, Instant)> = HashMap::new();
    loop {
        let next_due = pending.values().map(|(_, due)| *due).min();
        let event = match next_due {
            Some(due) => tokio::select! {
                p = raw.recv() => p.map(Some),
                _ = tokio::time::sleep_until(due.into()) => Some(None),
            },
            None => raw.recv().await.map(Some),
        };
        match event {
            None => return,
            Some(Some((path, renamed_into))) => {
                let now = Instant::now();
                let due = if renamed_into { now } else { now + SETTLE };
                pending
                    .entry(path)
                    .and_modify(|e| e.1 = due)
                    .or_insert((now, due));
            }
            Some(None) => {
                let now = Instant::now();
                let due: Vec<PathBuf> = pending
                    .iter()
                    .filter(|(_, (_, due))| *due <= now)
                    .map(|(p, _)| p.clone())
                    .collect();
                for path in due {
                    let Some((seen_at, _)) = pending.remove(&path) else {
                        continue;
                    };
                    if out.send(Change { path, seen_at }).is_err() {
                        return;
                    }
                }
            }
        }
    }
}
