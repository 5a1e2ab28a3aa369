//! The claim transaction, for one claim or a batch of them.
//!
//! A claim goes on the lease of its session's node record: one lease per
//! session, kept alive by one renewal, however many claims the node holds,
//! and one transaction per claim (no grant). Claims queued together by one
//! session (a hello listing thousands of live tracks, a burst of `created`)
//! are made together: one transaction creates every key that is absent if
//! the record is still on that lease, else reads them all. A key that
//! already names the node (left by an earlier session of it) is adopted as
//! it is: no write, its lease kept alive from then on. That is safe because
//! every write and delete of a node's claims is fenced by its record, which
//! this session rewrote before reading the key: the earlier session can no
//! longer touch it. Each key gets exactly the answer it would get alone.

use std::time::Instant;

use etcd_client::{Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse};

use super::{ttl_seconds, unix_ms, Attempt, ClaimRecord, ClaimRequest, NodeRecord, Store};
use crate::claims::{Claim, ClaimOutcome};
use crate::error::{Error, Result};

/// Claims made in one transaction at most. etcd refuses a transaction with
/// more than 128 compares (its `--max-txn-ops`); each claim is one compare,
/// plus the session's guard.
pub const BATCH: usize = 64;

/// Rounds of create-then-read before a key that keeps changing is answered
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

/// One claim of a batch.
struct Item<'a> {
    req: &'a ClaimRequest,
    /// The broadcast's etcd key.
    key: String,
    record: ClaimRecord,
}

impl<'a> Item<'a> {
    fn new(store: &Store, req: &'a ClaimRequest) -> Self {
        Item {
            req,
            key: store.inner.layout.broadcast(&req.broadcast),
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

    /// The key, on the session's record lease.
    fn put(&self) -> TxnOp {
        TxnOp::put(
            self.key.clone(),
            self.record.to_json(),
            Some(PutOptions::new().with_lease(self.req.guard_lease)),
        )
    }

    /// The claim this item made (created at `revision`), sharing the
    /// session's node and ids.
    fn created(&self, revision: i64) -> Claim {
        let holder = &self.req.holder;
        Claim {
            broadcast: self.req.broadcast.clone(),
            node_id: holder.node_id.clone(),
            endpoints: holder.endpoints.clone(),
            lease_id: self.req.guard_lease,
            fencing_token: revision,
            revision,
            claimed_at_unix_ms: self.record.claimed_at_unix_ms,
            lease_ttl_ms: self.record.lease_ttl_ms,
            session_id: holder.session_id.clone(),
            service_id: holder.service_id.clone(),
        }
    }

    /// `kv`, read under this session's fence as `owner`, adopted as it is:
    /// when it names this node (an earlier session's) and is on a lease
    /// (one with none, written by hand, is moved onto the session's).
    fn adopt_as_is(&self, kv: &KeyValue, owner: &Claim) -> Option<Claim> {
        let ours = owner.node_id == self.req.holder.node_id;
        (ours && kv.lease() != 0).then(|| self.adopted(kv, owner))
    }

    /// `kv`, a key of this node an earlier session left as `owner`, now
    /// this session's: same lease, same fencing token, the first claim's
    /// time, and the TTL the lease was granted with.
    fn adopted(&self, kv: &KeyValue, owner: &Claim) -> Claim {
        let holder = &self.req.holder;
        Claim {
            lease_ttl_ms: match owner.lease_ttl_ms {
                0 => self.record.lease_ttl_ms,
                ttl => ttl,
            },
            node_id: holder.node_id.clone(),
            endpoints: holder.endpoints.clone(),
            session_id: holder.session_id.clone(),
            service_id: holder.service_id.clone(),
            lease_id: kv.lease(),
            fencing_token: kv.create_revision(),
            revision: kv.mod_revision(),
            ..owner.clone()
        }
    }
}

impl Store {
    /// Makes claims of one session (all with the same guard lease), at most
    /// [`BATCH`]; each `done` gets its own answer (never an error: a store
    /// that cannot be reached is `Unavailable`).
    pub(super) async fn claim_batch(&self, batch: Vec<Pending>) {
        let items: Vec<Item<'_>> = batch.iter().map(|p| Item::new(self, &p.req)).collect();
        let answers = match items.iter().any(|i| i.req.adopting) {
            true => self.adopt_then_claim(&items).await,
            false => self.claim_items(&items).await,
        };
        drop(items);
        for (p, answer) in batch.into_iter().zip(answers) {
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

    /// Reads every key first (one read-only transaction, answered without
    /// a Raft entry) and adopts those that name this node under its fence;
    /// the rest are claimed the usual way ([`Store::claim_items`]).
    async fn adopt_then_claim(&self, items: &[Item<'_>]) -> Vec<Answer> {
        let mut answers: Vec<Option<Answer>> = items.iter().map(|_| None).collect();
        let Some(first) = items.first() else {
            return Vec::new();
        };
        let node_key = self.inner.layout.node(&first.req.holder.node_id);
        let read = Txn::new().and_then(reads_of(&node_key, items.iter()));
        if let Ok(resp) = self.txn("adopt_read", read).await {
            let mut reads = read_back(resp);
            let fenced = reads.next().flatten().map(|kv| kv.lease()) == Some(first.req.guard_lease);
            for (i, kv) in reads.enumerate().filter(|_| fenced) {
                let item = &items[i];
                let adopted = kv.and_then(|kv| {
                    let owner = ClaimRecord::claim_from(&item.req.broadcast, &kv)?;
                    item.adopt_as_is(&kv, &owner)
                });
                if let Some(claim) = adopted {
                    answers[i] = Some(Ok(Attempt::Outcome(ClaimOutcome::Claimed {
                        claim,
                        adopted: true,
                    })));
                }
            }
        }
        let rest: Vec<usize> = (0..items.len()).filter(|&i| answers[i].is_none()).collect();
        if !rest.is_empty() {
            let others: Vec<Item<'_>> = rest
                .iter()
                .map(|&i| Item {
                    req: items[i].req,
                    key: items[i].key.clone(),
                    record: items[i].record.clone(),
                })
                .collect();
            for (i, answer) in rest.into_iter().zip(self.claim_items(&others).await) {
                answers[i] = Some(answer);
            }
        }
        finish(answers)
    }

    /// A key of this node with no lease (written by hand): moved onto the
    /// session's lease, if unchanged since read and the guard holds, so
    /// that it goes when the node does. Its claim, or `None` when
    /// something changed (read it again).
    async fn adopt_leaseless(
        &self,
        guard: &Compare,
        item: &Item<'_>,
        kv: &KeyValue,
        owner: &Claim,
    ) -> Result<Option<Claim>> {
        let record = ClaimRecord {
            claimed_at_unix_ms: owner.claimed_at_unix_ms,
            ..item.record.clone()
        };
        let txn = Txn::new()
            .when([
                guard.clone(),
                Compare::mod_revision(item.key.clone(), CompareOp::Equal, kv.mod_revision()),
            ])
            .and_then([TxnOp::put(
                item.key.clone(),
                record.to_json(),
                Some(PutOptions::new().with_lease(item.req.guard_lease)),
            )]);
        let resp = self.txn("adopt_txn", txn).await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        Ok(resp.succeeded().then(|| Claim {
            lease_id: item.req.guard_lease,
            revision,
            ..item.adopted(kv, owner)
        }))
    }

    /// The claim transactions for `items` (one session's): answers in the
    /// same order.
    ///
    /// Each round, one transaction creates every open key, on the session's
    /// lease, if all are absent and the session's node record is still on
    /// that lease; else it reads the record and them all at one revision. A
    /// key naming another node is a conflict; one naming this node (an
    /// earlier session's) is adopted as it is ([`Item::adopted`]); an absent
    /// one is tried again next round.
    async fn claim_items(&self, items: &[Item<'_>]) -> Vec<Answer> {
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
                        claim: items[i].created(revision),
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
            let mut absent = Vec::new();
            for (&i, kv) in open.iter().zip(reads) {
                let Some(kv) = kv else {
                    // Gone (or never there): create it next round.
                    absent.push(i);
                    continue;
                };
                let item = &items[i];
                let broadcast = &item.req.broadcast;
                let owner = ClaimRecord::claim_from(broadcast, &kv).unwrap_or_else(|| Claim {
                    broadcast: broadcast.clone(),
                    lease_id: kv.lease(),
                    fencing_token: kv.create_revision(),
                    ..Claim::default()
                });
                let answer = if owner.node_id != item.req.holder.node_id {
                    ClaimOutcome::Conflict { owner, revision }
                } else if let Some(claim) = item.adopt_as_is(&kv, &owner) {
                    ClaimOutcome::Claimed {
                        claim,
                        adopted: true,
                    }
                } else {
                    match self.adopt_leaseless(&guard, item, &kv, &owner).await {
                        Ok(Some(claim)) => ClaimOutcome::Claimed {
                            claim,
                            adopted: true,
                        },
                        Ok(None) => {
                            absent.push(i);
                            continue;
                        }
                        Err(e) => ClaimOutcome::Unavailable { reason: e.public() },
                    }
                };
                answers[i] = Some(Ok(Attempt::Outcome(answer)));
            }
            open = absent;
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
