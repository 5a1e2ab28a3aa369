//! Flags and environment variables of the ingest node, checked at start-up.

use crate::error::{Error, Result};
use std::net::SocketAddr;
use std::time::Duration;

use crate::bridge::{ClaimServices, DuplicatePolicy};
use clap::{Parser, ValueEnum};

use crate::gate::UnavailablePolicy;

mod hooks;
mod limits;

pub use hooks::HooksConfig;
pub use limits::LimitConfig;

fn duration(s: &str) -> Result<Duration> {
    humantime::parse_duration(s)
        .map_err(|e| Error::Config(format!("{e} (write durations like 10s or 500ms)")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[value(alias = "human")]
    Text,
    Json,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Ask the running node on --http-listen for /healthz: exit 0 when it
    /// answers, 1 otherwise (for container health checks).
    Healthcheck,
}

/// Broadcast Claims ingest node: accepts RTMP publishers, claims each
/// broadcast through the claim service before accepting it, plays owned
/// broadcasts over HTTP-FLV and sends viewers of other broadcasts to their
/// owner.
#[derive(Debug, Clone, Parser)]
#[command(name = "ingest-node", version = claims_proto::VERSION)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// This node's id ([a-z0-9-], 1-63 characters), unique in the cluster.
    /// Required to run the node; `healthcheck` does not need it.
    #[arg(
        long,
        env = "INGEST_NODE_ID",
        default_value = "",
        hide_default_value = true
    )]
    pub node_id: String,

    /// Claim-service gRPC URLs, comma-separated; tried in turn.
    #[arg(
        long,
        env = "INGEST_CLAIM_SERVICE",
        default_value = "http://127.0.0.1:50051",
        value_delimiter = ','
    )]
    pub claim_service: Vec<String>,

    /// RTMP address.
    #[arg(long, env = "INGEST_RTMP_LISTEN", default_value = "0.0.0.0:1935")]
    pub rtmp_listen: SocketAddr,

    /// HTTP address (HTTP-FLV, /healthz, /metrics, /api/broadcasts).
    #[arg(long, env = "INGEST_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    pub http_listen: SocketAddr,

    /// The `rtmp` endpoint other nodes send publishers to
    /// [default: rtmp://HOSTNAME:RTMP_PORT].
    #[arg(long, env = "INGEST_ADVERTISE_RTMP")]
    pub advertise_rtmp: Option<String>,

    /// The `http` endpoint other nodes send viewers to
    /// [default: http://HOSTNAME:HTTP_PORT].
    #[arg(long, env = "INGEST_ADVERTISE_HTTP")]
    pub advertise_http: Option<String>,

    /// The `ovt` endpoint: OvenMediaEngine's OVT address (ovt://HOST:PORT)
    /// from which a non-owner OME pulls this node's broadcasts for its
    /// players (with --media-server ome).
    #[arg(long, env = "INGEST_ADVERTISE_OVT")]
    pub advertise_ovt: Option<String>,

    /// What to do with a publish when no claim service answers: allow it
    /// (claimed once a service is back) or refuse it.
    #[arg(
        long,
        env = "INGEST_ON_CLAIM_UNAVAILABLE",
        value_enum,
        default_value = "allow"
    )]
    pub on_claim_unavailable: UnavailablePolicy,

    /// What to do with a publisher of a broadcast another node owns:
    /// `refuse` it, naming the owner; hold it as `standby` and accept it
    /// the moment the owner's publisher leaves (refused after
    /// --claim-wait); or `takeover`: the newest publisher wins, the claim
    /// moves here with a larger fencing token and the owner drops its
    /// publisher. Whatever the policy, a publisher of a broadcast whose
    /// owner node is gone is held until its claim moves here (at the latest
    /// when the owner's detach grace ends).
    #[arg(
        long,
        env = "INGEST_DUPLICATE_PUBLISHER",
        value_enum,
        default_value = "refuse"
    )]
    pub duplicate_publisher: DuplicatePolicy,

    /// Longest a publish waits for its claim answer.
    #[arg(long, env = "INGEST_CLAIM_WAIT", default_value = "5s", value_parser = duration)]
    pub claim_wait: Duration,

    #[command(flatten)]
    pub hooks: HooksConfig,

    /// Answer viewer redirects from a cache of who owns what, fed by one
    /// `WatchClaims` stream (no etcd read per redirect; a redirected
    /// request that finds no stream at the node it was sent to is looked up
    /// linearizably there). `false`: a linearizable `GetOwner` per redirect.
    #[arg(long, env = "INGEST_OWNER_CACHE", default_value_t = true, action = clap::ArgAction::Set)]
    pub owner_cache: bool,

    /// An RTMP connection that completes no message for this long is closed
    /// (its tracks end), and so is a publish that sends no media for this
    /// long.
    #[arg(long, env = "INGEST_IDLE_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub idle_timeout: Duration,

    #[command(flatten)]
    pub limits: LimitConfig,

    /// Lease TTL to ask the claim service for [default: the service's].
    #[arg(long, env = "INGEST_LEASE_TTL", value_parser = duration)]
    pub lease_ttl: Option<Duration>,

    /// Log format: human-readable text, or JSON lines.
    #[arg(long, env = "INGEST_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// PEM CA of the claim service's certificate: talk to it over TLS
    /// (https:// URLs).
    #[arg(long, env = "INGEST_TLS_CA", help_heading = "Security")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// PEM certificate of this node (mutual TLS), naming --node-id as a DNS
    /// SAN or CN; with --tls-key.
    #[arg(long, env = "INGEST_TLS_CERT", help_heading = "Security")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "INGEST_TLS_KEY", help_heading = "Security")]
    pub tls_key: Option<std::path::PathBuf>,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl Config {
    pub fn advertise_rtmp(&self) -> String {
        self.advertise_rtmp
            .clone()
            .unwrap_or_else(|| format!("rtmp://{}:{}", hostname(), self.rtmp_listen.port()))
    }

    pub fn advertise_http(&self) -> String {
        self.advertise_http
            .clone()
            .unwrap_or_else(|| format!("http://{}:{}", hostname(), self.http_listen.port()))
    }

    /// The claim services and how to reach them; reads the TLS files.
    pub fn claim_services(&self) -> Result<ClaimServices> {
        let tls = claims_proto::client::TlsFiles {
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
        }
        .load()
        .map_err(Error::Config)?;
        let scheme = if tls.is_some() { "https://" } else { "http://" };
        if let Some(url) = self.claim_service.iter().find(|u| !u.starts_with(scheme)) {
            return Err(Error::Config(format!(
                "--claim-service {url:?} must be an {scheme} URL {}",
                if tls.is_some() {
                    "when --tls-ca is set"
                } else {
                    "without --tls-ca"
                }
            )));
        }
        Ok(ClaimServices {
            urls: self.claim_service.clone(),
            tls,
        })
    }

    pub fn validate(&self) -> Result<()> {
        if self.node_id.is_empty() {
            return Err(Error::Config(
                "--node-id (or INGEST_NODE_ID) is required: this node's id, [a-z0-9-], 1-63 characters, unique in the cluster".into(),
            ));
        }
        claims_proto::names::check_node_id(&self.node_id)
            .map_err(|e| Error::Config(format!("--node-id: {e}")))?;
        if self.claim_service.is_empty()
            || self
                .claim_service
                .iter()
                .any(|a| !(a.starts_with("http://") || a.starts_with("https://")))
        {
            return Err(Error::Config(format!(
                "--claim-service {:?} must be comma-separated http:// or https:// URLs",
                self.claim_service
            )));
        }
        self.hooks.validate()?;
        if self.rtmp_listen == self.http_listen {
            return Err(Error::Config(format!(
                "--rtmp-listen and --http-listen are both {}",
                self.rtmp_listen
            )));
        }
        let rtmp = self.advertise_rtmp();
        if !rtmp.starts_with("rtmp://") || rtmp.contains('?') {
            return Err(Error::Config(format!(
                "--advertise-rtmp {rtmp:?} must be an rtmp:// URL without a query"
            )));
        }
        let http = self.advertise_http();
        if !(http.starts_with("http://") || http.starts_with("https://")) || http.contains('?') {
            return Err(Error::Config(format!(
                "--advertise-http {http:?} must be an http(s):// URL without a query"
            )));
        }
        if self.claim_wait.is_zero() || self.idle_timeout.is_zero() {
            return Err(Error::Config(
                "--claim-wait and --idle-timeout must be above zero".into(),
            ));
        }
        self.limits.validate()?;
        self.claim_services().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["ingest-node", "--node-id", "ingest-a"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).expect("flags parse")
    }

    #[test]
    fn healthcheck_needs_no_node_id_but_running_does() {
        let check = Config::try_parse_from(["ingest-node", "healthcheck"]).expect("flags parse");
        assert!(matches!(check.command, Some(Command::Healthcheck)));
        let run = Config::try_parse_from(["ingest-node"]).expect("flags parse");
        let refused = run.validate().unwrap_err().to_string();
        assert!(
            refused.contains("--node-id (or INGEST_NODE_ID) is required"),
            "{refused}"
        );
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse(&[]);
        assert!(c.validate().is_ok(), "{:?}", c.validate());
        assert_eq!(c.on_claim_unavailable, UnavailablePolicy::Allow);
        assert!(c.advertise_rtmp().ends_with(":1935"));
    }

    #[test]
    fn nonsense_is_refused() {
        for (args, want) in [
            (vec!["--claim-service", "127.0.0.1:50051"], "http://"),
            (vec!["--advertise-rtmp", "http://x"], "rtmp://"),
            (vec!["--http-listen", "0.0.0.0:1935"], "both"),
            (
                vec!["--tls-ca", "/nonexistent/ca.pem"],
                "--tls-ca /nonexistent",
            ),
            (vec!["--tls-cert", "c.pem"], "--tls-ca"),
            (vec!["--media-server", "ome"], "--ome-secret-file"),
            (
                vec!["--media-server-api-interval", "20s"],
                "--media-server-gone-after",
            ),
            (vec!["--max-rtmp-message", "1000"], "below 65536"),
            (vec!["--handshake-timeout", "0s"], "--handshake-timeout"),
        ] {
            let err = parse(&args).validate().unwrap_err().to_string();
            assert!(err.contains(want), "{args:?}: {err}");
        }
        let bad = Config::try_parse_from(["ingest-node", "--node-id", "Bad_Id"]).unwrap();
        assert!(bad.validate().unwrap_err().to_string().contains("node id"));
    }
}
