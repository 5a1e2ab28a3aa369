//! Command-line flags and environment variables, checked at start-up.
//!
//! Every flag reads an environment variable; the names are part of the
//! contract (compose files, scripts and tests set them). Nonsense is refused
//! before anything starts, with one line that says what to change.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use claims_proto::listen;
use clap::{Parser, ValueEnum};

use crate::access::Access;
use crate::claims::Limits;
use crate::store::StoreConfig;
use crate::watchers::WatchLimits;

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write durations like 10s or 500ms)"))
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Ask the running service whether it is alive (GET /livez on
    /// --metrics-listen): exit 0 when it answers, 1 otherwise. This is what
    /// the images' Docker HEALTHCHECK runs: etcd trouble does not make a
    /// replica unhealthy (restarting it would not help), only unready.
    Healthcheck {
        /// Ask whether it is ready instead (GET /readyz): exit 0 only while
        /// claims can be made here (etcd has a quorum and answers, and the
        /// ownership view has read it); prints why not.
        #[arg(long)]
        ready: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[value(alias = "human")]
    Text,
    Json,
}

/// What the files named by the configuration hold (tokens, certificates,
/// the etcd password), read once at start-up.
pub struct Loaded {
    pub access: Access,
    pub server_tls: Option<tonic::transport::ServerTlsConfig>,
    pub store: StoreConfig,
}

/// Whether nodes may take claims over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Takeover {
    Allow,
    Deny,
}

/// Broadcast Claims coordinator: ingest nodes attach over gRPC and stream
/// their broadcasters' lifecycle; each claimed broadcast is held with its own
/// etcd lease, kept alive while any track of it is live and released (its key
/// deleted) the moment the last one closes. Anyone can ask who owns what (claims.v1.Ownership).
#[derive(Debug, Clone, Parser)]
#[command(name = "claim-service", version)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// gRPC address (ClaimSessions, Ownership, health, reflection).
    #[arg(long, env = "CLAIMS_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,

    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        env = "CLAIMS_ETCD_ENDPOINTS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub etcd_endpoints: Vec<String>,

    /// etcd key prefix under which claims and nodes are kept; ends in "/".
    #[arg(long, env = "CLAIMS_KEY_PREFIX", default_value = "/claims/v1/")]
    pub key_prefix: String,

    /// Lease TTL of a claim when the node asks for none.
    #[arg(long, env = "CLAIMS_LEASE_TTL", default_value = "10s", value_parser = duration)]
    pub lease_ttl: Duration,

    /// Shortest lease TTL a node may ask for.
    #[arg(long, env = "CLAIMS_MIN_LEASE_TTL", default_value = "5s", value_parser = duration)]
    pub min_lease_ttl: Duration,

    /// Longest lease TTL a node may ask for.
    #[arg(long, env = "CLAIMS_MAX_LEASE_TTL", default_value = "60s", value_parser = duration)]
    pub max_lease_ttl: Duration,

    /// How often each lease is renewed [default: lease TTL / 4]. Must be
    /// below a third of the lease TTL.
    #[arg(long, env = "CLAIMS_RENEW_INTERVAL", value_parser = duration)]
    pub renew_interval: Option<Duration>,

    /// How long a session that broke without goodbye keeps its claims, so
    /// that its node can re-attach (to any replica) without a gap. Below the
    /// lease TTL.
    #[arg(long, env = "CLAIMS_DETACH_GRACE", default_value = "5s", value_parser = duration)]
    pub detach_grace: Duration,

    /// Prometheus metrics address (serves /metrics).
    #[arg(long, env = "CLAIMS_METRICS_LISTEN", default_value = "0.0.0.0:9464")]
    pub metrics_listen: SocketAddr,

    /// This replica's id, written into the claims and nodes it holds
    /// [default: host name and a random suffix].
    #[arg(long, env = "CLAIMS_SERVICE_ID")]
    pub service_id: Option<String>,

    /// Bound on each etcd call.
    #[arg(long, env = "CLAIMS_ETCD_TIMEOUT", default_value = "3s", value_parser = duration)]
    pub etcd_timeout: Duration,

    /// HTTP/2 keep-alive interval on the etcd connection and on this
    /// server's connections: dead peers are noticed within about twice this.
    #[arg(long, env = "CLAIMS_HTTP2_KEEPALIVE", default_value = "2s", value_parser = duration)]
    pub http2_keepalive: Duration,

    /// Number of etcd keep-alive streams the leases are spread over.
    #[arg(long, env = "CLAIMS_KEEPALIVE_STREAMS", default_value_t = 2)]
    pub keepalive_streams: usize,

    /// Bound on every unary RPC (GetOwner, ListClaims, ListNodes, the Admin
    /// RPCs): past it the caller is told DEADLINE_EXCEEDED. Streams
    /// (Attach, WatchClaims) are not bounded by it.
    #[arg(long, env = "CLAIMS_RPC_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub rpc_timeout: Duration,

    /// How long a new session may take to send its hello.
    #[arg(long, env = "CLAIMS_HELLO_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub hello_timeout: Duration,

    /// File holding the bearer token the Admin RPCs require (ForceRelease,
    /// DrainNode). Without it the Admin API is off.
    #[arg(long, env = "CLAIMS_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<std::path::PathBuf>,

    /// Log format: human-readable text, or JSON lines.
    #[arg(long, env = "CLAIMS_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// PEM certificate (chain) to serve gRPC over TLS, with --tls-key.
    #[arg(long, env = "CLAIMS_TLS_CERT", help_heading = "Security")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "CLAIMS_TLS_KEY", help_heading = "Security")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA for client certificates (mutual TLS; needs --tls-cert). A
    /// session must then come with a certificate naming its node_id (DNS
    /// SAN or CN), or it is refused.
    #[arg(long, env = "CLAIMS_CLIENT_CA", help_heading = "Security")]
    pub client_ca: Option<PathBuf>,

    /// Client-certificate identities allowed to call the Admin RPCs
    /// (comma-separated; needs --client-ca).
    #[arg(
        long = "admin-identity",
        env = "CLAIMS_ADMIN_IDENTITIES",
        value_delimiter = ',',
        help_heading = "Security"
    )]
    pub admin_identities: Vec<String>,

    /// File holding a bearer token the read API (Ownership) requires. Without
    /// it, reads are open. The admin token and any accepted client
    /// certificate also allow reads.
    #[arg(long, env = "CLAIMS_READ_TOKEN_FILE", help_heading = "Security")]
    pub read_token_file: Option<PathBuf>,

    /// PEM CA of etcd's server certificate: talk to etcd over TLS (https://
    /// endpoints).
    #[arg(long, env = "CLAIMS_ETCD_CA", help_heading = "Security")]
    pub etcd_ca: Option<PathBuf>,

    /// PEM client certificate for etcd (with --etcd-key), when etcd wants one.
    #[arg(long, env = "CLAIMS_ETCD_CERT", help_heading = "Security")]
    pub etcd_cert: Option<PathBuf>,

    /// PEM private key of --etcd-cert.
    #[arg(long, env = "CLAIMS_ETCD_KEY", help_heading = "Security")]
    pub etcd_key: Option<PathBuf>,

    /// etcd user (etcd auth enabled), with --etcd-password-file.
    #[arg(long, env = "CLAIMS_ETCD_USER", help_heading = "Security")]
    pub etcd_user: Option<String>,

    /// File holding the etcd user's password.
    #[arg(long, env = "CLAIMS_ETCD_PASSWORD_FILE", help_heading = "Security")]
    pub etcd_password_file: Option<PathBuf>,

    /// Most sessions attached to this replica at once (a node re-attaching
    /// replaces its own session and is always let in).
    #[arg(
        long,
        env = "CLAIMS_MAX_SESSIONS",
        default_value_t = 10_000,
        help_heading = "Limits"
    )]
    pub max_sessions: usize,

    /// Most broadcasts one node may claim or wait for at once.
    #[arg(
        long,
        env = "CLAIMS_MAX_CLAIMS_PER_NODE",
        default_value_t = 100_000,
        help_heading = "Limits"
    )]
    pub max_claims_per_node: usize,

    /// Whether a node may take over a broadcast another node owns (its
    /// `--duplicate-publisher takeover`: the newest publisher wins, fenced).
    /// `deny` refuses every takeover with FAILED_PRECONDITION.
    #[arg(long, env = "CLAIMS_TAKEOVER", value_enum, default_value_t = Takeover::Allow)]
    pub takeover: Takeover,

    /// Most live tracks one broadcast may have on a node.
    #[arg(
        long,
        env = "CLAIMS_MAX_TRACKS_PER_BROADCAST",
        default_value_t = 16,
        help_heading = "Limits"
    )]
    pub max_tracks_per_broadcast: usize,

    /// Largest gRPC message accepted, in bytes (a hello listing many live
    /// tracks is the largest a node sends).
    #[arg(long, env = "CLAIMS_MAX_MESSAGE_SIZE", default_value_t = 8 * 1024 * 1024, help_heading = "Limits")]
    pub max_message_size: usize,

    /// Lifecycle events (created, closed) one session may send per second,
    /// with bursts of twice that; 0 turns the limit off. A `created` over
    /// the limit is refused; a `closed` is always honoured.
    #[arg(
        long,
        env = "CLAIMS_MAX_EVENTS_PER_SECOND",
        default_value_t = 2_000,
        help_heading = "Limits"
    )]
    pub max_events_per_second: u32,

    /// Most `WatchClaims` streams open on this replica at once. Watchers
    /// share one feed, so one that reads costs little; one that stops
    /// reading holds what HTTP/2 buffered for it until it goes away.
    #[arg(
        long,
        env = "CLAIMS_MAX_WATCHES",
        default_value_t = 4096,
        help_heading = "Limits"
    )]
    pub max_watches: usize,

    /// Most `WatchClaims` streams one peer address may hold open (a proxy
    /// or NAT in front of many watchers counts as one peer).
    #[arg(
        long,
        env = "CLAIMS_MAX_WATCHES_PER_PEER",
        default_value_t = 256,
        help_heading = "Limits"
    )]
    pub max_watches_per_peer: usize,

    /// Most gRPC connections open at once (nodes, readers, watchers).
    #[arg(
        long,
        env = "CLAIMS_MAX_CONNECTIONS",
        default_value_t = 16_384,
        help_heading = "Limits"
    )]
    pub max_connections: usize,

    /// Most gRPC connections one peer address may hold open (a proxy or
    /// NAT in front of many clients counts once).
    #[arg(
        long,
        env = "CLAIMS_MAX_CONNECTIONS_PER_PEER",
        default_value_t = 1024,
        help_heading = "Limits"
    )]
    pub max_connections_per_peer: usize,

    /// How long a new connection may take to send its first bytes (HTTP/2
    /// preface or TLS hello), to finish a TLS handshake, and an HTTP
    /// request on the metrics port its headers.
    #[arg(long, env = "CLAIMS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = duration, help_heading = "Limits")]
    pub handshake_timeout: Duration,
}

impl Config {
    pub fn renew_interval(&self) -> Duration {
        self.renew_interval.unwrap_or(self.lease_ttl / 4)
    }

    /// Refuses combinations that cannot work; the message is one line.
    pub fn validate(&self) -> Result<(), String> {
        if self.etcd_endpoints.is_empty() || self.etcd_endpoints.iter().any(|e| e.trim().is_empty())
        {
            return Err("--etcd-endpoints has an empty entry; give comma-separated URLs like http://127.0.0.1:2379".into());
        }
        for e in &self.etcd_endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(format!(
                    "--etcd-endpoints entry {e:?} is not an http:// or https:// URL"
                ));
            }
        }
        if !self.key_prefix.ends_with('/') || self.key_prefix.len() < 2 {
            return Err(format!(
                "--key-prefix {:?} must be non-empty and end in \"/\", e.g. /claims/v1/",
                self.key_prefix
            ));
        }
        if self.min_lease_ttl < Duration::from_secs(2) {
            return Err(format!(
                "--min-lease-ttl {:?} is below 2s; etcd does not keep shorter leases",
                self.min_lease_ttl
            ));
        }
        if !(self.min_lease_ttl <= self.lease_ttl && self.lease_ttl <= self.max_lease_ttl) {
            return Err(format!(
                "--lease-ttl {:?} must lie between --min-lease-ttl {:?} and --max-lease-ttl {:?}",
                self.lease_ttl, self.min_lease_ttl, self.max_lease_ttl
            ));
        }
        let renew = self.renew_interval();
        if renew.is_zero() || renew * 3 >= self.lease_ttl {
            return Err(format!(
                "--renew-interval {renew:?} must be above zero and below a third of --lease-ttl {:?}",
                self.lease_ttl
            ));
        }
        if self.detach_grace >= self.lease_ttl {
            return Err(format!(
                "--detach-grace {:?} must be below --lease-ttl {:?}",
                self.detach_grace, self.lease_ttl
            ));
        }
        if self.listen == self.metrics_listen {
            return Err(format!(
                "--listen and --metrics-listen are both {}; give them different ports",
                self.listen
            ));
        }
        if self.keepalive_streams == 0 || self.keepalive_streams > 64 {
            return Err(format!(
                "--keepalive-streams {} must be between 1 and 64",
                self.keepalive_streams
            ));
        }
        if self.etcd_timeout.is_zero()
            || self.rpc_timeout.is_zero()
            || self.http2_keepalive.is_zero()
            || self.hello_timeout.is_zero()
            || self.handshake_timeout.is_zero()
        {
            return Err(
                "--etcd-timeout, --rpc-timeout, --http2-keepalive, --hello-timeout and --handshake-timeout must be above zero".into(),
            );
        }
        self.validate_security()?;
        if self.max_sessions == 0
            || self.max_claims_per_node == 0
            || self.max_tracks_per_broadcast == 0
            || self.max_watches == 0
            || self.max_watches_per_peer == 0
            || self.max_connections == 0
            || self.max_connections_per_peer == 0
        {
            return Err(
                "--max-sessions, --max-claims-per-node, --max-tracks-per-broadcast, --max-watches, --max-watches-per-peer, --max-connections and --max-connections-per-peer must be above zero"
                    .into(),
            );
        }
        if self.max_message_size < 4096 {
            return Err(format!(
                "--max-message-size {} is below 4096 bytes; no session could say hello",
                self.max_message_size
            ));
        }
        if let Some(id) = &self.service_id {
            if id.is_empty()
                || id.len() > 128
                || id.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(format!(
                    "--service-id {id:?} must be 1-128 printable characters without spaces"
                ));
            }
        }
        Ok(())
    }

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
    fn etcd_security(&self) -> Result<crate::store::EtcdSecurity, String> {
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

    fn validate_security(&self) -> Result<(), String> {
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

    /// Reads every file the configuration names, once, so that a missing
    /// or bad one stops the start with one line.
    pub fn load_files(&self) -> Result<Loaded, String> {
        Ok(Loaded {
            access: self.access()?,
            server_tls: self.server_tls()?,
            store: self.store()?,
        })
    }

    pub fn service_id(&self) -> String {
        self.service_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "claim-service".into());
            format!("{host}-{:04x}", rand::random::<u16>())
        })
    }

    pub fn store(&self) -> Result<StoreConfig, String> {
        Ok(StoreConfig {
            security: self.etcd_security()?,
            endpoints: self.etcd_endpoints.clone(),
            prefix: self.key_prefix.clone(),
            op_timeout: self.etcd_timeout,
            http2_keepalive: self.http2_keepalive,
            keepalive_streams: self.keepalive_streams,
        })
    }

    /// What the gRPC listener lets in.
    pub fn grpc_limits(&self) -> listen::Limits {
        listen::Limits {
            total: self.max_connections,
            per_peer: self.max_connections_per_peer,
            first_bytes: self.handshake_timeout,
        }
    }

    /// What the metrics listener lets in: scrapes and probes, a few at once.
    pub fn metrics_limits(&self) -> listen::Limits {
        listen::Limits {
            total: 256,
            per_peer: 64,
            first_bytes: self.handshake_timeout,
        }
    }

    pub fn watch_limits(&self) -> WatchLimits {
        WatchLimits {
            total: self.max_watches,
            per_peer: self.max_watches_per_peer,
        }
    }

    pub fn sessions(&self, service_id: String) -> SessionConfig {
        SessionConfig {
            service_id,
            default_ttl: self.lease_ttl,
            min_ttl: self.min_lease_ttl,
            max_ttl: self.max_lease_ttl,
            renew_interval: self.renew_interval(),
            detach_grace: self.detach_grace,
            hello_timeout: self.hello_timeout,
            limits: Limits {
                max_claims: self.max_claims_per_node,
                max_tracks_per_broadcast: self.max_tracks_per_broadcast,
                takeover: self.takeover == Takeover::Allow,
            },
            max_sessions: self.max_sessions,
            max_events_per_second: self.max_events_per_second,
            max_message_size: self.max_message_size,
        }
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

/// Session rules the operator configures.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub service_id: String,
    pub default_ttl: Duration,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub renew_interval: Duration,
    pub detach_grace: Duration,
    /// How long a new stream may take to send `hello`.
    pub hello_timeout: Duration,
    pub limits: Limits,
    /// Most sessions attached to this replica at once.
    pub max_sessions: usize,
    /// Lifecycle events one session may send per second (0: no limit).
    pub max_events_per_second: u32,
    /// Largest message a node may send, in bytes.
    pub max_message_size: usize,
}

impl SessionConfig {
    /// The TTL a node gets when it asks for `requested_ms` (0 = default):
    /// clamped to the bounds and rounded up to whole seconds, as etcd keeps it.
    pub fn lease_ttl(&self, requested_ms: u64) -> Duration {
        let asked = if requested_ms == 0 {
            self.default_ttl
        } else {
            Duration::from_millis(requested_ms)
        };
        let ttl = asked.clamp(self.min_ttl, self.max_ttl);
        Duration::from_secs(crate::store::ttl_seconds(ttl) as u64)
    }

    /// A lease of another TTL than the default is renewed at the same
    /// fraction of its TTL (a 60 s lease every 15 s with the defaults), and
    /// never less than four times per TTL.
    pub fn renew_for(&self, ttl: Duration) -> Duration {
        let fraction = self.renew_interval.as_secs_f64() / self.default_ttl.as_secs_f64();
        ttl.mul_f64(fraction).min(ttl / 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_scale_with_the_ttl() {
        let config = SessionConfig {
            service_id: "s".into(),
            default_ttl: Duration::from_secs(10),
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(60),
            renew_interval: Duration::from_millis(2500),
            detach_grace: Duration::from_secs(5),
            hello_timeout: Duration::from_secs(10),
            limits: Limits::default(),
            max_sessions: 1,
            max_events_per_second: 0,
            max_message_size: 1 << 20,
        };
        assert_eq!(
            config.renew_for(Duration::from_secs(10)),
            Duration::from_millis(2500)
        );
        assert_eq!(
            config.renew_for(Duration::from_secs(60)),
            Duration::from_secs(15)
        );
        assert_eq!(config.lease_ttl(0), Duration::from_secs(10));
        assert_eq!(config.lease_ttl(1), Duration::from_secs(5));
        assert_eq!(config.lease_ttl(600_000), Duration::from_secs(60));
        assert_eq!(config.lease_ttl(7_500), Duration::from_secs(8));
    }

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["claim-service"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).expect("flags parse")
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse(&[]);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.renew_interval(), Duration::from_millis(2500));
        assert_eq!(c.lease_ttl, Duration::from_secs(10));
        assert_eq!(c.detach_grace, Duration::from_secs(5));
    }

    #[test]
    fn nonsense_is_refused_with_one_line() {
        let cases: &[(&[&str], &str)] = &[
            (&["--renew-interval", "4s"], "below a third"),
            (&["--detach-grace", "10s"], "below --lease-ttl"),
            (&["--lease-ttl", "90s"], "must lie between"),
            (&["--key-prefix", "claims"], "end in \"/\""),
            (&["--etcd-endpoints", "127.0.0.1:2379"], "not an http"),
            (
                &[
                    "--min-lease-ttl",
                    "1s",
                    "--lease-ttl",
                    "4s",
                    "--detach-grace",
                    "1s",
                ],
                "below 2s",
            ),
            (&["--metrics-listen", "0.0.0.0:50051"], "different ports"),
            (&["--client-ca", "ca.pem"], "needs --tls-cert"),
            (&["--tls-cert", "c.pem"], "go together"),
            (&["--etcd-endpoints", "https://127.0.0.1:2379"], "--etcd-ca"),
            (&["--etcd-user", "claims"], "go together"),
            (&["--max-tracks-per-broadcast", "0"], "above zero"),
        ];
        for (args, want) in cases {
            let err = parse(args).validate().unwrap_err();
            assert!(err.contains(want), "{args:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn bad_durations_do_not_parse() {
        let err = Config::try_parse_from(["claim-service", "--lease-ttl", "ten"]).unwrap_err();
        assert!(err.to_string().contains("10s or 500ms"), "{err}");
    }
}
