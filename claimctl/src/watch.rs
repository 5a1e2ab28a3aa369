//! `claimctl watch`: claim changes as they happen, one line each, resumed
//! at the next --server from the revision after the last one seen.

use std::time::Duration;

use claims_proto::v1 as pb;
use tonic::{Code, Status};

use crate::cli::Cli;
use crate::connect::Reader;
use crate::output::event_json;

impl Cli {
    /// Follows claim changes from `from`; when a stream ends or breaks, goes
    /// on from the revision after the last one seen at the next server.
    pub async fn watch(&self, mut read: Reader, from: i64, prefix: &str) -> Result<(), Status> {
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
}
