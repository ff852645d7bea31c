//! Securing the broker: Mosquitto with the password file and ACL from README.md ("Securing
//! it"). Only the coordinator's user may publish answers (`go`, `expired`, `rejected`, `state`);
//! workers may only publish requests and read their answers. The daemon logs in as the
//! coordinator with credentials from the environment, not from its config file.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{topic, unique_id, worker, Client, Daemon, DaemonOptions, Mosquitto, DEFAULT_TIMEOUT};

/// The ACL of README.md's "Securing it" section, for prefix `coordinosaur` and coordinator
/// user `coordinosaur`; `acl_in_readme_is_the_tested_one` keeps the two equal.
const ACL: &str = "\
# Every authenticated user (pattern lines apply to all users): the worker side of the protocol.
pattern write coordinosaur/+/register
pattern write coordinosaur/+/finished
pattern write coordinosaur/+/aborted
pattern write coordinosaur/+/renew
pattern write coordinosaur/+/infos
pattern write coordinosaur/+/concurrency/set
pattern write coordinosaur/infos
pattern read coordinosaur/+/go/#
pattern read coordinosaur/+/expired/#
pattern read coordinosaur/+/rejected/#
pattern read coordinosaur/+/state
pattern read coordinosaur/state

# The coordinator: reads every request and is the only user that may publish answers.
user coordinosaur
topic read coordinosaur/#
topic write coordinosaur/+/go/#
topic write coordinosaur/+/expired/#
topic write coordinosaur/+/rejected/#
topic write coordinosaur/+/state
topic write coordinosaur/state
# Its own marker, to know when the requests queued while it was down have been read.
topic write coordinosaur/_coordinosaur/sync
";

const COORDINATOR: (&str, &str) = ("coordinosaur", "coordinator-secret");
const WORKER: (&str, &str) = ("worker", "worker-secret");

/// `mosquitto_passwd`, which ships with the mosquitto package.
fn mosquitto_passwd() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("mosquitto_passwd"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/bin/mosquitto_passwd")])
        .find(|p| p.is_file())
        .expect("mosquitto_passwd not installed: apt-get install -y mosquitto")
}

/// Adds `user` to the password file at `file` (creating it first if `create`).
fn add_user(file: &Path, (user, password): (&str, &str), create: bool) {
    let mut cmd = Command::new(mosquitto_passwd());
    cmd.arg("-b");
    if create {
        cmd.arg("-c");
    }
    let status = cmd
        .arg(file)
        .arg(user)
        .arg(password)
        .status()
        .expect("run mosquitto_passwd");
    assert!(status.success(), "mosquitto_passwd for {user} failed");
}

/// Mosquitto with passwords and the ACL; the temp dir holding the files must outlive it.
fn secured_broker(dir: &Path) -> Mosquitto {
    let passwords = dir.join("passwords");
    add_user(&passwords, COORDINATOR, true);
    add_user(&passwords, WORKER, false);
    let acl = dir.join("acl");
    std::fs::write(&acl, ACL).expect("write the ACL file");
    Mosquitto::start_with(&format!(
        "allow_anonymous false\npassword_file {}\nacl_file {}\n",
        passwords.display(),
        acl.display()
    ))
}

async fn coordinator(broker: &Mosquitto) -> Daemon {
    let options = DaemonOptions {
        env: vec![
            ("COORDINOSAUR_MQTT_USERNAME".into(), COORDINATOR.0.into()),
            ("COORDINOSAUR_MQTT_PASSWORD".into(), COORDINATOR.1.into()),
        ],
        probe_login: Some((WORKER.0.into(), WORKER.1.into())),
        ..DaemonOptions::default()
    };
    Daemon::start_with_options(broker.port(), "", options).await
}

#[tokio::test]
async fn worker_gets_go_from_a_coordinator_logged_in_through_the_environment() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = secured_broker(dir.path());
    let daemon = coordinator(&broker).await;
    let mut w = worker(
        broker.port(),
        Some(WORKER),
        &["ch"],
        &["go/+", "rejected/+"],
    )
    .await;
    w.register("ch", "job-1", 60.0).await;
    assert_eq!(w.next_go("ch").await, "job-1");
    // The other requests and answers a worker needs pass the ACL too.
    w.finished("ch", "job-1").await;
    w.renew("ch", "gone", 60.0).await;
    w.expect(&topic("ch", "rejected/gone"), DEFAULT_TIMEOUT)
        .await;
    let state = w.state("ch").await;
    assert_eq!(state["running_count"], 0, "{state}");
    // The config file has no credentials: the login came from the environment.
    let config = std::fs::read_to_string(daemon.config_path()).expect("read the daemon config");
    assert!(!config.contains(COORDINATOR.1), "{config}");
}

#[tokio::test]
async fn forged_go_from_a_worker_is_not_delivered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = secured_broker(dir.path());
    let _daemon = coordinator(&broker).await;
    let mut watcher = worker(
        broker.port(),
        Some(WORKER),
        &["ch"],
        &["go/#", "rejected/#"],
    )
    .await;
    let forger = worker(broker.port(), Some(WORKER), &[], &[]).await;
    let w = worker(broker.port(), Some(WORKER), &[], &[]).await;

    forger.publish(&topic("ch", "go/forged"), "forged").await;
    forger.publish(&topic("ch", "rejected/real"), "{}").await;
    // Mosquitto 2.0.11 answers a denied QoS 1 publish with a v5-style PUBACK that rumqttc takes
    // as malformed, so the forger's connection drops and reconnects: nothing on that connection
    // can serve as a barrier. Give the broker half a second; the control below proves the
    // watcher would have seen an allowed publish within that time.
    watcher
        .expect_none(&topic("ch", "#"), Duration::from_millis(500))
        .await;
    drop(forger);
    w.register("ch", "real", 60.0).await;
    let (first, payload) = watcher
        .expect_match(&topic("ch", "go/#"), DEFAULT_TIMEOUT)
        .await;
    assert_eq!(first, topic("ch", "go/real"));
    assert_eq!(payload, b"real");
    watcher
        .expect_none(&topic("ch", "#"), Duration::from_millis(300))
        .await;

    // Control: the same publish from the coordinator's user is delivered, so the watcher
    // would have seen the forgery had the ACL let it through.
    let admin = Client::connect_as(
        broker.port(),
        &unique_id("admin"),
        COORDINATOR.0,
        COORDINATOR.1,
    )
    .await;
    admin.publish(&topic("ch", "go/control"), "control").await;
    let (control, _) = watcher
        .expect_match(&topic("ch", "go/#"), DEFAULT_TIMEOUT)
        .await;
    assert_eq!(control, topic("ch", "go/control"));
}

#[test]
fn anonymous_clients_are_refused() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = secured_broker(dir.path());
    // A bare MQTT 3.1.1 CONNECT (clean session, keep-alive 60 s, client id "anon"), no login.
    let connect = [
        0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 4, b'a', b'n', b'o', b'n',
    ];
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", broker.port())).expect("connect");
    tcp.set_read_timeout(Some(DEFAULT_TIMEOUT))
        .expect("timeout");
    tcp.write_all(&connect).expect("send CONNECT");
    let mut connack = [0u8; 4];
    tcp.read_exact(&mut connack).expect("read CONNACK");
    // Return code 5: not authorised.
    assert_eq!(connack, [0x20, 2, 0, 5]);
}

#[test]
fn acl_in_readme_is_the_tested_one() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    assert!(
        readme.contains(ACL),
        "README.md's \"Securing it\" ACL differs from tests/acl.rs ACL"
    );
}
