//! The claim transaction, for one claim or a batch of them.
//!
//! Claims queued together by one session (a hello listing thousands of live
//! tracks, a burst of `created`) are made together: their leases are taken
//! or granted side by side, then one transaction creates every key that is
//! absent, and one adopts every key that already names the node (rewrites it
//! for this session on the lease it already has). Each key gets exactly the
//! answer it would get alone — the same compares, only several at once.
//!
//! When the pool cannot cover a batch, its keys are read first and those
//! that name the node are adopted before any lease is granted: a re-attach
//! listing 10,000 live tracks costs about 160 reads and 160 adoption
//! transactions, and no grants (a grant is a write etcd applies one by one;
//! 10,000 of them took this machine's etcd 1.2-1.7 s alone).

use std::time::Instant;

use etcd_client::{Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse};
use futures::future::join_all;

use super::{ttl_seconds, unix_ms, Attempt, ClaimRecord, ClaimRequest, NodeRecord, Store};
use crate::claims::{Claim, ClaimOutcome};
use crate::error::{Error, Result};

/// Claims made in one transaction at most. etcd refuses a transaction with
/// more than 128 compares (its `--max-txn-ops`); each claim is one compare,
/// plus the session's guard.
pub const BATCH: usize = 64;

/// Rounds of create-then-adopt before a key that keeps changing is answered
/// `Unavailable` (and retried later by the session).
const ROUNDS: usize = 5;

/// A claim's answer, or why etcd could not give one.
type Answer = std::result::Result<Attempt, String>;

/// A claim waiting for its answer.
pub struct Pending {
    pub req: ClaimRequest,
    /// When it was queued: latency counts from here.
    pub queued: Instant,
    pub done: Box<dyn FnOnce(Attempt) + Send>,
}

/// One claim of a batch, with its lease.
struct Item<'a> {
    req: &'a ClaimRequest,
    /// The broadcast's etcd key.
    key: String,
    lease_id: i64,
    record: ClaimRecord,
}

impl<'a> Item<'a> {
    fn new(store: &Store, req: &'a ClaimRequest, lease_id: i64) -> Self {
        Item {
            req,
            key: store.inner.layout.broadcast(&req.broadcast),
            lease_id,
            record: ClaimRecord {
                node_id: req.holder.node_id.to_string(),
                endpoints: (*req.holder.endpoints).clone(),
                session_id: req.holder.session_id.to_string(),
                service_id: req.holder.service_id.to_string(),
                claimed_at_unix_ms: unix_ms(),
                lease_ttl_ms: ttl_seconds(req.ttl) as u64 * 1000,
            },
        }
    }

    fn put(&self) -> TxnOp {
        TxnOp::put(
            self.key.clone(),
            self.record.to_json(),
            Some(PutOptions::new().with_lease(self.lease_id)),
        )
    }

    /// Whether `kv`, a key of this node claimed as `owner`, can be adopted
    /// on the lease it is on: it has one, granted for this session's TTL
    /// (a node that asks for another TTL than before gets a new lease).
    fn adoptable_in_place(&self, kv: &KeyValue, owner: &Claim) -> bool {
        kv.lease() != 0 && owner.lease_ttl_ms == self.record.lease_ttl_ms
    }

    /// The item that adopts `kv`, a key of this node left by an earlier
    /// session as `owner`: this session's record on the key's own lease
    /// (where [`Item::adoptable_in_place`], else on this item's), keeping the
    /// first claim's time.
    fn adopting(&self, kv: &KeyValue, owner: &Claim) -> Self {
        Item {
            req: self.req,
            key: self.key.clone(),
            lease_id: if self.adoptable_in_place(kv, owner) {
                kv.lease()
            } else {
                self.lease_id
            },
            record: ClaimRecord {
                claimed_at_unix_ms: owner.claimed_at_unix_ms,
                ..self.record.clone()
            },
        }
    }

    /// The claim this item makes (written at `revision`), sharing the
    /// session's node and ids.
    fn claim(&self, fencing_token: i64, revision: i64) -> Claim {
        let holder = &self.req.holder;
        Claim {
            broadcast: self.req.broadcast.clone(),
            node_id: holder.node_id.clone(),
            endpoints: holder.endpoints.clone(),
            lease_id: self.lease_id,
            fencing_token,
            revision,
            claimed_at_unix_ms: self.record.claimed_at_unix_ms,
            lease_ttl_ms: self.record.lease_ttl_ms,
            session_id: holder.session_id.clone(),
            service_id: holder.service_id.clone(),
        }
    }
}

impl Store {
    /// Makes claims of one session (all with the same guard lease), at most
    /// [`BATCH`]; each `done` gets its own answer (never an error: a store
    /// that cannot be reached is `Unavailable`).
    pub(super) async fn claim_batch(&self, batch: Vec<Pending>) {
        // Leases would have to be granted for this batch: adopt what can be
        // adopted first, so that only new claims need a lease.
        let ttl_s = batch.first().map_or(0, |p| ttl_seconds(p.req.ttl));
        let batch = if batch.len() > self.inner.pool.ready(ttl_s) {
            self.adopt_first(batch).await
        } else {
            batch
        };
        if batch.is_empty() {
            return;
        }
        let leases = join_all(batch.iter().map(|p| self.lease_for(p.req.ttl))).await;
        let mut items = Vec::new();
        // Where each item's answer goes, and when its lease was granted.
        let mut slots = Vec::new();
        let mut answers: Vec<Option<Answer>> = Vec::new();
        for (p, lease) in batch.iter().zip(leases) {
            match lease {
                Ok((lease_id, granted_at)) => {
                    items.push(Item::new(self, &p.req, lease_id));
                    slots.push((answers.len(), granted_at));
                    answers.push(None);
                }
                Err(e) => answers.push(Some(Err(e.public()))),
            }
        }
        let results = self.claim_with_leases(&items).await;
        for ((item, (at, granted_at)), result) in items.iter().zip(slots).zip(results) {
            self.settle_lease(item, granted_at, &result);
            answers[at] = Some(result);
        }
        for (p, answer) in batch.into_iter().zip(finish(answers)) {
            let attempt = match answer {
                Ok(Attempt::Outcome(outcome)) => Attempt::Outcome(self.count(outcome, p.queued)),
                Ok(fenced) => fenced,
                Err(reason) => {
                    Attempt::Outcome(self.count(ClaimOutcome::Unavailable { reason }, p.queued))
                }
            };
            (p.done)(attempt);
        }
    }

    /// Counts a claim's outcome in the metrics.
    fn count(&self, outcome: ClaimOutcome, queued: Instant) -> ClaimOutcome {
        let m = &self.inner.metrics;
        m.claim_latency.observe(queued.elapsed().as_secs_f64());
        match &outcome {
            ClaimOutcome::Claimed { adopted, .. } => m
                .claims_granted
                .with_label_values(&[if *adopted { "adopted" } else { "created" }])
                .inc(),
            ClaimOutcome::Conflict { .. } => m.claims_conflicted.inc(),
            ClaimOutcome::Unavailable { .. } => {}
        }
        outcome
    }

    /// What becomes of a claim's lease once the claim is answered.
    fn settle_lease(&self, item: &Item<'_>, granted_at: tokio::time::Instant, result: &Answer) {
        let ttl = item.req.ttl;
        match result {
            Ok(Attempt::Outcome(ClaimOutcome::Claimed { claim, .. }))
                if claim.lease_id == item.lease_id =>
            {
                self.inner
                    .granted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(item.lease_id, granted_at);
            }
            // A definite "no", or an adoption that kept the claim's own
            // lease: this one is unused and can serve again.
            Ok(_)
                if self
                    .inner
                    .pool
                    .put(ttl_seconds(ttl), item.lease_id, granted_at) => {}
            // On error the transaction may still have landed: revoking the
            // lease removes such a key rather than leaving an orphan claim.
            _ => self.submit_revoke(item.lease_id, ttl, || {}),
        }
    }

    /// A lease for a claim: from the pool when a fresh one is there (no
    /// round trip), else granted now. Takes trigger a refill.
    async fn lease_for(&self, ttl: std::time::Duration) -> Result<(i64, tokio::time::Instant)> {
        let ttl_s = ttl_seconds(ttl);
        let taken = self.inner.pool.take(ttl_s);
        for stale in taken.stale {
            self.submit_revoke(stale, ttl, || {});
        }
        if taken.short > 0
            && !self
                .inner
                .refilling
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            let store = self.clone();
            tokio::spawn(async move {
                for _ in 0..taken.short {
                    let granted_at = tokio::time::Instant::now();
                    match store.grant(ttl).await {
                        Ok(id) if store.inner.pool.put(ttl_s, id, granted_at) => {}
                        Ok(id) => {
                            let _ = store.revoke(id).await;
                            break;
                        }
                        Err(_) => break,
                    }
                }
                store
                    .inner
                    .refilling
                    .store(false, std::sync::atomic::Ordering::Release);
            });
        }
        match taken.lease {
            Some(lease) => Ok(lease),
            None => {
                let granted_at = tokio::time::Instant::now();
                Ok((self.grant(ttl).await?, granted_at))
            }
        }
    }

    /// Adopts `moved` (made by [`Item::adopting`], each with the key as it
    /// was read) in one transaction that checks the session's guard and that
    /// no key changed since: their claims, or `None` when something changed
    /// (read them again).
    async fn adopt(
        &self,
        guard: &Compare,
        moved: &[(Item<'_>, KeyValue)],
    ) -> Result<Option<Vec<Claim>>> {
        let txn = Txn::new()
            .when(
                std::iter::once(guard.clone())
                    .chain(moved.iter().map(|(m, kv)| {
                        Compare::mod_revision(m.key.clone(), CompareOp::Equal, kv.mod_revision())
                    }))
                    .collect::<Vec<_>>(),
            )
            .and_then(moved.iter().map(|(m, _)| m.put()).collect::<Vec<_>>());
        let resp = self.txn("adopt_txn", txn).await?;
        if !resp.succeeded() {
            return Ok(None);
        }
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        for (m, kv) in moved {
            if m.lease_id == kv.lease() {
                self.adopted_lease(m.lease_id, m.req.ttl);
            }
        }
        Ok(Some(
            moved
                .iter()
                .map(|(m, kv)| m.claim(kv.create_revision(), revision))
                .collect(),
        ))
    }

    /// An adopted claim's lease is renewed at once: how much of its TTL is
    /// left is not known (its last renewal was another session's).
    fn adopted_lease(&self, lease_id: i64, ttl: std::time::Duration) {
        let now = tokio::time::Instant::now();
        self.inner
            .granted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(lease_id, now.checked_sub(ttl / 4).unwrap_or(now));
    }

    /// Adopts the keys of `batch` that already name its node, before any
    /// lease is taken for them: one read of them all, then one adoption
    /// transaction. Answers those and returns the rest, for the usual way.
    /// Anything unexpected (etcd errors, a fenced session, a key that
    /// changed) returns the whole batch, whose usual way answers it.
    async fn adopt_first(&self, batch: Vec<Pending>) -> Vec<Pending> {
        let Some(first) = batch.first() else {
            return batch;
        };
        let node_id = first.req.holder.node_id.clone();
        let guard_lease = first.req.guard_lease;
        let node_key = self.inner.layout.node(&node_id);
        let adopted = {
            let items: Vec<Item<'_>> = batch.iter().map(|p| Item::new(self, &p.req, 0)).collect();
            let read = Txn::new().and_then(reads_of(&node_key, items.iter()));
            let Ok(resp) = self.txn("adopt_read", read).await else {
                return batch;
            };
            let mut reads = read_back(resp);
            if reads.next().flatten().map(|kv| kv.lease()) != Some(guard_lease) {
                return batch;
            }
            let mut at = Vec::new();
            let mut moved = Vec::new();
            for (i, kv) in reads.enumerate() {
                let Some(kv) = kv else {
                    continue;
                };
                let Some(owner) = ClaimRecord::claim_from(&items[i].req.broadcast, &kv) else {
                    continue;
                };
                if owner.node_id == node_id && items[i].adoptable_in_place(&kv, &owner) {
                    at.push(i);
                    moved.push((items[i].adopting(&kv, &owner), kv));
                }
            }
            if moved.is_empty() {
                return batch;
            }
            let guard = Compare::lease(node_key, CompareOp::Equal, guard_lease);
            match self.adopt(&guard, &moved).await {
                Ok(Some(claims)) => at.into_iter().zip(claims).collect::<Vec<_>>(),
                _ => return batch,
            }
        };
        let mut adopted = adopted.into_iter().peekable();
        let mut rest = Vec::new();
        for (i, p) in batch.into_iter().enumerate() {
            match adopted.next_if(|(at, _)| *at == i) {
                Some((_, claim)) => {
                    let outcome = ClaimOutcome::Claimed {
                        claim,
                        adopted: true,
                    };
                    (p.done)(Attempt::Outcome(self.count(outcome, p.queued)));
                }
                None => rest.push(p),
            }
        }
        rest
    }

    /// The claim transactions for `items` (one session's, each with its own
    /// lease): answers in the same order.
    ///
    /// Each round, one transaction creates every open key if all are absent
    /// and the session's node record is still on its guard lease; else it
    /// reads them all. A key naming another node is a conflict; one naming
    /// this node (an earlier session's) is adopted ([`Item::adopting`]) by a
    /// second transaction that checks it is unchanged, keeping its fencing
    /// token; an absent one is tried again next round.
    async fn claim_with_leases(&self, items: &[Item<'_>]) -> Vec<Answer> {
        let mut answers: Vec<Option<Answer>> = items.iter().map(|_| None).collect();
        let Some(first) = items.first() else {
            return Vec::new();
        };
        let node_key = self.inner.layout.node(&first.req.holder.node_id);
        let guard_lease = first.req.guard_lease;
        let guard = Compare::lease(node_key.clone(), CompareOp::Equal, guard_lease);
        let mut open: Vec<usize> = (0..items.len()).collect();
        for _ in 0..ROUNDS {
            if open.is_empty() {
                break;
            }
            let create = Txn::new()
                .when(
                    std::iter::once(guard.clone())
                        .chain(open.iter().map(|&i| {
                            Compare::create_revision(items[i].key.clone(), CompareOp::Equal, 0)
                        }))
                        .collect::<Vec<_>>(),
                )
                .and_then(open.iter().map(|&i| items[i].put()).collect::<Vec<_>>())
                .or_else(reads_of(&node_key, open.iter().map(|&i| &items[i])));
            let resp = match self.txn("claim_txn", create).await {
                Ok(resp) => resp,
                Err(e) => {
                    settle(&mut answers, &open, |_| Err(e.public()));
                    return finish(answers);
                }
            };
            let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            if resp.succeeded() {
                settle(&mut answers, &open, |i| {
                    Ok(Attempt::Outcome(ClaimOutcome::Claimed {
                        claim: items[i].claim(revision, revision),
                        adopted: false,
                    }))
                });
                return finish(answers);
            }
            let mut reads = read_back(resp);
            let node_kv = reads.next().flatten();
            if node_kv.as_ref().map(|kv| kv.lease()) != Some(guard_lease) {
                let session_id = node_kv
                    .as_ref()
                    .and_then(NodeRecord::from_kv)
                    .map(|r| r.session_id)
                    .unwrap_or_default();
                settle(&mut answers, &open, |_| {
                    Ok(Attempt::Fenced {
                        session_id: session_id.clone(),
                    })
                });
                return finish(answers);
            }
            // Ours from an earlier session: to be adopted if still exactly
            // what was read.
            let mut at = Vec::new();
            let mut moved = Vec::new();
            let mut absent = Vec::new();
            for (&i, kv) in open.iter().zip(reads) {
                let Some(kv) = kv else {
                    // Gone (or never there): create it next round.
                    absent.push(i);
                    continue;
                };
                let broadcast = &items[i].req.broadcast;
                let owner = ClaimRecord::claim_from(broadcast, &kv).unwrap_or_else(|| Claim {
                    broadcast: broadcast.clone(),
                    lease_id: kv.lease(),
                    fencing_token: kv.create_revision(),
                    ..Claim::default()
                });
                if owner.node_id != items[i].req.holder.node_id {
                    answers[i] = Some(Ok(Attempt::Outcome(ClaimOutcome::Conflict {
                        owner,
                        revision,
                    })));
                } else {
                    at.push(i);
                    moved.push((items[i].adopting(&kv, &owner), kv));
                }
            }
            open = absent;
            if moved.is_empty() {
                continue;
            }
            match self.adopt(&guard, &moved).await {
                Ok(Some(claims)) => {
                    for (&i, claim) in at.iter().zip(claims) {
                        answers[i] = Some(Ok(Attempt::Outcome(ClaimOutcome::Claimed {
                            claim,
                            adopted: true,
                        })));
                    }
                }
                // One of them changed under us (another replica adopting it
                // too, a release, the guard): read them again next round.
                Ok(None) => open.extend(at),
                Err(e) => settle(&mut answers, &at, |_| Err(e.public())),
            }
            open.sort_unstable();
        }
        settle(&mut answers, &open, |i| {
            Err(Error::Unavailable(format!(
                "claim key for {:?} kept changing; will retry",
                items[i].req.broadcast
            ))
            .to_string())
        });
        finish(answers)
    }
}

/// Reads of the node's record and of each item's key, in that order (see
/// [`read_back`]).
fn reads_of<'a, 'r: 'a>(node_key: &str, items: impl Iterator<Item = &'a Item<'r>>) -> Vec<TxnOp> {
    std::iter::once(TxnOp::get(node_key, None))
        .chain(items.map(|i| TxnOp::get(i.key.clone(), None)))
        .collect()
}

/// What the reads of [`reads_of`] found: each key's value, if any.
fn read_back(resp: etcd_client::TxnResponse) -> impl Iterator<Item = Option<KeyValue>> {
    resp.op_responses().into_iter().map(|op| match op {
        TxnOpResponse::Get(mut g) => g.take_kvs().into_iter().next(),
        _ => None,
    })
}

fn settle<T>(answers: &mut [Option<T>], at: &[usize], mut answer: impl FnMut(usize) -> T) {
    for &i in at {
        answers[i] = Some(answer(i));
    }
}

/// The answers, every one given by then (a gap would be a bug here: it is
/// answered `Unavailable`, so the session retries, rather than a panic).
fn finish(answers: Vec<Option<Answer>>) -> Vec<Answer> {
    answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err("claim left unanswered; will retry".into())))
        .collect()
}
