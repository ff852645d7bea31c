//! `coordinosaur replay` end to end: a real daemon over Mosquitto journals a queue of jobs into
//! its state dir, and the real binary replays that dir while the daemon still runs (it takes no
//! lock): under the recorded limits it reproduces every grant time, and under a candidate with
//! a lower limit the waits grow. The replay leaves the state dir as it found it.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::policies::policy_wasm;
use common::{setup, topic};
use serde_json::Value;

/// Jobs the workers run, two at a time.
const JOBS: usize = 6;
/// How long each job runs (real time: the journal records it).
const RUN: Duration = Duration::from_millis(60);

/// Runs `coordinosaur [--config CONFIG] replay --state DIR ARGS...`; returns stdout, panicking
/// with stderr on failure.
fn replay(state: &Path, config: Option<&Path>, args: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coordinosaur"));
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    let out = cmd
        .arg("replay")
        .arg("--state")
        .arg(state)
        .args(args)
        .output()
        .expect("run coordinosaur replay");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "replay failed: {stderr}\n{stdout}");
    stdout
}

fn json(state: &Path, config: Option<&Path>) -> Value {
    let text = replay(state, config, &["--json"]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Every file of `dir` with its bytes.
fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            (name, fs::read(e.path()).unwrap())
        })
        .collect()
}

#[tokio::test]
async fn replay_reproduces_the_recording_and_a_lower_limit_makes_jobs_wait() {
    let (_broker, mut daemon, mut client) =
        setup("[defaults]\nmax_concurrent_jobs = 2\n", &["ch"], &["go/+"]).await;
    for i in 0..JOBS {
        client.register("ch", &format!("j{i}"), 30.0).await;
    }
    // One more that gives up while it waits: replayed as a cancellation at the same time.
    client.register("ch", "quitter", 30.0).await;
    client.aborted("ch", "quitter").await;
    // The workers: each job runs RUN, two at a time.
    let (mut running, mut granted) = (std::collections::VecDeque::new(), 0);
    while granted < JOBS || !running.is_empty() {
        while running.len() < 2 && granted < JOBS {
            running.push_back(client.next_go("ch").await);
            granted += 1;
        }
        tokio::time::sleep(RUN).await;
        let uid = running.pop_front().unwrap();
        client.finished("ch", &uid).await;
    }
    // The daemon answers `infos` only once every earlier change is committed.
    let state = client.state("ch").await;
    assert_eq!(state["running_count"], 0, "{state}");
    let dir = daemon.dir().join("state");

    // No candidate, while the daemon runs: every grant time reproduced.
    let report = json(&dir, None);
    assert_eq!(
        report["reproduced"],
        serde_json::json!([JOBS, JOBS]),
        "{report}"
    );
    let ch = &report["channels"]["ch"];
    assert_eq!(ch["recorded"]["grants"], JOBS, "{report}");
    assert_eq!(ch["recorded"]["jobs"], JOBS + 1, "{report}");
    assert_eq!(ch["recorded"]["peak_running"], 2, "{report}");
    assert_eq!(ch["recorded"], ch["candidate"], "{report}");
    let text = replay(&dir, None, &[]);
    assert!(
        text.contains(&format!(
            "reproduce every recorded grant time ({JOBS} of {JOBS})"
        )),
        "{text}"
    );
    assert!(
        text.contains("recorded") && text.contains("replayed"),
        "{text}"
    );

    // A candidate with one slot: the same jobs, longer waits.
    let candidate = daemon.dir().join("candidate.toml");
    fs::write(&candidate, "[defaults]\nmax_concurrent_jobs = 1\n").unwrap();
    let report = json(&dir, Some(&candidate));
    let (rec, cand) = (
        &report["channels"]["ch"]["recorded"],
        &report["channels"]["ch"]["candidate"],
    );
    assert_eq!(cand["grants"], JOBS, "{report}");
    assert_eq!(cand["peak_running"], 1, "{report}");
    let wait = |s: &Value, p: &str| s["wait_ms"][p].as_u64().unwrap();
    assert!(wait(cand, "max") > wait(rec, "max"), "{report}");
    assert!(wait(cand, "p50") >= wait(rec, "p50"), "{report}");
    // The jobs keep their recorded run times: five of them queue behind each other's.
    let min_run = u64::try_from(RUN.as_millis()).unwrap();
    assert!(wait(cand, "max") >= (JOBS as u64 - 1) * min_run, "{report}");

    // Replay only reads: with the daemon stopped, the dir is byte for byte what it was.
    daemon.kill();
    let before = contents(&dir);
    json(&dir, Some(&candidate));
    assert_eq!(contents(&dir), before);
}

/// The grant time of `uid` in a `--jobs` report, recorded or candidate.
fn grant_of(report: &Value, uid: &str, run: &str) -> u64 {
    let jobs = report["jobs"].as_array().expect("--jobs lists jobs");
    let job = jobs
        .iter()
        .find(|j| j["uid"] == uid)
        .expect("the job is listed");
    job[run]
        .as_u64()
        .unwrap_or_else(|| panic!("{uid} has no {run} grant: {report}"))
}

/// A FIFO channel replayed with `--policy ch=priority.wasm`: the real component orders the
/// recorded queue by the jobs' recorded `priority` field.
#[tokio::test]
async fn a_candidate_policy_file_runs_on_the_recorded_jobs() {
    let priority = policy_wasm("priority");
    let (_broker, daemon, mut client) =
        setup("[defaults]\nmax_concurrent_jobs = 1\n", &["ch"], &["go/+"]).await;
    client.register("ch", "blocker", 30.0).await;
    assert_eq!(client.next_go("ch").await, "blocker");
    for (uid, p) in [("low", 1), ("high", 9)] {
        let payload = format!(r#"{{"uid": "{uid}", "timeout": 30, "priority": {p}}}"#);
        client.publish(&topic("ch", "register"), payload).await;
    }
    // Both are queued (a state reply comes after their changes are committed).
    let state = client.state("ch").await;
    assert_eq!(state["waiting"], 2, "{state}");
    for expected in ["blocker", "low", "high"] {
        if expected != "blocker" {
            assert_eq!(
                client.next_go("ch").await,
                expected,
                "FIFO without a policy"
            );
        }
        // A measurable run time: each replayed grant then follows the previous job's end by
        // at least this much, so no two grants share an engine millisecond (with instant
        // finishes they could, and the order checks below failed in full-suite runs).
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.finished("ch", expected).await;
    }
    client.state("ch").await;
    let dir = daemon.dir().join("state");
    let out = Command::new(env!("CARGO_BIN_EXE_coordinosaur"))
        .args(["replay", "--jobs", "--json", "--state"])
        .arg(&dir)
        .arg("--policy")
        .arg(format!("ch={}", priority.display()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["reproduced"], serde_json::json!([3, 3]), "{report}");
    // Recorded FIFO (the worker saw low's go first).
    assert!(
        grant_of(&report, "low", "recorded") < grant_of(&report, "high", "recorded"),
        "{report}"
    );
    assert!(
        grant_of(&report, "high", "candidate") < grant_of(&report, "low", "candidate"),
        "{report}"
    );
    assert_eq!(
        grant_of(&report, "high", "candidate"),
        grant_of(&report, "low", "recorded"),
        "high takes low's recorded slot: {report}"
    );
}

#[tokio::test]
async fn bad_arguments_and_a_dir_without_journals_are_refused_by_name() {
    let empty = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_coordinosaur"))
            .arg("replay")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let dir = empty.path().to_str().unwrap();
    let (code, err) = run(&["--state", dir]);
    assert_eq!(code, Some(2));
    assert!(err.contains("no journal"), "{err}");
    let (code, err) = run(&["--state", dir, "--policy", "nochannel"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("CHANNEL=FILE"), "{err}");
    let (code, err) = run(&["--state", dir, "--from", "last tuesday"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--from last tuesday"), "{err}");
    let (code, err) = run(&["--state", dir, "--policy", "ch=/nonexistent/p.wasm"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("/nonexistent/p.wasm"), "{err}");
}
