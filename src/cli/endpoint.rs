//! Which broker and topic prefix a client command uses.
//!
//! The `[mqtt]` table of the config file when there is one (so `run` on the daemon's host needs
//! no flags), `[mqtt.tls]` included; `--broker host:port` overrides the address. Without a
//! config file at the default path the defaults apply: `127.0.0.1:1883`, prefix
//! `coordinosaur`. A config file named explicitly with `--config` must exist: a typo must not
//! silently gate on another broker.

use std::path::Path;

use super::CliError;
use crate::config::Config;
use crate::mqtt::Broker;

/// The config file read when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "coordinosaur.toml";

/// Where a client command connects and which topics it uses.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The broker, its TLS settings, login and keep-alive (how soon the broker notices a
    /// vanished client and sends its will), as the daemon's.
    pub broker: Broker,
    /// First topic level(s), as the daemon's `topic_prefix`.
    pub prefix: String,
}

/// The config a client command reads: `--config` (`None`: [`DEFAULT_CONFIG`] if it exists,
/// else the defaults), with the environment's overrides, as the daemon reads it.
pub fn client_config(config: Option<&Path>) -> Result<Config, CliError> {
    let mut config = match config {
        Some(path) => load(path)?,
        None if Path::new(DEFAULT_CONFIG).exists() => load(Path::new(DEFAULT_CONFIG))?,
        None => Config::default(),
    };
    // The same overrides as the daemon's, so a worker host can keep its password out of files.
    config.apply_env(|key| std::env::var(key).ok());
    Ok(config)
}

impl Endpoint {
    /// Resolves the endpoint from `--config` (see [`client_config`]) and `--broker`.
    pub fn resolve(config: Option<&Path>, broker: Option<&str>) -> Result<Endpoint, CliError> {
        Endpoint::from_config(&client_config(config)?, broker)
    }

    /// The endpoint of a loaded config, with `--broker` overriding its address.
    pub fn from_config(config: &Config, broker: Option<&str>) -> Result<Endpoint, CliError> {
        let mut endpoint = Endpoint {
            broker: Broker::from_config(&config.mqtt)
                .map_err(|e| CliError::Usage(e.to_string()))?,
            prefix: config.mqtt.topic_prefix.clone(),
        };
        // The TLS settings stay: the same broker reached at another address (the certificate
        // is then checked against that host, unless `server_name` is set).
        if let Some(broker) = broker {
            (endpoint.broker.host, endpoint.broker.port) = parse_broker(broker)?;
        }
        Ok(endpoint)
    }

    /// `host:port`, with an IPv6 host in brackets.
    pub fn address(&self) -> String {
        self.broker.address()
    }

    /// `PREFIX/rest`.
    pub fn topic(&self, rest: &str) -> String {
        format!("{}/{rest}", self.prefix)
    }
}

fn load(path: &Path) -> Result<Config, CliError> {
    Config::load(path).map_err(|e| CliError::Usage(e.to_string()))
}

/// `host:port`, `[v6addr]:port`, or a bare host (port 1883).
fn parse_broker(text: &str) -> Result<(String, u16), CliError> {
    let bad = |why: &str| CliError::Usage(format!("--broker {text:?}: {why}"));
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| bad("missing `]`"))?;
        (host, after.strip_prefix(':'))
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => (host, Some(port)),
            Some(_) => return Err(bad("put an IPv6 address in brackets: [::1]:1883")),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| bad("the port must be a number from 1 to 65535"))?,
        None => 1883,
    };
    if port == 0 {
        return Err(bad("the port must be a number from 1 to 65535"));
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses() {
        let ok = |t: &str| parse_broker(t).ok();
        assert_eq!(ok("127.0.0.1:1884"), Some(("127.0.0.1".into(), 1884)));
        assert_eq!(ok("mqtt.local"), Some(("mqtt.local".into(), 1883)));
        assert_eq!(ok("[::1]:1884"), Some(("::1".into(), 1884)));
        assert_eq!(ok("::1:1884"), None);
        assert_eq!(ok("h:0"), None);
        assert_eq!(ok("h:x"), None);
        assert_eq!(ok(":1883"), None);
    }

    #[test]
    fn an_explicit_config_must_exist() {
        let missing = Path::new("/nonexistent/coordinosaur.toml");
        assert!(matches!(
            Endpoint::resolve(Some(missing), None),
            Err(CliError::Usage(_))
        ));
    }

    #[test]
    fn the_config_gives_address_and_prefix_and_broker_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[mqtt]\nhost = \"10.1.2.3\"\nport = 1999\ntopic_prefix = \"jobs\"\n",
        )
        .unwrap();
        let e = Endpoint::resolve(Some(&path), None).unwrap();
        assert_eq!(
            (e.address(), e.prefix.as_str()),
            ("10.1.2.3:1999".into(), "jobs")
        );
        let e = Endpoint::resolve(Some(&path), Some("127.0.0.1:5")).unwrap();
        assert_eq!(
            (e.address(), e.prefix.as_str()),
            ("127.0.0.1:5".into(), "jobs")
        );
    }
}
