//! `coordinosaur status`: ask the daemon for its channels' state and print it.
//!
//! Without a channel it publishes `PREFIX/infos` and reads the array on `PREFIX/state` (or, from
//! a daemon with more state than fits in one message, every page of one report, put back
//! together); with one, `PREFIX/CHANNEL/infos` and `PREFIX/CHANNEL/state`. The subscription is
//! acknowledged before the request goes out, so a fast answer cannot be missed.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal as _, Write as _};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::{sleep, timeout_at, Instant};

use super::format::StateView;
use super::session::Session;
use super::{exit, random_u32, CliError, Endpoint};
use crate::protocol::{self, Action};

/// How long DISCONNECT may take to go out.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Refresh period of `--watch`.
const WATCH_PERIOD: Duration = Duration::from_secs(1);

/// Arguments of `coordinosaur status`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit codes: 0 answered (or --watch ended by Ctrl-C); 125 no answer within --timeout, broker\nunreachable, or a usage error."
)]
pub struct StatusArgs {
    /// Only this channel (the daemon creates it with its configured options if it is new).
    pub channel: Option<String>,
    /// Print the daemon's JSON answer, pretty-printed, instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Refresh every second until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
    /// Also list the channel's first waiting jobs: position, uid, what holds them, ETA.
    #[arg(long, requires = "channel")]
    pub jobs: bool,
    /// Broker address, overriding [mqtt] host and port of the config file.
    #[arg(long, value_name = "HOST:PORT")]
    pub broker: Option<String>,
    /// How long the daemon has to answer (seconds or 500ms, 2m...).
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = super::parse_duration)]
    pub timeout: Duration,
}

/// Runs `coordinosaur status` and returns the process exit code.
pub fn main(config: Option<&Path>, args: StatusArgs) -> u8 {
    super::block_on(async move {
        match status(config, &args).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("coordinosaur status: {e}");
                exit::UNREACHABLE
            }
        }
    })
}

async fn status(config: Option<&Path>, args: &StatusArgs) -> Result<u8, CliError> {
    let endpoint = Endpoint::resolve(config, args.broker.as_deref())?;
    let (infos, state) = topics(&endpoint, args.channel.as_deref())?;
    // Installed before anything else, so Ctrl-C in --watch always ends cleanly with 0.
    let mut interrupt = signal(SignalKind::interrupt())
        .map_err(|e| CliError::Usage(format!("cannot handle signals: {e}")))?;
    let (mut session, mut leader) = connect(&endpoint, &state).await?;
    let tty = std::io::stdout().is_terminal();
    let mut first = true;
    // Ctrl-C ends --watch normally; a one-shot query it interrupts exits as shells report it.
    let mut code = 0;
    loop {
        let answer = tokio::select! {
            answer = ask(&mut session, &infos, &state, &mut leader, args.jobs, args.timeout) => answer?,
            _ = interrupt.recv() => {
                code = if args.watch { 0 } else { 130 };
                break;
            }
        };
        show(&answer, &leader, args, tty, first);
        first = false;
        if !args.watch {
            break;
        }
        tokio::select! {
            _ = interrupt.recv() => break,
            () = sleep(WATCH_PERIOD) => {}
        }
    }
    session.disconnect(DISCONNECT_TIMEOUT).await;
    Ok(code)
}

/// Where to ask (`infos`) and where the answer comes (`state`): one channel's, or every
/// channel's when none is named.
fn topics(endpoint: &Endpoint, channel: Option<&str>) -> Result<(String, String), CliError> {
    match channel {
        Some(c) if c.is_empty() || c.contains(['/', '+', '#', '\0']) => Err(CliError::Usage(
            format!("channel {c:?}: must be one topic level without `+`, `#` or NUL"),
        )),
        Some(c) => Ok((
            protocol::request_topic(&endpoint.prefix, c, Action::Infos.as_str()),
            protocol::state_topic(&endpoint.prefix, c),
        )),
        None => Ok((
            endpoint.topic(Action::Infos.as_str()),
            endpoint.topic(protocol::STATE),
        )),
    }
}

/// Connects and subscribes to `state` and to the leader record (JetStream backend), which is
/// retained: it arrives right after subscribing.
async fn connect(endpoint: &Endpoint, state: &str) -> Result<(Session, Leader), CliError> {
    let client_id = format!(
        "coordinosaur-status-{}-{:08x}",
        std::process::id(),
        random_u32()
    );
    let mut session = Session::connect(endpoint, &client_id, None).await?;
    let leader_topic = protocol::leader_topic(&endpoint.prefix);
    session
        .subscribe(&[state.to_owned(), leader_topic.clone()])
        .await?;
    let leader = Leader {
        topic: leader_topic,
        record: None,
    };
    Ok((session, leader))
}

/// Prints one answer: with --watch on a terminal in place of the last, else after a blank line.
fn show(answer: &Value, leader: &Leader, args: &StatusArgs, tty: bool, first: bool) {
    if args.watch && tty {
        // Clear the screen and go home, so each refresh replaces the last.
        print!("\x1b[2J\x1b[H");
    } else if !first {
        println!();
    }
    if let (Some(line), false) = (leader.line(), args.json) {
        println!("{line}");
    }
    print!("{}", render(answer, args.json));
    let _ = std::io::stdout().flush();
}

/// Publishes `infos` and returns the first complete answer on `state`: a channel's state, the
/// array of every channel's, or the channels of every page of one paged report, as one array.
async fn ask(
    session: &mut Session,
    infos: &str,
    state: &str,
    leader: &mut Leader,
    jobs: bool,
    within: Duration,
) -> Result<Value, CliError> {
    let no_answer = format!(
        "no coordinator answered on {infos} at {}; is it running?",
        session.broker()
    );
    let request = if jobs {
        br#"{"jobs":true}"#.to_vec()
    } else {
        Vec::new()
    };
    session.publish_qos0(infos, request)?;
    let deadline = Instant::now() + within;
    let mut pages = Pages::default();
    loop {
        let message = match timeout_at(deadline, session.next_message()).await {
            Ok(m) => m?,
            Err(_) => return Err(CliError::NoAnswer(no_answer)),
        };
        if message.topic == leader.topic {
            leader.record = serde_json::from_slice(&message.payload).ok();
        } else if message.topic == state {
            if let Ok(value) = serde_json::from_slice(&message.payload) {
                if let Some(answer) = pages.add(value) {
                    return Ok(answer);
                }
            }
        }
    }
}

/// Who leads, from the retained record a leader publishes with the JetStream backend.
#[derive(Debug)]
struct Leader {
    topic: String,
    record: Option<Value>,
}

impl Leader {
    /// `leader: NODE (since ...)`, if a leader record arrived.
    fn line(&self) -> Option<String> {
        let record = self.record.as_ref()?;
        let node = record.get("node")?.as_str()?;
        let since = record
            .get("since_ms")
            .and_then(Value::as_u64)
            .map(|ms| {
                let at = std::time::UNIX_EPOCH + Duration::from_millis(ms);
                format!(" (since {})", humantime::format_rfc3339_seconds(at))
            })
            .unwrap_or_default();
        Some(format!("leader: {node}{since}"))
    }
}

/// Pages of daemon-wide reports (`{"page", "pages", "now", "channels"}`), by report.
#[derive(Debug, Default)]
pub struct Pages {
    /// `now` of a report -> (its page count, the channels of each page received).
    reports: HashMap<u64, (u64, BTreeMap<u64, Vec<Value>>)>,
}

impl Pages {
    /// Takes one `state` message; returns the answer once it is complete: at once for anything
    /// but a page, else when every page of its report is in (a report whose first pages went
    /// out before we subscribed never completes; the next one does).
    pub fn add(&mut self, value: Value) -> Option<Value> {
        let (Some(page), Some(count), Some(now)) = (
            value.get("page").and_then(Value::as_u64),
            value.get("pages").and_then(Value::as_u64),
            value.get("now").and_then(Value::as_u64),
        ) else {
            return Some(value);
        };
        let channels = match value.get("channels") {
            Some(Value::Array(channels)) => channels.clone(),
            _ => Vec::new(),
        };
        let (expected, got) = self.reports.entry(now).or_default();
        *expected = count;
        got.insert(page, channels);
        if got.len() as u64 == count && (1..=count).all(|p| got.contains_key(&p)) {
            let (_, got) = self.reports.remove(&now)?;
            return Some(Value::Array(got.into_values().flatten().collect()));
        }
        None
    }
}

/// The answer as pretty JSON or as a table, with a final newline.
pub fn render(answer: &Value, json: bool) -> String {
    if json {
        return format!(
            "{}\n",
            serde_json::to_string_pretty(answer).unwrap_or_default()
        );
    }
    let states: Vec<StateView> = match answer {
        Value::Array(items) => items
            .iter()
            .filter_map(|v| serde_json::from_value(v.clone()).ok())
            .collect(),
        other => serde_json::from_value(other.clone()).into_iter().collect(),
    };
    let mut out = table(&states);
    for s in &states {
        if let Some(jobs) = &s.waiting_jobs {
            out.push('\n');
            out.push_str(&s.jobs_table(jobs));
        }
    }
    out
}

/// `CHANNEL RUNNING WAITING QUOTAS POLICY`, one row per channel, columns aligned.
pub fn table(states: &[StateView]) -> String {
    if states.is_empty() {
        return "no channels yet\n".into();
    }
    let header = ["CHANNEL", "RUNNING", "WAITING", "QUOTAS", "POLICY"].map(String::from);
    let rows: Vec<[String; 5]> = std::iter::once(header)
        .chain(states.iter().map(|s| {
            [
                s.channel.clone(),
                s.running(),
                s.waiting.to_string(),
                s.quotas(),
                s.policy(),
            ]
        }))
        .collect();
    super::format::aligned(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_table_row_per_channel() {
        let answer = json!([
            {"channel": "a", "max_concurrent_jobs": 2, "timeout_offset_ms": 0, "running": ["x", "y"],
             "running_count": 2, "waiting": 3, "next_window_opening": 61_000,
             "quotas": [{"name": "minute", "interval_ms": 60000, "limit": 2, "used": 2, "next_opening": 61_000}],
             "policy": "/etc/p/fair.wasm", "now": 1_000},
            {"channel": "bb", "max_concurrent_jobs": 1, "timeout_offset_ms": 0, "running": [],
             "running_count": 0, "waiting": 0, "quotas": [], "next_window_opening": null,
             "policy": null, "now": 1_000}
        ]);
        let text = render(&answer, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].starts_with("CHANNEL  RUNNING  WAITING  QUOTAS"),
            "{text}"
        );
        assert!(
            lines[1]
                .starts_with("a        2/2      3        minute 2/2, opens in 1m00s  fair.wasm"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("bb       0/1      0        -"),
            "{text}"
        );
        assert!(lines[2].ends_with("built-in"), "{text}");
    }

    #[test]
    fn a_shadow_policy_shows_its_agreement_rate_or_its_suspension() {
        let state = |shadow: Value| {
            json!({"channel": "c", "max_concurrent_jobs": 1, "running_count": 0, "waiting": 0,
                   "policy": "/p/priority.wasm", "now": 1_000, "shadow": shadow})
        };
        let agreeing = state(json!({"policy": "/p/cand.wasm",
            "admit": {"compared": 6, "disagreed": 1},
            "before_grant": {"compared": 2, "disagreed": 0}, "failures": 0}));
        let text = render(&agreeing, false);
        assert!(
            text.contains("priority.wasm (shadow cand.wasm: 87.5% of 8 agree)"),
            "{text}"
        );
        let fresh = state(json!({"policy": "/p/cand.wasm"}));
        assert!(
            render(&fresh, false).contains("(shadow cand.wasm: no calls yet)"),
            "{}",
            render(&fresh, false)
        );
        let suspended = state(json!({"policy": "/p/cand.wasm", "failures": 3,
            "suspended": "failed 3 times within 60s"}));
        assert!(
            render(&suspended, false).contains("(shadow cand.wasm: suspended after 3 failures)"),
            "{}",
            render(&suspended, false)
        );
    }

    #[test]
    fn pages_of_one_report_make_one_array_and_a_partial_report_is_ignored() {
        let page = |now: u64, page: u64, names: &[&str]| {
            let channels: Vec<Value> = names.iter().map(|n| json!({"channel": n})).collect();
            json!({"page": page, "pages": 2, "now": now, "channels": channels})
        };
        let mut pages = Pages::default();
        // The end of a report that began before we listened, then a whole one.
        assert_eq!(pages.add(page(1, 2, &["y", "z"])), None);
        assert_eq!(pages.add(page(2, 1, &["a", "b"])), None);
        let all = pages.add(page(2, 2, &["c"])).expect("complete");
        let names: Vec<&str> = all
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["channel"].as_str())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        // An array (a small daemon, or an older one) is an answer as it is.
        assert_eq!(pages.add(json!([])), Some(json!([])));
    }

    #[test]
    fn one_channel_and_no_channel() {
        let one = json!({"channel": "c", "max_concurrent_jobs": 1, "running_count": 1, "waiting": 0, "now": 0});
        assert!(render(&one, false)
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("c "));
        assert_eq!(render(&json!([]), false), "no channels yet\n");
    }
}
