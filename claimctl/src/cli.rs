//! What claimctl is asked: its flags, environment and commands, as
//! `--help` shows them.

use clap::{Parser, Subcommand};

/// Ask a Broadcast Claims service who owns what, watch ownership change,
/// and (with an admin token) force-release claims or drain nodes.
#[derive(Parser)]
#[command(name = "claimctl", version = claims_proto::VERSION)]
pub struct Cli {
    /// Claim-service gRPC URLs, comma-separated: commands use the first;
    /// `watch` moves to the next when its stream ends.
    #[arg(
        long,
        env = "CLAIMCTL_SERVER",
        default_value = "http://127.0.0.1:50051",
        value_delimiter = ',',
        global = true
    )]
    pub server: Vec<String>,

    /// Print JSON (one object, or one per line for watch) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,

    /// Admin bearer token (for release and drain).
    #[arg(
        long,
        env = "CLAIMCTL_ADMIN_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// File holding the admin bearer token.
    #[arg(long, env = "CLAIMCTL_ADMIN_TOKEN_FILE", global = true)]
    pub admin_token_file: Option<std::path::PathBuf>,

    /// File holding the read token, when the service requires one for reads
    /// (otherwise the admin token is sent, if given).
    #[arg(long, env = "CLAIMCTL_READ_TOKEN_FILE", global = true)]
    pub read_token_file: Option<std::path::PathBuf>,

    /// PEM CA of the service's certificate: connect over TLS (https:// URL).
    #[arg(long, env = "CLAIMCTL_TLS_CA", global = true)]
    pub tls_ca: Option<std::path::PathBuf>,

    /// PEM client certificate (mutual TLS; an admin identity may run
    /// release and drain without a token), with --tls-key.
    #[arg(long, env = "CLAIMCTL_TLS_CERT", global = true)]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "CLAIMCTL_TLS_KEY", global = true)]
    pub tls_key: Option<std::path::PathBuf>,

    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Who owns BROADCAST (exit 3 when nobody does).
    Owner {
        /// A broadcast name, APP/STREAM (e.g. live/cam1).
        broadcast: String,
        /// Read etcd linearizably instead of the service's view.
        #[arg(long)]
        consistent: bool,
    },
    /// Every claim, in name order.
    List {
        /// Only claims of this node.
        #[arg(long)]
        node: Option<String>,
        /// Only broadcasts whose name starts with this.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Claims and releases as they happen, each with the time it was seen
    /// (Ctrl-C stops). When the stream ends (its replica stopped), it goes
    /// on from the next revision at the next --server URL, missing nothing.
    Watch {
        /// Replay from this etcd revision (0 = from now on).
        #[arg(long, default_value_t = 0)]
        from: i64,
        /// Only broadcasts whose name starts with this (e.g. live/).
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Attached ingest nodes.
    Nodes,
    /// Revoke BROADCAST's claim (admin); the owner is told the reason.
    Release {
        /// The broadcast whose claim is revoked, APP/STREAM.
        broadcast: String,
        /// Why, told to the owner node in its `lost` (required).
        #[arg(long)]
        reason: String,
    },
    /// Mark NODE draining (admin): it takes no new publishers.
    Drain {
        /// The node's id.
        node: String,
        /// Clear the mark instead.
        #[arg(long)]
        undo: bool,
    },
    /// Drain a claim-service replica (admin): its node sessions move to
    /// the other replicas (claims adopted there, tokens kept, nothing
    /// released), it takes no new ones and reports itself not ready, until
    /// it restarts. `nodes` shows which replica each node is on.
    DrainReplica {
        /// The replica's service id (--service-id).
        service_id: String,
        /// Clear the mark instead.
        #[arg(long)]
        undo: bool,
    },
}
