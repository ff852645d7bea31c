//! Hot reload: watch the folders of the configured policy files, wait for writes to settle,
//! recompile off the async runtime and hand the result to the driver.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{CompiledPolicy, Compiler, PolicyError};

/// Quiet time after the last change to a file before it is read: editors and `cp` write in
/// several steps, and a half-written file must not be compiled.
pub const SETTLE: Duration = Duration::from_millis(100);

/// A recompiled policy file (or why it could not be), for the driver to swap in.
#[derive(Debug)]
pub struct Update {
    /// The file that changed.
    pub path: PathBuf,
    /// The new version, or why the old one stays.
    pub result: Result<CompiledPolicy, PolicyError>,
    /// When the change was first seen.
    pub seen_at: Instant,
}

/// Keeps the watcher alive; dropping it stops watching.
pub struct Reloader {
    _watcher: notify::RecommendedWatcher,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reloader")
    }
}

/// Starts watching `paths` (through their folders, so that atomic renames and editors' save
/// patterns are seen) and sends an [`Update`] per settled change. Must run inside a tokio runtime.
pub fn watch(
    paths: &[Arc<Path>],
    compiler: Compiler,
    updates: mpsc::UnboundedSender<Update>,
) -> notify::Result<Reloader> {
    let wanted: Vec<PathBuf> = paths.iter().map(|p| p.to_path_buf()).collect();
    let (tx, rx) = mpsc::unbounded_channel::<PathBuf>();
    let filter = wanted.clone();
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(event) => {
                if matches!(event.kind, EventKind::Access(_)) {
                    return;
                }
                for path in event.paths {
                    if filter.contains(&path) {
                        let _ = tx.send(path);
                    }
                }
            }
            Err(e) => warn!(cause = %e, "policy watcher error"),
        })?;
    let mut folders: Vec<PathBuf> = wanted
        .iter()
        .map(|p| {
            p.parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        })
        .map(|p| {
            if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p
            }
        })
        .collect();
    folders.sort();
    folders.dedup();
    for folder in &folders {
        watcher.watch(folder, RecursiveMode::NonRecursive)?;
        debug!(folder = %folder.display(), "watching policy folder");
    }
    tokio::spawn(settle_and_compile(rx, compiler, updates));
    Ok(Reloader { _watcher: watcher })
}

/// Waits for each path to be quiet for [`SETTLE`], then compiles it on a blocking thread.
async fn settle_and_compile(
    mut changes: mpsc::UnboundedReceiver<PathBuf>,
    compiler: Compiler,
    updates: mpsc::UnboundedSender<Update>,
) {
    // path -> (first seen, last seen)
    let mut pending: HashMap<PathBuf, (Instant, Instant)> = HashMap::new();
    loop {
        let next_due = pending.values().map(|(_, last)| *last + SETTLE).min();
        let change = match next_due {
            Some(due) => tokio::select! {
                c = changes.recv() => c.map(Some),
                _ = tokio::time::sleep_until(due.into()) => Some(None),
            },
            None => changes.recv().await.map(Some),
        };
        match change {
            None => return,
            Some(Some(path)) => {
                let now = Instant::now();
                pending
                    .entry(path)
                    .and_modify(|e| e.1 = now)
                    .or_insert((now, now));
            }
            Some(None) => {
                let now = Instant::now();
                let due: Vec<PathBuf> = pending
                    .iter()
                    .filter(|(_, (_, last))| *last + SETTLE <= now)
                    .map(|(p, _)| p.clone())
                    .collect();
                for path in due {
                    let Some((seen_at, _)) = pending.remove(&path) else {
                        continue;
                    };
                    let compiler = compiler.clone();
                    let p = path.clone();
                    let result = tokio::task::spawn_blocking(move || compiler.compile(&p))
                        .await
                        .unwrap_or_else(|e| {
                            Err(PolicyError::Runtime(wasmtime::Error::msg(e.to_string())))
                        });
                    if updates
                        .send(Update {
                            path,
                            result,
                            seen_at,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    }
}
