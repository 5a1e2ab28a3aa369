//! Node records: `{prefix}nodes/{node_id}`, one per attached node, on its
//! session's lease. The record is the session's fence: every claim write
//! checks it is still on that lease (see `ClaimRequest::guard_lease`).
//!
//! Only a record written by *another session* (a real, different session
//! id) supersedes a session. A record that vanished, cannot be read, or
//! changed between our read and our write is an etcd matter: the write is
//! tried again, never taken for a newer session.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp};

use super::{NodeRecord, Purpose, Registration, Store};
use crate::claims::Earlier as Left;
use crate::error::{Error, Result};

/// Reads and conditional writes a registration makes before giving up
/// for this round (the session retries with backoff).
const ROUNDS: usize = 3;

/// What a session writing its node's record must check, given what etcd
/// holds at the node's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    /// Write unconditionally: a first registration supersedes older ones.
    Overwrite,
    /// Write if the key still does not exist.
    Absent,
    /// Write if the key is still at this mod revision.
    Unchanged { mod_revision: i64 },
    /// Another session of the node holds the record: this one is superseded.
    TakenBy { session_id: String },
}

/// The record at the key, as far as a rewrite cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Earlier {
    pub lease: i64,
    pub mod_revision: i64,
    /// `None` when the value is not a readable record.
    pub session_id: Option<String>,
}

/// The rule: `fence` is the record's previous lease when a session writes
/// it again (its lease was lost), `None` for a first registration.
pub fn rewrite(own_session: &str, fence: Option<i64>, earlier: Option<&Earlier>) -> Rewrite {
    let Some(fence) = fence else {
        return Rewrite::Overwrite;
    };
    let Some(earlier) = earlier else {
        return Rewrite::Absent;
    };
    match earlier.session_id.as_deref() {
        Some(by) if !by.is_empty() && by != own_session && earlier.lease != fence => {
            Rewrite::TakenBy {
                session_id: by.to_string(),
            }
        }
        // Ours (on the fenced lease, or on one an earlier attempt of ours
        // wrote), or not a record at all: ours to replace, if unchanged.
        _ => Rewrite::Unchanged {
            mod_revision: earlier.mod_revision,
        },
    }
}

fn earlier_of(kv: &KeyValue) -> Earlier {
    Earlier {
        lease: kv.lease(),
        mod_revision: kv.mod_revision(),
        session_id: NodeRecord::from_kv(kv).map(|r| r.session_id),
    }
}

impl Store {
    /// Records that a node is attached through this session, on a new lease
    /// of the session's own, keeping the record's `draining` mark.
    ///
    /// A first registration (`fence: None`) overwrites whatever is there: a
    /// newer session supersedes an older one. Writing the record again after
    /// its lease was lost (`fence: Some(old lease)`) follows [`rewrite`]: if
    /// another session wrote it meanwhile, this one is superseded
    /// ([`Error::Superseded`] naming that session) and must not take the
    /// node back; anything else that gets in the way is `Unavailable`.
    pub async fn register_node(
        &self,
        node_id: &str,
        record: &NodeRecord,
        ttl: Duration,
        fence: Option<i64>,
    ) -> Result<Registration> {
        let key = self.inner.layout.node(node_id);
        for _ in 0..ROUNDS {
            let (earlier, _) = self.read_key(Purpose::Claims, &key).await?;
            let mut record = record.clone();
            record.claims_on_lease = true;
            let mut left = Left::None;
            if let Some((kv, old)) = earlier
                .as_ref()
                .and_then(|kv| Some((kv, NodeRecord::from_kv(kv)?)))
            {
                record.draining = old.draining;
                if old.session_id != record.session_id {
                    left = match old.claims_on_lease {
                        true => Left::OnLease(kv.lease()),
                        false => Left::Anywhere,
                    };
                }
            }
            let condition = match rewrite(
                &record.session_id,
                fence,
                earlier.as_ref().map(earlier_of).as_ref(),
            ) {
                Rewrite::Overwrite => None,
                Rewrite::Absent => Some(Compare::create_revision(key.clone(), CompareOp::Equal, 0)),
                Rewrite::Unchanged { mod_revision } => Some(Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    mod_revision,
                )),
                Rewrite::TakenBy { session_id } => return Err(Error::Superseded(session_id)),
            };
            let lease_id = self.grant(ttl).await?;
            let put = TxnOp::put(
                key.clone(),
                record.to_json(),
                Some(PutOptions::new().with_lease(lease_id)),
            );
            let txn = Txn::new()
                .when(condition.into_iter().collect::<Vec<_>>())
                .and_then([put]);
            match self.txn("register_txn", txn).await {
                Ok(resp) if resp.succeeded() => {
                    return Ok(Registration {
                        lease_id,
                        draining: record.draining,
                        revision: resp.header().map(|h| h.revision()).unwrap_or(0),
                        earlier: left,
                    })
                }
                // Changed since read: read again and decide again.
                Ok(_) => {
                    let _ = self.revoke(lease_id).await;
                }
                Err(e) => {
                    let _ = self.revoke(lease_id).await;
                    return Err(e);
                }
            }
        }
        Err(Error::Unavailable(format!(
            "the record of node {node_id:?} kept changing while this session wrote it; retrying"
        )))
    }

    /// Marks the record of `node_id` detached until `grace_ends_unix_ms`,
    /// if it is still the one `session_id` wrote on `lease_id` (a newer
    /// session's record is never touched). Whether it was marked.
    pub async fn mark_detached(
        &self,
        node_id: &str,
        session_id: &str,
        lease_id: i64,
        grace_ends_unix_ms: i64,
    ) -> Result<bool> {
        let key = self.inner.layout.node(node_id);
        for _ in 0..ROUNDS {
            let (Some(kv), _) = self.read_key(Purpose::Claims, &key).await? else {
                return Ok(false);
            };
            let Some(mut record) = NodeRecord::from_kv(&kv) else {
                return Ok(false);
            };
            if kv.lease() != lease_id || record.session_id != session_id {
                return Ok(false);
            }
            record.grace_ends_unix_ms = grace_ends_unix_ms;
            let txn = Txn::new()
                .when([
                    Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision()),
                    Compare::lease(key.clone(), CompareOp::Equal, lease_id),
                ])
                .and_then([TxnOp::put(
                    key.clone(),
                    record.to_json(),
                    Some(PutOptions::new().with_ignore_lease()),
                )]);
            if self.txn("detach_txn", txn).await?.succeeded() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Sets a node's `draining` mark, keeping its record's lease. `None`
    /// when the node has no record (not attached anywhere).
    pub async fn set_draining(&self, node_id: &str, draining: bool) -> Result<Option<NodeRecord>> {
        let key = self.inner.layout.node(node_id);
        self.rewrite_in_place(
            &key,
            "drain_txn",
            &format!("node record of {node_id:?}"),
            |kv| {
                let mut record = NodeRecord::from_kv(kv)?;
                record.draining = draining;
                Some((record.to_json(), record))
            },
        )
        .await
    }

    /// Rewrites the value at `key` as `change` makes it from what is there,
    /// keeping its lease, if nothing wrote it in between (tried a few
    /// times). `None` when there is no key; unavailable when `change`
    /// cannot read the value (`what` names it) or it kept changing.
    pub(super) async fn rewrite_in_place<T>(
        &self,
        key: &str,
        op: &'static str,
        what: &str,
        change: impl Fn(&KeyValue) -> Option<(Vec<u8>, T)>,
    ) -> Result<Option<T>> {
        for _ in 0..5 {
            let (Some(kv), _) = self.read_key(Purpose::Claims, key).await? else {
                return Ok(None);
            };
            let Some((value, changed)) = change(&kv) else {
                return Err(Error::Unavailable(format!("{what} is not readable")));
            };
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key,
                    CompareOp::Equal,
                    kv.mod_revision(),
                )])
                .and_then([TxnOp::put(
                    key,
                    value,
                    Some(PutOptions::new().with_ignore_lease()),
                )]);
            if self.txn(op, txn).await?.succeeded() {
                return Ok(Some(changed));
            }
        }
        Err(Error::Unavailable(format!(
            "{what} kept changing; try again"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(lease: i64, session: Option<&str>) -> Earlier {
        Earlier {
            lease,
            mod_revision: 40,
            session_id: session.map(String::from),
        }
    }

    #[test]
    fn a_first_registration_overwrites() {
        assert_eq!(
            rewrite("s1", None, Some(&record(7, Some("s0")))),
            Rewrite::Overwrite
        );
    }

    #[test]
    fn only_another_sessions_record_supersedes() {
        assert_eq!(
            rewrite("s1", Some(5), Some(&record(7, Some("s2")))),
            Rewrite::TakenBy {
                session_id: "s2".into()
            }
        );
        // Gone (expired in an outage): write it again if still absent.
        assert_eq!(rewrite("s1", Some(5), None), Rewrite::Absent);
        // Still ours, on the fenced lease or one an earlier attempt wrote.
        for earlier in [record(5, Some("s1")), record(9, Some("s1"))] {
            assert_eq!(
                rewrite("s1", Some(5), Some(&earlier)),
                Rewrite::Unchanged { mod_revision: 40 }
            );
        }
        // Unreadable, or with no session id: never a newer session.
        for earlier in [record(9, None), record(9, Some(""))] {
            assert_eq!(
                rewrite("s1", Some(5), Some(&earlier)),
                Rewrite::Unchanged { mod_revision: 40 }
            );
        }
    }
}
