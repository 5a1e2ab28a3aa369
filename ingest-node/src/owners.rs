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

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use claims_proto::v1 as pb;
use pb::ownership_client::OwnershipClient;

use crate::bridge::ClaimServices;

/// Claims per `ListClaims` page while the cache fills (its maximum).
const PAGE: u32 = 1_000;

#[derive(Default)]
struct State {
    claims: HashMap<String, pb::Claim>,
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
        Some(state.claims.get(broadcast).cloned().map(|mut claim| {
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
                state.claims.insert(claim.broadcast.clone(), claim);
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

async fn follow_once(cache: &OwnerCache, claim_services: &ClaimServices) -> Result<(), String> {
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
        .map_err(|s| format!("WatchClaims: {}", s.message()))?
        .into_inner();
    let mut claims = HashMap::new();
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
            .map_err(|s| format!("ListClaims: {}", s.message()))?
            .into_inner();
        for claim in page.claims {
            claims.insert(claim.broadcast.clone(), claim);
        }
        if page.next_page_token.is_empty() {
            break page.revision;
        }
        page_token = page.next_page_token;
    };
    let mut nodes = client
        .watch_nodes(pb::WatchNodesRequest {})
        .await
        .map_err(|s| format!("WatchNodes: {}", s.message()))?
        .into_inner();
    // Listed once more after the watch of nodes is open: its first answers
    // (the same list) and any change after it come on that watch.
    let initial = presence(&mut client).await?;
    {
        let mut state = cache.write();
        state.claims = claims;
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
                Err(s) => return Err(format!("WatchClaims: {}", s.message())),
            },
            event = nodes.message() => match event {
                Ok(Some(event)) => cache.node(event),
                Ok(None) => return Ok(()),
                Err(s) => return Err(format!("WatchNodes: {}", s.message())),
            },
        }
    }
}

/// Every node with a record, with the end of its grace if it is gone.
async fn presence(
    client: &mut OwnershipClient<tonic::transport::Channel>,
) -> Result<HashMap<String, Option<i64>>, String> {
    let nodes = client
        .list_nodes(pb::ListNodesRequest {})
        .await
        .map_err(|s| format!("ListNodes: {}", s.message()))?
        .into_inner();
    Ok(nodes
        .nodes
        .into_iter()
        .map(|n| (n.node_id, n.detached.then_some(n.grace_ends_unix_ms)))
        .collect())
}
