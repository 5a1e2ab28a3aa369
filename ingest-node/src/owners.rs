//! Who owns what, as the claim plane's watch says: a cache at the node, fed
//! by one `WatchClaims` stream (after a `ListClaims` of everything), that
//! answers viewer redirects with no etcd read and no round trip.
//!
//! The claim services answer `ListClaims`, `WatchClaims` and `ListNodes`
//! from their own watch-fed view, so keeping this cache costs etcd nothing;
//! a redirect from it costs nobody anything. It is part of the library, for
//! any embedder that sends viewers to owners.
//!
//! A cached answer may be stale by the watch's delay (milliseconds). That is
//! safe for a redirect: the node it names re-checks (it serves only what it
//! owns itself, and a request that was already redirected once is looked up
//! with a linearizable read there, never from a cache), so a stale answer
//! costs one more hop or a `404`, never a loop and never a wrong stream.
//! Who is *gone* (a node in its detach grace) comes from `WatchNodes`, as
//! fast as the claims.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use claims_proto::v1 as pb;
use pb::ownership_client::OwnershipClient;

use crate::bridge::ClaimServices;

/// Claims per `ListClaims` page while the cache fills (its maximum).
const PAGE: u32 = 1_000;

/// What claims of one node session have in common, kept once.
#[derive(Debug, PartialEq)]
struct Holder {
    node_id: String,
    endpoints: HashMap<String, String>,
    session_id: String,
    service_id: String,
}

/// What the cache keeps of a claim: a few numbers and its node's shared
/// part (a million claims are a million entries on every ingest node).
#[derive(Debug, Clone)]
struct Owner {
    holder: Arc<Holder>,
    lease_id: i64,
    fencing_token: i64,
    claimed_at_unix_ms: i64,
    lease_ttl_ms: u64,
}

impl Owner {
    fn claim(&self, broadcast: &str) -> pb::Claim {
        let h = &self.holder;
        pb::Claim {
            broadcast: broadcast.to_string(),
            node_id: h.node_id.clone(),
            endpoints: h.endpoints.clone(),
            lease_id: self.lease_id,
            fencing_token: self.fencing_token,
            claimed_at_unix_ms: self.claimed_at_unix_ms,
            lease_ttl_ms: self.lease_ttl_ms,
            session_id: h.session_id.clone(),
            service_id: h.service_id.clone(),
            ..Default::default()
        }
    }
}

#[derive(Default)]
struct State {
    claims: HashMap<String, Owner>,
    /// The latest holder seen per node, shared by its claims.
    holders: HashMap<String, Arc<Holder>>,
    /// Every node with a record: `Some(end of its grace)` when it is gone.
    nodes: HashMap<String, Option<i64>>,
    revision: i64,
    synced: bool,
}

/// The cache; answers once it has listed every claim and its watch is live.
pub struct OwnerCache {
    state: RwLock<State>,
}

impl OwnerCache {
    /// Starts following the claim services (the first that answers, then
    /// the next on any break).
    pub fn start(claim_services: ClaimServices) -> Arc<Self> {
        let cache = Arc::new(Self {
            state: RwLock::new(State::default()),
        });
        tokio::spawn(follow(Arc::downgrade(&cache), claim_services));
        cache
    }

    /// The owner of `broadcast` as the cache knows it (`Some(None)`: nobody),
    /// with the owner's presence filled in; `None` while the cache is not
    /// following a claim service (ask one then).
    pub fn owner(&self, broadcast: &str) -> Option<Option<pb::Claim>> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        if !state.synced {
            return None;
        }
        Some(state.claims.get(broadcast).map(|owner| {
            let mut claim = owner.claim(broadcast);
            // A node without a record is gone too (its grace end unknown).
            match state.nodes.get(&claim.node_id) {
                Some(None) => {}
                Some(Some(ends)) => {
                    claim.detached = true;
                    claim.grace_ends_unix_ms = *ends;
                }
                None => claim.detached = true,
            }
            claim
        }))
    }

    /// Claims in the cache, and whether it answers.
    pub fn len(&self) -> (usize, bool) {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        (state.claims.len(), state.synced)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// Keeps `claim`, its node's part shared with the node's other claims.
    fn keep(&mut self, claim: pb::Claim) {
        let holder = Holder {
            node_id: claim.node_id,
            endpoints: claim.endpoints,
            session_id: claim.session_id,
            service_id: claim.service_id,
        };
        let holder = match self.holders.get(&holder.node_id) {
            Some(known) if **known == holder => known.clone(),
            _ => {
                let fresh = Arc::new(holder);
                self.holders.insert(fresh.node_id.clone(), fresh.clone());
                fresh
            }
        };
        let owner = Owner {
            holder,
            lease_id: claim.lease_id,
            fencing_token: claim.fencing_token,
            claimed_at_unix_ms: claim.claimed_at_unix_ms,
            lease_ttl_ms: claim.lease_ttl_ms,
        };
        self.claims.insert(claim.broadcast, owner);
    }
}

impl OwnerCache {
    fn node(&self, event: pb::NodeEvent) {
        let Some(node) = event.node else { return };
        let mut state = self.write();
        if event.gone {
            state.nodes.remove(&node.node_id);
        } else {
            let gone = node.detached.then_some(node.grace_ends_unix_ms);
            state.nodes.insert(node.node_id, gone);
        }
    }

    fn apply(&self, event: pb::ClaimEvent) {
        use pb::claim_event::Kind;
        let Some(claim) = event.claim else { return };
        let mut state = self.write();
        state.revision = state.revision.max(event.revision);
        match Kind::try_from(event.kind) {
            Ok(Kind::Claimed | Kind::Adopted) => {
                state.keep(claim);
            }
            Ok(Kind::Released) => {
                // Only the claim that ended: a newer one may be in already.
                let ended = state.claims.get(&claim.broadcast).is_some_and(|c| {
                    c.fencing_token <= claim.fencing_token || claim.fencing_token == 0
                });
                if ended {
                    state.claims.remove(&claim.broadcast);
                }
            }
            _ => {}
        }
    }
}

/// Lists every claim, then follows the watch from the list's revision;
/// starts over (on the next claim service) after any break. Ends when the
/// cache is dropped.
async fn follow(cache: std::sync::Weak<OwnerCache>, claim_services: ClaimServices) {
    let mut failures = 0u32;
    loop {
        let Some(strong) = cache.upgrade() else {
            return;
        };
        let result = follow_once(&strong, &claim_services).await;
        strong.write().synced = false;
        drop(strong);
        failures = failures.saturating_add(1);
        let wait = Duration::from_millis(200 * u64::from(failures.min(25)));
        match result {
            Ok(()) => tracing::info!("owner cache: the watch ended; following again"),
            Err(e) => {
                tracing::info!(error = %e, ?wait, "owner cache: not following; redirects ask the claim service meanwhile")
            }
        }
        tokio::time::sleep(wait).await;
    }
}

async fn follow_once(cache: &OwnerCache, claim_services: &ClaimServices) -> Result<()> {
    let channel = claim_services.query_channel().await?;
    let mut client = OwnershipClient::new(channel);
    // Watch first, from now, so that nothing after the list is missed; then
    // list, then apply what the watch said after the list's revision.
    let mut watch = client
        .watch_claims(pb::WatchClaimsRequest {
            prefix: String::new(),
            start_revision: 0,
        })
        .await
        .map_err(|s| Error::ClaimService(format!("WatchClaims: {}", s.message())))?
        .into_inner();
    let mut listed = State::default();
    let mut page_token = String::new();
    let revision = loop {
        let page = client
            .list_claims(pb::ListClaimsRequest {
                prefix: String::new(),
                node_id: String::new(),
                page_size: PAGE,
                page_token: page_token.clone(),
            })
            .await
            .map_err(|s| Error::ClaimService(format!("ListClaims: {}", s.message())))?
            .into_inner();
        for claim in page.claims {
            listed.keep(claim);
        }
        if page.next_page_token.is_empty() {
            break page.revision;
        }
        page_token = page.next_page_token;
    };
    let mut nodes = client
        .watch_nodes(pb::WatchNodesRequest {})
        .await
        .map_err(|s| Error::ClaimService(format!("WatchNodes: {}", s.message())))?
        .into_inner();
    // Listed once more after the watch of nodes is open: its first answers
    // (the same list) and any change after it come on that watch.
    let initial = presence(&mut client).await?;
    {
        let mut state = cache.write();
        state.claims = listed.claims;
        state.holders = listed.holders;
        state.nodes = initial;
        state.revision = revision;
        state.synced = true;
    }
    tracing::info!(
        claims = cache.len().0,
        revision,
        "owner cache following the claim plane"
    );
    loop {
        tokio::select! {
            event = watch.message() => match event {
                Ok(Some(event)) if event.revision > revision => cache.apply(event),
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(s) => return Err(Error::ClaimService(format!("WatchClaims: {}", s.message()))),
            },
            event = nodes.message() => match event {
                Ok(Some(event)) => cache.node(event),
                Ok(None) => return Ok(()),
                Err(s) => return Err(Error::ClaimService(format!("WatchNodes: {}", s.message()))),
            },
        }
    }
}

/// Every node with a record, with the end of its grace if it is gone.
async fn presence(
    client: &mut OwnershipClient<tonic::transport::Channel>,
) -> Result<HashMap<String, Option<i64>>> {
    let nodes = client
        .list_nodes(pb::ListNodesRequest {})
        .await
        .map_err(|s| Error::ClaimService(format!("ListNodes: {}", s.message())))?
        .into_inner();
    Ok(nodes
        .nodes
        .into_iter()
        .map(|n| (n.node_id, n.detached.then_some(n.grace_ends_unix_ms)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::claim_event::Kind;

    fn claim(broadcast: &str, node: &str, token: i64) -> pb::Claim {
        pb::Claim {
            broadcast: broadcast.into(),
            node_id: node.into(),
            endpoints: [("http".to_string(), format!("http://{node}:8080"))].into(),
            fencing_token: token,
            session_id: format!("{node}-s1"),
            ..Default::default()
        }
    }

    fn event(kind: Kind, claim: pb::Claim, revision: i64) -> pb::ClaimEvent {
        pb::ClaimEvent {
            kind: kind as i32,
            claim: Some(claim),
            revision,
        }
    }

    fn following() -> OwnerCache {
        OwnerCache {
            state: RwLock::new(State {
                synced: true,
                nodes: [("a".to_string(), None), ("b".to_string(), Some(42))].into(),
                ..State::default()
            }),
        }
    }

    #[test]
    fn a_nodes_claims_share_its_part_and_answers_carry_presence() {
        let cache = following();
        cache.apply(event(Kind::Claimed, claim("live/x", "a", 5), 5));
        cache.apply(event(Kind::Claimed, claim("live/y", "a", 6), 6));
        cache.apply(event(Kind::Claimed, claim("live/z", "b", 7), 7));
        cache.apply(event(Kind::Claimed, claim("live/w", "c", 8), 8));
        {
            let state = cache.state.read().unwrap();
            assert!(Arc::ptr_eq(
                &state.claims["live/x"].holder,
                &state.claims["live/y"].holder
            ));
        }
        let x = cache.owner("live/x").unwrap().unwrap();
        assert_eq!(x, {
            let mut c = claim("live/x", "a", 5);
            c.detached = false;
            c
        });
        let z = cache.owner("live/z").unwrap().unwrap();
        assert!(z.detached && z.grace_ends_unix_ms == 42, "{z:?}");
        // A node without a record is gone, its grace end unknown.
        let w = cache.owner("live/w").unwrap().unwrap();
        assert!(w.detached && w.grace_ends_unix_ms == 0, "{w:?}");
        assert_eq!(cache.owner("live/none"), Some(None));
    }

    #[test]
    fn a_release_takes_only_the_claim_that_ended() {
        let cache = following();
        cache.apply(event(Kind::Claimed, claim("live/x", "a", 5), 5));
        // Claimed anew (token 9) before the old claim's release is heard.
        cache.apply(event(Kind::Claimed, claim("live/x", "b", 9), 9));
        cache.apply(event(Kind::Released, claim("live/x", "a", 5), 10));
        assert_eq!(cache.owner("live/x").unwrap().unwrap().fencing_token, 9);
        cache.apply(event(Kind::Released, claim("live/x", "b", 9), 11));
        assert_eq!(cache.owner("live/x"), Some(None));
    }

    #[test]
    fn a_cache_not_following_answers_nothing() {
        let cache = following();
        cache.write().synced = false;
        assert_eq!(cache.owner("live/x"), None);
    }
}
