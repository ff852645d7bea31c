//! Running policies: one sandboxed instance per channel behind the engine's hooks.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};
use wasmtime::{Store, StoreLimitsBuilder};
use wasmtime_wasi::ResourceTable;

use super::compile::{v2, Bindings, CompiledPolicy, Compiler, Pre, StoreState, EPOCH_TICK};
use super::hooks::Hook;
use super::PolicyError;
use crate::config::PolicySandbox;
use crate::engine::ChannelView;

/// Counters of what the policies did, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyStats {
    /// Hook calls made.
    pub calls: u64,
    /// Calls that trapped, ran out of time or memory, or found no usable instance.
    pub failures: u64,
    /// Instances created (first use, after a failure, after a swap).
    pub instantiations: u64,
    /// Policy files swapped in by a reload.
    pub swaps: u64,
}

/// A channel's instance of its policy.
struct Slot {
    /// The compiled policy the instance came from; a swap replaces it.
    compiled: Arc<CompiledPolicy>,
    /// The channel's `policy_config` (JSON), handed to `init`.
    config: Arc<str>,
    /// `None` after a failure: rebuilt on the next call. `init` failures are remembered in
    /// `broken` instead, so a bad config is not retried on every call.
    live: Option<Live>,
    /// Why `init` refused, until a swap brings a new policy.
    broken: Option<String>,
    /// A file and config (from a config reload) whose `init` refused while this slot worked:
    /// the slot keeps its own policy and config, and the refused pair is not tried again until
    /// the channel's options or that file change.
    refused: Option<(Arc<Path>, Arc<str>)>,
}

impl Slot {
    /// A slot holding a working instance.
    fn live(compiled: Arc<CompiledPolicy>, config: Arc<str>, live: Live) -> Slot {
        Slot {
            compiled,
            config,
            live: Some(live),
            broken: None,
            refused: None,
        }
    }

    /// Whether the slot runs `path` with `config`, or already refused to move to them.
    fn settled(&self, path: &Path, config: &str) -> bool {
        let runs = *self.compiled.path == *path && *self.config == *config;
        runs || self
            .refused
            .as_ref()
            .is_some_and(|(p, c)| **p == *path && **c == *config)
    }
}

/// What became of a hook call.
pub(super) enum Call<R> {
    /// The policy answered.
    Done(R),
    /// The policy does not implement the hook (or the channel has none): the built-in decision.
    Skipped,
    /// The call failed (logged and counted): the `on_policy_error` fallback.
    Failed,
}

/// A store and the instance living in it.
struct Live {
    store: Store<StoreState>,
    bindings: Bindings,
}

/// Runs each channel's policy; implements the engine's hooks.
pub struct PolicyHost {
    compiler: Compiler,
    /// One compiled component per file, shared by every channel using it. Filled only by
    /// `preload`, `install` and `swap` with policies compiled elsewhere: the host runs on the
    /// driver's thread and never compiles.
    compiled: HashMap<Arc<Path>, Arc<CompiledPolicy>>,
    /// Instances by channel name.
    slots: HashMap<Arc<str>, Slot>,
    /// Epoch ticks one call may take.
    deadline_ticks: u64,
    /// CPU time one call may use.
    budget: Duration,
    /// Linear memory one instance may use.
    max_memory: usize,
    /// Engine time of the current call, read by the guests' clocks.
    clock: Arc<AtomicU64>,
    stats: PolicyStats,
}

impl std::fmt::Debug for PolicyHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyHost")
            .field("policies", &self.compiled.len())
            .field("instances", &self.slots.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl PolicyHost {
    /// A host with the given sandbox, sharing `compiler`'s engine.
    pub fn new(compiler: Compiler, sandbox: &PolicySandbox) -> PolicyHost {
        let tick = EPOCH_TICK.as_millis().max(1) as u64;
        PolicyHost {
            compiler,
            compiled: HashMap::new(),
            slots: HashMap::new(),
            // +1: the current tick may be nearly over when the call starts.
            deadline_ticks: sandbox.call_timeout.0.div_ceil(tick) + 1,
            max_memory: sandbox.max_memory,
            budget: sandbox.call_timeout.as_duration(),
            clock: Arc::new(AtomicU64::new(0)),
            stats: PolicyStats::default(),
        }
    }

    /// Compiles every file in `paths` now, so that a bad policy stops start-up with its reason.
    pub fn preload(&mut self, paths: &[Arc<Path>]) -> Result<(), PolicyError> {
        for path in paths {
            let compiled = self.compiler.compile(path)?;
            info!(policy = %path.display(), compile_ms = compiled.compile_time.as_millis(), cached = compiled.from_cache, "policy loaded");
            self.compiled.insert(path.clone(), Arc::new(compiled));
        }
        Ok(())
    }

    /// Takes the policy files a reloaded config names for the first time, compiled off the
    /// driver's thread by the config task, so that channels can move to them.
    pub fn install(&mut self, policies: Vec<CompiledPolicy>) {
        for compiled in policies {
            let path: Arc<Path> = Arc::from(compiled.path.as_path());
            info!(policy = %path.display(), compile_ms = compiled.compile_time.as_millis(), cached = compiled.from_cache, "policy loaded");
            self.forget_refusals(&path);
            self.compiled.insert(path, Arc::new(compiled));
        }
    }

    /// Creates `channel`'s instance of the installed policy `path` with `config` and runs `init`,
    /// as the first hook call would; `Err` with the reason the daemon would log. For `policy
    /// check`.
    pub fn init_channel(&mut self, channel: &str, path: &Path, config: &str) -> Result<(), String> {
        self.prepare(&Arc::from(channel), &Arc::from(path), &Arc::from(config))
    }

    /// The hooks `channel`'s instance gets called, by WIT name: all three for a 0.1.0 policy,
    /// those its `init` declared for 0.2.0; `None` without a live instance. For `policy check`.
    pub fn called_hooks(&self, channel: &str) -> Option<Vec<&'static str>> {
        let live = self.slots.get(channel)?.live.as_ref()?;
        let hooks = [Hook::Admit, Hook::BeforeGrant, Hook::OnEvent];
        Some(
            hooks
                .into_iter()
                .filter(|h| h.declared_by(&live.bindings))
                .map(Hook::as_str)
                .collect(),
        )
    }

    /// Lets channels that refused (a version of) `path` try it again on their next call.
    fn forget_refusals(&mut self, path: &Path) {
        for slot in self.slots.values_mut() {
            if slot.refused.as_ref().is_some_and(|(p, _)| **p == *path) {
                slot.refused = None;
            }
        }
    }

    /// Swaps in a newly compiled version of a file. Channels using it get a new instance
    /// (with `init` run) right away; a channel whose `init` fails keeps its old instance.
    /// Returns the channels now running the new version.
    pub fn swap(&mut self, compiled: CompiledPolicy) -> Vec<Arc<str>> {
        let path: Arc<Path> = Arc::from(compiled.path.as_path());
        let compiled = Arc::new(compiled);
        self.compiled.insert(path.clone(), compiled.clone());
        self.stats.swaps += 1;
        // A config that this file's old version refused gets another try on the next call.
        self.forget_refusals(&path);
        let mut moved = Vec::new();
        let channels: Vec<Arc<str>> = self
            .slots
            .iter()
            .filter(|(_, s)| *s.compiled.path == *path)
            .map(|(c, _)| c.clone())
            .collect();
        for channel in channels {
            let Some(slot) = self.slots.get(&channel) else {
                continue;
            };
            let config = slot.config.clone();
            match self.instantiate(&compiled, &channel, &config) {
                Ok(live) => {
                    self.slots
                        .insert(channel.clone(), Slot::live(compiled.clone(), config, live));
                    moved.push(channel);
                }
                Err(cause) => {
                    warn!(%channel, policy = %path.display(), cause, "new policy refused; channel keeps the old one");
                }
            }
        }
        moved
    }

    /// The counters so far.
    pub fn stats(&self) -> PolicyStats {
        self.stats
    }

    /// Creates a store and instance and runs `init`.
    fn instantiate(
        &mut self,
        compiled: &CompiledPolicy,
        channel: &Arc<str>,
        config: &str,
    ) -> Result<Live, String> {
        self.stats.instantiations += 1;
        let wasi = super::wasi::context(channel, &self.clock);
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.max_memory)
            .trap_on_grow_failure(true)
            .build();
        let state = StoreState {
            wasi,
            table: ResourceTable::new(),
            limits,
            channel: channel.clone(),
            budget: self.budget,
            call_started: (Duration::ZERO, std::time::Instant::now()),
            meta: String::new(),
        };
        let mut store = Store::new(&self.compiler.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|ctx| Ok(ctx.data().deadline_reached()));
        store.data_mut().start_call();
        // A fresh store's deadline is 0: set it before instantiating or start-up code traps.
        store.set_epoch_deadline(self.deadline_ticks);
        let max_memory = self.max_memory;
        let instantiated = match &compiled.pre {
            Pre::V1(pre) => pre.instantiate(&mut store).map(Bindings::V1),
            Pre::V2(pre) => pre
                .instantiate(&mut store)
                .map(|p| Bindings::V2(p, v2::wit::Hooks::empty())),
        };
        let bindings =
            instantiated.map_err(|e| name_memory_cap(format!("instantiate: {e:#}"), max_memory))?;
        store.set_epoch_deadline(self.deadline_ticks);
        store.data_mut().start_call();
        let init = match bindings {
            Bindings::V1(policy) => policy
                .call_init(&mut store, config)
                .map(|r| r.map(|()| Bindings::V1(policy))),
            Bindings::V2(policy, _) => policy
                .call_init(&mut store, channel, config)
                .map(|r| r.map(|hooks| Bindings::V2(policy, hooks))),
        };
        match init {
            Ok(Ok(bindings)) => Ok(Live { store, bindings }),
            Ok(Err(reason)) => Err(format!("init refused the config: {reason}")),
            Err(e) => Err(name_memory_cap(format!("init failed: {e:#}"), max_memory)),
        }
    }

    /// Runs `f` on the channel's instance, creating it if needed. [`Call::Skipped`] when the
    /// policy declared (0.2.0 `init`) that it does not implement `hook`: nothing is called;
    /// [`Call::Failed`] when there is no usable instance or the call failed (already logged and
    /// counted; the instance is dropped).
    pub(super) fn call<R>(
        &mut self,
        view: &ChannelView<'_>,
        hook: Hook,
        f: impl FnOnce(&Bindings, &mut Store<StoreState>) -> wasmtime::Result<R>,
    ) -> Call<R> {
        let Some(path) = view.options.policy.as_ref() else {
            return Call::Skipped;
        };
        self.clock.store(view.now.0, Ordering::Relaxed);
        // The common case (a working instance of this file and config) looks the slot up by
        // name without allocating; first use, a new config or a rebuild goes through `prepare`.
        let ready = self.slots.get(view.channel).is_some_and(|s| {
            s.live.is_some() && s.broken.is_none() && s.settled(path, &view.options.policy_config)
        });
        if !ready {
            let (channel, path) = (Arc::from(view.channel), path.clone());
            if let Err(cause) = self.prepare(&channel, &path, &view.options.policy_config) {
                self.stats.calls += 1;
                return self.failed(view, hook, &cause);
            }
        }
        let ticks = self.deadline_ticks;
        let Some(live) = self
            .slots
            .get_mut(view.channel)
            .and_then(|s| s.live.as_mut())
        else {
            self.stats.calls += 1;
            return self.failed(view, hook, "no policy instance");
        };
        if !hook.declared_by(&live.bindings) {
            return Call::Skipped;
        }
        self.stats.calls += 1;
        live.store.set_epoch_deadline(ticks);
        live.store.data_mut().start_call();
        let started = std::time::Instant::now();
        let result = f(&live.bindings, &mut live.store);
        metrics::histogram!("coordinosaur_policy_call_seconds", "hook" => hook.as_str())
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(r) => Call::Done(r),
            Err(e) => {
                // A trapped instance cannot be entered again: drop it, rebuild on the next call.
                if let Some(slot) = self.slots.get_mut(view.channel) {
                    slot.live = None;
                }
                let cause = name_memory_cap(format!("{e:#}"), self.max_memory);
                self.failed(view, hook, &cause)
            }
        }
    }

    /// Makes sure `channel` has a usable instance for `path` and `config`, or keeps its
    /// previous one when they are refused. `Err` when there is no usable instance.
    fn prepare(
        &mut self,
        channel: &Arc<str>,
        path: &Arc<Path>,
        config: &Arc<str>,
    ) -> Result<(), String> {
        // Same file and config: keep the slot even if it holds an older version of the file.
        // `swap` moves every slot it can to a new version; a slot still on the old one is a
        // channel whose `init` refused the new version, and it keeps its previous policy.
        if !self
            .slots
            .get(channel)
            .is_some_and(|s| s.settled(path, config))
        {
            self.switch(channel, path, config)?;
        }
        let slot = self
            .slots
            .get(channel)
            .ok_or_else(|| "no policy instance".to_owned())?;
        if let Some(reason) = &slot.broken {
            return Err(reason.clone());
        }
        if slot.live.is_none() {
            // Rebuild from the slot's own version, which may be older than the file's latest.
            let (compiled, config) = (slot.compiled.clone(), slot.config.clone());
            let rebuilt = self.instantiate(&compiled, channel, &config);
            let slot = self
                .slots
                .get_mut(channel)
                .ok_or_else(|| "no policy instance".to_owned())?;
            match rebuilt {
                Ok(live) => slot.live = Some(live),
                Err(cause) => {
                    slot.broken = Some(cause.clone());
                    return Err(cause);
                }
            }
        }
        Ok(())
    }

    /// Moves `channel` to `path` with `config` (new options from a config reload, or first
    /// use): a new instance with `init` run, built before the old one is dropped. If that
    /// fails while the channel has a working policy, the channel keeps it, with its config.
    fn switch(
        &mut self,
        channel: &Arc<str>,
        path: &Arc<Path>,
        config: &Arc<str>,
    ) -> Result<(), String> {
        let attempt = self.compiled_for(path).map(|compiled| {
            let live = self.instantiate(&compiled, channel, config);
            (compiled, live)
        });
        let cause = match attempt {
            Ok((compiled, Ok(live))) => {
                let slot = Slot::live(compiled, config.clone(), live);
                self.slots.insert(channel.clone(), slot);
                return Ok(());
            }
            Ok((_, Err(cause))) | Err(cause) => cause,
        };
        if let Some(previous) = self.slots.get_mut(channel) {
            if previous.broken.is_none() {
                warn!(
                    %channel,
                    policy = %path.display(),
                    cause,
                    kept = %previous.compiled.path.display(),
                    "new policy config refused; the channel keeps its previous policy"
                );
                previous.refused = Some((path.clone(), config.clone()));
                return Ok(());
            }
        }
        if let Ok(compiled) = self.compiled_for(path) {
            // Nothing to keep: remember the refusal so that `init` is not retried on every call.
            let slot = Slot {
                compiled,
                config: config.clone(),
                live: None,
                broken: Some(cause.clone()),
                refused: None,
            };
            self.slots.insert(channel.clone(), slot);
        }
        Err(cause)
    }

    /// The compiled policy of `path`. Never compiles: every file a config names is compiled
    /// before the config reaches the driver (at start-up, or by the config reload task).
    fn compiled_for(&self, path: &Arc<Path>) -> Result<Arc<CompiledPolicy>, String> {
        self.compiled.get(path).cloned().ok_or_else(|| {
            format!(
                "policy {} was not compiled before use (a bug: it is compiled with the config)",
                path.display()
            )
        })
    }

    fn failed<R>(&mut self, view: &ChannelView<'_>, hook: Hook, cause: &str) -> Call<R> {
        self.stats.failures += 1;
        metrics::counter!("coordinosaur_policy_failures_total", "hook" => hook.as_str())
            .increment(1);
        warn!(channel = view.channel, ?hook, cause, fallback = ?view.options.on_policy_error, "policy call failed");
        Call::Failed
    }
}

/// `cause`, plus the setting to raise when the guest was stopped by the memory cap: large
/// components (a JavaScript or Python runtime) can need more than the default at instantiation.
fn name_memory_cap(cause: String, max_memory: usize) -> String {
    // wasmtime's text for a growth refused under `trap_on_grow_failure` (see `instantiate`).
    if cause.contains("growing memory") {
        format!("{cause} (over the memory cap: raise [policy_sandbox] max_memory, now {max_memory} bytes)")
    } else {
        cause
    }
}
