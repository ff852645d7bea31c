//! Live config reload: SIGHUP, or a settled change of the config file, re-reads it. A config that
//! validates, and whose newly named policy files compile, goes to the driver together with
//! those compiled policies (compiled here, off the driver's thread), and the driver applies it
//! to every channel; one that does not keeps the current config and says why. Policy files
//! named by the new config are watched from then on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::{Config, ConfigError};
use crate::policy::hot_reload::{self, Update};
use crate::policy::{CompiledPolicy, Compiler, PolicyError};
use crate::watch::{self, FileWatcher};

/// A reloaded config for the driver.
#[derive(Debug)]
pub struct NewConfig {
    /// The validated config.
    pub config: Config,
    /// The policy files it names that the current config did not, already compiled: the
    /// driver hands them to the policy host before applying the config.
    pub policies: Vec<CompiledPolicy>,
}

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
            match hot_reload::watch(&paths, self.compiler.clone(), self.updates.clone()) {
                Ok(w) => self.watcher = Some(w),
                Err(e) => warn!(cause = %e, "cannot watch policy files; they will not hot-reload"),
            }
        }
        self.paths = paths;
    }

    /// Compiles the policy files `config` names that are not watched yet (the watched ones are
    /// compiled and kept current by hot reload), off the async runtime.
    async fn compile_new(&self, config: &Config) -> Result<Vec<CompiledPolicy>, PolicyError> {
        let new: Vec<_> = config
            .policy_paths()
            .into_iter()
            .filter(|p| !self.paths.contains(p))
            .collect();
        hot_reload::compile_off_thread(self.compiler.clone(), new).await
    }
}

/// Re-reads `path` on SIGHUP or when it changes, sending each valid config to `to_driver`, until
/// the driver goes away.
pub async fn run(
    path: PathBuf,
    mut policies: PolicyWatch,
    to_driver: mpsc::UnboundedSender<NewConfig>,
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
        let new = match prepare(&path, &policies).await {
            Ok(new) => new,
            Err(e) => {
                warn!(trigger = why, cause = %e, "config reload failed; keeping the current config");
                continue;
            }
        };
        info!(config = %path.display(), trigger = why, new_policies = new.policies.len(), "config reloaded");
        let paths = new.config.policy_paths();
        if to_driver.send(new).is_err() {
            return;
        }
        // Watch only after sending: a hot reload of a new file then reaches the driver after
        // the config that installs the version compiled here, never before it.
        policies.follow(paths);
    }
}

/// Why a reloaded config is not applied.
#[derive(Debug, thiserror::Error)]
enum ReloadError {
    /// The file does not load or validate.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A policy file it names for the first time cannot be used.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// Loads the config at `path` and compiles the policy files it newly names.
async fn prepare(path: &Path, policies: &PolicyWatch) -> Result<NewConfig, ReloadError> {
    let config = Config::load(path)?;
    let policies = policies.compile_new(&config).await?;
    Ok(NewConfig { config, policies })
}
