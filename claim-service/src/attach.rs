//! `ClaimSessions.Attach`: the handshake (a valid `hello` in time, from a
//! node its certificate allows), the registry of sessions attached to this
//! replica, and what every session shares ([`Context`]). The session itself
//! runs in [`crate::session`].

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use claims_proto::v1 as pb;
use futures::{Stream, StreamExt};
use rand::Rng;
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::access::{self, Access};
use crate::config::SessionConfig;
use crate::error::{code_label, Error};
use crate::intake;
use crate::log_budget::LogBudget;
use crate::metrics::Metrics;
use crate::session::Session;
use crate::store::Store;
use crate::view::View;

const OUTBOUND_QUEUE: usize = 1024;
const INBOUND_QUEUE: usize = 256;

/// The sessions attached to this replica, one per node id.
#[derive(Default)]
pub struct Sessions {
    by_node: Mutex<HashMap<String, (String, Arc<Notify>)>>,
}

impl Sessions {
    /// Registers a session, superseding an older one of the same node; a
    /// new node is let in only while fewer than `max` are attached.
    fn attach(&self, node_id: &str, session_id: &str, max: usize) -> Result<Arc<Notify>, Error> {
        let notify = Arc::new(Notify::new());
        let mut map = self.by_node.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= max && !map.contains_key(node_id) {
            return Err(Error::ResourceExhausted(format!(
                "limit max-sessions ({max}) reached: this replica has {} sessions; attach to another replica",
                map.len()
            )));
        }
        let older = map.insert(
            node_id.to_string(),
            (session_id.to_string(), notify.clone()),
        );
        if let Some((_, older)) = older {
            older.notify_one();
        }
        Ok(notify)
    }

    /// Removes the session, unless a newer one of its node replaced it.
    pub fn detach(&self, node_id: &str, session_id: &str) {
        let mut map = self.by_node.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(node_id).is_some_and(|(s, _)| s == session_id) {
            map.remove(node_id);
        }
    }
}

/// Everything a session needs from the replica.
pub struct Context {
    pub store: Store,
    pub view: Arc<View>,
    pub metrics: Arc<Metrics>,
    pub config: SessionConfig,
    pub access: Access,
    pub sessions: Sessions,
    /// Log lines that nodes' bad input causes, bounded.
    pub refusal_log: LogBudget,
    /// Cancelled when the replica shuts down: sessions end at once and leave
    /// their claims in etcd for another replica to adopt.
    pub shutdown: CancellationToken,
}

impl Context {
    /// Counts a refused message or session by its code.
    pub fn count_refusal(&self, code: tonic::Code) {
        self.metrics
            .rejected_messages
            .with_label_values(&[code_label(code)])
            .inc();
    }

    /// Counts `refusal` as a refusal and answers it.
    pub fn refuse(&self, refusal: Error) -> Status {
        self.count_refusal(refusal.code());
        refusal.into()
    }
}

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
        let session_id = format!("{:016x}", rand::rng().random::<u64>());
        let superseded = ctx
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
        tokio::spawn(session.run(in_rx, superseded).instrument(span));
        Ok(Response::new(ReceiverStream::new(out_rx).boxed()))
    }
}
