//! The report: per responder, the idle-channel latency table, the full-cycle throughput table
//! with CPU use, and each daemon run against the null responder with the targets.

use std::fmt::Write as _;
use std::fs;

use crate::load::{percentile, Latency, Throughput};
use crate::{CHANNELS, LAT_SAMPLES, LAT_WARMUP, ROUNDS, TP_MEASURE, TP_WARMUP, WORKERS};

pub struct Outcome {
    pub name: String,
    pub latency: Latency,
    /// All rounds together.
    pub throughput: Throughput,
    /// cycles/s of each round.
    pub rounds: Vec<f64>,
    pub log_bytes: u64,
    /// Workers of the throughput test.
    pub workers: usize,
}

pub fn print_report(results: &[Outcome]) {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nMachine: {} CPUs; load average at the end: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let _ = writeln!(
        s,
        "\n## register -> go latency, idle channel (1 worker, sequential, QoS 1; {ROUNDS} rounds x {LAT_SAMPLES} samples after {LAT_WARMUP} warm-up)"
    );
    let _ = writeln!(
        s,
        "| responder | p50 us | p99 us | max us | p99 per round, min-max us | lost cycles |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    for r in results {
        let (lo, hi) = min_max(
            r.latency
                .samples
                .chunks(LAT_SAMPLES)
                .map(|c| percentile(c, 0.99)),
        );
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.0} | {lo:.0}-{hi:.0} | {} |",
            r.name,
            r.latency.pct(0.5),
            r.latency.pct(0.99),
            r.latency.pct(1.0),
            r.latency.lost
        );
    }
    let _ = writeln!(
        s,
        "\n## Full-cycle throughput ({} workers, one connection each, {CHANNELS} channels; {ROUNDS} rounds x {}s after {}s warm-up)",
        results.first().map_or(WORKERS, |r| r.workers),
        TP_MEASURE.as_secs(),
        TP_WARMUP.as_secs()
    );
    let _ = writeln!(
        s,
        "| responder | cycles/s | per round, min-max | lost cycles | reg->go p50 us | p99 us | CPU% broker | CPU% responder | CPU% load gen | CPU% other processes | machine busy % | CPU us/cycle: broker | responder | load gen | responder log bytes |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    for r in results {
        let t = &r.throughput;
        let (lo, hi) = min_max(r.rounds.iter().copied());
        let ours = t.cpu(t.ticks_broker) + t.cpu(t.ticks_responder) + t.cpu(t.ticks_bench);
        let _ = writeln!(
            s,
            "| {} | {:.0} | {lo:.0}-{hi:.0} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {} |",
            r.name,
            t.cycles_per_s(),
            t.errors,
            percentile(&t.latency, 0.5),
            percentile(&t.latency, 0.99),
            t.cpu(t.ticks_broker),
            t.cpu(t.ticks_responder),
            t.cpu(t.ticks_bench),
            (t.machine_busy_pct() * cores - ours).max(0.0),
            t.machine_busy_pct(),
            t.cpu_us_per_cycle(t.ticks_broker),
            t.cpu_us_per_cycle(t.ticks_responder),
            t.cpu_us_per_cycle(t.ticks_bench),
            r.log_bytes
        );
    }
    if let Some(null) = results.iter().find(|r| r.name == "null responder") {
        let _ = writeln!(s, "\n## Daemon / null responder (targets: latency p99 <= 1.2x and < 2000 us; throughput >= 0.8x)");
        let _ = writeln!(
            s,
            "| daemon run | p99 ratio | p99 us | latency target met | throughput ratio | throughput target met | best-round p99 ratio | best-round throughput ratio | throughput vs the control |"
        );
        let _ = writeln!(s, "|---|---:|---:|---|---:|---|---:|---:|---:|");
        // The null responder that also receives `finished`, as the daemon does: the same
        // network work (the broker routes and the responder acknowledges one more message per
        // cycle).
        let control = results.iter().find(|r| r.name.contains("(control)"));
        // Best round: lowest p99 and highest cycles/s of any round, the least disturbed by
        // other processes on the machine.
        let best = |o: &Outcome| {
            let (p99, _) = min_max(
                o.latency
                    .samples
                    .chunks(LAT_SAMPLES)
                    .map(|c| percentile(c, 0.99)),
            );
            let (_, tp) = min_max(o.rounds.iter().copied());
            (p99, tp)
        };
        let (null_p99, null_tp) = best(null);
        for r in results.iter().filter(|r| !r.name.starts_with("null")) {
            let p99 = r.latency.pct(0.99);
            let lat_ratio = p99 / null.latency.pct(0.99);
            let tp_ratio = r.throughput.cycles_per_s() / null.throughput.cycles_per_s();
            let vs_control = control.map_or("-".to_owned(), |c| {
                format!(
                    "{:.2}",
                    r.throughput.cycles_per_s() / c.throughput.cycles_per_s()
                )
            });
            let _ = writeln!(
                s,
                "| {} | {:.2} | {:.0} | {} | {:.2} | {} | {:.2} | {:.2} | {vs_control} |",
                r.name,
                lat_ratio,
                p99,
                yes_no(lat_ratio <= 1.2 && p99 < 2000.0),
                tp_ratio,
                yes_no(tp_ratio >= 0.8),
                best(r).0 / null_p99,
                best(r).1 / null_tp
            );
        }
    }
    println!("{s}");
}

pub fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}

pub fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}
