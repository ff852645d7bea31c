//! How responders are compared: each is started and warmed up, then all are measured in
//! interleaved rounds (latency, then throughput), one after the other, so that drifting load from
//! other processes on the machine hits them alike. Also the `fdatasync` probe that the shipped
//! daemon's latency is judged against.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::client::{Conn, Job};
use crate::load::{latency_run, throughput_run, Latency, Throughput};
use crate::process::Proc;
use crate::report::Outcome;
use crate::responder::Responder;
use crate::{LAT_SAMPLES, LAT_WARMUP, ROUNDS};

/// Latency of appending 64 bytes and `fdatasync`ing them (what one journal
/// commit with `durability = "fsync"` costs at least), in `dir`.
pub fn fdatasync_latency(dir: &Path) -> Vec<Duration> {
    use std::os::unix::fs::FileExt as _;
    let path = dir.join("fdatasync-probe");
    let file = fs::File::create(&path).expect("create the fdatasync probe");
    let mut samples = Vec::with_capacity(1_000);
    for i in 0..1_000u64 {
        let started = Instant::now();
        file.write_all_at(&[0x5a; 64], i * 64)
            .expect("write the probe");
        file.sync_data().expect("fdatasync the probe");
        samples.push(started.elapsed());
    }
    let _ = fs::remove_file(&path);
    samples
}

/// Spawns `responders`, waits until each is ready, and measures them in interleaved rounds
/// (latency then throughput with `workers` workers, one responder after the other). Returns the
/// outcomes and the still-running responder processes (their logs' sizes are already in the
/// outcomes).
pub fn compare(
    rt: &tokio::runtime::Runtime,
    broker: &Broker,
    dir: &Path,
    responders: &[Responder],
    workers: usize,
) -> (Vec<Outcome>, Vec<Proc>) {
    let port = broker.port;
    // Each responder's processes (a leader and a standby for the JetStream backend).
    let procs: Vec<Vec<Proc>> = responders
        .iter()
        .map(|r| rt.block_on(r.start(port, dir)))
        .collect();
    let mut results: Vec<Outcome> = responders
        .iter()
        .map(|r| Outcome {
            name: r.name(),
            latency: Latency {
                samples: Vec::new(),
                lost: 0,
            },
            throughput: Throughput::default(),
            rounds: Vec::new(),
            log_bytes: 0,
            workers,
        })
        .collect();
    let mut lat_conns: Vec<(Job, Conn)> = responders
        .iter()
        .map(|r| {
            let job = Job::new(r.prefix(), "lat", "lat-0", &r.fields(0));
            let conn = rt.block_on(Conn::connect(
                port,
                &format!("bench-lat-{}", r.prefix()),
                vec![job.go.clone()],
            ));
            (job, conn)
        })
        .collect();
    for (i, (job, conn)) in lat_conns.iter_mut().enumerate() {
        let mut warm_up = Latency {
            samples: Vec::new(),
            lost: 0,
        };
        rt.block_on(latency_run(job, conn, LAT_WARMUP, &mut warm_up));
        if warm_up.lost > 0 {
            eprintln!(
                "{}: {} cycles lost in the warm-up",
                results[i].name, warm_up.lost
            );
        }
    }
    for round in 0..ROUNDS {
        for (i, r) in responders.iter().enumerate() {
            let (job, conn) = &mut lat_conns[i];
            rt.block_on(latency_run(job, conn, LAT_SAMPLES, &mut results[i].latency));
            let responder_pids: Vec<u32> = procs[i].iter().map(Proc::pid).collect();
            let tp = rt.block_on(throughput_run(
                port,
                r,
                round,
                workers,
                &broker.pids,
                &responder_pids,
            ));
            eprintln!(
                "round {round} {}: {:.0} cycles/s, {} lost cycles",
                r.name(),
                tp.cycles as f64 / tp.secs,
                tp.errors
            );
            results[i].rounds.push(tp.cycles as f64 / tp.secs);
            results[i].throughput.add(tp);
        }
    }
    drop(lat_conns);
    for (i, group) in procs.iter().enumerate() {
        results[i].log_bytes = group.iter().map(Proc::log_len).sum();
    }
    (results, procs.into_iter().flatten().collect())
}

/// The MQTT broker the responders and the load generator use: its port, and the processes whose
/// CPU time counts as the broker's (one Mosquitto, or every node of the NATS cluster).
pub struct Broker {
    pub port: u16,
    pub pids: Vec<u32>,
}
