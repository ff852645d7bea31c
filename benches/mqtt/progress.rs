//! `cargo bench --bench mqtt -- --progress`: what `"progress": true` costs through MQTT with a
//! long queue under churn.
//!
//! Two daemons with the shipped defaults (fsync journal, `info` log), one channel `ch` with 8
//! slots each, measured one after the other in interleaved rounds. Each is filled with
//! [`WAITING`] waiting jobs, then kept under churn by one client that answers every `go/{uid}`
//! with `finished` and a new `register` (so the queue stays at [`WAITING`] and every grant moves
//! every waiting job up one place). In one daemon every job registers with `"progress": true`,
//! in the other without. A third client counts what arrives on `PREFIX/ch/position/+`.
//! Reported per mode: grants a second, position messages a second and per grant (the bound the
//! engine promises: the first 16 positions per event, a 1/s sweep of at most 64, 1/s per job),
//! and the daemon's CPU per grant.

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::QoS;
use tokio::sync::mpsc;

use super::{daemon_command, proc_ticks, Conn, Proc};

/// Jobs kept waiting in the channel.
pub const WAITING: usize = 10_000;
/// Slots of the channel.
const SLOTS: u32 = 8;
/// Rounds; in each, both daemons are measured once.
const ROUNDS: usize = 3;
/// Churn before each measured window, and the window.
const WARMUP: Duration = Duration::from_secs(2);
const MEASURE: Duration = Duration::from_secs(5);
/// Clock ticks a second of `/proc/PID/stat` (Linux's USER_HZ).
const TICKS_PER_S: f64 = 100.0;

/// One daemon under test.
struct Mode {
    /// Topic prefix and run name, new for every round (a daemon's broker session, with what
    /// was queued for it when the previous round's daemon stopped, must not carry over); the
    /// same length for both modes, so packets are the same size.
    prefix: String,
    progress: bool,
}

fn mode(progress: bool, round: usize) -> Mode {
    Mode {
        prefix: format!("cdp{}r{round}", u8::from(progress)),
        progress,
    }
}

/// One measured window.
#[derive(Default, Clone, Copy)]
struct Window {
    grants: u64,
    positions: u64,
    secs: f64,
    cpu_ticks: u64,
}

/// Counters fed by the churn and listener tasks.
#[derive(Default)]
struct Counts {
    grants: AtomicU64,
    positions: AtomicU64,
}

/// A daemon filled with its queue, its churn running.
struct Running {
    proc: Proc,
    counts: Arc<Counts>,
    _conns: Vec<Conn>,
}

fn body(uid: &str, progress: bool) -> String {
    if progress {
        format!(r#"{{"uid":"{uid}","timeout":600,"progress":true}}"#)
    } else {
        format!(r#"{{"uid":"{uid}","timeout":600}}"#)
    }
}

/// Starts the daemon of `mode`, fills its queue and starts its churn (paused until measured:
/// the churn client only answers grants, and grants only come when it finishes jobs).
async fn start(mode: &Mode, broker_port: u16, dir: &Path) -> Running {
    let run = mode.prefix.as_str();
    let log = dir.join(format!("progress-{run}.log"));
    let out = fs::File::create(&log).expect("daemon log");
    let extra = format!("\n[[channels]]\npattern = \"ch\"\nmax_concurrent_jobs = {SLOTS}\n");
    let child = daemon_command(
        dir,
        broker_port,
        run,
        0,
        &format!("dir = \"state-{run}\""),
        &extra,
        "info",
    )
    .current_dir(dir)
    .stdin(Stdio::null())
    .stdout(out.try_clone().expect("clone log handle"))
    .stderr(out)
    .spawn()
    .expect("spawn the daemon");
    let proc = Proc::new(child, 0, log);
    // Ready: answers `infos`.
    let state = format!("{run}/ch/state");
    let mut probe = Conn::connect(broker_port, &format!("{run}-probe"), vec![state.clone()]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            Instant::now() < deadline,
            "{run}: no state reply within 20 s"
        );
        let _ = probe
            .client
            .publish(format!("{run}/ch/infos"), QoS::AtLeastOnce, false, "")
            .await;
        if let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(200), probe.rx.recv()).await
        {
            if p.topic == state {
                break;
            }
        }
    }
    let counts = Arc::new(Counts::default());
    // Listener of position messages.
    let mut listener = Conn::connect(
        broker_port,
        &format!("{run}-positions"),
        vec![format!("{run}/ch/position/+")],
    )
    .await;
    let mut positions = std::mem::replace(&mut listener.rx, mpsc::unbounded_channel().1);
    let c = counts.clone();
    tokio::spawn(async move {
        while positions.recv().await.is_some() {
            c.positions.fetch_add(1, Ordering::Relaxed);
        }
    });
    // Churn: every go is finished at once and replaced by a new job at the queue's tail.
    let mut churn = Conn::connect(
        broker_port,
        &format!("{run}-churn"),
        vec![format!("{run}/ch/go/+")],
    )
    .await;
    let mut gos = std::mem::replace(&mut churn.rx, mpsc::unbounded_channel().1);
    let client = churn.client.clone();
    let progress = mode.progress;
    let mut next = WAITING + SLOTS as usize;
    let c = counts.clone();
    let (register, finished) = (format!("{run}/ch/register"), format!("{run}/ch/finished"));
    tokio::spawn(async move {
        while let Some(p) = gos.recv().await {
            c.grants.fetch_add(1, Ordering::Relaxed);
            let uid = p.topic.rsplit('/').next().unwrap_or_default().to_owned();
            let done = format!(r#"{{"uid":"{uid}"}}"#);
            let _ = client
                .publish(finished.as_str(), QoS::AtLeastOnce, false, done)
                .await;
            let fresh = format!("j{next:07}");
            next += 1;
            let _ = client
                .publish(
                    register.as_str(),
                    QoS::AtLeastOnce,
                    false,
                    body(&fresh, progress),
                )
                .await;
        }
    });
    // Fill: the first SLOTS jobs run (and start the churn), the rest wait.
    let filler = Conn::connect(broker_port, &format!("{run}-filler"), Vec::new()).await;
    for i in 0..WAITING + SLOTS as usize {
        filler
            .client
            .publish(
                format!("{run}/ch/register"),
                QoS::AtLeastOnce,
                false,
                body(&format!("j{i:07}"), progress),
            )
            .await
            .expect("queue a register");
    }
    // Until the queue is full (the churn keeps it there).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "{run}: queue not filled within 60 s"
        );
        let _ = probe
            .client
            .publish(format!("{run}/ch/infos"), QoS::AtLeastOnce, false, "")
            .await;
        let reply = tokio::time::timeout(Duration::from_millis(500), probe.rx.recv()).await;
        if let Ok(Some(p)) = reply {
            let waiting = serde_json::from_slice::<serde_json::Value>(&p.payload)
                .ok()
                .and_then(|v| v["waiting"].as_u64())
                .unwrap_or(0);
            if waiting as usize + SLOTS as usize >= WAITING {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Running {
        proc,
        counts,
        _conns: vec![probe, listener, churn, filler],
    }
}

/// Counts over `MEASURE` after `WARMUP`.
async fn measure(r: &Running) -> Window {
    tokio::time::sleep(WARMUP).await;
    let stat = format!("/proc/{}/stat", r.proc.pid());
    let (g0, p0, t0) = (
        r.counts.grants.load(Ordering::Relaxed),
        r.counts.positions.load(Ordering::Relaxed),
        proc_ticks(&stat).unwrap_or(0),
    );
    let started = Instant::now();
    tokio::time::sleep(MEASURE).await;
    Window {
        grants: r.counts.grants.load(Ordering::Relaxed) - g0,
        positions: r.counts.positions.load(Ordering::Relaxed) - p0,
        secs: started.elapsed().as_secs_f64(),
        cpu_ticks: proc_ticks(&stat).unwrap_or(0).saturating_sub(t0),
    }
}

/// Runs both modes in interleaved rounds and prints the table.
pub fn run(rt: &tokio::runtime::Runtime, broker: Proc, dir: &Path) {
    let mut windows: [Vec<Window>; 2] = Default::default();
    for round in 0..ROUNDS {
        for (i, mode) in [mode(false, round), mode(true, round)].iter().enumerate() {
            eprintln!(
                "round {}: progress={} (filling {WAITING} jobs)",
                round + 1,
                mode.progress
            );
            let running = rt.block_on(start(mode, broker.port, dir));
            let w = rt.block_on(measure(&running));
            windows[i].push(w);
            drop(running);
            let _ = fs::remove_dir_all(dir.join(format!("state-{}", mode.prefix)));
        }
    }
    println!(
        "\n## Progress messages with {WAITING} waiting jobs under churn (1 channel, {SLOTS} slots, \
         shipped defaults: fsync journal, info log); {ROUNDS} rounds x {}s",
        MEASURE.as_secs()
    );
    println!("| register with | grants/s (per round) | position msgs/s | msgs per grant | daemon CPU us/grant |");
    println!("|---|---:|---:|---:|---:|");
    for (i, ws) in windows.iter().enumerate() {
        let (grants, positions, secs, ticks) = ws.iter().fold((0, 0, 0.0, 0), |a, w| {
            (
                a.0 + w.grants,
                a.1 + w.positions,
                a.2 + w.secs,
                a.3 + w.cpu_ticks,
            )
        });
        let rounds: Vec<String> = ws
            .iter()
            .map(|w| format!("{:.0}", w.grants as f64 / w.secs))
            .collect();
        println!(
            "| {} | {:.0} ({}) | {:.0} | {:.2} | {:.0} |",
            if i == 1 {
                "`\"progress\": true`"
            } else {
                "no progress"
            },
            grants as f64 / secs,
            rounds.join(", "),
            positions as f64 / secs,
            positions as f64 / grants.max(1) as f64,
            ticks as f64 / TICKS_PER_S * 1e6 / grants.max(1) as f64,
        );
    }
    drop(broker);
}
