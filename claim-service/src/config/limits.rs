//! What one replica lets in: sessions, claims and tracks of a node,
//! message sizes and rates, watches, connections and handshake times (the
//! Limits heading of `--help`).

use std::time::Duration;

use claims_proto::listen;

use super::duration;
use crate::watchers::WatchLimits;

#[derive(Debug, Clone, clap::Args)]
pub struct LimitConfig {
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

impl LimitConfig {
    pub fn check(&self) -> Result<(), String> {
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
        Ok(())
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
}
