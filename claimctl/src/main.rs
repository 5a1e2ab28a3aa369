//! `claimctl`: who owns what, for people (tables) and scripts (`--json`).
//!
//! Exit codes a shell can branch on: 0 done (or owned), 1 any other failure,
//! 2 bad usage or a name the service refused, 3 not found, 4 not allowed
//! (admin credential missing or wrong), 5 claim-service unavailable.

use std::time::Duration;

use claims_proto::v1 as pb;
use clap::{Parser, Subcommand};
use pb::admin_client::AdminClient;
use pb::ownership_client::OwnershipClient;
use serde_json::{json, Value};

mod output;

use output::{claim_json, endpoints, event_json, node_json, table, when};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Ask a Broadcast Claims service who owns what, watch ownership change,
/// and (with an admin token) force-release claims or drain nodes.
#[derive(Parser)]
#[command(name = "claimctl", version = claims_proto::VERSION)]
struct Cli {
    /// Claim-service gRPC URLs, comma-separated: commands use the first;
    /// `watch` moves to the next when its stream ends.
    #[arg(
        long,
        env = "CLAIMCTL_SERVER",
        default_value = "http://127.0.0.1:50051",
        value_delimiter = ',',
        global = true
    )]
    server: Vec<String>,

    /// Print JSON (one object, or one per line for watch) instead of tables.
    #[arg(long, global = true)]
    json: bool,

    /// Admin bearer token (for release and drain).
    #[arg(
        long,
        env = "CLAIMCTL_ADMIN_TOKEN",
        global = true,
        hide_env_values = true
    )]
    admin_token: Option<String>,

    /// File holding the admin bearer token.
    #[arg(long, env = "CLAIMCTL_ADMIN_TOKEN_FILE", global = true)]
    admin_token_file: Option<std::path::PathBuf>,

    /// File holding the read token, when the service requires one for reads
    /// (otherwise the admin token is sent, if given).
    #[arg(long, env = "CLAIMCTL_READ_TOKEN_FILE", global = true)]
    read_token_file: Option<std::path::PathBuf>,

    /// PEM CA of the service's certificate: connect over TLS (https:// URL).
    #[arg(long, env = "CLAIMCTL_TLS_CA", global = true)]
    tls_ca: Option<std::path::PathBuf>,

    /// PEM client certificate (mutual TLS; an admin identity may run
    /// release and drain without a token), with --tls-key.
    #[arg(long, env = "CLAIMCTL_TLS_CERT", global = true)]
    tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "CLAIMCTL_TLS_KEY", global = true)]
    tls_key: Option<std::path::PathBuf>,

    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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

fn exit_code(status: &Status) -> i32 {
    match status.code() {
        Code::NotFound => 3,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 2,
        Code::PermissionDenied | Code::Unauthenticated => 4,
        Code::Unavailable | Code::DeadlineExceeded => 5,
        _ => 1,
    }
}

fn read_token_file(
    path: Option<&std::path::PathBuf>,
    flag: &str,
) -> Result<Option<String>, Status> {
    let Some(path) = path else {
        return Ok(None);
    };
    std::fs::read_to_string(path)
        .map(|t| Some(t.trim().to_string()))
        .map_err(|e| Status::invalid_argument(format!("{flag} {}: {e}", path.display())))
}

fn bearer(token: &str) -> Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>, Status> {
    format!("Bearer {token}")
        .parse()
        .map_err(|_| Status::invalid_argument("the token holds characters not allowed in a header"))
}

impl Cli {
    /// The admin token, if one is given.
    fn token(&self) -> Result<Option<String>, Status> {
        if let Some(t) = &self.admin_token {
            return Ok(Some(t.trim().to_string()));
        }
        read_token_file(self.admin_token_file.as_ref(), "--admin-token-file")
    }

    /// The credential sent with reads: the read token, else the admin token.
    fn read_token(&self) -> Result<Option<String>, Status> {
        match read_token_file(self.read_token_file.as_ref(), "--read-token-file")? {
            Some(t) => Ok(Some(t)),
            None => self.token(),
        }
    }

    fn admin_request<T>(&self, msg: T) -> Result<tonic::Request<T>, Status> {
        let mut req = tonic::Request::new(msg);
        match self.token()? {
            Some(token) => req.metadata_mut().insert("authorization", bearer(&token)?),
            // An admin certificate speaks for itself.
            None if self.tls_cert.is_some() => None,
            None => {
                return Err(Status::unauthenticated(
                    "this command needs an admin credential: --admin-token, CLAIMCTL_ADMIN_TOKEN, --admin-token-file, or an admin certificate (--tls-cert)",
                ))
            }
        };
        Ok(req)
    }

    /// A lazy channel to the `i`-th --server URL (wrapping around).
    fn channel(&self, i: usize) -> Result<Channel, Status> {
        let tls = claims_proto::client::TlsFiles {
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
        };
        let server = &self.server[i % self.server.len()];
        tls.load()
            .and_then(|tls| claims_proto::client::endpoint(server, tls.as_ref()))
            .map(|e| e.connect_lazy())
            .map_err(|e| Status::invalid_argument(format!("--server {server}: {e}")))
    }

    /// An `Ownership` client on `channel` sending the read credential.
    fn reader(&self, channel: Channel) -> Result<Reader, Status> {
        let credential = match self.read_token()? {
            Some(token) => Some(bearer(&token)?),
            None => None,
        };
        Ok(OwnershipClient::with_interceptor(
            channel,
            Box::new(move |mut req: tonic::Request<()>| {
                if let Some(value) = &credential {
                    req.metadata_mut().insert("authorization", value.clone());
                }
                Ok(req)
            }),
        ))
    }

    /// Follows claim changes from `from`; when a stream ends or breaks, goes
    /// on from the revision after the last one seen at the next server.
    async fn watch(&self, mut read: Reader, from: i64, prefix: &str) -> Result<(), Status> {
        let mut next = from;
        let mut server = 0;
        let mut failures = 0u32;
        loop {
            let request = pb::WatchClaimsRequest {
                prefix: prefix.to_string(),
                start_revision: next,
            };
            let why = match read.watch_claims(request).await {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(e)) => {
                                failures = 0;
                                next = e.revision + 1;
                                self.print_event(&e);
                            }
                            Ok(None) => break "the stream ended".to_string(),
                            Err(status) => break status.message().to_string(),
                        }
                    }
                }
                // A revision etcd no longer has cannot be resumed from.
                Err(status) if status.code() == Code::OutOfRange => return Err(status),
                Err(status) => status.message().to_string(),
            };
            failures += 1;
            if failures > 3 * self.server.len() as u32 {
                return Err(Status::unavailable(format!(
                    "no claim-service kept the watch open (last: {why})"
                )));
            }
            server += 1;
            let url = &self.server[server % self.server.len()];
            eprintln!(
                "claimctl: watch interrupted ({why}); resuming at {url} from revision {next}"
            );
            tokio::time::sleep(Duration::from_millis(200 * u64::from(failures.min(10)))).await;
            read = self.reader(self.channel(server)?)?;
        }
    }

    fn print_event(&self, e: &pb::ClaimEvent) {
        let kind = pb::claim_event::Kind::try_from(e.kind)
            .map(|k| k.as_str_name())
            .unwrap_or("UNKNOWN");
        let seen_at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        if self.json {
            println!("{}", event_json(kind, e, &seen_at));
        } else {
            let c = e.claim.clone().unwrap_or_default();
            println!(
                "{seen_at} {:<9} {:<40} node={} fencing={} revision={}",
                kind, c.broadcast, c.node_id, c.fencing_token, e.revision
            );
        }
    }

    async fn run(&self, channel: Channel) -> Result<(), Status> {
        let mut read = self.reader(channel.clone())?;
        match &self.command {
            Cmd::Owner {
                broadcast,
                consistent,
            } => {
                let c = read
                    .get_owner(pb::GetOwnerRequest {
                        broadcast: broadcast.clone(),
                        consistent: *consistent,
                    })
                    .await?
                    .into_inner();
                if self.json {
                    println!("{}", claim_json(&c));
                } else {
                    table(
                        &[
                            "BROADCAST",
                            "NODE",
                            "FENCING",
                            "LEASE",
                            "CLAIMED AT",
                            "ENDPOINTS",
                        ],
                        &[vec![
                            c.broadcast.clone(),
                            c.node_id.clone(),
                            c.fencing_token.to_string(),
                            format!("{:x}", c.lease_id),
                            when(c.claimed_at_unix_ms),
                            endpoints(&c.endpoints),
                        ]],
                    );
                }
            }
            Cmd::List { node, prefix } => {
                let mut claims = Vec::new();
                let mut token = String::new();
                loop {
                    let page = read
                        .list_claims(pb::ListClaimsRequest {
                            prefix: prefix.clone(),
                            node_id: node.clone().unwrap_or_default(),
                            page_size: 1000,
                            page_token: token,
                        })
                        .await?
                        .into_inner();
                    claims.extend(page.claims);
                    if page.next_page_token.is_empty() {
                        break;
                    }
                    token = page.next_page_token;
                }
                if self.json {
                    println!("{}", Value::Array(claims.iter().map(claim_json).collect()));
                } else {
                    let rows: Vec<Vec<String>> = claims
                        .iter()
                        .map(|c| {
                            vec![
                                c.broadcast.clone(),
                                c.node_id.clone(),
                                c.fencing_token.to_string(),
                                when(c.claimed_at_unix_ms),
                            ]
                        })
                        .collect();
                    table(&["BROADCAST", "NODE", "FENCING", "CLAIMED AT"], &rows);
                }
            }
            Cmd::Watch { from, prefix } => self.watch(read, *from, prefix).await?,
            Cmd::Nodes => {
                let nodes = read
                    .list_nodes(pb::ListNodesRequest {})
                    .await?
                    .into_inner()
                    .nodes;
                if self.json {
                    println!("{}", Value::Array(nodes.iter().map(node_json).collect()));
                } else {
                    let rows: Vec<Vec<String>> = nodes
                        .iter()
                        .map(|n| {
                            vec![
                                n.node_id.clone(),
                                n.claims.to_string(),
                                if n.draining { "yes" } else { "no" }.into(),
                                n.service_id.clone(),
                                endpoints(&n.endpoints),
                            ]
                        })
                        .collect();
                    table(
                        &["NODE", "CLAIMS", "DRAINING", "SERVICE", "ENDPOINTS"],
                        &rows,
                    );
                }
            }
            Cmd::Release { broadcast, reason } => {
                let mut admin = AdminClient::new(channel);
                let req = self.admin_request(pb::ForceReleaseRequest {
                    broadcast: broadcast.clone(),
                    reason: reason.clone(),
                })?;
                let released = admin
                    .force_release(req)
                    .await?
                    .into_inner()
                    .released
                    .unwrap_or_default();
                if self.json {
                    println!("{}", json!({"released": claim_json(&released)}));
                } else {
                    println!(
                        "released {} (node {}, fencing token {})",
                        released.broadcast, released.node_id, released.fencing_token
                    );
                }
            }
            Cmd::Drain { node, undo } => {
                let mut admin = AdminClient::new(channel);
                let req = self.admin_request(pb::DrainNodeRequest {
                    node_id: node.clone(),
                    draining: !undo,
                })?;
                let n = admin
                    .drain_node(req)
                    .await?
                    .into_inner()
                    .node
                    .unwrap_or_default();
                if self.json {
                    println!("{}", node_json(&n));
                } else {
                    println!(
                        "node {} is {} ({} claims)",
                        n.node_id,
                        if n.draining {
                            "draining"
                        } else {
                            "not draining"
                        },
                        n.claims
                    );
                }
            }
            Cmd::DrainReplica { service_id, undo } => {
                let mut admin = AdminClient::new(channel);
                let req = self.admin_request(pb::DrainReplicaRequest {
                    service_id: service_id.clone(),
                    draining: !undo,
                })?;
                let r = admin.drain_replica(req).await?.into_inner();
                if self.json {
                    let v = json!({
                        "service_id": r.service_id,
                        "draining": r.draining,
                        "sessions": r.sessions,
                    });
                    println!("{v}");
                } else if r.draining {
                    println!(
                        "replica {} is draining: its {} sessions move to the other replicas",
                        r.service_id, r.sessions
                    );
                } else {
                    println!(
                        "replica {} is not draining ({} sessions)",
                        r.service_id, r.sessions
                    );
                }
            }
        }
        Ok(())
    }
}

type Reader = OwnershipClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, Status> + Send>,
    >,
>;

/// Environment names claimctl read before they all began with CLAIMCTL_.
const RENAMED: [(&str, &str); 4] = [
    ("CLAIMS_SERVER", "CLAIMCTL_SERVER"),
    ("CLAIMS_ADMIN_TOKEN", "CLAIMCTL_ADMIN_TOKEN"),
    ("CLAIMS_ADMIN_TOKEN_FILE", "CLAIMCTL_ADMIN_TOKEN_FILE"),
    ("CLAIMS_READ_TOKEN_FILE", "CLAIMCTL_READ_TOKEN_FILE"),
];

#[tokio::main]
async fn main() {
    for (old, new) in RENAMED {
        if std::env::var_os(old).is_some() && std::env::var_os(new).is_none() {
            eprintln!("claimctl: {old} is no longer read; set {new} instead");
        }
    }
    let cli = Cli::parse();
    let channel = match cli.channel(0) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("claimctl: {}", e.message());
            std::process::exit(2);
        }
    };
    if let Err(status) = cli.run(channel).await {
        let what = match status.code() {
            Code::Unavailable => format!(
                "cannot reach the claim-service at {}: {}",
                cli.server.join(","),
                status.message()
            ),
            _ => status.message().to_string(),
        };
        eprintln!("claimctl: {what}");
        std::process::exit(exit_code(&status));
    }
}
