//! Command-line flags and environment variables, checked at start-up.
//!
//! Every flag reads an environment variable; the names are part of the
//! contract (compose files, scripts and tests set them). Nonsense is refused
//! before anything starts, with one line that says what to change.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::access::Access;
use crate::store::StoreConfig;

mod limits;
mod security;
mod session;
mod spread;

pub use limits::LimitConfig;
pub use session::SessionConfig;
pub use spread::{Spread, SpreadConfig};

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
#[command(name = "claim-service", version = claims_proto::VERSION)]
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

    /// Whether a node may take over a broadcast another node owns (its
    /// `--duplicate-publisher takeover`: the newest publisher wins, fenced).
    /// `deny` refuses every takeover with FAILED_PRECONDITION.
    #[arg(long, env = "CLAIMS_TAKEOVER", value_enum, default_value_t = Takeover::Allow)]
    pub takeover: Takeover,

    #[command(flatten)]
    pub limits: LimitConfig,

    #[command(flatten)]
    pub spread: SpreadConfig,
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
            || self.limits.handshake_timeout.is_zero()
        {
            return Err(
                "--etcd-timeout, --rpc-timeout, --http2-keepalive, --hello-timeout and --handshake-timeout must be above zero".into(),
            );
        }
        self.validate_security()?;
        self.limits.check()?;
        self.spread.check()?;
        if let Some(id) = &self.service_id {
            crate::names::check_service_id(id).map_err(|e| format!("--service-id: {e}"))?;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::Limits;

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
