//! What the node's listeners let in: connections in all and per peer,
//! the time a handshake may take and the size of one RTMP message (the
//! Limits heading of `--help`).

use std::time::Duration;

use claims_proto::listen::Limits;

use super::duration;
use crate::error::{Error, Result};

#[derive(Debug, Clone, clap::Args)]
pub struct LimitConfig {
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
}

impl LimitConfig {
    pub fn validate(&self) -> Result<()> {
        if self.handshake_timeout.is_zero() {
            return Err(Error::Config(
                "--handshake-timeout must be above zero".into(),
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
        Ok(())
    }

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
}
