//! Flags and environment variables of the ingest node, checked at start-up.

use crate::error::{Error, Result};
use std::net::SocketAddr;
use std::time::Duration;

use claims_proto::listen::Limits;

use crate::bridge::{ClaimServices, DuplicatePolicy};
use crate::hooks::Kind as HookKind;
use clap::{Parser, ValueEnum};

use crate::gate::UnavailablePolicy;

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

    /// Claim for a media server already in place instead of ingesting RTMP
    /// here: serve its publish/play hooks (on --hooks-listen, at
    /// /nginx-rtmp, /srs, /mediamtx or /ome) and turn our RTMP listener
    /// off. --advertise-rtmp is then the media server's.
    #[arg(
        long,
        env = "INGEST_MEDIA_SERVER",
        value_enum,
        help_heading = "Media-server hooks"
    )]
    pub media_server: Option<HookKind>,

    /// Where the media server's hooks are served.
    #[arg(
        long,
        env = "INGEST_HOOKS_LISTEN",
        default_value = "127.0.0.1:8090",
        help_heading = "Media-server hooks"
    )]
    pub hooks_listen: SocketAddr,

    /// Where the media server lists its live streams (nginx-rtmp's
    /// `rtmp_stat` page, SRS's /api/v1/streams, MediaMTX's
    /// /v3/paths/list, OME's /v1/vhosts/VHOST/apps/APP/streams), read
    /// whole: at start, so that a restarted sidecar adopts what is still
    /// published; every --media-server-api-interval, so that a missed hook
    /// converges to the truth; and as the server's liveness (two failed
    /// reads detach the node). Its host and port also serve the kicks,
    /// and OME's pulls, the sidecar asks of the server.
    #[arg(
        long,
        env = "INGEST_MEDIA_SERVER_API",
        help_heading = "Media-server hooks"
    )]
    pub media_server_api: Option<String>,

    /// File holding the credential the media server's API wants, sent as
    /// `Authorization: Basic base64(CONTENT)`: OME's AccessToken, or
    /// `user:password` for SRS's or MediaMTX's API.
    #[arg(
        long,
        env = "INGEST_MEDIA_SERVER_API_TOKEN_FILE",
        help_heading = "Media-server hooks"
    )]
    pub media_server_api_token_file: Option<std::path::PathBuf>,

    /// How often the media server's API is read (every second while it
    /// does not answer).
    #[arg(
        long,
        env = "INGEST_MEDIA_SERVER_API_INTERVAL",
        default_value = "5s",
        value_parser = duration,
        help_heading = "Media-server hooks"
    )]
    pub media_server_api_interval: Duration,

    /// A media server whose API has not answered for this long is gone:
    /// its publishers are taken as ended and their claims released. (After
    /// two failed reads in a row the node already detaches from the claim
    /// service, so its claims move after the claim service's detach grace,
    /// and come back if the server answers within it.)
    #[arg(
        long,
        env = "INGEST_MEDIA_SERVER_GONE_AFTER",
        default_value = "12s",
        value_parser = duration,
        help_heading = "Media-server hooks"
    )]
    pub media_server_gone_after: Duration,

    /// Release every claim when this sidecar stops, even while its media
    /// server goes on publishing (by default a stopped sidecar whose server
    /// still answers leaves its claims for its next run to adopt, within
    /// the claim service's --detach-grace).
    #[arg(
        long,
        env = "INGEST_RELEASE_ON_EXIT",
        help_heading = "Media-server hooks"
    )]
    pub release_on_exit: bool,

    /// A publisher the media server sends no update for this long is gone
    /// (nginx-rtmp: set it above `notify_update_timeout`; [default: 35s for
    /// nginx-rtmp, off for servers without an update hook]).
    #[arg(long, env = "INGEST_HOOKS_UPDATE_TIMEOUT", value_parser = duration, help_heading = "Media-server hooks")]
    pub hooks_update_timeout: Option<Duration>,

    /// File holding OvenMediaEngine's AdmissionWebhooks secret key: every
    /// request must carry its HMAC-SHA1 in X-OME-Signature (required with
    /// --media-server ome).
    #[arg(
        long,
        env = "INGEST_OME_SECRET_FILE",
        help_heading = "Media-server hooks"
    )]
    pub ome_secret_file: Option<std::path::PathBuf>,

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

    /// Most bytes one RTMP message may take (a video keyframe is the
    /// largest); a connection sending more towards one is closed.
    #[arg(
        long,
        env = "INGEST_MAX_RTMP_MESSAGE",
        default_value_t = 4 * 1024 * 1024,
        help_heading = "Limits"
    )]
    pub max_rtmp_message: usize,

    /// Most RTMP connections open at once.
    #[arg(
        long,
        env = "INGEST_MAX_RTMP_CONNECTIONS",
        default_value_t = 4096,
        help_heading = "Limits"
    )]
    pub max_rtmp_connections: usize,

    /// Most HTTP connections (viewers, probes, scrapes) open at once.
    #[arg(
        long,
        env = "INGEST_MAX_HTTP_CONNECTIONS",
        default_value_t = 16_384,
        help_heading = "Limits"
    )]
    pub max_http_connections: usize,

    /// Most connections one peer address may hold open on each of the RTMP
    /// and HTTP listeners (an edge or encoder farm behind one address
    /// counts once).
    #[arg(
        long,
        env = "INGEST_MAX_CONNECTIONS_PER_PEER",
        default_value_t = 1024,
        help_heading = "Limits"
    )]
    pub max_connections_per_peer: usize,

    /// How long a new connection may take to send its first bytes, and an
    /// HTTP request its headers.
    #[arg(long, env = "INGEST_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = duration, help_heading = "Limits")]
    pub handshake_timeout: Duration,

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
    /// What the RTMP and the HTTP listener let in.
    pub fn listen_limits(&self) -> (Limits, Limits) {
        let limits = |total| Limits {
            total,
            per_peer: self.max_connections_per_peer,
            first_bytes: self.handshake_timeout,
        };
        (
            limits(self.max_rtmp_connections),
            limits(self.max_http_connections),
        )
    }

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
        if self.media_server == Some(HookKind::Ome) && self.ome_secret_file.is_none() {
            return Err(Error::Config("--media-server ome needs --ome-secret-file (INGEST_OME_SECRET_FILE): the AdmissionWebhooks secret key every request is signed with".into()));
        }
        if let Some(api) = &self.media_server_api {
            if !(api.starts_with("http://") || api.starts_with("https://")) {
                return Err(Error::Config(format!(
                    "--media-server-api {api:?} must be an http:// URL"
                )));
            }
        }
        if self.media_server_api_interval.is_zero()
            || self.media_server_gone_after <= self.media_server_api_interval
        {
            return Err(Error::Config(format!(
                "--media-server-gone-after ({:?}) must be longer than --media-server-api-interval ({:?}), which must not be zero",
                self.media_server_gone_after, self.media_server_api_interval
            )));
        }
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
        if self.claim_wait.is_zero()
            || self.idle_timeout.is_zero()
            || self.handshake_timeout.is_zero()
        {
            return Err(Error::Config(
                "--claim-wait, --idle-timeout and --handshake-timeout must be above zero".into(),
            ));
        }
        if self.max_rtmp_connections == 0
            || self.max_http_connections == 0
            || self.max_connections_per_peer == 0
        {
            return Err(Error::Config("--max-rtmp-connections, --max-http-connections and --max-connections-per-peer must be above zero".into()));
        }
        if self.max_rtmp_message < 64 * 1024 {
            return Err(Error::Config(format!(
                "--max-rtmp-message {} is below 65536 bytes; encoders send larger frames",
                self.max_rtmp_message
            )));
        }
        self.claim_services().map(|_| ())
    }
}

impl Config {
    /// Where the media server lists its publishers, with its credential.
    pub fn media_server_api(&self) -> Result<Option<crate::hooks::Api>> {
        let Some(url) = &self.media_server_api else {
            return Ok(None);
        };
        let token = match &self.media_server_api_token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        Error::Config(format!(
                            "cannot read --media-server-api-token-file {}: {e}",
                            path.display()
                        ))
                    })?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        Ok(Some(crate::hooks::Api {
            url: url.clone(),
            token,
        }))
    }

    /// How long a publisher may go without an update from the media
    /// server: as set, or 35 s for nginx-rtmp (its `notify_update_timeout`
    /// defaults to 30 s), none for the others.
    pub fn update_timeout(&self) -> Option<Duration> {
        match (self.hooks_update_timeout, self.media_server) {
            (Some(t), _) => Some(t),
            (None, Some(HookKind::NginxRtmp)) => Some(Duration::from_secs(35)),
            _ => None,
        }
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
        ] {
            let err = parse(&args).validate().unwrap_err().to_string();
            assert!(err.contains(want), "{args:?}: {err}");
        }
        let bad = Config::try_parse_from(["ingest-node", "--node-id", "Bad_Id"]).unwrap();
        assert!(bad.validate().unwrap_err().to_string().contains("node id"));
    }
}
