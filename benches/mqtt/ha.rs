//! `--ha`: the JetStream backend on a 3-node NATS cluster against the null responder and the
//! daemon with the shipped file journal, all through one node's MQTT listener.

use std::path::Path;
use std::process::Command;

use crate::common;
use crate::process::CHILDREN;
use crate::report::print_report;
use crate::responder::Responder;
use crate::rounds::{compare, Broker};
use crate::HA_WORKERS;

/// The null responder (and its control subscribed to `finished`), the daemon on the JetStream
/// backend (a leader and a standby, shipped defaults) and the daemon with the shipped file
/// journal (`fsync`), all through node 0's MQTT listener of one 3-node NATS cluster, in
/// interleaved rounds with [`HA_WORKERS`] workers.
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
    ];
    let (results, procs) = compare(rt, &broker, dir, &responders, HA_WORKERS);
    drop(procs);
    drop(cluster);
    CHILDREN.lock().expect("lock").retain(|p| !pids.contains(p));
    println!("\nBroker: a 3-node NATS cluster ({version}), JetStream R=3, MQTT on node 0");
    print_report(&results);
}
