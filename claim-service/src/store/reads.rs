//! What the store reads: one claim, a node's claims, a snapshot of every
//! claim and node for the view, the current revision.

use etcd_client::{GetOptions, KeyValue, SortOrder, SortTarget};
use futures::future::join_all;

use crate::claims::Claim;
use crate::error::Result;

use super::{ClaimRecord, Key, NodeRecord, Purpose, ReplicaRecord, Snapshot, Store};

/// Whether etcd's answer was too large to take: a lease with more keys
/// attached than one answer (4 MB) lists.
pub(super) fn too_many_keys(e: &crate::error::Error) -> bool {
    e.to_string().contains("message length too large")
}

/// Keys per page of a snapshot read.
const SNAPSHOT_PAGE: i64 = 5_000;

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every key: etcd's "\0" range end.
    vec![0]
}

impl Store {
    /// One key, read linearizably on the connection for `purpose`: what it
    /// holds (if anything) and the store's revision of the read.
    pub(super) async fn read_key(
        &self,
        purpose: Purpose,
        key: &str,
    ) -> Result<(Option<KeyValue>, i64)> {
        let mut resp = self
            .call_on(purpose, "get", |mut c| {
                let key = key.to_string();
                async move { c.get(key, None).await }
            })
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        Ok((resp.take_kvs().into_iter().next(), revision))
    }

    /// The current claim of a broadcast, read linearizably from etcd on
    /// the connection for `purpose`.
    pub async fn get_claim(
        &self,
        purpose: Purpose,
        broadcast: &str,
    ) -> Result<Option<(Claim, i64)>> {
        let key = self.inner.layout.broadcast(broadcast);
        let (kv, revision) = self.read_key(purpose, &key).await?;
        Ok(kv
            .and_then(|kv| ClaimRecord::claim_from(broadcast, &kv))
            .map(|c| (c, revision)))
    }

    /// The claims naming `node_id` on `lease_id`: the keys etcd says are
    /// attached to it, but those of broadcasts `skip` names, read in
    /// transactions of up to 128 (etcd's `--max-txn-ops`), side by side.
    pub async fn claims_on_lease(
        &self,
        lease_id: i64,
        node_id: &str,
        skip: impl Fn(&str) -> bool,
    ) -> Result<Vec<Claim>> {
        let attached = match self.attached_keys(lease_id).await {
            Ok(attached) => attached,
            Err(e) if too_many_keys(&e) => {
                // More keys than one answer carries (some 130,000): read
                // every claim instead, in pages.
                let all = self.claims_of_node(node_id).await?;
                return Ok(all
                    .into_iter()
                    .filter(|c| c.lease_id == lease_id && !skip(&c.broadcast))
                    .collect());
            }
            Err(e) => return Err(e),
        };
        let layout = &self.inner.layout;
        let names: Vec<String> = attached
            .keys()
            .iter()
            .filter_map(|k| match layout.parse(k) {
                Some(Key::Broadcast(b)) if !skip(b) => Some(b.to_string()),
                _ => None,
            })
            .collect();
        let mut claims = Vec::new();
        for group in names.chunks(128 * 16) {
            let parts = join_all(group.chunks(128).map(|chunk| self.claims_named(chunk))).await;
            for part in parts {
                claims.extend(part?.into_iter().filter(|c| &*c.node_id == node_id));
            }
        }
        Ok(claims)
    }

    /// The claims of `names` (128 at most: one transaction), read at once.
    async fn claims_named(&self, names: &[String]) -> Result<Vec<Claim>> {
        let layout = &self.inner.layout;
        let txn = etcd_client::Txn::new().and_then(
            names
                .iter()
                .map(|b| etcd_client::TxnOp::get(layout.broadcast(b), None))
                .collect::<Vec<_>>(),
        );
        let resp = self.txn("adopt_read", txn).await?;
        Ok(resp
            .op_responses()
            .into_iter()
            .zip(names)
            .filter_map(|(op, b)| match op {
                etcd_client::TxnOpResponse::Get(mut g) => g
                    .take_kvs()
                    .into_iter()
                    .next()
                    .and_then(|kv| ClaimRecord::claim_from(b, &kv)),
                _ => None,
            })
            .collect())
    }

    /// The keys etcd says are attached to `lease_id` (none when it is gone).
    pub(super) async fn attached_keys(
        &self,
        lease_id: i64,
    ) -> Result<etcd_client::LeaseTimeToLiveResponse> {
        self.call("lease_time_to_live", move |mut c| async move {
            c.lease_time_to_live(
                lease_id,
                Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
            )
            .await
        })
        .await
    }

    /// Every claim that names `node_id`, wherever it is (a full read of the
    /// claims: for a node whose earlier session put each claim on a lease
    /// of its own, as replicas of the model before did).
    pub async fn claims_of_node(&self, node_id: &str) -> Result<Vec<Claim>> {
        let snapshot = self
            .snapshot_of(Purpose::Claims, &self.inner.layout.broadcasts(""))
            .await?;
        Ok(snapshot
            .claims
            .into_iter()
            .filter(|c| &*c.node_id == node_id)
            .collect())
    }

    /// The whole prefix (claims and nodes) at one revision, for the view.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        self.snapshot_of(Purpose::View, self.inner.layout.prefix())
            .await
    }

    /// Every key under `key_prefix` at one revision, read in pages of
    /// [`SNAPSHOT_PAGE`] keys (one answer must stay under gRPC's 4 MB: a
    /// hundred thousand claims are some 30 MB), each page at the first
    /// one's revision.
    pub(super) async fn snapshot_of(&self, purpose: Purpose, key_prefix: &str) -> Result<Snapshot> {
        let end = prefix_end(key_prefix);
        let mut from = key_prefix.as_bytes().to_vec();
        let mut snapshot = Snapshot::default();
        loop {
            let at = snapshot.revision;
            let mut resp = self
                .call_on(purpose, "range", |mut c| {
                    let (from, end) = (from.clone(), end.clone());
                    async move {
                        let mut options = GetOptions::new()
                            .with_range(end)
                            .with_limit(SNAPSHOT_PAGE)
                            .with_sort(SortTarget::Key, SortOrder::Ascend);
                        if at > 0 {
                            options = options.with_revision(at);
                        }
                        c.get(from, Some(options)).await
                    }
                })
                .await?;
            if at == 0 {
                snapshot.revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            let more = resp.more();
            let kvs = resp.take_kvs();
            if let Some(last) = kvs.last() {
                // The next page starts just after this one's last key.
                from = last.key().to_vec();
                from.push(0);
            }
            self.add_to(&mut snapshot, kvs);
            if !more {
                return Ok(snapshot);
            }
        }
    }

    fn add_to(&self, snapshot: &mut Snapshot, kvs: Vec<KeyValue>) {
        for kv in kvs {
            match self.inner.layout.parse(kv.key()) {
                Some(Key::Broadcast(b)) => match ClaimRecord::claim_from(b, &kv) {
                    Some(claim) => snapshot.claims.push(claim),
                    None => tracing::warn!(
                        broadcast = b,
                        "claim key holds something that is not a claim record; ignored"
                    ),
                },
                Some(Key::Node(id)) => {
                    if let Some(record) = NodeRecord::from_kv(&kv) {
                        snapshot.nodes.push((id.to_string(), record));
                    }
                }
                Some(Key::Replica(id)) => {
                    if let Some(record) = ReplicaRecord::from_kv(&kv) {
                        snapshot.replicas.push((id.to_string(), record));
                    }
                }
                Some(Key::Forced(_)) | None => {}
            }
        }
    }

    /// The current revision of the store, asked on the connection for
    /// `purpose`.
    pub async fn revision(&self, purpose: Purpose) -> Result<i64> {
        let key = self.inner.layout.prefix().to_string();
        let resp = self
            .call_on(purpose, "range", |mut c| {
                let key = key.clone();
                async move {
                    c.get(key, Some(GetOptions::new().with_prefix().with_count_only()))
                        .await
                }
            })
            .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }
}
