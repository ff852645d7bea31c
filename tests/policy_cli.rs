//! `coordinosaur policy check` and `coordinosaur policy try`: the real binary on real components
//! from `policies/`, no broker.

mod common;

use std::path::Path;

use common::policies::policy_wasm;
use common::run_binary;

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// A jobs file in a temp folder (kept alive by the returned guard).
fn jobs(lines: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("jobs.jsonl");
    std::fs::write(&file, lines).expect("write the jobs file");
    let file = path(&file).to_owned();
    (dir, file)
}

#[tokio::test]
async fn check_prints_exports_imports_and_size_after_init() {
    let wasm = policy_wasm("fair-share");
    let size = std::fs::metadata(&wasm).expect("component").len();
    let config = r#"{"max_running_per_tenant":2}"#;
    let (code, out, err) = run_binary(&["policy", "check", path(&wasm), "--config", config]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&format!("size: {size} bytes")), "{out}");
    assert!(
        out.contains(&format!("init: ok with config {config}")),
        "{out}"
    );
    assert!(
        out.contains("exports: init, admit, before-grant, on-event"),
        "{out}"
    );
    assert!(
        out.contains("hooks called: admit, before-grant, on-event"),
        "{out}"
    );
    assert!(out.contains("coordinosaur:policy/job-meta@0.2.0"), "{out}");
    // A policy that declares only `admit`, and one of the first world version.
    let (code, out, err) = run_binary(&["policy", "check", path(&policy_wasm("priority"))]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("hooks called: admit\n"), "{out}");
    let (code, out, err) = run_binary(&["policy", "check", path(&policy_wasm("world-0-1"))]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("hooks called: admit, before-grant, on-event"),
        "{out}"
    );
    assert!(out.contains("coordinosaur:policy/types@0.1.0"), "{out}");
}

#[tokio::test]
async fn check_exits_2_with_the_reason_the_daemon_would_refuse() {
    let fair = policy_wasm("fair-share");
    let wrong = policy_wasm("wrong-interface");
    let cases: [(&[&str], &str); 5] = [
        (
            &[path(&fair)],
            "init refused the config: max_running_per_tenant is required",
        ),
        (
            &[path(&wrong)],
            "does not implement the coordinosaur:policy world",
        ),
        (
            &["/nonexistent/policy.wasm"],
            "cannot read policy /nonexistent/policy.wasm",
        ),
        (
            &[path(&fair), "--config", "{oops"],
            "--config \"{oops\": not JSON",
        ),
        (&[path(&fair), "--config", "[1]"], "must be a JSON object"),
    ];
    for (args, reason) in cases {
        let args = [&["policy", "check"][..], args].concat();
        let (code, out, err) = run_binary(&args).await;
        assert_eq!(code, Some(2), "{args:?}: {out}{err}");
        assert!(err.contains(reason), "{args:?}: {err}");
    }
}

#[tokio::test]
async fn check_refuses_a_policy_over_the_memory_cap_naming_the_setting() {
    let wasm = policy_wasm("priority");
    let (code, out, err) =
        run_binary(&["policy", "check", path(&wasm), "--max-memory", "65536"]).await;
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.contains("[policy_sandbox] max_memory, now 65536 bytes"),
        "{err}"
    );
}

#[tokio::test]
async fn try_prints_each_verdict_with_the_files_engine_time() {
    let (_dir, file) = jobs(
        r#"# a holds the only slot; b, c and e wait in priority order, d is rejected
{"at": 1000, "channel": "builds", "register": {"uid": "a", "timeout": 30}}
{"at": 1001, "channel": "builds", "register": {"uid": "b", "timeout": 30, "priority": 1}}
{"at": 1002, "channel": "builds", "register": {"uid": "c", "timeout": 30, "priority": 9}}
{"at": 1003, "channel": "builds", "register": {"uid": "d", "timeout": 30, "priority": "high"}}
{"at": 1004, "channel": "builds", "register": {"uid": "e", "timeout": 30, "priority": 5}}

{"at": 2000, "channel": "builds", "finished": "a"}
{"at": 40000}
{"channel": "builds", "aborted": {"uid": "b"}}
"#,
    );
    let wasm = policy_wasm("priority");
    let (code, out, err) = run_binary(&["policy", "try", path(&wasm), "--jobs", &file]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        out,
        "1000 builds go a\n\
         1003 builds rejected d: field \"priority\" must be an integer, got \"high\"\n\
         2000 builds ended a\n\
         2000 builds go c\n\
         32000 builds expired c\n\
         32000 builds go e\n\
         40000 builds cancelled b\n\
         40000 builds waiting []\n"
    );
}

#[tokio::test]
async fn try_runs_before_grant_and_on_event_with_the_config() {
    // Two slots, one per tenant: acme's second job is deferred until its first ends, and the
    // other tenant's job takes the free slot meanwhile.
    let (_dir, file) = jobs(
        r#"{"at": 0, "register": {"uid": "a1", "timeout": 60, "tenant": "acme"}}
{"at": 1, "register": {"uid": "a2", "timeout": 60, "tenant": "acme"}}
{"at": 2, "register": {"uid": "z1", "timeout": 60, "tenant": "zed"}}
{"at": 3, "finished": "a1"}
"#,
    );
    let wasm = policy_wasm("fair-share");
    let args = [
        "policy",
        "try",
        path(&wasm),
        "--jobs",
        &file,
        "--max-concurrent-jobs",
        "2",
        "--config",
        r#"{"max_running_per_tenant":1}"#,
    ];
    let (code, out, err) = run_binary(&args).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        out,
        "0 try go a1\n2 try go z1\n3 try ended a1\n3 try go a2\n3 try waiting []\n"
    );
}

#[tokio::test]
async fn try_refuses_a_bad_jobs_file_naming_the_line() {
    let wasm = policy_wasm("priority");
    let cases = [
        (
            "{\"at\": 5}\n{\"at\": 4}\n",
            "jobs.jsonl:2: \"at\" 4 goes back in time",
        ),
        ("not json\n", "jobs.jsonl:1: expected"),
        (
            "{\"at\": 1, \"grant\": \"a\"}\n",
            "jobs.jsonl:1: unknown key \"grant\"",
        ),
        (
            "{\"finished\": \"a\", \"aborted\": \"a\"}\n",
            "jobs.jsonl:1: one action per line",
        ),
        (
            "{\"at\": -1}\n",
            "jobs.jsonl:1: \"at\" must be a non-negative integer",
        ),
    ];
    for (lines, reason) in cases {
        let (_dir, file) = jobs(lines);
        let (code, out, err) = run_binary(&["policy", "try", path(&wasm), "--jobs", &file]).await;
        assert_eq!(code, Some(2), "{lines}: {out}{err}");
        assert!(err.contains(reason), "{lines}: {err}");
    }
    // A bad payload is what the daemon would answer, not a bad file.
    let (_dir, file) = jobs("{\"register\": {\"uid\": \"x\"}}\n");
    let (code, out, err) = run_binary(&["policy", "try", path(&wasm), "--jobs", &file]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("0 try rejected x: "), "{out}");
}
