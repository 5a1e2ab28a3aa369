//! The `Admin` API for operators, behind an admin credential checked in
//! front of this service (see [`crate::access::Access::admins`]): without
//! one configured the API is off and says so.

use claims_proto::v1 as pb;
use tonic::{Request, Response, Status};

use std::sync::Arc;

use crate::error::Error;
use crate::names;
use crate::replica::ReplicaState;
use crate::store::Store;
use crate::view::View;

pub struct AdminService {
    store: Store,
    view: Arc<View>,
    replica: Arc<ReplicaState>,
}

impl AdminService {
    pub fn new(store: Store, view: Arc<View>, replica: Arc<ReplicaState>) -> Self {
        Self {
            store,
            view,
            replica,
        }
    }

    /// Refuses a change while the layout etcd holds is not one this build
    /// writes.
    fn may_write(&self) -> Result<(), Status> {
        match self.replica.write_refusal() {
            Some(refusal) => Err(refusal.into()),
            None => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn force_release(
        &self,
        request: Request<pb::ForceReleaseRequest>,
    ) -> Result<Response<pb::ForceReleaseResponse>, Status> {
        self.may_write()?;
        let req = request.into_inner();
        names::check_broadcast(&req.broadcast).map_err(Error::InvalidArgument)?;
        let reason = req.reason.trim();
        if reason.is_empty() || reason.len() > 1024 {
            return Err(Error::InvalidArgument(
                "reason is required (1-1024 bytes): the owner is told it".into(),
            )
            .into());
        }
        match self.store.force_release(&req.broadcast, reason).await? {
            Some(claim) => {
                tracing::warn!(broadcast = %req.broadcast, owner = %claim.node_id, fencing_token = claim.fencing_token, %reason, "force-released by an operator");
                Ok(Response::new(pb::ForceReleaseResponse {
                    released: Some(claim.into()),
                }))
            }
            None => {
                Err(Error::NotFound(format!("broadcast {:?} has no owner", req.broadcast)).into())
            }
        }
    }

    async fn drain_node(
        &self,
        request: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::DrainNodeResponse>, Status> {
        self.may_write()?;
        let req = request.into_inner();
        names::check_node_id(&req.node_id).map_err(Error::InvalidArgument)?;
        match self.store.set_draining(&req.node_id, req.draining).await? {
            Some(record) => {
                tracing::warn!(node_id = %req.node_id, draining = req.draining, "node draining mark set by an operator");
                let claims = self
                    .view
                    .list("", &req.node_id, None, usize::MAX)
                    .map(|(c, _, _)| c.len() as u32)
                    .unwrap_or(0);
                Ok(Response::new(pb::DrainNodeResponse {
                    node: Some(pb::Node {
                        node_id: req.node_id,
                        endpoints: record.endpoints,
                        session_id: record.session_id,
                        service_id: record.service_id,
                        attached_at_unix_ms: record.attached_at_unix_ms,
                        claims,
                        draining: record.draining,
                        detached: record.grace_ends_unix_ms != 0,
                        grace_ends_unix_ms: record.grace_ends_unix_ms,
                    }),
                }))
            }
            None => Err(Error::NotFound(format!(
                "node {:?} is not attached to any claim-service",
                req.node_id
            ))
            .into()),
        }
    }

    async fn drain_replica(
        &self,
        request: Request<pb::DrainReplicaRequest>,
    ) -> Result<Response<pb::DrainReplicaResponse>, Status> {
        self.may_write()?;
        let req = request.into_inner();
        names::check_service_id(&req.service_id).map_err(|e| {
            Error::InvalidArgument(format!("{e} (ListNodes shows the replicas' ids)"))
        })?;
        match self
            .store
            .set_replica_draining(&req.service_id, req.draining)
            .await?
        {
            Some(record) => {
                tracing::warn!(service_id = %req.service_id, draining = record.draining, "replica draining mark set by an operator");
                let sessions = self
                    .view
                    .replica_loads()
                    .ok()
                    .and_then(|loads| loads.into_iter().find(|l| l.service_id == req.service_id))
                    .map_or(0, |l| l.sessions);
                Ok(Response::new(crate::wire::replica_drain(
                    req.service_id,
                    record.draining,
                    sessions,
                )))
            }
            None => Err(Error::NotFound(format!(
                "no claim-service replica {:?} is running (ListNodes shows the replicas nodes are on)",
                req.service_id
            ))
            .into()),
        }
    }
}
