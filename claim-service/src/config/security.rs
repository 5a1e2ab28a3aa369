//! The flags of `--help`'s Security heading, read into what the server
//! runs with: who may do what (node identity, admin and read credentials),
//! TLS for the gRPC server, and TLS and credentials for etcd. Every file
//! they name is read here, and a missing or bad one is one line.

use std::path::Path;
use std::time::Duration;

use super::Config;
use crate::access::Access;

impl Config {
    /// Who may do what, with the tokens read from their files.
    pub fn access(&self) -> Result<Access, String> {
        Ok(Access {
            node_identity: self.client_ca.is_some(),
            admin_token: read_token(self.admin_token_file.as_deref(), "--admin-token-file")?,
            admin_identities: self.admin_identities.clone(),
            read_token: read_token(self.read_token_file.as_deref(), "--read-token-file")?,
        })
    }

    /// TLS for the gRPC server, or `None` to serve plain HTTP/2. Client
    /// certificates are optional at the TLS layer (probes and open reads
    /// need none) and required by the session and admin checks.
    pub fn server_tls(&self) -> Result<Option<tonic::transport::ServerTlsConfig>, String> {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(
            read_file(cert, "--tls-cert")?,
            read_file(key, "--tls-key")?,
        ));
        if let Some(ca) = &self.client_ca {
            tls = tls
                .client_ca_root(Certificate::from_pem(read_file(ca, "--client-ca")?))
                .client_auth_optional(true);
        }
        Ok(Some(tls.timeout(Duration::from_secs(10))))
    }

    /// TLS and credentials for etcd.
    pub(super) fn etcd_security(&self) -> Result<crate::store::EtcdSecurity, String> {
        use etcd_client::{Certificate, Identity, TlsOptions};
        let tls = match &self.etcd_ca {
            Some(ca) => {
                let mut tls = TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(read_file(ca, "--etcd-ca")?));
                if let (Some(cert), Some(key)) = (&self.etcd_cert, &self.etcd_key) {
                    tls = tls.identity(Identity::from_pem(
                        read_file(cert, "--etcd-cert")?,
                        read_file(key, "--etcd-key")?,
                    ));
                }
                Some(tls)
            }
            None => None,
        };
        let user = match (&self.etcd_user, &self.etcd_password_file) {
            (Some(user), Some(file)) => {
                let password = std::fs::read_to_string(file)
                    .map_err(|e| format!("--etcd-password-file {}: {e}", file.display()))?;
                Some((
                    user.clone(),
                    password.trim_end_matches(['\n', '\r']).to_string(),
                ))
            }
            _ => None,
        };
        Ok(crate::store::EtcdSecurity { tls, user })
    }

    pub(super) fn validate_security(&self) -> Result<(), String> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("--tls-cert and --tls-key go together".into());
        }
        if self.client_ca.is_some() && self.tls_cert.is_none() {
            return Err("--client-ca (mutual TLS) needs --tls-cert and --tls-key".into());
        }
        if !self.admin_identities.is_empty() && self.client_ca.is_none() {
            return Err(
                "--admin-identity needs --client-ca: identities come from client certificates"
                    .into(),
            );
        }
        if self.etcd_cert.is_some() != self.etcd_key.is_some() {
            return Err("--etcd-cert and --etcd-key go together".into());
        }
        if self.etcd_cert.is_some() && self.etcd_ca.is_none() {
            return Err("--etcd-cert needs --etcd-ca (TLS to etcd)".into());
        }
        if self.etcd_user.is_some() != self.etcd_password_file.is_some() {
            return Err("--etcd-user and --etcd-password-file go together".into());
        }
        let https = self
            .etcd_endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        if self.etcd_ca.is_some() && https != self.etcd_endpoints.len() {
            return Err("--etcd-ca is set: every --etcd-endpoints entry must be https://".into());
        }
        if self.etcd_ca.is_none() && https > 0 {
            return Err(
                "--etcd-endpoints has https:// entries: give etcd's CA with --etcd-ca".into(),
            );
        }
        Ok(())
    }
}

fn read_file(path: &Path, flag: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
}

/// A bearer token from a file: at least 16 printable characters.
fn read_token(path: Option<&Path>, flag: &str) -> Result<Option<String>, String> {
    let Some(path) = path else {
        return Ok(None);
    };
    let token =
        std::fs::read_to_string(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    let token = token.trim().to_string();
    if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{flag} {}: the token must be at least 16 printable characters without spaces",
            path.display()
        ));
    }
    Ok(Some(token))
}
