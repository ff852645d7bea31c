//! TLS to the broker: the rustls client configuration built from `[mqtt.tls]`, and how a TLS
//! failure is told apart from other connection errors.
//!
//! rustls runs on its `ring` provider, handed in explicitly (no process-wide default), so the
//! build needs no aws-lc-sys. The broker's certificate must chain to a CA of `ca_file` and be
//! valid for `[mqtt] host` (or `server_name`); TLS 1.2 and 1.3 with rustls' safe defaults.

use std::error::Error as StdError;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::TlsConfig;

/// Why the TLS settings could not be turned into a client configuration. Every message names
/// the `[mqtt.tls]` key and, for a file, its path.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("[mqtt.tls] {key} = {}: cannot read it: {source}", path.display())]
    Read {
        /// The config key that names the file.
        key: &'static str,
        /// The file, resolved against the config file's folder.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// A file was read but does not hold what the key needs.
    #[error("[mqtt.tls] {key} = {}: {reason}", path.display())]
    Invalid {
        /// The config key that names the file.
        key: &'static str,
        /// The file, resolved against the config file's folder.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `server_name` is neither a DNS name nor an IP address.
    #[error("[mqtt.tls] server_name = {0:?} is not a DNS name or IP address")]
    ServerName(String),
    /// rustls refused the combination (e.g. no protocol version the provider supports).
    #[error("[mqtt.tls]: {0}")]
    Setup(String),
}

/// Reads the PEM files of `tls` and builds the client configuration.
pub fn client_config(tls: &TlsConfig) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = Arc::new(root_store(&tls.ca_file)?);
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let builder = match &tls.server_name {
        None => builder.with_root_certificates(roots),
        Some(name) => {
            let verifier = VerifyAs::new(name, roots, provider)?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
        }
    };
    let config = match &tls.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let chain = certificates("client_cert", &auth.cert)?;
            let key = private_key(&auth.key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::Invalid {
                    key: "client_key",
                    path: auth.key.clone(),
                    reason: format!("does not fit client_cert {}: {e}", auth.cert.display()),
                })?
        }
    };
    Ok(Arc::new(config))
}

/// The rustls error behind a connection error, if TLS is what failed: a refused certificate
/// on either side, a TLS alert, a broken handshake. rumqttc wraps it in its own error and in an
/// `io::Error` (tokio-rustls), so this walks the chain.
pub fn rustls_cause<'e>(error: &'e (dyn StdError + 'static)) -> Option<&'e rustls::Error> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // `io::Error::source` skips the error it wraps; `get_ref` reaches it.
        let wrapped = e.downcast_ref::<io::Error>().and_then(io::Error::get_ref);
        if let Some(tls) = wrapped.and_then(|w| w.downcast_ref::<rustls::Error>()) {
            return Some(tls);
        }
        next = e.source();
    }
    None
}

/// What a rustls failure most likely means for the operator, to follow its own message.
pub fn hint(error: &rustls::Error) -> Option<&'static str> {
    use rustls::{AlertDescription as Alert, CertificateError as Cert, Error};
    match error {
        Error::InvalidCertificate(Cert::UnknownIssuer | Cert::BadSignature) => {
            Some("the broker's certificate is not signed by a CA in [mqtt.tls] ca_file")
        }
        Error::InvalidCertificate(Cert::NotValidForName | Cert::NotValidForNameContext { .. }) => {
            Some("the broker's certificate is not for this host; see [mqtt.tls] server_name")
        }
        Error::InvalidCertificate(Cert::Expired | Cert::ExpiredContext { .. }) => {
            Some("the broker's certificate has expired")
        }
        Error::AlertReceived(
            Alert::CertificateRequired
            | Alert::HandshakeFailure
            | Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateUnknown
            | Alert::AccessDenied,
        ) => Some(
            "the broker refused the TLS session: it may require a client certificate \
             ([mqtt.tls] client_cert, client_key) or not accept the one given",
        ),
        _ => None,
    }
}

/// The trust anchors of `ca_file`: every certificate in it must be usable.
fn root_store(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in certificates("ca_file", path)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| TlsError::Invalid {
            key: "ca_file",
            path: path.to_owned(),
            reason: format!("certificate {} is not a usable CA certificate: {e}", i + 1),
        })?;
    }
    Ok(roots)
}

/// Every `CERTIFICATE` block of the PEM file `path` (at least one).
fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(key, path)?;
    let invalid = |reason: String| TlsError::Invalid {
        key,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not a valid PEM file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(
            "no PEM certificate (BEGIN CERTIFICATE) in it".into(),
        ));
    }
    Ok(certs)
}

/// The first private key of the PEM file `path`.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("client_key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Invalid {
        key: "client_key",
        path: path.to_owned(),
        reason: format!("no PEM private key (PKCS#8, PKCS#1 or SEC1) in it: {e}"),
    })
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_owned(),
        source,
    })
}

/// The standard WebPKI verification, against `server_name` instead of the host connected to.
/// rumqttc always verifies the host it dials, so a name other than the host needs this.
#[derive(Debug)]
struct VerifyAs {
    /// The name the certificate must be valid for.
    name: ServerName<'static>,
    /// Chain, expiry and signature checks, unchanged.
    inner: Arc<WebPkiServerVerifier>,
}

impl VerifyAs {
    fn new(
        name: &str,
        roots: Arc<RootCertStore>,
        provider: Arc<CryptoProvider>,
    ) -> Result<VerifyAs, TlsError> {
        let server_name = ServerName::try_from(name.to_owned())
            .map_err(|_| TlsError::ServerName(name.to_owned()))?;
        let inner = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        Ok(VerifyAs {
            name: server_name,
            inner,
        })
    }
}

impl ServerCertVerifier for VerifyAs {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
