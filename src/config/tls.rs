//! `[mqtt.tls]`: TLS to the broker. Only the paths and names are checked here; the files are
//! read and parsed when the connection is built (`mqtt::tls`), so parsing stays a function of
//! the config text.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// `[mqtt.tls]`: connect to the broker over TLS. Its presence turns TLS on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawTls")]
pub struct TlsConfig {
    /// PEM file with the CA certificate(s) the broker's certificate must chain to. Required:
    /// there is no silent fallback to the system's roots (name the system bundle to use them).
    pub ca_file: PathBuf,
    /// Certificate chain and private key to present to the broker (mutual TLS).
    pub client_auth: Option<ClientAuth>,
    /// The name the broker's certificate must be valid for, when it differs from `[mqtt] host`
    /// (e.g. connecting to an IP address whose certificate names a host).
    pub server_name: Option<String>,
}

/// `client_cert` and `client_key`, which only make sense together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// PEM file: the client certificate, then any intermediates.
    pub cert: PathBuf,
    /// PEM file: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[mqtt.tls]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_file: PathBuf,
    #[serde(default)]
    client_cert: Option<PathBuf>,
    #[serde(default)]
    client_key: Option<PathBuf>,
    #[serde(default)]
    server_name: Option<String>,
}

impl TryFrom<RawTls> for TlsConfig {
    type Error = String;

    fn try_from(raw: RawTls) -> Result<Self, String> {
        let named = [
            ("ca_file", Some(&raw.ca_file)),
            ("client_cert", raw.client_cert.as_ref()),
            ("client_key", raw.client_key.as_ref()),
        ];
        if let Some((key, _)) = named
            .iter()
            .find(|(_, p)| p.is_some_and(|p| p.as_os_str().is_empty()))
        {
            return Err(format!("[mqtt.tls] {key} must not be empty"));
        }
        let client_auth = match (raw.client_cert, raw.client_key) {
            (Some(cert), Some(key)) => Some(ClientAuth { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                return Err("[mqtt.tls] client_cert is set but client_key is not: \
                     give both (mutual TLS) or neither"
                    .to_owned())
            }
            (None, Some(_)) => {
                return Err("[mqtt.tls] client_key is set but client_cert is not: \
                     give both (mutual TLS) or neither"
                    .to_owned())
            }
        };
        if raw.server_name.as_deref().is_some_and(str::is_empty) {
            return Err("[mqtt.tls] server_name must not be empty (leave it out to check the certificate against [mqtt] host)".to_owned());
        }
        Ok(TlsConfig {
            ca_file: raw.ca_file,
            client_auth,
            server_name: raw.server_name,
        })
    }
}

impl TlsConfig {
    /// Makes relative paths relative to `base`, the config file's folder (as policy paths are),
    /// so the daemon and `coordinosaur run --config` find the same files from any directory.
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        self.ca_file = base.join(&self.ca_file);
        if let Some(auth) = &mut self.client_auth {
            auth.cert = base.join(&auth.cert);
            auth.key = base.join(&auth.key);
        }
    }

    /// One line for `coordinosaur check-config`.
    pub fn summary(&self) -> String {
        let mut text = format!("CA {}", self.ca_file.display());
        match &self.client_auth {
            Some(auth) => text.push_str(&format!(
                ", client certificate {} (key {})",
                auth.cert.display(),
                auth.key.display()
            )),
            None => text.push_str(", no client certificate"),
        }
        if let Some(name) = &self.server_name {
            text.push_str(&format!(", certificate checked for {name:?}"));
        }
        text
    }
}
