//! The `Ownership` read API: who owns what, for anyone.
//!
//! `GetOwner`, `ListClaims`, `ListNodes` and `WatchNodes` answer from the
//! watch-fed [`View`]; `GetOwner { consistent: true }` reads etcd linearizably instead.
//! `WatchClaims` is served by [`crate::watchers`]: from the view's feed, or
//! from etcd's history for revisions older than the view keeps. Who may read
//! is checked in front of this service (see [`crate::access::Access::reads`]).

use std::pin::Pin;
use std::sync::Arc;

use base64::Engine;
use claims_proto::v1 as pb;
use futures::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::claims::Claim;
use crate::error::Error;
use crate::names;
use crate::store::{Purpose, Store};
use crate::view::View;
use crate::watchers::{self, WatchContext, Watches};

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
const TOKEN_TAG: &str = "after:";

pub struct OwnershipService {
    store: Store,
    view: Arc<View>,
    watches: Arc<Watches>,
    /// Ends open watches when the replica shuts down.
    shutdown: CancellationToken,
}

impl OwnershipService {
    pub fn new(
        store: Store,
        view: Arc<View>,
        watches: Arc<Watches>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            view,
            watches,
            shutdown,
        }
    }
}

/// A name prefix may end anywhere, even mid-segment or in `/`, but only
/// holds characters a name may hold.
fn check_prefix(prefix: &str) -> Result<(), Error> {
    if prefix.len() > names::MAX_BROADCAST_LEN
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~-/".contains(&b))
    {
        return Err(Error::InvalidArgument(format!(
            "prefix {prefix:?} cannot start any broadcast name; names are 1-256 bytes of segments of [A-Za-z0-9._~-] joined by \"/\""
        )));
    }
    Ok(())
}

fn encode_token(after: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{TOKEN_TAG}{after}"))
}

fn decode_token(token: &str) -> Result<Option<String>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|s| s.strip_prefix(TOKEN_TAG).map(String::from))
        .map(Some)
        .ok_or_else(|| {
            Error::InvalidArgument(
                "page_token is not one this service issued; pass next_page_token unchanged".into(),
            )
        })
}

impl OwnershipService {
    /// A claim as answered: with whether its owner is gone.
    fn described(&self, claim: Claim) -> pb::Claim {
        let presence = self.view.presence(&claim.node_id);
        crate::wire::claim_with(claim, presence)
    }
}

#[tonic::async_trait]
impl pb::ownership_server::Ownership for OwnershipService {
    async fn get_owner(
        &self,
        request: Request<pb::GetOwnerRequest>,
    ) -> Result<Response<pb::Claim>, Status> {
        let req = request.into_inner();
        names::check_broadcast(&req.broadcast).map_err(Error::InvalidArgument)?;
        let owner = if req.consistent {
            self.store
                .get_claim(Purpose::Reads, &req.broadcast)
                .await?
                .map(|(claim, _)| claim)
        } else {
            self.view.owner(&req.broadcast)?
        };
        match owner {
            Some(claim) => Ok(Response::new(self.described(claim))),
            None => {
                Err(Error::NotFound(format!("broadcast {:?} has no owner", req.broadcast)).into())
            }
        }
    }

    async fn list_claims(
        &self,
        request: Request<pb::ListClaimsRequest>,
    ) -> Result<Response<pb::ListClaimsResponse>, Status> {
        let req = request.into_inner();
        check_prefix(&req.prefix)?;
        if !req.node_id.is_empty() {
            names::check_node_id(&req.node_id).map_err(Error::InvalidArgument)?;
        }
        let after = decode_token(&req.page_token)?;
        let limit = match req.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let (claims, more, revision) =
            self.view
                .list(&req.prefix, &req.node_id, after.as_deref(), limit)?;
        let next_page_token = match (more, claims.last()) {
            (true, Some(last)) => encode_token(&last.broadcast),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListClaimsResponse {
            claims: claims.into_iter().map(|c| self.described(c)).collect(),
            next_page_token,
            revision,
        }))
    }

    type WatchClaimsStream = Pin<Box<dyn Stream<Item = Result<pb::ClaimEvent, Status>> + Send>>;

    async fn watch_claims(
        &self,
        request: Request<pb::WatchClaimsRequest>,
    ) -> Result<Response<Self::WatchClaimsStream>, Status> {
        let peer = request.remote_addr().map(|a| a.ip());
        let req = request.into_inner();
        check_prefix(&req.prefix)?;
        if req.start_revision < 0 {
            return Err(Error::InvalidArgument(format!(
                "start_revision {} is negative; give 0 for now on, or a revision to replay from",
                req.start_revision
            ))
            .into());
        }
        let ctx = WatchContext {
            view: &self.view,
            store: &self.store,
            watches: &self.watches,
            shutdown: self.shutdown.clone(),
        };
        let events = watchers::watch(ctx, peer, req.prefix, req.start_revision)?;
        Ok(Response::new(Box::pin(events)))
    }

    async fn list_nodes(
        &self,
        _request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let (nodes, revision) = self.view.nodes()?;
        Ok(Response::new(pb::ListNodesResponse {
            nodes: nodes.into_iter().map(pb::Node::from).collect(),
            revision,
        }))
    }

    type WatchNodesStream = Pin<Box<dyn Stream<Item = Result<pb::NodeEvent, Status>> + Send>>;

    async fn watch_nodes(
        &self,
        request: Request<pb::WatchNodesRequest>,
    ) -> Result<Response<Self::WatchNodesStream>, Status> {
        let ctx = WatchContext {
            view: &self.view,
            store: &self.store,
            watches: &self.watches,
            shutdown: self.shutdown.clone(),
        };
        let events = watchers::watch_nodes(ctx, request.remote_addr().map(|a| a.ip()))?;
        Ok(Response::new(Box::pin(events)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_forgeries() {
        let token = encode_token("live/cam9");
        assert_eq!(decode_token(&token).unwrap(), Some("live/cam9".into()));
        assert_eq!(decode_token("").unwrap(), None);
        assert!(decode_token("bm9wZQ").is_err());
        assert!(decode_token("!!").is_err());
    }

    #[test]
    fn prefixes() {
        assert!(check_prefix("").is_ok());
        assert!(check_prefix("live/").is_ok());
        assert!(check_prefix("live/ca").is_ok());
        assert!(check_prefix("live cam").is_err());
    }
}
