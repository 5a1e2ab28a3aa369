//! A watch on a key prefix that survives broken streams and etcd restarts.
//!
//! etcd-client watch streams do not heal themselves. This one remembers the
//! revision of the last event it delivered and reopens from the next one, so
//! no event is missed or repeated. The only end besides the receiver going
//! away is [`Error::Compacted`]: the history asked for is gone, and the
//! caller must start over from a fresh read.

use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use tokio::sync::mpsc;

use super::{ClaimRecord, ForcedRecord, Key, NodeRecord, Purpose, ReplicaRecord, Store};
use crate::claims::Claim;
use crate::error::Error;

/// Largest watch answer taken (one etcd revision's events, whole).
const WATCH_ANSWER_MAX: usize = 512 * 1024 * 1024;

/// One change under the prefix.
#[derive(Debug, Clone)]
pub enum Change {
    /// A claim key was written; `created` when this put created the key
    /// (otherwise the claim was rewritten for a newer session: adoption).
    Claim {
        claim: Claim,
        created: bool,
    },
    /// A claim key was deleted; `claim` is what it held, when etcd still had
    /// the previous value.
    Released {
        broadcast: String,
        claim: Option<Claim>,
    },
    Node {
        node_id: String,
        record: NodeRecord,
    },
    NodeGone {
        node_id: String,
    },
    /// An operator revoked this claim, for this reason.
    Forced {
        broadcast: String,
        record: ForcedRecord,
    },
    /// A replica's record was written (it started, or its draining mark
    /// changed).
    Replica {
        service_id: String,
        record: ReplicaRecord,
    },
    /// A replica's record is gone (it stopped, or its lease expired).
    ReplicaGone {
        service_id: String,
    },
}

/// The changes of one etcd revision or a run of them, in order.
#[derive(Debug, Clone)]
pub struct Batch {
    pub changes: Vec<(Change, i64)>,
    /// The newest revision these changes bring the reader to.
    pub revision: i64,
}

impl Store {
    /// Watches `key_prefix` from `start_revision` (0 = from now on), on the
    /// etcd connection for `purpose` (never the claims'). Batches arrive on
    /// the returned channel until it is dropped or the history is compacted
    /// (then one `Err(Compacted)` and the end). A receiver that stops
    /// reading holds up its connection's flow control: read promptly.
    pub(super) fn watch(
        &self,
        purpose: Purpose,
        key_prefix: String,
        start_revision: i64,
    ) -> mpsc::Receiver<Result<Batch, Error>> {
        assert_ne!(
            purpose,
            Purpose::Claims,
            "watches never share the claims' connection"
        );
        let (tx, rx) = mpsc::channel(64);
        let store = self.clone();
        tokio::spawn(async move {
            store
                .watch_loop(purpose, key_prefix, start_revision, tx)
                .await
        });
        rx
    }

    async fn watch_loop(
        self,
        purpose: Purpose,
        key_prefix: String,
        start_revision: i64,
        tx: mpsc::Sender<Result<Batch, Error>>,
    ) {
        let mut next = start_revision;
        let mut failures = 0u32;
        loop {
            if tx.is_closed() {
                return;
            }
            if next <= 0 {
                match self.revision(purpose).await {
                    Ok(rev) => next = rev + 1,
                    Err(e) => {
                        failures += 1;
                        tracing::debug!(error = %e, "watch: cannot read the current revision");
                        tokio::time::sleep(crate::retry::backoff(failures)).await;
                        continue;
                    }
                }
            }
            let options = WatchOptions::new()
                .with_prefix()
                .with_prev_key()
                .with_start_revision(next);
            // One revision's events come in one answer: a node's lease
            // expiring with 100,000 claims on it is some 10 MB of deletes
            // (with their previous values), past gRPC's 4 MB default.
            let mut client = self
                .client_for(purpose)
                .watch_client()
                .max_decoding_message_size(WATCH_ANSWER_MAX);
            let opened = tokio::select! {
                r = client.watch(key_prefix.clone(), Some(options)) => r,
                _ = tx.closed() => return,
            };
            let mut stream = match opened {
                Ok(s) => s,
                Err(e) => {
                    failures += 1;
                    tracing::debug!(error = %e, "watch: cannot open; retrying");
                    tokio::time::sleep(crate::retry::backoff(failures)).await;
                    continue;
                }
            };
            loop {
                let msg = tokio::select! {
                    m = stream.message() => m,
                    _ = tx.closed() => return,
                };
                let resp = match msg {
                    Ok(Some(resp)) => resp,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "watch stream broke; resuming at revision {next}");
                        break;
                    }
                };
                failures = 0;
                if resp.compact_revision() > 0 {
                    let _ = tx
                        .send(Err(Error::Compacted {
                            requested: next,
                            compacted: resp.compact_revision(),
                        }))
                        .await;
                    return;
                }
                if resp.canceled() {
                    tracing::debug!(
                        reason = resp.cancel_reason(),
                        "watch canceled by etcd; resuming"
                    );
                    break;
                }
                let mut batch = Batch {
                    changes: Vec::new(),
                    revision: next - 1,
                };
                for event in resp.events() {
                    let Some(kv) = event.kv() else { continue };
                    let revision = kv.mod_revision();
                    batch.revision = batch.revision.max(revision);
                    let change = match (self.layout().parse(kv.key()), event.event_type()) {
                        (Some(Key::Broadcast(b)), EventType::Put) => {
                            match ClaimRecord::claim_from(b, kv) {
                                Some(claim) => Change::Claim {
                                    claim,
                                    created: kv.create_revision() == kv.mod_revision(),
                                },
                                None => continue,
                            }
                        }
                        (Some(Key::Broadcast(b)), EventType::Delete) => Change::Released {
                            broadcast: b.to_string(),
                            claim: event.prev_kv().and_then(|p| ClaimRecord::claim_from(b, p)),
                        },
                        (Some(Key::Node(id)), EventType::Put) => match NodeRecord::from_kv(kv) {
                            Some(record) => Change::Node {
                                node_id: id.to_string(),
                                record,
                            },
                            None => continue,
                        },
                        (Some(Key::Node(id)), EventType::Delete) => Change::NodeGone {
                            node_id: id.to_string(),
                        },
                        (Some(Key::Forced(b)), EventType::Put) => match ForcedRecord::from_kv(kv) {
                            Some(record) => Change::Forced {
                                broadcast: b.to_string(),
                                record,
                            },
                            None => continue,
                        },
                        (Some(Key::Forced(_)), EventType::Delete) => continue,
                        (Some(Key::Replica(id)), EventType::Put) => {
                            match ReplicaRecord::from_kv(kv) {
                                Some(record) => Change::Replica {
                                    service_id: id.to_string(),
                                    record,
                                },
                                None => continue,
                            }
                        }
                        (Some(Key::Replica(id)), EventType::Delete) => Change::ReplicaGone {
                            service_id: id.to_string(),
                        },
                        (None, _) => continue,
                    };
                    batch.changes.push((change, revision));
                }
                if batch.revision >= next {
                    next = batch.revision + 1;
                    if !batch.changes.is_empty() && tx.send(Ok(batch)).await.is_err() {
                        return;
                    }
                }
            }
            failures += 1;
            tokio::time::sleep(crate::retry::backoff(failures).min(Duration::from_secs(1))).await;
        }
    }
}
