//! MQTT over TLS against a real Mosquitto with a TLS listener. Each test makes its own
//! certificates with rcgen: a CA, a broker certificate (for 127.0.0.1 and localhost unless
//! said otherwise) and a client certificate. The daemon, the test workers and the `run` and
//! `status` commands all connect over TLS; the test clients build their rustls configuration
//! with the daemon's own `mqtt::tls::client_config`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use coordinosaur::config::{ClientAuth, TlsConfig};
use coordinosaur::mqtt::tls::client_config;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;

use common::{run_binary, topic, unique_id, Client, Daemon, DaemonOptions, Mosquitto};

/// What the daemon logs on every failed TLS attempt.
const HANDSHAKE_FAILED: &str = "broker TLS handshake failed";

/// One test's certificates, as PEM files in a temp dir.
struct Pki {
    /// Holds the files; removed on drop.
    dir: TempDir,
}

impl Pki {
    /// A CA, a broker certificate for 127.0.0.1 and localhost, and a client certificate.
    fn new() -> Pki {
        Pki::for_broker_names(&["127.0.0.1", "localhost"])
    }

    /// [`Pki::new`] with a broker certificate valid for `names` only.
    fn for_broker_names(names: &[&str]) -> Pki {
        let pki = Pki {
            dir: tempfile::Builder::new()
                .prefix("coordinosaur-pki-")
                .tempdir()
                .expect("temp dir for certificates"),
        };
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own, so that another test CA is a stranger, not a namesake.
        ca.distinguished_name
            .push(DnType::CommonName, unique_id("coordinosaur test CA"));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("CA key"))
            .expect("self-signed CA");
        pki.write("ca.pem", &ca.pem());
        pki.leaf(&ca, "server", names, ExtendedKeyUsagePurpose::ServerAuth);
        pki.leaf(&ca, "client", &[], ExtendedKeyUsagePurpose::ClientAuth);
        pki
    }

    /// `NAME.pem` and `NAME.key`: a certificate signed by `ca` for `names`, and its key.
    fn leaf(
        &self,
        ca: &Issuer<'_, KeyPair>,
        name: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("coordinosaur test {name}"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, ca).expect("sign leaf");
        self.write(&format!("{name}.pem"), &cert.pem());
        self.write(&format!("{name}.key"), &key.serialize_pem());
    }

    fn write(&self, file: &str, pem: &str) {
        std::fs::write(self.path(file), pem).unwrap_or_else(|e| panic!("write {file}: {e}"));
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Mosquitto whose one listener speaks TLS with the broker certificate; with
    /// `require_certificate`, clients must present a certificate this CA signed.
    fn broker(&self, require_certificate: bool) -> Mosquitto {
        // These lines follow the harness's `listener`, so they configure that listener.
        Mosquitto::start_with(&format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {require_certificate}\n",
            self.path("ca.pem").display(),
            self.path("server.pem").display(),
            self.path("server.key").display(),
        ))
    }

    /// TLS settings trusting this CA; `with_cert`: presenting the client certificate.
    fn settings(&self, with_cert: bool, server_name: Option<&str>) -> TlsConfig {
        TlsConfig {
            ca_file: self.path("ca.pem"),
            client_auth: with_cert.then(|| ClientAuth {
                cert: self.path("client.pem"),
                key: self.path("client.key"),
            }),
            server_name: server_name.map(str::to_owned),
        }
    }

    /// The rustls configuration of [`Pki::settings`], for test clients.
    fn client(&self, with_cert: bool, server_name: Option<&str>) -> Arc<rustls::ClientConfig> {
        client_config(&self.settings(with_cert, server_name)).expect("client TLS config")
    }
}

/// `[mqtt.tls]` for `tls`, with absolute paths.
fn tls_toml(tls: &TlsConfig) -> String {
    let mut toml = format!("[mqtt.tls]\nca_file = {:?}\n", tls.ca_file);
    if let Some(auth) = &tls.client_auth {
        toml += &format!(
            "client_cert = {:?}\nclient_key = {:?}\n",
            auth.cert, auth.key
        );
    }
    if let Some(name) = &tls.server_name {
        toml += &format!("server_name = {name:?}\n");
    }
    toml
}

/// A daemon on `broker` connecting with `tls`; the readiness probe uses `probe` (when the
/// daemon is expected to connect) or is skipped (`None`).
async fn daemon(
    broker: &Mosquitto,
    tls: &TlsConfig,
    probe: Option<Arc<rustls::ClientConfig>>,
) -> Daemon {
    let options = DaemonOptions {
        skip_ready: probe.is_none(),
        probe_tls: probe,
        ..DaemonOptions::default()
    };
    Daemon::start_with_options(broker.port(), &tls_toml(tls), options).await
}

/// Runs `coordinosaur --config CONFIG ARGS...` to completion (bounded); (exit code, stdout, stderr).
async fn coordinosaur(config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let config = config.display().to_string();
    let mut all = vec!["--config", &config];
    all.extend_from_slice(args);
    run_binary(&all).await
}

/// A TLS broker (requiring client certificates if `mutual`), a daemon and a worker connected
/// to it over TLS (with the client certificate if `mutual`); the worker's job goes through
/// register, go and finished, and the daemon holds nothing afterwards.
async fn job_over_tls(mutual: bool) -> (Pki, Mosquitto, Daemon) {
    let pki = Pki::new();
    let broker = pki.broker(mutual);
    let tls = pki.client(mutual, None);
    let daemon = daemon(&broker, &pki.settings(mutual, None), Some(tls.clone())).await;
    let mut worker =
        Client::connect_secure(broker.port(), &unique_id("worker"), None, Some(tls)).await;
    worker.subscribe(&topic("ch", "go/+")).await;
    worker.register("ch", "job-1", 60.0).await;
    assert_eq!(worker.next_go("ch").await, "job-1");
    worker.finished("ch", "job-1").await;
    let state = worker.state("ch").await;
    assert_eq!(state["running_count"], 0, "{state}");
    assert_eq!(state["waiting"], 0, "{state}");
    assert!(!daemon.log().contains(HANDSHAKE_FAILED), "{}", daemon.log());
    (pki, broker, daemon)
}

#[tokio::test]
async fn daemon_and_worker_over_tls_and_status_from_the_daemon_config() {
    let (_pki, _broker, daemon) = job_over_tls(false).await;
    // `status` finds broker and TLS settings in the daemon's config file.
    let (code, stdout, stderr) = coordinosaur(&daemon.config_path(), &["status", "ch"]).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("ch"), "{stdout}");
}

#[tokio::test]
async fn mutual_tls_with_client_certificates() {
    let (_pki, _broker, daemon) = job_over_tls(true).await;
    // `run` presents the client certificate named in the config too.
    let (code, stdout, stderr) = coordinosaur(
        &daemon.config_path(),
        &["run", "--channel", "ch", "--timeout", "30", "--", "true"],
    )
    .await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
}

/// Starts a daemon connecting to `broker` with `tls`, which the broker or the daemon refuses,
/// and checks that the daemon logs each attempt as a failed handshake naming every one of
/// `reasons`, retries, and stays up; and that `coordinosaur status` with the same config exits
/// 125 naming them too.
async fn assert_refused(broker: &Mosquitto, tls: &TlsConfig, reasons: &[&str]) {
    let mut daemon = daemon(broker, tls, None).await;
    // Retried with backoff: the second attempt fails the same way.
    daemon.wait_log_count(HANDSHAKE_FAILED, 2).await;
    let log = daemon.log();
    for reason in reasons {
        assert!(
            log.contains(reason),
            "no {reason:?} in the daemon log:\n{log}"
        );
    }
    assert!(daemon.is_running(), "{log}");
    assert!(!log.contains("panicked"), "{log}");

    let (code, _, stderr) = coordinosaur(&daemon.config_path(), &["status"]).await;
    assert_eq!(code, Some(125), "{stderr}");
    assert!(stderr.contains("cannot reach the MQTT broker"), "{stderr}");
    for reason in reasons {
        assert!(stderr.contains(reason), "no {reason:?} in {stderr}");
    }
}

#[tokio::test]
async fn without_a_client_certificate_the_daemon_is_refused_says_why_and_keeps_trying() {
    let pki = Pki::new();
    let broker = pki.broker(true);
    assert_refused(
        &broker,
        &pki.settings(false, None),
        &["TLS", "client certificate"],
    )
    .await;
}

#[tokio::test]
async fn a_broker_certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    let stranger = Pki::new();
    let broker = pki.broker(false);
    let reasons = ["UnknownIssuer", "not signed by a CA in [mqtt.tls] ca_file"];
    assert_refused(&broker, &stranger.settings(false, None), &reasons).await;
}

#[tokio::test]
async fn server_name_sets_the_name_the_broker_certificate_is_checked_for() {
    // The broker's certificate names only broker.test, while everyone dials 127.0.0.1.
    let pki = Pki::for_broker_names(&["broker.test"]);
    let broker = pki.broker(false);
    let named = pki.settings(false, Some("broker.test"));
    let daemon = daemon(
        &broker,
        &named,
        Some(pki.client(false, Some("broker.test"))),
    )
    .await;
    let (code, stdout, stderr) = coordinosaur(&daemon.config_path(), &["status"]).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");

    // Without server_name the certificate is checked for 127.0.0.1, and refused.
    let unnamed = pki.path("unnamed.toml");
    let text = format!(
        "[mqtt]\nport = {}\n\n{}",
        broker.port(),
        tls_toml(&pki.settings(false, None))
    );
    std::fs::write(&unnamed, text).expect("write config");
    let (code, _, stderr) = coordinosaur(&unnamed, &["status"]).await;
    assert_eq!(code, Some(125), "{stderr}");
    assert!(stderr.contains("not for this host"), "{stderr}");
}

#[tokio::test]
async fn check_config_and_serve_name_the_tls_key_and_file_of_a_mistake() {
    let pki = Pki::new();
    std::fs::write(pki.path("notes.txt"), "not a certificate\n").expect("write");
    let path = |f: &str| pki.path(f).display().to_string();
    let cases: [(&str, String, Vec<String>); 6] = [
        (
            "client_cert without client_key",
            format!(
                "ca_file = {:?}\nclient_cert = {:?}\n",
                path("ca.pem"),
                path("client.pem")
            ),
            vec!["client_cert is set but client_key is not".into()],
        ),
        (
            "missing CA file",
            "ca_file = \"missing-ca.pem\"\n".into(),
            vec![
                "ca_file".into(),
                path("missing-ca.pem"),
                "cannot read".into(),
            ],
        ),
        (
            "CA file without a certificate",
            format!("ca_file = {:?}\n", path("notes.txt")),
            vec![
                "ca_file".into(),
                path("notes.txt"),
                "no PEM certificate".into(),
            ],
        ),
        (
            "key file without a key",
            format!(
                "ca_file = {:?}\nclient_cert = {:?}\nclient_key = {:?}\n",
                path("ca.pem"),
                path("client.pem"),
                path("client.pem")
            ),
            vec!["client_key".into(), "no PEM private key".into()],
        ),
        (
            "key of another certificate",
            format!(
                "ca_file = {:?}\nclient_cert = {:?}\nclient_key = {:?}\n",
                path("ca.pem"),
                path("client.pem"),
                path("server.key")
            ),
            vec![
                "client_key".into(),
                path("server.key"),
                "does not fit".into(),
            ],
        ),
        (
            "server_name that is no name",
            format!(
                "ca_file = {:?}\nserver_name = \"not a name!\"\n",
                path("ca.pem")
            ),
            vec!["server_name".into(), "not a name!".into()],
        ),
    ];
    // The config sits beside the certificates, so "missing-ca.pem" resolves next to it.
    let config = pki.path("coordinosaur.toml");
    for (case, tls, needles) in cases {
        std::fs::write(&config, format!("[mqtt.tls]\n{tls}")).expect("write config");
        let (code, stdout, stderr) = coordinosaur(&config, &["check-config"]).await;
        assert_eq!(code, Some(2), "{case}: {stdout}\n{stderr}");
        assert!(
            stderr.contains(&config.display().to_string()),
            "{case}: {stderr}"
        );
        for needle in &needles {
            assert!(
                stderr.contains(needle.as_str()),
                "{case}: no {needle:?} in {stderr}"
            );
        }
        // The daemon refuses the same file the same way, before touching the network.
        let (code, _, serve_err) = coordinosaur(&config, &[]).await;
        assert_eq!(code, Some(2), "{case}: serve: {serve_err}");
    }

    // Relative paths resolve beside the config file, whatever the working directory.
    std::fs::write(
        &config,
        "[mqtt.tls]\nca_file = \"ca.pem\"\nclient_cert = \"client.pem\"\nclient_key = \"client.key\"\n",
    )
    .expect("write config");
    let (code, stdout, stderr) = coordinosaur(&config, &["check-config"]).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let summary = format!(
        "tls: CA {}, client certificate {}",
        path("ca.pem"),
        path("client.pem")
    );
    assert!(stdout.contains(&summary), "{stdout}");

    // The embedded broker has no TLS listener: refused at start, not silently plain.
    std::fs::write(
        &config,
        "[embedded_broker]\nenabled = true\nlisten = \"127.0.0.1:0\"\n[mqtt.tls]\nca_file = \"ca.pem\"\n",
    )
    .expect("write config");
    let (code, _, stderr) = coordinosaur(&config, &[]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("embedded broker has no TLS listener"),
        "{stderr}"
    );
}
