//! `ClaimSessions.Attach`: the handshake (a valid `hello` in time, from a
//! node its certificate allows, let in by the registry of sessions), then
//! the session itself runs in [`crate::session`].

use std::pin::Pin;
use std::sync::Arc;

use claims_proto::v1 as pb;
use futures::{Stream, StreamExt};
use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::access;
use crate::error::Error;
use crate::intake;
use crate::session::Session;
use crate::sessions::Context;

const OUTBOUND_QUEUE: usize = 1024;
const INBOUND_QUEUE: usize = 256;

pub struct ClaimSessionsService {
    ctx: Arc<Context>,
}

impl ClaimSessionsService {
    pub fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }
}

/// tonic refuses an over-long message with `OUT_OF_RANGE`; a node is told
/// `RESOURCE_EXHAUSTED` naming the limit, as for every other limit.
pub fn message_limit(status: Status, max: usize) -> Status {
    if status.code() == tonic::Code::OutOfRange && status.message().contains("too large") {
        Error::ResourceExhausted(format!(
            "limit max-message-size ({max} bytes) exceeded: {}",
            status.message()
        ))
        .into()
    } else {
        status
    }
}

#[tonic::async_trait]
impl pb::claim_sessions_server::ClaimSessions for ClaimSessionsService {
    type AttachStream = Pin<Box<dyn Stream<Item = Result<pb::ServiceMessage, Status>> + Send>>;

    async fn attach(
        &self,
        request: Request<Streaming<pb::NodeMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let ctx = &self.ctx;
        let identities = access::identities(&request);
        let max_message = ctx.config.max_message_size;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(ctx.config.hello_timeout, inbound.message())
            .await
            .map_err(|_| {
                Status::from(Error::DeadlineExceeded(format!(
                    "no hello within {:?}; a session starts with hello",
                    ctx.config.hello_timeout
                )))
            })?
            .map_err(|s| message_limit(s, max_message))?;
        let hello = intake::hello(first).map_err(|e| ctx.refuse(e))?;
        if let Err(refusal) = ctx.access.check_node(&identities, &hello.node_id) {
            if let Some(unlogged) = ctx.refusal_log.admit() {
                tracing::warn!(node_id = %hello.node_id, certificate = ?identities, error = %refusal, unlogged, "session refused: node identity");
            }
            return Err(ctx.refuse(refusal));
        }
        if let Some(refusal) = ctx.replica.attach_refusal() {
            return Err(ctx.refuse(refusal));
        }
        let session_id = format!("{:016x}", rand::rng().random::<u64>());
        let attached = ctx
            .sessions
            .attach(&hello.node_id, &session_id, ctx.config.max_sessions)
            .map_err(|refusal| {
                if let Some(unlogged) = ctx.refusal_log.admit() {
                    tracing::warn!(node_id = %hello.node_id, error = %refusal, unlogged, "session refused");
                }
                ctx.refuse(refusal)
            })?;
        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
        let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
        tokio::spawn(async move {
            loop {
                // Once the session is over, let go of the request stream so
                // its connection can close (a client need not half-close).
                let item = tokio::select! {
                    item = inbound.message() => item,
                    _ = in_tx.closed() => return,
                };
                let end = !matches!(item, Ok(Some(_)));
                let item = item.map_err(|s| message_limit(s, max_message));
                if in_tx.send(item).await.is_err() || end {
                    return;
                }
            }
        });
        let session = Session::new(ctx.clone(), hello, session_id, out_tx);
        let span = tracing::info_span!("session", node_id = %session.node_id(), session_id = %session.session_id());
        tokio::spawn(session.run(in_rx, attached).instrument(span));
        Ok(Response::new(ReceiverStream::new(out_rx).boxed()))
    }
}
