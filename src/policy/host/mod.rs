//! Running policies: one sandboxed instance per channel behind the engine's hooks.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};
use wasmtime::{Store, StoreLimitsBuilder};
use wasmtime_wasi::ResourceTable;

use crate::policy::compile::{v2, Bindings, CompiledPolicy, Compiler, Pre, StoreState, EPOCH_TICK};
use crate::policy::hooks::Hook;
use crate::policy::PolicyError;

mod shadow;
mod versions;

use crate::config::{PolicyRollback, PolicySandbox};
use crate::engine::ChannelView;
use shadow::Shadow;
use versions::Probation;

/// Counters of what the policies did, read through [`PolicyHost::stats`] by the integration
/// tests and benchmarks (and shown in the host's `Debug`). The daemon's metrics do not read
/// them: they are the `coordinosaur_policy_*` counters, emitted where these are counted.
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
    /// Swapped-in versions rolled back to the previous one after failing too often.
    pub rollbacks: u64,
}

/// Which instance of a channel a call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// The channel's `policy`: its answers decide.
    Live = 0,
    /// The channel's `policy_shadow`: same calls, answers only compared.
    Shadow = 1,
}

impl Role {
    /// The file this role runs for a channel with `options`.
    fn path<'v>(self, view: &ChannelView<'v>) -> Option<&'v Arc<Path>> {
        match self {
            Role::Live => view.options.policy.as_ref(),
            Role::Shadow => view.options.policy_shadow.as_ref(),
        }
    }
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

    /// The working instance, if the slot has one and runs `path` with `config` (or already
    /// refused to move to them).
    fn ready(&self, path: &Path, config: &str) -> Option<&Live> {
        let live = self.live.as_ref()?;
        (self.broken.is_none() && self.settled(path, config)).then_some(live)
    }

    /// Whether the slot runs `path` with `config`, or already refused to move to them.
    fn settled(&self, path: &Path, config: &str) -> bool {
        let runs = same_path(&self.compiled.path, path) && *self.config == *config;
        runs || self
            .refused
            .as_ref()
            .is_some_and(|(p, c)| same_path(p, path) && **c == *config)
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

impl Live {
    /// Runs `f` on the instance within a budget of `ticks` epochs; records its duration under
    /// `timed`'s hook when given (only when metrics are exported: the clock pair and the
    /// histogram's key cost ~0.1 us a call).
    fn invoke<R>(
        &mut self,
        ticks: u64,
        timed: Option<Hook>,
        f: impl FnOnce(&Bindings, &mut Store<StoreState>) -> wasmtime::Result<R>,
    ) -> wasmtime::Result<R> {
        self.store.set_epoch_deadline(ticks);
        self.store.data_mut().start_call();
        let started = timed.map(|hook| (hook, std::time::Instant::now()));
        let result = f(&self.bindings, &mut self.store);
        if let Some((hook, started)) = started {
            metrics::histogram!("coordinosaur_policy_call_seconds", "hook" => hook.as_str())
                .record(started.elapsed().as_secs_f64());
        }
        result
    }
}

/// Runs each channel's policy; implements the engine's hooks.
pub struct PolicyHost {
    compiler: Compiler,
    /// One compiled component per file, shared by every channel using it. Filled only by
    /// `preload`, `install` and `swap` with policies compiled elsewhere: the host runs on the
    /// driver's thread and never compiles.
    compiled: HashMap<Arc<Path>, Arc<CompiledPolicy>>,
    /// Instances by channel name: `[Role::Live]` decides, `[Role::Shadow]` is compared.
    slots: [HashMap<Arc<str>, Slot>; 2],
    /// Comparison counts of each channel with a shadow policy.
    shadows: HashMap<Arc<str>, Shadow>,
    /// `[policy_rollback]`.
    rollback: PolicyRollback,
    /// Versions swapped in recently, by file.
    probation: HashMap<Arc<Path>, Probation>,
    /// Files rolled back, with the digest of the version that failed: not tried again until
    /// the file changes.
    rejected: HashMap<Arc<Path>, [u8; 32]>,
    /// Channels moved back to a previous version, for the driver to re-rank their queues.
    rolled_back: Vec<Arc<str>>,
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
            .field("instances", &self.slots[Role::Live as usize].len())
            .field("shadows", &self.slots[Role::Shadow as usize].len())
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
            slots: [HashMap::new(), HashMap::new()],
            shadows: HashMap::new(),
            rollback: PolicyRollback::default(),
            probation: HashMap::new(),
            rejected: HashMap::new(),
            rolled_back: Vec::new(),
            // +1: the current tick may be nearly over when the call starts.
            deadline_ticks: sandbox.call_timeout.0.div_ceil(tick) + 1,
            max_memory: sandbox.max_memory,
            budget: sandbox.call_timeout.as_duration(),
            clock: Arc::new(AtomicU64::new(0)),
            stats: PolicyStats::default(),
        }
    }

    /// Uses `rollback` for versions swapped in from now on and for shadows' suspension.
    pub fn set_rollback(&mut self, rollback: PolicyRollback) {
        self.rollback = rollback;
    }

    /// Channels whose policy was rolled back since the last call: their waiting jobs need the
    /// restored version's priorities (`Engine::readmit_channels`).
    pub fn take_rolled_back(&mut self) -> Vec<Arc<str>> {
        std::mem::take(&mut self.rolled_back)
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
        self.prepare(
            Role::Live,
            &Arc::from(channel),
            &Arc::from(path),
            &Arc::from(config),
        )
    }

    /// The hooks `channel`'s instance gets called, by WIT name: all three for a 0.1.0 policy,
    /// those its `init` declared for 0.2.0; `None` without a live instance. For `policy check`.
    pub fn called_hooks(&self, channel: &str) -> Option<Vec<&'static str>> {
        let live = self.slots[Role::Live as usize]
            .get(channel)?
            .live
            .as_ref()?;
        let hooks = [Hook::Admit, Hook::BeforeGrant, Hook::OnEvent];
        Some(
            hooks
                .into_iter()
                .filter(|h| h.declared_by(&live.bindings))
                .map(Hook::as_str)
                .collect(),
        )
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
            call_started: super::budget::CallStart::now(),
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

    /// Runs `f` on the channel's instance for `role`, creating it if needed. [`Call::Skipped`]
    /// when the channel has no policy for that role or the policy declared (0.2.0 `init`) that
    /// it does not implement `hook`: nothing is called; [`Call::Failed`] when there is no
    /// usable instance or the call failed (already logged and counted; the instance is
    /// dropped).
    pub(super) fn call_as<R>(
        &mut self,
        role: Role,
        view: &ChannelView<'_>,
        hook: Hook,
        f: impl FnOnce(&Bindings, &mut Store<StoreState>) -> wasmtime::Result<R>,
    ) -> Call<R> {
        let Some(path) = role.path(view) else {
            return Call::Skipped;
        };
        if !self.probation.is_empty() {
            self.probation.retain(|_, p| !p.breaker.expired(view.now));
        }
        self.clock.store(view.now.0, Ordering::Relaxed);
        match self.instance_for(role, view, path, hook) {
            Ok(true) => {}
            Ok(false) => return Call::Skipped,
            Err(cause) => {
                self.stats.calls += 1;
                return self.failed(role, view, hook, &cause);
            }
        }
        let ticks = self.deadline_ticks;
        let timed = (role == Role::Live && crate::metrics::installed()).then_some(hook);
        let Some(live) = self.slots[role as usize]
            .get_mut(view.channel)
            .and_then(|s| s.live.as_mut())
        else {
            self.stats.calls += 1;
            return self.failed(role, view, hook, "no policy instance");
        };
        self.stats.calls += 1;
        match live.invoke(ticks, timed, f) {
            Ok(r) => Call::Done(r),
            Err(e) => {
                // A trapped instance cannot be entered again: drop it, rebuild on the next call.
                if let Some(slot) = self.slots[role as usize].get_mut(view.channel) {
                    slot.live = None;
                }
                let cause = name_memory_cap(format!("{e:#}"), self.max_memory);
                self.failed(role, view, hook, &cause)
            }
        }
    }

    /// Whether `view`'s channel has an instance of `path` for `role` that implements `hook`
    /// (`Ok(false)`: it does not; nothing is to be called). The common case (a working
    /// instance of this file and config) is one lookup by name, without allocating; first use,
    /// a new config or a rebuild goes through `prepare`. `Err` when no instance can be had.
    fn instance_for(
        &mut self,
        role: Role,
        view: &ChannelView<'_>,
        path: &Arc<Path>,
        hook: Hook,
    ) -> Result<bool, String> {
        let config = &view.options.policy_config;
        let slots = &self.slots[role as usize];
        if let Some(live) = slots.get(view.channel).and_then(|s| s.ready(path, config)) {
            return Ok(hook.declared_by(&live.bindings));
        }
        let (channel, path) = (Arc::from(view.channel), path.clone());
        self.prepare(role, &channel, &path, config)?;
        let live = (self.slots[role as usize].get(view.channel)).and_then(|s| s.live.as_ref());
        Ok(live.is_none_or(|l| hook.declared_by(&l.bindings)))
    }

    /// Makes sure `channel` has a usable instance for `path` and `config`, or keeps its
    /// previous one when they are refused. `Err` when there is no usable instance.
    fn prepare(
        &mut self,
        role: Role,
        channel: &Arc<str>,
        path: &Arc<Path>,
        config: &Arc<str>,
    ) -> Result<(), String> {
        // Same file and config: keep the slot even if it holds an older version of the file.
        // `swap` moves every slot it can to a new version; a slot still on the old one is a
        // channel whose `init` refused the new version, and it keeps its previous policy.
        if !self.slots[role as usize]
            .get(channel)
            .is_some_and(|s| s.settled(path, config))
        {
            self.switch(role, channel, path, config)?;
        }
        let slot = self.slots[role as usize]
            .get(channel)
            .ok_or_else(|| "no policy instance".to_owned())?;
        if let Some(reason) = &slot.broken {
            return Err(reason.clone());
        }
        if slot.live.is_none() {
            // Rebuild from the slot's own version, which may be older than the file's latest.
            let (compiled, config) = (slot.compiled.clone(), slot.config.clone());
            let rebuilt = self.instantiate(&compiled, channel, &config);
            let slot = self.slots[role as usize]
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
        role: Role,
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
                self.slots[role as usize].insert(channel.clone(), slot);
                return Ok(());
            }
            Ok((_, Err(cause))) | Err(cause) => cause,
        };
        if let Some(previous) = self.slots[role as usize].get_mut(channel) {
            if previous.broken.is_none() {
                warn!(
                    %channel,
                    policy = %path.display(),
                    ?role,
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
            self.slots[role as usize].insert(channel.clone(), slot);
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

    fn failed<R>(
        &mut self,
        role: Role,
        view: &ChannelView<'_>,
        hook: Hook,
        cause: &str,
    ) -> Call<R> {
        self.stats.failures += 1;
        match role {
            Role::Live => {
                metrics::counter!("coordinosaur_policy_failures_total", "hook" => hook.as_str())
                    .increment(1);
                warn!(channel = view.channel, ?hook, cause, fallback = ?view.options.on_policy_error, "policy call failed");
                self.count_probation_failure(view);
            }
            Role::Shadow => self.shadow_failed(view, hook, cause),
        }
        Call::Failed
    }
}

/// Whether two policy paths name the same file: the same bytes (one `memcmp`, the usual case
/// on every call), else `Path`'s own component-wise comparison.
fn same_path(a: &Path, b: &Path) -> bool {
    a.as_os_str() == b.as_os_str() || a == b
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
