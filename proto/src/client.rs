//! How a client reaches a claim service: plain HTTP/2, TLS, or mutual TLS.
//!
//! The ingest node, `claimctl` and the tests all connect through here, so a
//! certificate is loaded and checked the same way everywhere, and a mistake
//! (a missing file, `http://` with a CA, `https://` without one) is one clear
//! line before anything is sent.

use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// PEM files for TLS to the claim service. All empty: plain HTTP/2.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// The CA that signed the claim service's certificate.
    pub ca: Option<PathBuf>,
    /// This client's certificate, for mutual TLS (with `key`).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

impl TlsFiles {
    /// The TLS settings these files describe, or `None` for plain HTTP/2.
    pub fn load(&self) -> Result<Option<ClientTlsConfig>, String> {
        let Some(ca) = &self.ca else {
            if self.cert.is_some() || self.key.is_some() {
                return Err(
                    "a client certificate needs the claim service's CA too (--tls-ca)".into(),
                );
            }
            return Ok(None);
        };
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "--tls-ca")?));
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(
                    read(cert, "--tls-cert")?,
                    read(key, "--tls-key")?,
                ));
            }
            (None, None) => {}
            _ => return Err("--tls-cert and --tls-key go together".into()),
        }
        Ok(Some(config))
    }
}

/// An endpoint for `url`, over TLS when `tls` is set. The scheme must agree:
/// `https://` with TLS, `http://` without.
pub fn endpoint(url: &str, tls: Option<&ClientTlsConfig>) -> Result<Endpoint, String> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("bad claim-service URL {url:?}: {e}"))?
        .connect_timeout(Duration::from_secs(3));
    match (tls, url.starts_with("https://")) {
        (Some(tls), true) => endpoint
            .tls_config(tls.clone())
            .map_err(|e| format!("TLS settings for {url}: {e}")),
        (None, false) => Ok(endpoint),
        (Some(_), false) => Err(format!(
            "claim-service URL {url:?} is plain http:// but TLS files are set; write https://"
        )),
        (None, true) => Err(format!(
            "claim-service URL {url:?} is https:// but no CA is given; set --tls-ca"
        )),
    }
}

/// An error and its causes on one line (a TLS failure hides in the causes).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    line
}
