//! Live config reload: SIGHUP, or a settled change of the config file, re-reads it. A config that
//! validates goes to the driver, which applies it to every channel; one that does not keeps the
//! current config and says why. Policy files named by the new config are watched from then on.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::Config;
use crate::policy::reload::{self as policy_reload, Update};
use crate::policy::Compiler;
use crate::watch::{self, FileWatcher};

/// What the config task needs to keep policy watching in step with the config.
#[derive(Debug)]
pub struct PolicyWatch {
    /// Compiles changed policy files.
    pub compiler: Compiler,
    /// Where recompiled policies go (the driver).
    pub updates: mpsc::UnboundedSender<Update>,
    /// The current policy folder watcher.
    pub watcher: Option<FileWatcher>,
    /// The files it watches.
    pub paths: Vec<Arc<std::path::Path>>,
}

impl PolicyWatch {
    /// Watches `paths` instead of the current set (no-op when unchanged).
    pub fn follow(&mut self, paths: Vec<Arc<std::path::Path>>) {
        if paths == self.paths {
            return;
        }
        self.watcher = None;
        if !paths.is_empty() {
            match policy_reload::watch(&paths, self.compiler.clone(), self.updates.clone()) {
                Ok(w) => self.watcher = Some(w),
                Err(e) => warn!(cause = %e, "cannot watch policy files; they will not hot-reload"),
            }
        }
        self.paths = paths;
    }
}

/// Re-reads `path` on SIGHUP or when it changes, sending each valid config to `to_driver`, until
/// the driver goes away.
pub async fn run(
    path: PathBuf,
    mut policies: PolicyWatch,
    to_driver: mpsc::UnboundedSender<Config>,
) {
    let path = std::path::absolute(&path).unwrap_or(path);
    let (_watcher, mut changes) = match watch::watch(std::slice::from_ref(&path)) {
        Ok((w, c)) => (Some(w), c),
        Err(e) => {
            warn!(config = %path.display(), cause = %e, "cannot watch the config file; reload with SIGHUP");
            (None, mpsc::unbounded_channel().1)
        }
    };
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(cause = %e, "cannot listen for SIGHUP");
            None
        }
    };
    loop {
        let why = tokio::select! {
            Some(_) = changes.recv() => "file changed",
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
            _ = to_driver.closed() => return,
        };
        match Config::load(&path) {
            Ok(config) => {
                info!(config = %path.display(), trigger = why, "config reloaded");
                policies.follow(config.policy_paths());
                if to_driver.send(config).is_err() {
                    return;
                }
            }
            Err(e) => {
                warn!(trigger = why, cause = %e, "config reload failed; keeping the current config")
            }
        }
    }
}
