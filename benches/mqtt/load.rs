//! The load generator: the latency run (one worker, sequential cycles on an idle channel) and
//! the throughput run ([`WORKERS`](crate::WORKERS) workers over [`CHANNELS`] channels, each with
//! its own connection, CPU sampled over the measured window).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Barrier;
use tokio::time::timeout;

use crate::client::{Conn, Job};
use crate::cpu::CpuSample;
use crate::responder::Responder;
use crate::{CHANNELS, REPLY_TIMEOUT, TP_MEASURE, TP_WARMUP};

pub struct Latency {
    pub samples: Vec<Duration>,
    /// Cycles whose reply did not come within [`REPLY_TIMEOUT`].
    pub lost: u64,
}

impl Latency {
    pub fn pct(&self, q: f64) -> f64 {
        percentile(&self.samples, q)
    }
}

/// Microseconds at quantile `q` of `samples` (sorted in place by the caller or not at all).
pub fn percentile(samples: &[Duration], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v = samples.to_vec();
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i].as_secs_f64() * 1e6
}

/// `n` sequential cycles; their register -> go latencies are appended to `latency`, lost ones
/// counted there.
pub async fn latency_run(job: &Job, conn: &mut Conn, n: usize, latency: &mut Latency) {
    for _ in 0..n {
        match job.cycle(conn).await {
            Ok(l) => latency.samples.push(l),
            Err(e) => {
                eprintln!("latency worker: {e}");
                latency.lost += 1;
                job.abandon(conn).await;
            }
        }
    }
}

/// Raw counts from one or more measured windows.
#[derive(Default)]
pub struct Throughput {
    pub cycles: u64,
    /// Cycles completed in the whole run, warm-up included (for counts over a run).
    pub all_cycles: u64,
    pub secs: f64,
    pub errors: u64,
    /// register -> go under load, in the measured windows.
    pub latency: Vec<Duration>,
    /// CPU ticks (1/100 s) over the measured windows.
    pub ticks_broker: u64,
    pub ticks_responder: u64,
    pub ticks_bench: u64,
    /// Machine-wide busy and total ticks (all cores) over the measured windows.
    pub machine_busy: u64,
    pub machine_all: u64,
}

impl Throughput {
    pub fn add(&mut self, o: Throughput) {
        self.cycles += o.cycles;
        self.all_cycles += o.all_cycles;
        self.secs += o.secs;
        self.errors += o.errors;
        self.latency.extend(o.latency);
        self.ticks_broker += o.ticks_broker;
        self.ticks_responder += o.ticks_responder;
        self.ticks_bench += o.ticks_bench;
        self.machine_busy += o.machine_busy;
        self.machine_all += o.machine_all;
    }

    pub fn cycles_per_s(&self) -> f64 {
        self.cycles as f64 / self.secs
    }

    /// CPU% (100 = one core) of `ticks` over the measured time.
    pub fn cpu(&self, ticks: u64) -> f64 {
        ticks as f64 / self.secs
    }

    /// CPU microseconds per completed cycle.
    pub fn cpu_us_per_cycle(&self, ticks: u64) -> f64 {
        ticks as f64 * 10_000.0 / self.cycles.max(1) as f64
    }

    /// Share of all cores busy, in %.
    pub fn machine_busy_pct(&self) -> f64 {
        self.machine_busy as f64 * 100.0 / self.machine_all.max(1) as f64
    }
}

#[derive(Default)]
pub struct Shared {
    pub cycles: AtomicU64,
    pub measuring: AtomicBool,
    pub stop: AtomicBool,
}

/// One throughput window with `n_workers` workers; the CPU of `broker_pids` and
/// `responder_pids` is sampled over it.
pub async fn throughput_run(
    port: u16,
    responder: &Responder,
    round: usize,
    n_workers: usize,
    broker_pids: &[u32],
    responder_pids: &[u32],
) -> Throughput {
    let prefix = responder.prefix();
    let shared = Arc::new(Shared::default());
    let barrier = Arc::new(Barrier::new(n_workers + 1));
    let mut workers = Vec::new();
    for k in 0..n_workers {
        let shared = shared.clone();
        let barrier = barrier.clone();
        let prefix = prefix.to_owned();
        let fields = responder.fields(k);
        workers.push(tokio::spawn(async move {
            // A fresh uid per round: the last `finished` of a round may be lost when its
            // connection is dropped, and the daemon ignores a register for a uid it still runs.
            let uid = format!("w{k}-r{round}");
            let job = Job::new(&prefix, &format!("tp{}", k % CHANNELS), &uid, &fields);
            let id = format!("bench-tp-{prefix}-{round}-{k}");
            let mut conn = Conn::connect(port, &id, vec![job.go.clone()]).await;
            barrier.wait().await;
            let mut lat = Vec::new();
            let mut errors = 0u64;
            while !shared.stop.load(Ordering::Relaxed) {
                match job.cycle(&mut conn).await {
                    Ok(l) => {
                        shared.cycles.fetch_add(1, Ordering::Relaxed);
                        if shared.measuring.load(Ordering::Relaxed) {
                            lat.push(l);
                        }
                    }
                    Err(e) => {
                        eprintln!("worker {k}: {e}");
                        errors += 1;
                        job.abandon(&mut conn).await;
                    }
                }
            }
            (lat, errors)
        }));
    }
    barrier.wait().await;
    tokio::time::sleep(TP_WARMUP).await;
    let c0 = shared.cycles.load(Ordering::Relaxed);
    let cpu0 = CpuSample::take(broker_pids, responder_pids);
    let t0 = Instant::now();
    shared.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(TP_MEASURE).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let c1 = shared.cycles.load(Ordering::Relaxed);
    let elapsed = t0.elapsed();
    let cpu1 = CpuSample::take(broker_pids, responder_pids);
    shared.stop.store(true, Ordering::Relaxed);

    let mut latency = Vec::new();
    let mut errors = 0;
    for w in workers {
        let abort = w.abort_handle();
        match timeout(REPLY_TIMEOUT + Duration::from_secs(1), w).await {
            Ok(Ok((l, e))) => {
                latency.extend(l);
                errors += e;
            }
            Ok(Err(e)) => {
                eprintln!("worker task failed: {e}");
                errors += 1;
            }
            Err(_) => {
                abort.abort();
                errors += 1;
            }
        }
    }
    let d = |a: Option<u64>, b: Option<u64>| b.unwrap_or(0).saturating_sub(a.unwrap_or(0));
    let (busy0, all0) = cpu0.machine.unwrap_or((0, 0));
    let (busy1, all1) = cpu1.machine.unwrap_or((0, 0));
    Throughput {
        cycles: c1 - c0,
        all_cycles: shared.cycles.load(Ordering::Relaxed),
        secs: elapsed.as_secs_f64(),
        errors,
        latency,
        ticks_broker: d(cpu0.broker, cpu1.broker),
        ticks_responder: d(cpu0.responder, cpu1.responder),
        ticks_bench: d(cpu0.bench, cpu1.bench),
        machine_busy: busy1.saturating_sub(busy0),
        machine_all: all1.saturating_sub(all0),
    }
}
