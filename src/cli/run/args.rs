//! Checking and completing `run`'s arguments before anything connects: the channel, the uid
//! (given or made up), and the `--meta` fields.

use serde_json::Value;

use crate::cli::{random_u32, CliError};
use crate::protocol;

/// `HOSTNAME-PID-RANDOM`, with the host name from /etc/hostname or `$HOSTNAME`.
pub(super) fn default_uid() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{host}-{}-{:08x}", std::process::id(), random_u32())
}

/// A channel is one topic level, never a wildcard or NUL.
pub(super) fn check_channel(name: &str) -> Result<(), CliError> {
    let bad = name.is_empty() || name.len() > 1024 || name.contains(['+', '#', '\0', '/']);
    if bad {
        return Err(CliError::Usage(format!(
            "--channel {name:?}: must be 1 to 1024 bytes without `+`, `#`, `/` or NUL"
        )));
    }
    Ok(())
}

/// The daemon's own rule for a uid (it may hold `/`), with the config's `[limits] max_uid_len`,
/// so that a uid the daemon would reject is refused before connecting.
pub(super) fn check_uid(uid: &str, max_len: usize) -> Result<(), CliError> {
    protocol::check_uid(uid, max_len).map_err(|e| CliError::Usage(format!("--uid: {e}")))
}

/// `key=value`: integers and booleans become JSON numbers and booleans, the rest strings.
pub(super) fn parse_meta(text: &str) -> Result<(String, Value), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    if key.is_empty() {
        return Err(format!("{text:?} has an empty key"));
    }
    let value = if let Ok(n) = value.parse::<i64>() {
        Value::from(n)
    } else if let Ok(b) = value.parse::<bool>() {
        Value::from(b)
    } else {
        Value::from(value)
    };
    Ok((key.to_owned(), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_values_keep_numbers_and_booleans() {
        assert_eq!(
            parse_meta("priority=5"),
            Ok(("priority".into(), Value::from(5)))
        );
        assert_eq!(
            parse_meta("dry=true"),
            Ok(("dry".into(), Value::from(true)))
        );
        assert_eq!(
            parse_meta("tenant=acme"),
            Ok(("tenant".into(), Value::from("acme")))
        );
        assert_eq!(parse_meta("v=1.5"), Ok(("v".into(), Value::from("1.5"))));
        assert_eq!(
            parse_meta("note=a=b"),
            Ok(("note".into(), Value::from("a=b")))
        );
        assert!(parse_meta("novalue").is_err());
        assert!(parse_meta("=x").is_err());
    }

    #[test]
    fn default_uids_are_valid_and_differ() {
        let (a, b) = (default_uid(), default_uid());
        assert!(check_uid(&a, protocol::DEFAULT_MAX_UID_LEN).is_ok(), "{a}");
        assert_ne!(a, b);
        assert!(a.contains(&format!("-{}-", std::process::id())), "{a}");
    }

    #[test]
    fn uids_follow_the_daemons_rule_with_the_configured_length() {
        let long = "u".repeat(2000);
        assert!(check_uid(&long, 4096).is_ok());
        let e = check_uid(&long, 1024).unwrap_err().to_string();
        assert!(e.contains("max_uid_len = 1024"), "{e}");
        assert!(check_uid("host/job-1", 16).is_ok());
        assert!(check_uid("a+b", 16).is_err());
        assert!(check_uid("", 16).is_err());
    }
}
