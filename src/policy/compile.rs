//! Compiling and type-checking policy components.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, StoreLimits, UpdateDeadline};
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};

use super::budget::{thread_cpu_time, CallStart};
use super::cache::{Lookup, PolicyCache};
use super::PolicyError;

wasmtime::component::bindgen!({
    path: "wit",
    world: "policy",
});

/// The bindings of world `coordinosaur:policy/policy@0.2.0` (`wit/v0.2`): declared hooks and
/// registration fields read one at a time.
pub(crate) mod v2 {
    wasmtime::component::bindgen!({
        path: "wit/v0.2",
        world: "policy",
    });
    pub(crate) use coordinosaur::policy::types as wit;
}

pub(crate) use coordinosaur::policy::log::Level;
pub(crate) use coordinosaur::policy::types as wit;

/// A compiled policy of either version of the world, ready to instantiate.
pub(crate) enum Pre {
    /// `coordinosaur:policy@0.1.0`: every hook is called, with the whole job.
    V1(PolicyPre<StoreState>),
    /// `coordinosaur:policy@0.2.0`: only the hooks `init` declares.
    V2(v2::PolicyPre<StoreState>),
}

/// An instance's exports, of either version.
pub(crate) enum Bindings {
    /// A 0.1.0 policy.
    V1(Policy),
    /// A 0.2.0 policy and the hooks its `init` declared.
    V2(v2::Policy, v2::wit::Hooks),
}

/// Period of the epoch ticker: the resolution of call deadlines.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(1);

/// What a policy's store holds: an empty WASI context (no files, network, environment, stdio;
/// clocks read the engine time of the current call), the memory limiter and the channel name
/// for log lines.
pub(crate) struct StoreState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limits: StoreLimits,
    pub(crate) channel: Arc<str>,
    /// The call budget, in CPU time of the calling thread.
    pub(crate) budget: Duration,
    /// When the current call started, for its CPU-time budget.
    pub(crate) call_started: CallStart,
    /// The registration fields of the current call's job (JSON object text), read by a 0.2.0
    /// policy through `job-meta`; empty outside a call. A reused buffer: no allocation per
    /// call once it has grown to the largest registration seen.
    pub(crate) meta: String,
}

impl StoreState {
    /// Marks the start of a call (or of instantiation) for the deadline check.
    pub(crate) fn start_call(&mut self) {
        self.call_started = CallStart::now();
    }

    /// Called by wasmtime when the epoch deadline passes. The epoch ticks in wall-clock time, so
    /// a thread that was merely descheduled (a loaded host) would trip it while the policy used
    /// almost no CPU: only CPU time the call really used counts against the budget, up to a hard
    /// wall-clock cap of ten budgets.
    pub(crate) fn deadline_reached(&self) -> UpdateDeadline {
        let start = &self.call_started;
        let cpu_used = start.cpu_used(thread_cpu_time());
        if cpu_used < self.budget && start.elapsed() < self.budget * 10 {
            UpdateDeadline::Continue(1)
        } else {
            UpdateDeadline::Interrupt
        }
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit::Host for StoreState {}
impl v2::wit::Host for StoreState {}

impl v2::coordinosaur::policy::log::Host for StoreState {
    fn log(&mut self, level: v2::coordinosaur::policy::log::Level, message: String) {
        use v2::coordinosaur::policy::log::Level as L;
        let level = match level {
            L::Trace => Level::Trace,
            L::Debug => Level::Debug,
            L::Info => Level::Info,
            L::Warn => Level::Warn,
            L::Error => Level::Error,
        };
        coordinosaur::policy::log::Host::log(self, level, message);
    }
}

impl v2::coordinosaur::policy::job_meta::Host for StoreState {
    fn field(&mut self, name: String) -> Option<String> {
        super::meta::field(&self.meta, &name)
    }

    fn all(&mut self) -> String {
        if self.meta.is_empty() {
            "{}".to_owned()
        } else {
            self.meta.clone()
        }
    }
}

impl coordinosaur::policy::log::Host for StoreState {
    fn log(&mut self, level: Level, message: String) {
        let channel = &*self.channel;
        match level {
            Level::Trace => {
                tracing::trace!(target: "coordinosaur::policy::guest", channel, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "coordinosaur::policy::guest", channel, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "coordinosaur::policy::guest", channel, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "coordinosaur::policy::guest", channel, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "coordinosaur::policy::guest", channel, "{message}")
            }
        }
    }
}

/// WASI functions a policy gets as traps instead of wasmtime-wasi's versions. Those run through
/// `Handle::block_on`, which panics on the driver's thread (a tokio worker), so a wasip2 guest
/// that printed, panicked (the message goes to stderr), slept or polled would take the daemon
/// down; and stdio or waiting has no place in a decision anyway. Every other way to a blocking
/// function needs a stream or socket that the empty context never hands out.
const REFUSED: &[(&str, &str)] = &[
    ("wasi:cli/stdin@0.2.12", "get-stdin"),
    ("wasi:cli/stdout@0.2.12", "get-stdout"),
    ("wasi:cli/stderr@0.2.12", "get-stderr"),
    ("wasi:io/poll@0.2.12", "poll"),
    ("wasi:io/poll@0.2.12", "[method]pollable.ready"),
    ("wasi:io/poll@0.2.12", "[method]pollable.block"),
    ("wasi:sockets/udp-create-socket@0.2.12", "create-udp-socket"),
];

/// Replaces the [`REFUSED`] functions in `linker` with traps naming them.
fn refuse_blocking(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    for (instance, func) in REFUSED {
        let what = format!("{instance} {func}");
        linker
            .instance(instance)?
            .func_new(func, move |_, _, _, _| {
                Err(wasmtime::Error::msg(format!(
                "policies cannot use {what} (no stdio, no waiting; log through the `log` import)"
            )))
            })?;
    }
    linker.allow_shadowing(false);
    Ok(())
}

/// One policy file, compiled, linked and type-checked against the world.
pub struct CompiledPolicy {
    /// The file it came from.
    pub path: PathBuf,
    /// Ready to instantiate cheaply, once per channel.
    pub(crate) pre: Pre,
    /// How long reading and compiling (or loading from the cache) took.
    pub compile_time: Duration,
    /// Whether the compiled code came from the [`PolicyCache`] instead of a compile.
    pub from_cache: bool,
    /// The file's size in bytes.
    pub size: u64,
    /// SHA-256 of the file: tells a rewritten file from an unchanged one (a version rolled
    /// back is not tried again until its file changes).
    pub digest: [u8; 32],
}

impl std::fmt::Debug for CompiledPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPolicy")
            .field("path", &self.path)
            .field("compile_time", &self.compile_time)
            .field("from_cache", &self.from_cache)
            .finish()
    }
}

/// The wasmtime engine and linker shared by every policy, plus the epoch ticker thread.
/// Cloning shares them; the ticker stops when the last clone is dropped.
#[derive(Clone)]
pub struct Compiler {
    pub(crate) engine: Engine,
    linker: Arc<Linker<StoreState>>,
    /// Compiled components on disk, if configured.
    cache: Option<Arc<PolicyCache>>,
    /// Started by the first [`Compiler::compile`]: a daemon without policies (the shipped
    /// default) keeps a `Compiler` for policies a reload may add, and should not wake up every
    /// [`EPOCH_TICK`] for nothing (it did: ~14 % of the shipped daemon's CPU samples under load).
    ticker: Arc<Mutex<Option<Ticker>>>,
}

impl std::fmt::Debug for Compiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compiler")
    }
}

/// Increments the engine's epoch every [`EPOCH_TICK`] so that deadlines fire.
struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Compiler {
    /// Sets up wasmtime with epoch interruption and links the host side of the world:
    /// `log`, `types`, and WASI p2 with an empty context so `wasm32-wasip2` guests load too.
    pub fn new() -> Result<Compiler, PolicyError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(PolicyError::Runtime)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(PolicyError::Runtime)?;
        refuse_blocking(&mut linker).map_err(PolicyError::Runtime)?;
        Policy::add_to_linker::<_, HasSelf<StoreState>>(&mut linker, |s| s)
            .map_err(PolicyError::Runtime)?;
        v2::Policy::add_to_linker::<_, HasSelf<StoreState>>(&mut linker, |s| s)
            .map_err(PolicyError::Runtime)?;
        Ok(Compiler {
            engine,
            linker: Arc::new(linker),
            cache: None,
            ticker: Arc::default(),
        })
    }

    /// Starts the epoch ticker thread unless it runs: every policy's call deadline counts its
    /// ticks.
    fn start_ticker(&self) -> Result<(), PolicyError> {
        let mut ticker = self.ticker.lock().unwrap_or_else(|e| e.into_inner());
        if ticker.is_some() {
            return Ok(());
        }
        let stop = Arc::new(AtomicBool::new(false));
        let ticking = self.engine.weak();
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("policy-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match ticking.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })
            .map_err(|e| PolicyError::Runtime(e.into()))?;
        *ticker = Some(Ticker { stop });
        Ok(())
    }

    /// Whether the epoch ticker thread runs: from the first [`Compiler::compile`] on.
    pub fn ticking(&self) -> bool {
        self.ticker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// The imports and exports of a compiled policy, by name (e.g. `coordinosaur:policy/log@0.1.0`,
    /// `admit`), as `policy check` prints them.
    pub fn interface(&self, compiled: &CompiledPolicy) -> (Vec<String>, Vec<String>) {
        let component = match &compiled.pre {
            Pre::V1(pre) => pre.instance_pre().component(),
            Pre::V2(pre) => pre.instance_pre().component(),
        };
        interface_names(&self.engine, component)
    }

    /// Keeps compiled components in `cache` (and looks them up there) from now on.
    pub fn with_cache(mut self, cache: PolicyCache) -> Compiler {
        self.cache = Some(Arc::new(cache));
        self
    }

    /// Reads, compiles (or loads from the cache) and type-checks `path`. Blocking (tens of ms
    /// to compile, well under one from the cache): call it off the async runtime.
    pub fn compile(&self, path: &Path) -> Result<CompiledPolicy, PolicyError> {
        self.start_ticker()?;
        let started = Instant::now();
        let bytes = std::fs::read(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        let (component, from_cache) = self.component(path, &bytes)?;
        let interface = |cause| PolicyError::Interface {
            path: path.to_owned(),
            cause,
        };
        let instance_pre = self.linker.instantiate_pre(&component).map_err(interface)?;
        // 0.2.0 first; a component of neither version gets the error of the version it
        // imports from (0.1.0 when it names neither).
        let pre = match v2::PolicyPre::new(instance_pre.clone()) {
            Ok(pre) => Pre::V2(pre),
            Err(v2_error) => match PolicyPre::new(instance_pre) {
                Ok(pre) => Pre::V1(pre),
                Err(v1_error) => {
                    let (imports, _) = interface_names(&self.engine, &component);
                    let newer = imports.iter().any(|i| i.ends_with("@0.2.0"));
                    return Err(interface(if newer { v2_error } else { v1_error }));
                }
            },
        };
        Ok(CompiledPolicy {
            path: path.to_owned(),
            pre,
            compile_time: started.elapsed(),
            from_cache,
            size: bytes.len() as u64,
            digest: <sha2::Sha256 as sha2::Digest>::digest(&bytes).into(),
        })
    }

    /// The compiled component of `bytes`: from the cache if it holds a verified entry, else
    /// compiled now (and written to the cache). Cache trouble is logged, never fatal.
    fn component(&self, path: &Path, bytes: &[u8]) -> Result<(Component, bool), PolicyError> {
        if let Some(cache) = &self.cache {
            match cache.load(&self.engine, bytes) {
                Lookup::Hit(component) => return Ok((component, true)),
                Lookup::Miss => {}
                Lookup::Rejected(cause) => tracing::warn!(
                    policy = %path.display(),
                    cause,
                    "cached policy entry ignored; compiling again"
                ),
            }
        }
        let component =
            Component::from_binary(&self.engine, bytes).map_err(|cause| PolicyError::Compile {
                path: path.to_owned(),
                cause,
            })?;
        if let Some(cache) = &self.cache {
            if let Err(e) = cache.store(&self.engine, bytes, &component) {
                tracing::warn!(
                    policy = %path.display(),
                    cache = %cache.dir().display(),
                    cause = %e,
                    "cannot write the policy cache; the next load compiles again"
                );
            }
        }
        Ok((component, false))
    }
}

/// The import and export names of `component`.
fn interface_names(engine: &Engine, component: &Component) -> (Vec<String>, Vec<String>) {
    let ty = component.component_type();
    let imports = ty.imports(engine).map(|(n, _)| n.to_owned()).collect();
    let exports = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();
    (imports, exports)
}
