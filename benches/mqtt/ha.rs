//! `--ha`: the JetStream backend on a 3-node NATS cluster against the null responder, the
//! daemon with the shipped file journal and the daemon without state, all through one node's
//! MQTT listener.

use std::path::Path;
use std::process::Command;

use crate::common;
use crate::process::CHILDREN;
use crate::report::print_report;
use crate::responder::Responder;
use crate::rounds::{compare, Broker};
use crate::{HA_WORKERS, LAT_SAMPLES, LAT_WARMUP, ROUNDS};

/// The null responder (and its control subscribed to `finished`), the daemon on the JetStream
/// backend (a leader and a standby, shipped defaults), the daemon with the shipped file
/// journal (`fsync`) and the daemon without state (what the daemon costs without a journal),
/// all through node 0's MQTT listener of one 3-node NATS cluster, in interleaved rounds with
/// [`HA_WORKERS`] workers.
pub fn ha_bench(rt: &tokio::runtime::Runtime, dir: &Path) {
    let version = common::nats::executable()
        .and_then(|exe| Command::new(exe).arg("--version").output().ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cluster = common::nats::NatsCluster::start(3);
    let pids = cluster.pids();
    CHILDREN.lock().expect("lock").extend(&pids);
    rt.block_on(cluster.wait_formed());
    let broker = Broker {
        port: cluster.mqtt_ports()[0],
        pids: pids.clone(),
    };
    let responders = [
        Responder::Null {
            multi_thread: false,
        },
        Responder::NullFinished,
        Responder::JetStream {
            servers: cluster.servers_toml(),
        },
        Responder::Shipped,
        Responder::Daemon { log: "warn" },
    ];
    let (results, procs) = compare(rt, &broker, dir, &responders, HA_WORKERS);
    // Journal messages per request cycle: what group commit saves the cluster.
    let jetstream = results
        .iter()
        .zip(&responders)
        .find_map(|(r, responder)| match responder {
            Responder::JetStream { .. } => Some((r, responder.prefix())),
            _ => None,
        });
    let journal_line = jetstream.and_then(|(outcome, stream)| {
        let detail = cluster.stream_detail(0, stream)?;
        let messages = detail["state"]["last_seq"].as_u64()?;
        let cycles = outcome.throughput.all_cycles
            + (LAT_WARMUP + ROUNDS * LAT_SAMPLES) as u64;
        Some(format!(
            "Journal: {messages} stream messages over {cycles} request cycles ({:.2} per cycle, markers and snapshots included)",
            messages as f64 / cycles as f64
        ))
    });
    drop(procs);
    drop(cluster);
    CHILDREN.lock().expect("lock").retain(|p| !pids.contains(p));
    println!("\nBroker: a 3-node NATS cluster ({version}), JetStream R=3, MQTT on node 0");
    print_report(&results);
    if let Some(line) = journal_line {
        println!("{line}");
    }
}
