//! Hot reload: recompile a changed policy file off the async runtime and hand it to the driver,
//! which swaps it in between two events. [`compile_off_thread`] also compiles the files a
//! reloaded config names, before that config reaches the driver.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::{CompiledPolicy, Compiler, PolicyError};
use crate::watch::{self, FileWatcher};

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

/// Watches `paths` and sends an [`Update`] per settled change; dropping the returned watcher
/// stops it. Must run inside a tokio runtime.
pub fn watch(
    paths: &[Arc<Path>],
    compiler: Compiler,
    updates: mpsc::UnboundedSender<Update>,
) -> notify::Result<FileWatcher> {
    let files: Vec<PathBuf> = paths.iter().map(|p| p.to_path_buf()).collect();
    let (watcher, mut changes) = watch::watch(&files)?;
    tokio::spawn(async move {
        while let Some(change) = changes.recv().await {
            let compiler = compiler.clone();
            let path = change.path.clone();
            let result = tokio::task::spawn_blocking(move || compiler.compile(&path))
                .await
                .unwrap_or_else(|e| Err(PolicyError::Runtime(wasmtime::Error::msg(e.to_string()))));
            let update = Update {
                path: change.path,
                result,
                seen_at: change.seen_at,
            };
            if updates.send(update).is_err() {
                return;
            }
        }
    });
    Ok(watcher)
}

/// Compiles `paths` on a blocking thread, off the async runtime (and so off the driver's
/// thread). The first file that fails stops it, with its reason.
pub async fn compile_off_thread(
    compiler: Compiler,
    paths: Vec<Arc<Path>>,
) -> Result<Vec<CompiledPolicy>, PolicyError> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    tokio::task::spawn_blocking(move || paths.iter().map(|p| compiler.compile(p)).collect())
        .await
        .unwrap_or_else(|e| Err(PolicyError::Runtime(wasmtime::Error::msg(e.to_string()))))
}
