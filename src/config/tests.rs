//! Config tests: bad files must fail with one message naming the key and its line.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::engine::{Millis, QuotaLog, QuotaSpec};

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"))
}

fn ok(text: &str) -> Config {
    parse(text).unwrap_or_else(|e| panic!("config rejected: {e}"))
}

fn quota(name: &str, secs: u64, limit: u32, log: QuotaLog) -> QuotaSpec {
    QuotaSpec {
        name: name.to_owned(),
        interval: Millis(secs * 1000),
        limit,
        log,
    }
}

/// (case, file, line the message must point at, texts the message must contain)
const BAD: &[(&str, &str, usize, &[&str])] = &[
    (
        "unknown durability",
        "[state]\ndir = \"s\"\ndurability = \"sometimes\"\n",
        3,
        &["durability", "fsync", "os"],
    ),
    (
        "unknown key in [state]",
        "[state]\nfolder = \"s\"\n",
        2,
        &["folder"],
    ),
    (
        "unknown top-level key",
        "# settings\n\nverbose = true\n[mqtt]\nport = 1883\n",
        3,
        &["verbose"],
    ),
    (
        "unknown top-level table",
        "[mqtt]\nport = 1883\n[brokers]\nx = 1\n",
        3,
        &["brokers"],
    ),
    (
        "unknown key after a table header belongs to that table",
        "[mqtt]\nport = 1883\n\nverbose = true\n",
        4,
        &["verbose", "`keep_alive`"],
    ),
    (
        "unknown key in a table",
        "[mqtt]\nhost = \"h\"\nprot = 1884\n",
        3,
        &["prot"],
    ),
    (
        "unknown key in a quota",
        "[defaults]\nquotas = [\n  { interval = 60, limit = 1 },\n  { interval = 60, limit = 1, nmae = \"x\" },\n]\n",
        4,
        &["nmae"],
    ),
    (
        "unknown key in a channel",
        "[[channels]]\npattern = \"a\"\n\n[[channels]]\npattern = \"b\"\nmax_jobs = 3\n",
        6,
        &["max_jobs"],
    ),
    (
        "bad regex",
        "[defaults]\nmax_concurrent_jobs = 1\n\n[[channels]]\npattern = \"test(.+\"\n",
        5,
        &["pattern", "test(.+"],
    ),
    (
        "unbalanced pattern that would compile once wrapped",
        "[[channels]]\npattern = \"a)|(b\"\n",
        2,
        &["a)|(b"],
    ),
    (
        "negative limit",
        "[[channels]]\npattern = \"x\"\nquotas = [\n  { interval = 60, limit = -1 },\n]\n",
        4,
        &["limit = -1", "quota limit", "-1"],
    ),
    (
        "limit above u32",
        "[defaults]\nquotas = [{ interval = 60, limit = 4294967296 }]\n",
        2,
        &["limit", "4294967296"],
    ),
    (
        "zero interval",
        "[defaults]\nquotas = [\n  { interval = 0, limit = 5 },\n]\n",
        3,
        &["interval = 0", "quota interval"],
    ),
    (
        "sub-millisecond interval",
        "[defaults]\nquotas = [{ interval = \"10us\", limit = 5 }]\n",
        2,
        &["interval", "quota interval"],
    ),
    (
        "missing limit",
        "[defaults]\n\nquotas = [{ interval = 60 }]\n",
        3,
        &["limit"],
    ),
    (
        "duplicate quota name",
        "[[channels]]\npattern = \"x\"\nquotas = [\n  { interval = 60, name = \"a\", limit = 1 },\n  { interval = 120, name = \"b\", limit = 1 },\n  { interval = 180, name = \"a\", limit = 1 },\n]\n",
        6,
        &["duplicate quota name \"a\"", "first used at line 4"],
    ),
    (
        "duplicate default quota name",
        "[defaults]\nquotas = [\n  { interval = \"1m\", limit = 1 },\n  { interval = 60, limit = 2 },\n]\n",
        4,
        &["duplicate quota name \"1m\"", "default name", "first used at line 3"],
    ),
    (
        "empty quota name",
        "[defaults]\nquotas = [{ interval = 60, limit = 1, name = \"\" }]\n",
        2,
        &["name", "empty"],
    ),
    (
        "bad duration string",
        "[mqtt]\nport = 1883\n\n[defaults]\ntimeout_offset = \"5 parsecs\"\n",
        5,
        &["timeout_offset", "5 parsecs"],
    ),
    (
        "negative duration",
        "[defaults]\ntimeout_offset = -3\n",
        2,
        &["timeout_offset", "negative"],
    ),
    (
        "NaN duration",
        "[limits]\nmax_timeout = nan\n",
        2,
        &["max_timeout", "finite"],
    ),
    (
        "keep_alive of 500ms",
        "[mqtt]\nhost = \"h\"\nkeep_alive = \"500ms\"\n",
        3,
        &["keep_alive", "500ms"],
    ),
    (
        "keep_alive too long for MQTT",
        "[mqtt]\nkeep_alive = \"1day\"\n",
        2,
        &["keep_alive", "65535s"],
    ),
    (
        "bad log value",
        "[defaults]\nquotas = [\n  { interval = 60, limit = 1, log = \"loud\" },\n]\n",
        3,
        &["log = \"loud\"", "loud", "`vv`"],
    ),
    (
        "wrong type for max_concurrent_jobs",
        "[[channels]]\npattern = \"x\"\nmax_concurrent_jobs = \"2\"\n",
        3,
        &["max_concurrent_jobs", "u32"],
    ),
    (
        "negative max_concurrent_jobs",
        "[defaults]\nmax_concurrent_jobs = -1\n",
        2,
        &["max_concurrent_jobs"],
    ),
    (
        "port out of range",
        "[mqtt]\nhost = \"h\"\nport = 70000\n",
        3,
        &["port", "70000"],
    ),
    (
        "topic_prefix with wildcard",
        "[mqtt]\ntopic_prefix = \"jobs/#\"\n",
        2,
        &["topic_prefix", "wildcard"],
    ),
    (
        "topic_prefix with trailing slash",
        "[mqtt]\n\ntopic_prefix = \"jobs/\"\n",
        3,
        &["topic_prefix", "'/'"],
    ),
    (
        "empty topic_prefix",
        "[mqtt]\ntopic_prefix = \"\"\n",
        2,
        &["topic_prefix", "empty"],
    ),
    (
        "max_payload too small",
        "[limits]\nmax_payload = 10\n",
        2,
        &["max_payload", "64"],
    ),
    (
        "max_uid_len of zero",
        "[limits]\nmax_timeout = 60\nmax_uid_len = 0\n",
        3,
        &["max_uid_len", "between 1 and 32768"],
    ),
    (
        "max_uid_len over a topic level",
        "[limits]\nmax_uid_len = 40000\n",
        2,
        &["max_uid_len", "40000"],
    ),
    (
        "max_channels of zero",
        "[limits]\n\nmax_channels = 0\n",
        3,
        &["max_channels = 0", "at least 1"],
    ),
    (
        "negative max_waiting_per_channel",
        "[limits]\nmax_waiting_per_channel = -5\n",
        2,
        &["max_waiting_per_channel = -5"],
    ),
    (
        "max_waiting_per_channel of zero",
        "[limits]\nmax_waiting_per_channel = 0\n",
        2,
        &["max_waiting_per_channel = 0", "at least 1"],
    ),
    (
        "max_waiting_bytes below one small job",
        "[limits]\nmax_waiting_bytes = 100\n",
        2,
        &["max_waiting_bytes = 100", "at least 4096 bytes", "got 100"],
    ),
    (
        "negative max_waiting_bytes",
        "[limits]\nmax_waiting_bytes = -1\n",
        2,
        &["max_waiting_bytes = -1"],
    ),
    (
        "bad listen address",
        "[embedded_broker]\nenabled = true\nlisten = \"localhost\"\n",
        3,
        &["listen"],
    ),
    (
        "tls client_cert without client_key",
        "[mqtt]\nhost = \"h\"\n\n[mqtt.tls]\nca_file = \"ca.pem\"\nclient_cert = \"c.pem\"\n",
        4,
        &["client_cert is set but client_key is not"],
    ),
    (
        "tls client_key without client_cert",
        "[mqtt.tls]\nca_file = \"ca.pem\"\nclient_key = \"c.key\"\n",
        1,
        &["client_key is set but client_cert is not"],
    ),
    (
        "tls without ca_file",
        "[mqtt]\nport = 8883\n[mqtt.tls]\nserver_name = \"mqtt.example\"\n",
        3,
        &["ca_file"],
    ),
    (
        "unknown key in [mqtt.tls]",
        "[mqtt.tls]\nca_file = \"ca.pem\"\ncafile = \"x\"\n",
        3,
        &["cafile"],
    ),
    (
        "empty tls path",
        "[mqtt.tls]\nca_file = \"\"\n",
        1,
        &["ca_file must not be empty"],
    ),
    (
        "empty tls server_name",
        "[mqtt.tls]\nca_file = \"ca.pem\"\nserver_name = \"\"\n",
        1,
        &["server_name must not be empty"],
    ),
    (
        "missing pattern",
        "[[channels]]\nmax_concurrent_jobs = 3\n",
        1,
        &["pattern"],
    ),
    (
        "TOML syntax error",
        "[mqtt]\nhost = \"h\"\nport = \n",
        3,
        &["port"],
    ),
];

#[test]
fn bad_files_name_the_key_and_line() {
    for (case, text, line, needles) in BAD {
        let err = match parse(text) {
            Ok(_) => panic!("{case}: accepted"),
            Err(e) => e,
        };
        let ConfigError::Invalid { path, message } = &err else {
            panic!("{case}: wrong variant {err:?}");
        };
        assert_eq!(path, Path::new("test.toml"), "{case}");
        let shown = err.to_string();
        assert!(
            shown.starts_with("invalid config file test.toml: "),
            "{case}: {shown}"
        );
        assert!(
            message.contains(&format!("at line {line}, column")),
            "{case}: expected line {line} in:\n{message}"
        );
        for needle in *needles {
            assert!(
                message.contains(needle),
                "{case}: expected {needle:?} in:\n{message}"
            );
        }
    }
}

#[test]
fn unreadable_file_is_a_read_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.toml");
    let err = Config::load(&path).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Read { path: p, .. } if *p == path),
        "{err:?}"
    );
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!("cannot read config file {}: ", path.display())),
        "{shown}"
    );
}

#[test]
fn load_reads_the_given_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[mqtt]\nport = 1884\n").unwrap();
    assert_eq!(Config::load(&path).unwrap().mqtt.port, 1884);
    std::fs::write(&path, "[mqtt]\nport = \"x\"\n").unwrap();
    let err = Config::load(&path).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Invalid { path: p, .. } if *p == path),
        "{err:?}"
    );
}

#[test]
fn shipped_example_parses() {
    let cfg = Config::parse(
        include_str!("../../coordinosaur.toml"),
        Path::new("coordinosaur.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.embedded_broker.enabled);
    assert_eq!(cfg.embedded_broker.listen.to_string(), "127.0.0.1:1883");
    assert_eq!(cfg.mqtt.username, None);
    assert_eq!(cfg.channels.len(), 1);
    let opts = cfg.channel_options("test1");
    assert_eq!(opts.max_concurrent_jobs, 2);
    assert_eq!(opts.timeout_offset, Millis(1000));
    assert_eq!(
        opts.quotas,
        vec![
            quota("minute", 60, 15, QuotaLog::Verbose),
            quota("hour", 3600, 100, QuotaLog::Quiet),
        ]
    );
    assert_eq!(cfg.channel_options("other"), ChannelOptions::default());
}

#[test]
fn empty_file_is_all_defaults() {
    let cfg = ok("");
    let def = Config::default();
    assert_eq!(cfg.mqtt, def.mqtt);
    assert_eq!(cfg.embedded_broker, def.embedded_broker);
    assert_eq!(cfg.limits, def.limits);
    assert_eq!(cfg.defaults, def.defaults);
    assert!(cfg.channels.is_empty());

    assert_eq!(cfg.mqtt.host, "127.0.0.1");
    assert_eq!(cfg.mqtt.port, 1883);
    assert_eq!(cfg.mqtt.client_id, "coordinosaur");
    assert_eq!(cfg.mqtt.topic_prefix, "coordinosaur");
    assert_eq!(cfg.mqtt.keep_alive, Duration::from_secs(30));
    assert!(!cfg.embedded_broker.enabled);
    assert_eq!(cfg.embedded_broker.listen.to_string(), "127.0.0.1:1883");
    assert_eq!(cfg.limits.max_payload, 65536);
    assert_eq!(cfg.limits.max_timeout, Millis(365 * 86_400_000));
    assert_eq!(cfg.channel_options("any"), ChannelOptions::default());
}

#[test]
fn absent_keys_keep_their_defaults() {
    let cfg = ok(
        "[mqtt]\nport = 1884\nusername = \"u\"\n[defaults]\nmax_concurrent_jobs = 3\n\
                  [[channels]]\npattern = \"a\"\ntimeout_offset = 5\n",
    );
    assert_eq!(cfg.mqtt.host, "127.0.0.1");
    assert_eq!(cfg.mqtt.username.as_deref(), Some("u"));
    assert_eq!(cfg.mqtt.password, None);
    assert_eq!(cfg.defaults.timeout_offset, Millis(0));
    let opts = cfg.channel_options("a1");
    assert_eq!(
        opts.max_concurrent_jobs, 3,
        "not named by the entry, so from [defaults]"
    );
    assert_eq!(opts.timeout_offset, Millis(5000));
}

#[test]
fn durations_in_every_form() {
    let cases = [
        ("0", 0),
        ("60", 60_000),
        ("1.5", 1_500),
        ("0.25", 250),
        ("\"60\"", 60_000),
        ("\"2.5\"", 2_500),
        ("\"90s\"", 90_000),
        ("\"5m\"", 300_000),
        ("\"1h\"", 3_600_000),
        ("\"200ms\"", 200),
        ("\"1h 30m\"", 5_400_000),
    ];
    for (value, ms) in cases {
        let cfg = ok(&format!(
            "[defaults]\ntimeout_offset = {value}\n[limits]\nmax_timeout = {value}\n\
             [[channels]]\npattern = \"x\"\ntimeout_offset = {value}\n"
        ));
        assert_eq!(cfg.defaults.timeout_offset, Millis(ms), "{value}");
        assert_eq!(cfg.limits.max_timeout, Millis(ms), "{value}");
        assert_eq!(cfg.channels[0].timeout_offset, Some(Millis(ms)), "{value}");
    }
    for (value, expected) in [("0", 0), ("1", 1_000), ("\"1m\"", 60_000), ("2.0", 2_000)] {
        let cfg = ok(&format!("[mqtt]\nkeep_alive = {value}\n"));
        assert_eq!(
            cfg.mqtt.keep_alive,
            Duration::from_millis(expected),
            "{value}"
        );
    }
    let cfg = ok(
        "[defaults]\nquotas = [{ interval = 0.5, limit = 1 }, { interval = \"1h\", limit = 2 }]\n",
    );
    assert_eq!(cfg.defaults.quotas[0].interval, Millis(500));
    assert_eq!(cfg.defaults.quotas[1].interval, Millis(3_600_000));
}

#[test]
fn quota_defaults_and_zero_limit() {
    let cfg = ok("[defaults]\nquotas = [\n  { interval = 60, limit = 0 },\n  \
                  { interval = \"1h\", limit = 5, log = \"vv\" },\n  { interval = 90, limit = 1 },\n]\n");
    assert_eq!(
        cfg.defaults.quotas,
        vec![
            quota("1m", 60, 0, QuotaLog::Quiet),
            quota("1h", 3600, 5, QuotaLog::VeryVerbose),
            quota("1m 30s", 90, 1, QuotaLog::Quiet),
        ],
        "default names come from the interval; limit 0 is kept (disabled window)"
    );
}

const LAYERED: &str = r#"[defaults]
timeout_offset = 2
max_concurrent_jobs = 1
quotas = [{ interval = 60, name = "base", limit = 10 }]

[[channels]]
pattern = "test(.+)"
timeout_offset = 1
max_concurrent_jobs = 2
quotas = [
  { interval = 60, name = "minute", limit = 15, log = "v" },
  { interval = "1h", name = "hour", limit = 100, log = "q" },
]

[[channels]]
pattern = "test_"
max_concurrent_jobs = 5
quotas = [{ interval = 10, name = "burst", limit = 3 }]

[[channels]]
pattern = "nothing"
"#;

#[test]
fn later_entries_override_per_key_and_quotas_replace_whole() {
    let cfg = ok(LAYERED);
    let one = cfg.channel_options("test1");
    assert_eq!(one.max_concurrent_jobs, 2);
    assert_eq!(one.timeout_offset, Millis(1000));
    assert_eq!(one.quotas.len(), 2);

    let both = cfg.channel_options("test_x");
    assert_eq!(both.max_concurrent_jobs, 5, "later entry wins");
    assert_eq!(
        both.timeout_offset,
        Millis(1000),
        "kept from the earlier entry"
    );
    assert_eq!(
        both.quotas,
        vec![quota("burst", 10, 3, QuotaLog::Quiet)],
        "whole set replaced, not merged"
    );

    let none = cfg.channel_options("other");
    assert_eq!(none.timeout_offset, Millis(2000));
    assert_eq!(none.quotas, vec![quota("base", 60, 10, QuotaLog::Quiet)]);
}

#[test]
fn patterns_are_anchored_at_the_start_only() {
    let cfg = ok("[defaults]\nmax_concurrent_jobs = 1\n[[channels]]\npattern = \"test(.+)\"\nmax_concurrent_jobs = 9\n\
                  [[channels]]\npattern = \"a|b\"\nmax_concurrent_jobs = 7\n");
    let max = |ch: &str| cfg.channel_options(ch).max_concurrent_jobs;
    assert_eq!(max("test1"), 9);
    assert_eq!(max("testing"), 9, "open at the end");
    assert_eq!(max("atest1"), 7, "only the a|b entry matches, at the start");
    assert_eq!(max("xtest1"), 1, "not found in the middle");
    assert_eq!(max("test"), 1, "(.+) needs a character");
    assert_eq!(max("bee"), 7, "alternation is anchored as a whole");
    assert_eq!(max("cab"), 1);
}

#[test]
fn explain_reports_matches_and_result() {
    let cfg = ok(LAYERED);
    let ex = cfg.explain("test_x");
    assert_eq!(ex.options, cfg.channel_options("test_x"));
    let numbers: Vec<_> = ex.matched.iter().map(|m| (m.number, m.line)).collect();
    assert_eq!(numbers, vec![(1, 7), (2, 16)]);
    assert_eq!(ex.matched[1].keys, vec!["max_concurrent_jobs", "quotas"]);

    let shown = cfg.explain("test1").to_string();
    assert_eq!(
        shown,
        "channel \"test1\"\n  \
         matched: [[channels]] #1 pattern \"test(.+)\" (line 7): timeout_offset, max_concurrent_jobs, quotas\n  \
         max_concurrent_jobs = 2\n  \
         timeout_offset = 1s\n  \
         policy: none\n  \
         quotas:\n    \
         minute: 15 per 1m (log v)\n    \
         hour: 100 per 1h (log q)\n"
    );
    let shown = cfg.explain("nothing here").to_string();
    assert!(
        shown.contains("#3 pattern \"nothing\" (line 21): sets nothing"),
        "{shown}"
    );
    let shown = cfg.explain("other").to_string();
    assert!(
        shown.contains("matched: no [[channels]] entry; defaults apply"),
        "{shown}"
    );
    assert!(shown.contains("base: 10 per 1m (log q)"), "{shown}");
}

#[test]
fn summary_names_broker_prefix_and_rule_count() {
    let cfg = ok(LAYERED);
    let text = cfg.summary();
    assert!(text.contains("127.0.0.1:1883"), "{text}");
    assert!(text.contains("topic prefix: coordinosaur"), "{text}");
    assert!(text.contains("channel rules: 3"), "{text}");
    let cfg = ok("[mqtt]\nhost = \"::1\"\n[embedded_broker]\nenabled = true\n");
    let text = cfg.summary();
    assert!(text.contains("[::1]:1883"), "{text}");
    assert!(
        text.contains("embedded, listening on 127.0.0.1:1883"),
        "{text}"
    );
}

#[test]
fn policy_keys_resolve_and_override_per_key() {
    let text = r#"
[defaults]
policy = "policies/priority.wasm"
policy_config = { weight = 2, tiers = ["a", "b"] }

[[channels]]
pattern = "strict"
on_policy_error = "closed"

[[channels]]
pattern = "plain"
policy = ""
"#;
    let cfg = Config::parse(text, Path::new("/etc/coordinosaur/coordinosaur.toml")).expect("valid");
    let any = cfg.channel_options("other");
    assert_eq!(
        any.policy.as_deref(),
        Some(Path::new("/etc/coordinosaur/policies/priority.wasm")),
        "relative to the config file's folder"
    );
    let config: serde_json::Value = serde_json::from_str(&any.policy_config).expect("json");
    assert_eq!(
        config,
        serde_json::json!({"weight": 2, "tiers": ["a", "b"]})
    );
    assert_eq!(any.on_policy_error, crate::engine::OnPolicyError::Open);
    let strict = cfg.channel_options("strict");
    assert_eq!(strict.on_policy_error, crate::engine::OnPolicyError::Closed);
    assert_eq!(strict.policy, any.policy);
    assert_eq!(
        cfg.channel_options("plain").policy,
        None,
        "policy = \"\" turns it off"
    );
    assert!(cfg.explain("strict").to_string().contains("priority.wasm"));
    assert_eq!(cfg.explain("plain").matched[0].keys, vec!["policy"]);
}

#[test]
fn policy_shadow_resolves_per_channel_and_every_file_is_compiled() {
    let text = r#"
[defaults]
policy = "live.wasm"
policy_shadow = "candidate.wasm"

[[channels]]
pattern = "own"
policy_shadow = "other.wasm"

[[channels]]
pattern = "none"
policy_shadow = ""

[policy_rollback]
failures = 5
window = "2m"
"#;
    let cfg = Config::parse(text, Path::new("/etc/c/coordinosaur.toml")).expect("valid");
    let shadow = |ch: &str| cfg.channel_options(ch).policy_shadow;
    assert_eq!(
        shadow("x").as_deref(),
        Some(Path::new("/etc/c/candidate.wasm"))
    );
    assert_eq!(
        shadow("own").as_deref(),
        Some(Path::new("/etc/c/other.wasm"))
    );
    assert_eq!(shadow("none"), None, "policy_shadow = \"\" turns it off");
    let paths: Vec<_> = cfg
        .policy_paths()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(
        paths,
        [
            "/etc/c/candidate.wasm",
            "/etc/c/live.wasm",
            "/etc/c/other.wasm"
        ],
        "shadows are compiled and watched like policies"
    );
    assert_eq!(cfg.explain("own").matched[0].keys, vec!["policy_shadow"]);
    let explained = cfg.explain("own").to_string();
    assert!(
        explained.contains("policy_shadow = /etc/c/other.wasm (decides nothing)"),
        "{explained}"
    );
    assert_eq!(
        cfg.policy_rollback,
        PolicyRollback {
            failures: 5,
            window: Millis(120_000)
        }
    );
    let default = Config::parse("", Path::new("c.toml")).expect("valid");
    assert_eq!(default.policy_rollback, PolicyRollback::default());
    let err = Config::parse(
        "[policy_rollback]
after = 3
",
        Path::new("c.toml"),
    )
    .expect_err("unknown key")
    .to_string();
    assert!(err.contains("after"), "{err}");
}

#[test]
fn bad_on_policy_error_names_the_line() {
    let text = "[defaults]\npolicy = \"p.wasm\"\non_policy_error = \"ajar\"\n";
    let err = Config::parse(text, Path::new("c.toml"))
        .expect_err("invalid")
        .to_string();
    assert!(err.contains("line 3") && err.contains("ajar"), "{err}");
}

#[test]
fn count_and_uid_limits_parse_and_reach_engine_and_decoder() {
    let def = Config::default().limits;
    assert_eq!(
        (
            def.max_uid_len,
            def.max_channels,
            def.max_waiting_per_channel,
            def.max_waiting_bytes
        ),
        (1024, 10_000, 100_000, 256 << 20)
    );
    let cfg = ok(
        "[limits]\nmax_uid_len = 64\nmax_channels = 2\nmax_waiting_per_channel = 3\n\
         max_waiting_bytes = 4096\n",
    );
    assert_eq!(cfg.limits.max_uid_len, 64);
    assert_eq!(
        cfg.limits.engine(),
        crate::engine::EngineLimits {
            max_channels: 2,
            max_waiting_per_channel: 3,
            max_waiting_bytes: 4096,
        }
    );
    let decode = cfg.limits.decode();
    assert_eq!(decode.max_uid_len, 64);
    assert_eq!(decode.max_payload, def.max_payload);
}

#[test]
fn environment_overrides_credentials_and_empty_means_none() {
    let text = "[mqtt]\nusername = \"file-user\"\npassword = \"file-pass\"\n";
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |key: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_owned())
        }
    };
    // Nothing set: the file's values stay.
    let mut cfg = ok(text);
    cfg.apply_env(env(&[]));
    assert_eq!(cfg.mqtt.username.as_deref(), Some("file-user"));
    assert_eq!(cfg.mqtt.password.as_deref(), Some("file-pass"));
    // Both set: both win over the file.
    let mut cfg = ok(text);
    cfg.apply_env(env(&[
        (ENV_MQTT_USERNAME, "env-user"),
        (ENV_MQTT_PASSWORD, "env-pass"),
    ]));
    assert_eq!(cfg.mqtt.username.as_deref(), Some("env-user"));
    assert_eq!(cfg.mqtt.password.as_deref(), Some("env-pass"));
    // Only the password: the user name comes from the file (the usual split).
    let mut cfg = ok("[mqtt]\nusername = \"file-user\"\n");
    cfg.apply_env(env(&[(ENV_MQTT_PASSWORD, "secret")]));
    assert_eq!(cfg.mqtt.username.as_deref(), Some("file-user"));
    assert_eq!(cfg.mqtt.password.as_deref(), Some("secret"));
    // Set but empty: none, as an empty value in the file.
    let mut cfg = ok(text);
    cfg.apply_env(env(&[(ENV_MQTT_USERNAME, ""), (ENV_MQTT_PASSWORD, "")]));
    assert_eq!(cfg.mqtt.username, None);
    assert_eq!(cfg.mqtt.password, None);
    assert_eq!(ENV_MQTT_USERNAME, "COORDINOSAUR_MQTT_USERNAME");
    assert_eq!(ENV_MQTT_PASSWORD, "COORDINOSAUR_MQTT_PASSWORD");
}

#[test]
fn session_is_persistent_unless_asked() {
    assert!(!ok("").mqtt.clean_session);
    assert!(ok("[mqtt]\nclean_session = true\n").mqtt.clean_session);
}

#[test]
fn state_dir_defaults_beside_the_config_and_empty_turns_it_off() {
    let c = Config::parse("", Path::new("/etc/coordinosaur/c.toml")).unwrap();
    assert_eq!(c.state.dir(), Some(Path::new("/etc/coordinosaur/state")));
    assert_eq!(c.state.durability, crate::state::Durability::Fsync);
    let c = Config::parse(
        "[state]\ndir = \"/var/lib/cdn\"\ndurability = \"os\"\n",
        Path::new("/etc/c.toml"),
    )
    .unwrap();
    assert_eq!(c.state.dir(), Some(Path::new("/var/lib/cdn")));
    assert_eq!(c.state.durability, crate::state::Durability::Os);
    let c = Config::parse("[state]\ndir = \"\"\n", Path::new("/etc/c.toml")).unwrap();
    assert_eq!(c.state.dir(), None);
}

#[test]
fn tls_is_off_unless_its_table_is_there() {
    assert_eq!(ok("").mqtt.tls, None);
    assert!(ok("").summary().contains("tls: off"));
}

#[test]
fn tls_paths_resolve_beside_the_config_file() {
    let text = "[mqtt.tls]\nca_file = \"certs/ca.pem\"\nclient_cert = \"/etc/c.pem\"\n\
                client_key = \"c.key\"\nserver_name = \"mqtt.example\"\n";
    let cfg = Config::parse(text, Path::new("/etc/coordinosaur/coordinosaur.toml")).unwrap();
    let tls = cfg.mqtt.tls.as_ref().expect("tls set");
    assert_eq!(tls.ca_file, Path::new("/etc/coordinosaur/certs/ca.pem"));
    let auth = tls.client_auth.as_ref().expect("client auth set");
    assert_eq!(auth.cert, Path::new("/etc/c.pem"));
    assert_eq!(auth.key, Path::new("/etc/coordinosaur/c.key"));
    assert_eq!(tls.server_name.as_deref(), Some("mqtt.example"));
    let summary = cfg.summary();
    assert!(
        summary.contains("tls: CA /etc/coordinosaur/certs/ca.pem, client certificate /etc/c.pem"),
        "{summary}"
    );
    // Without client_cert/client_key: server authentication only.
    let cfg = ok("[mqtt.tls]\nca_file = \"/ca.pem\"\n");
    let tls = cfg.mqtt.tls.expect("tls set");
    assert_eq!((tls.client_auth, tls.server_name), (None, None));
}

const JETSTREAM: &str = "[embedded_broker]\nenabled = false\n[state]\nbackend = \"jetstream\"\n";

#[test]
fn jetstream_backend_takes_its_table_and_leaves_no_state_dir() {
    let c = ok(&format!(
        "{JETSTREAM}[state.jetstream]\nservers = [\"nats://10.0.0.1:4222\", \"nats://10.0.0.2:4222\"]\n\
         stream = \"jobs-1\"\nreplicas = 5\nleader_lease = \"5s\"\nnode_id = \"host-a\"\n"
    ));
    let js = c.state.jetstream().expect("the jetstream backend");
    assert_eq!(js.servers.len(), 2);
    assert_eq!((js.stream.as_str(), js.replicas), ("jobs-1", 5));
    assert_eq!(js.leader_lease, Duration::from_secs(5));
    assert_eq!(js.node_id(), "host-a");
    assert_eq!(c.state.dir(), None);
    assert!(c.summary().contains("state: jetstream stream \"jobs-1\""));
    // The defaults: a local server, 3 replicas, a 2 s lease, hostname-pid.
    let d = ok(JETSTREAM);
    let js = d.state.jetstream().expect("the jetstream backend");
    assert_eq!(js.servers, ["nats://127.0.0.1:4222"]);
    assert_eq!((js.replicas, js.leader_lease), (3, Duration::from_secs(2)));
    assert!(js.node_id().ends_with(&format!("-{}", std::process::id())));
    assert_eq!(ok("").state.jetstream(), None);
}

#[test]
fn jetstream_backend_refuses_what_cannot_work() {
    let cases = [
        (
            "[embedded_broker]\nenabled = true\n[state]\nbackend = \"jetstream\"\n",
            "embedded broker",
        ),
        (
            &*format!("{JETSTREAM}[mqtt]\nclean_session = true\n"),
            "clean_session = false",
        ),
        (
            &*format!("{JETSTREAM}[state.jetstream]\nservers = []\n"),
            "servers is empty",
        ),
        (
            &*format!("{JETSTREAM}[state.jetstream]\nservers = [\"not a url\"]\n"),
            "not a NATS URL",
        ),
        (
            &*format!("{JETSTREAM}[state.jetstream]\nstream = \"a.b\"\n"),
            "stream must be",
        ),
        (
            &*format!("{JETSTREAM}[state.jetstream]\nreplicas = 7\n"),
            "replicas must be",
        ),
        (
            &*format!("{JETSTREAM}[state.jetstream]\nleader_lease = \"100ms\"\n"),
            "leader_lease must be",
        ),
        (
            &*format!(
                "{JETSTREAM}[state.jetstream]\ntoken = \"t\"\nusername = \"u\"\npassword = \"p\"\n"
            ),
            "not both",
        ),
        (
            &*format!("{JETSTREAM}[state.jetstream]\nusername = \"u\"\n"),
            "go together",
        ),
        (
            &*format!("{JETSTREAM}[state.jetstream]\nleader = 1\n"),
            "unknown field",
        ),
    ];
    for (text, needle) in cases {
        let e = parse(text).expect_err(text).to_string();
        assert!(e.contains(needle), "{text:?}: {e}");
    }
}

#[test]
fn nats_secrets_come_from_the_environment() {
    let mut c = ok(&format!(
        "{JETSTREAM}[state.jetstream]\nusername = \"file-user\"\npassword = \"file-pass\"\n"
    ));
    c.apply_env(|k| match k {
        "COORDINOSAUR_NATS_PASSWORD" => Some("env-pass".into()),
        "COORDINOSAUR_NATS_USERNAME" => Some(String::new()),
        _ => None,
    });
    let js = &c.state.jetstream;
    assert_eq!(js.password.as_deref(), Some("env-pass"));
    assert_eq!(js.username, None);
}
