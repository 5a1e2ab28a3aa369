//! `claimctl`: who owns what, for people (tables) and scripts (`--json`).
//!
//! Exit codes a shell can branch on: 0 done (or owned), 1 any other failure,
//! 2 bad usage or a name the service refused, 3 not found, 4 not allowed
//! (admin credential missing or wrong), 5 claim-service unavailable.

use claims_proto::v1 as pb;
use clap::Parser;
use pb::admin_client::AdminClient;
use serde_json::{json, Value};

mod cli;
mod connect;
mod output;
mod watch;

use cli::{Cli, Cmd};
use output::{claim_json, endpoints, node_json, table, when};
use tonic::transport::Channel;
use tonic::{Code, Status};

fn exit_code(status: &Status) -> i32 {
    match status.code() {
        Code::NotFound => 3,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 2,
        Code::PermissionDenied | Code::Unauthenticated => 4,
        Code::Unavailable | Code::DeadlineExceeded => 5,
        _ => 1,
    }
}

impl Cli {
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
