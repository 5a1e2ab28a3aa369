//! Who may do what: a node speaks only for itself, operators need an admin
//! credential, readers a read token when one is configured.
//!
//! Identities come from the client certificate the TLS layer already checked
//! against `--client-ca`: its DNS subject alternative names and its common
//! name. Tokens are bearer tokens in the `authorization` metadata, compared
//! in constant time. Health and reflection stay open, as probes expect.
//!
//! The read and admin checks stand in front of their services as
//! interceptors ([`Access::reads`], [`Access::admins`], wired in
//! `server.rs`); a session's check needs its `hello`, so `attach.rs` makes it.

use tonic::service::Interceptor;
use tonic::{Request, Status};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::error::Error;

/// The access rules of this replica.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// mTLS is on: a session's `node_id` must be one of its certificate's
    /// identities, and a session without a certificate is refused.
    pub node_identity: bool,
    /// Bearer token for the Admin RPCs.
    pub admin_token: Option<String>,
    /// Certificate identities that may call the Admin RPCs.
    pub admin_identities: Vec<String>,
    /// Bearer token the read API (Ownership) requires; open without it.
    pub read_token: Option<String>,
}

/// The names a request's client certificate proves (DNS SANs, then the
/// CN); empty without a certificate.
pub fn identities<T>(request: &Request<T>) -> Vec<String> {
    let Some(chain) = request.peer_certs() else {
        return Vec::new();
    };
    let Some(leaf) = chain.first() else {
        return Vec::new();
    };
    certificate_identities(leaf.as_ref())
}

/// The DNS subject alternative names and common names of a DER certificate.
pub fn certificate_identities(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_string());
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Ok(cn) = cn.as_str() {
            names.push(cn.to_string());
        }
    }
    names
}

fn bearer<T>(request: &Request<T>) -> Option<&str> {
    request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

fn token_matches(given: Option<&str>, want: &Option<String>) -> bool {
    match (given, want) {
        (Some(given), Some(want)) => constant_time_eq(given.as_bytes(), want.as_bytes()),
        _ => false,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Access {
    /// The read API's gate: every `Ownership` RPC passes it first.
    pub fn reads(&self) -> impl Interceptor + Clone + Send + Sync + 'static {
        let access = self.clone();
        move |request: Request<()>| match access.check_read(&request) {
            Ok(()) => Ok(request),
            Err(refusal) => Err(Status::from(refusal)),
        }
    }

    /// The admin API's gate: every `Admin` RPC passes it first.
    pub fn admins(&self) -> impl Interceptor + Clone + Send + Sync + 'static {
        let access = self.clone();
        move |request: Request<()>| match access.check_admin(&request) {
            Ok(()) => Ok(request),
            Err(refusal) => Err(Status::from(refusal)),
        }
    }

    /// A session may attach as `node_id` only with that node's certificate
    /// (when mTLS is on); `names` are the connection's [`identities`].
    pub fn check_node(&self, names: &[String], node_id: &str) -> Result<(), Error> {
        if !self.node_identity {
            return Ok(());
        }
        if names.is_empty() {
            return Err(Error::Unauthenticated(
                "this claim-service requires a client certificate to attach (mTLS); connect with the node's certificate".into(),
            ));
        }
        if !names.iter().any(|n| n == node_id) {
            return Err(Error::PermissionDenied(format!(
                "node_id {node_id:?} does not match this connection's certificate (it is for {}); a node may only speak for itself",
                names.join(", ")
            )));
        }
        Ok(())
    }

    /// Admin RPCs: a certificate with an admin identity, or the admin token.
    pub fn check_admin<T>(&self, request: &Request<T>) -> Result<(), Error> {
        if self.admin_token.is_none() && self.admin_identities.is_empty() {
            return Err(Error::PermissionDenied(
                "admin RPCs are disabled on this claim-service; start it with --admin-token-file or --admin-identity".into(),
            ));
        }
        let names = identities(request);
        if names.iter().any(|n| self.admin_identities.contains(n)) {
            return Ok(());
        }
        if token_matches(bearer(request), &self.admin_token) {
            return Ok(());
        }
        if !names.is_empty() {
            return Err(Error::PermissionDenied(format!(
                "certificate for {} is not an admin identity (--admin-identity), and no admin token was sent",
                names.join(", ")
            )));
        }
        Err(Error::Unauthenticated(
            "missing or wrong admin credential; send metadata \"authorization: Bearer TOKEN\" or connect with an admin certificate".into(),
        ))
    }

    /// The read API: open, or (with `--read-token-file`) the read token, the
    /// admin token or any client certificate the TLS layer accepted.
    pub fn check_read<T>(&self, request: &Request<T>) -> Result<(), Error> {
        if self.read_token.is_none() {
            return Ok(());
        }
        let given = bearer(request);
        if token_matches(given, &self.read_token)
            || token_matches(given, &self.admin_token)
            || !identities(request).is_empty()
        {
            return Ok(());
        }
        Err(Error::Unauthenticated(
            "the read API requires a token on this claim-service; send metadata \"authorization: Bearer TOKEN\" (see --read-token-file)".into(),
        ))
    }
}

impl Access {
    /// The read credential as an HTTP request carries it (the ownership
    /// page, on the metrics listener): open without `--read-token-file`;
    /// otherwise `Authorization: Bearer TOKEN`, or Basic with the read (or
    /// admin) token as the password, any user name — what a browser asks
    /// for and then sends with every request of the page.
    pub fn check_read_http(&self, headers: &http::HeaderMap) -> Result<(), Error> {
        if self.read_token.is_none() {
            return Ok(());
        }
        let given = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                if let Some(token) = v.strip_prefix("Bearer ") {
                    return Some(token.to_string());
                }
                let basic = v.strip_prefix("Basic ")?;
                let decoded = base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    basic.trim(),
                )
                .ok()?;
                let decoded = String::from_utf8(decoded).ok()?;
                Some(decoded.split_once(':')?.1.to_string())
            });
        if token_matches(given.as_deref(), &self.read_token)
            || token_matches(given.as_deref(), &self.admin_token)
        {
            return Ok(());
        }
        Err(Error::Unauthenticated(
            "this page needs the read token: send \"Authorization: Bearer TOKEN\", or sign in with any user name and the token as password".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_token(token: &str) -> Request<()> {
        let mut r = Request::new(());
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    }

    #[test]
    fn the_page_takes_the_read_token_as_bearer_or_basic_password() {
        let access = Access {
            read_token: Some("s3cret".into()),
            admin_token: Some("admin".into()),
            ..Default::default()
        };
        let with = |value: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::AUTHORIZATION, value.parse().unwrap());
            access.check_read_http(&h)
        };
        assert!(access.check_read_http(&http::HeaderMap::new()).is_err());
        assert!(with("Bearer s3cret").is_ok());
        assert!(with("Bearer admin").is_ok());
        assert!(with("Bearer wrong").is_err());
        // "anyone:s3cret", "anyone:wrong", "no-colon"
        assert!(with("Basic YW55b25lOnMzY3JldA==").is_ok());
        assert!(with("Basic YW55b25lOndyb25n").is_err());
        assert!(with("Basic bm8tY29sb24=").is_err());
        assert!(with("Basic !!!").is_err());
        assert!(Access::default()
            .check_read_http(&http::HeaderMap::new())
            .is_ok());
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn without_mtls_any_node_may_attach() {
        let open = Access::default();
        assert!(open.check_node(&[], "node-a").is_ok());
    }

    #[test]
    fn with_mtls_a_session_without_certificate_is_refused() {
        let access = Access {
            node_identity: true,
            ..Default::default()
        };
        let err = access.check_node(&[], "node-a").unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let err = access
            .check_node(&["node-b".to_string()], "node-a")
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.to_string().contains("node-b"), "{err}");
        assert!(access.check_node(&["node-a".to_string()], "node-a").is_ok());
    }

    #[test]
    fn admin_needs_the_token_or_is_off() {
        let off = Access::default();
        assert_eq!(
            off.check_admin(&with_token("x")).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        let on = Access {
            admin_token: Some("0123456789abcdef".into()),
            ..Default::default()
        };
        assert!(on.check_admin(&with_token("0123456789abcdef")).is_ok());
        assert_eq!(
            on.check_admin(&with_token("0123456789abcdeX"))
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
        assert!(on.check_admin(&Request::new(())).is_err());
    }

    #[test]
    fn the_gates_pass_or_refuse_as_the_checks_do() {
        let locked = Access {
            read_token: Some("reader-token-0123".into()),
            admin_token: Some("admin-token-01234".into()),
            ..Default::default()
        };
        let mut reads = locked.reads();
        let mut admins = locked.admins();
        assert!(reads.call(with_token("reader-token-0123")).is_ok());
        let refused = reads.call(Request::new(())).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert!(refused.message().contains("--read-token-file"));
        assert!(admins.call(with_token("admin-token-01234")).is_ok());
        let refused = admins.call(with_token("reader-token-0123")).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn reads_are_open_unless_a_read_token_is_set() {
        assert!(Access::default().check_read(&Request::new(())).is_ok());
        let locked = Access {
            read_token: Some("reader-token-0123".into()),
            admin_token: Some("admin-token-01234".into()),
            ..Default::default()
        };
        assert!(locked.check_read(&Request::new(())).is_err());
        assert!(locked.check_read(&with_token("wrong")).is_err());
        assert!(locked.check_read(&with_token("reader-token-0123")).is_ok());
        assert!(locked.check_read(&with_token("admin-token-01234")).is_ok());
    }
}
