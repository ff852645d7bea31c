//! `--policies`: the daemon with the `priority` policy on every channel against the daemon with
//! no policy, then the end-to-end hot reload latency (rename a policy file into place, poll until
//! the new policy decides), and the report of both.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use rumqttc::QoS;
use tokio::time::timeout;

use crate::client::Conn;
use crate::common;
use crate::process::Proc;
use crate::report::{min_max, print_report, yes_no, Outcome};
use crate::responder::Responder;
use crate::rounds::compare;
use crate::{JOB_TIMEOUT_S, REPLY_TIMEOUT, WORKERS};

/// Tries of the reload latency measurement (alternately deny over priority and back).
pub const RELOAD_TRIES: usize = 6;
/// Pause between two polls of the reload measurement (each poll is one register round trip).
pub const RELOAD_POLL: Duration = Duration::from_millis(2);

/// The daemon with the `priority` policy against the daemon with none (both at log=warn,
/// same load with a `priority` field in every register), in interleaved rounds; then the
/// end-to-end reload latency on the policy daemon.
pub fn policy_bench(rt: &tokio::runtime::Runtime, broker: Proc, dir: &Path) {
    eprintln!("building the guest policies (cd policies && cargo build --release) ...");
    for (folder, file, krate) in [
        ("policies", "priority.wasm", "priority"),
        ("reload", "active.wasm", "priority"),
        ("reload", "priority.wasm", "priority"),
        ("reload", "deny.wasm", "deny"),
    ] {
        fs::create_dir_all(dir.join(folder)).expect("policy folder");
        fs::copy(
            common::policies::policy_wasm(krate),
            dir.join(folder).join(file),
        )
        .expect("copy policy");
    }
    let responders = [
        Responder::PolicyDaemon { policy: false },
        Responder::PolicyDaemon { policy: true },
    ];
    let (results, mut procs) = compare(rt, &broker.as_broker(), dir, &responders, WORKERS);
    let reload = rt.block_on(reload_latency(broker.port, dir));
    for p in &mut procs {
        p.stop();
    }
    drop(broker);
    print_report(&results);
    print_policy_report(&results, &reload);
}

/// One reload: which policy was renamed into place and how long until its first decision.
pub struct Reload {
    pub new_policy: &'static str,
    pub latency: Duration,
    pub polls: u32,
}

/// Renames `deny` (then `priority`, alternately) over the `rl` channel's policy file and polls
/// with registrations of tenant `evil` until one is decided by the new policy: `rejected` once
/// deny is in, `go` once priority is back.
pub async fn reload_latency(port: u16, dir: &Path) -> Vec<Reload> {
    let prefix = Responder::PolicyDaemon { policy: true }.prefix();
    let folder = dir.join("reload");
    let active = folder.join("active.wasm");
    let mut conn = Conn::connect(port, "bench-reload", vec![format!("{prefix}/rl/+/+")]).await;
    let mut out = Vec::new();
    for attempt in 0..RELOAD_TRIES {
        let new_policy = if attempt % 2 == 0 { "deny" } else { "priority" };
        let tmp = folder.join("active.wasm.tmp");
        fs::copy(folder.join(format!("{new_policy}.wasm")), &tmp).expect("copy the new policy");
        let renamed = Instant::now();
        fs::rename(&tmp, &active).expect("rename the new policy into place");
        let mut polls = 0u32;
        loop {
            assert!(
                renamed.elapsed() < Duration::from_secs(20),
                "no decision by {new_policy} within 20 s of the rename"
            );
            polls += 1;
            let uid = format!("rl{attempt}-{polls}");
            let body =
                format!("{{\"uid\":\"{uid}\",\"timeout\":{JOB_TIMEOUT_S},\"tenant\":\"evil\"}}");
            conn.client
                .publish(
                    format!("{prefix}/rl/register"),
                    QoS::AtLeastOnce,
                    false,
                    body,
                )
                .await
                .expect("publish register");
            let (go, rejected) = (
                format!("{prefix}/rl/go/{uid}"),
                format!("{prefix}/rl/rejected/{uid}"),
            );
            let granted = loop {
                match timeout(REPLY_TIMEOUT, conn.rx.recv()).await {
                    Ok(Some(p)) if p.topic == go => break true,
                    Ok(Some(p)) if p.topic == rejected => break false,
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("event loop ended"),
                    Err(_) => panic!("no go or rejected for {uid} within {REPLY_TIMEOUT:?}"),
                }
            };
            let at = renamed.elapsed();
            if granted {
                conn.client
                    .publish(
                        format!("{prefix}/rl/finished"),
                        QoS::AtLeastOnce,
                        false,
                        uid,
                    )
                    .await
                    .expect("publish finished");
            }
            if granted == (new_policy == "priority") {
                out.push(Reload {
                    new_policy,
                    latency: at,
                    polls,
                });
                break;
            }
            tokio::time::sleep(RELOAD_POLL).await;
        }
        eprintln!(
            "reload {attempt}: {new_policy} deciding after {:?}",
            out[attempt].latency
        );
        // Let the watcher settle before the next rename.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    out
}

pub fn print_policy_report(results: &[Outcome], reload: &[Reload]) {
    let mut s = String::new();
    let find = |name: &str| results.iter().find(|r| r.name == name);
    if let (Some(none), Some(prio)) = (find("daemon, no policy"), find("daemon, policy priority")) {
        let ratio = prio.throughput.cycles_per_s() / none.throughput.cycles_per_s();
        let (_, best_none) = min_max(none.rounds.iter().copied());
        let (_, best_prio) = min_max(prio.rounds.iter().copied());
        let per_round: Vec<String> = prio
            .rounds
            .iter()
            .zip(&none.rounds)
            .map(|(p, n)| format!("{:.2}", p / n))
            .collect();
        let cpu = |o: &Outcome| o.throughput.cpu_us_per_cycle(o.throughput.ticks_responder);
        let _ = writeln!(
            s,
            "\n## Policy priority / no policy (target: throughput >= 0.8x)\n\
             | throughput ratio | per round | best-round ratio | target met | daemon CPU us/cycle: priority / none | latency p50 ratio |\n\
             |---:|---|---:|---|---:|---:|\n\
             | {ratio:.2} | {} | {:.2} | {} | {:.1} / {:.1} | {:.2} |",
            per_round.join(", "),
            best_prio / best_none,
            yes_no(ratio >= 0.8),
            cpu(prio),
            cpu(none),
            prio.latency.pct(0.5) / none.latency.pct(0.5),
        );
    }
    if !reload.is_empty() {
        let mut all: Vec<Duration> = reload.iter().map(|r| r.latency).collect();
        all.sort_unstable();
        let median = all[all.len() / 2].as_secs_f64() * 1e3;
        let _ = writeln!(
            s,
            "\n## Reload latency: rename -> first decision by the new policy (target < 500 ms)\n\
             | try | new policy | ms | polls |\n|---:|---|---:|---:|"
        );
        for (i, r) in reload.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {i} | {} | {:.1} | {} |",
                r.new_policy,
                r.latency.as_secs_f64() * 1e3,
                r.polls
            );
        }
        let _ = writeln!(
            s,
            "\nMedian {median:.1} ms, min-max {:.1}-{:.1} ms (poll every {RELOAD_POLL:?} + one round trip): target {}",
            all[0].as_secs_f64() * 1e3,
            all[all.len() - 1].as_secs_f64() * 1e3,
            if median < 500.0 { "met" } else { "NOT met" }
        );
    }
    println!("{s}");
}
