//! `ClaimSessions.Attach`: the async shell around one node's [`NodeClaims`].
//!
//! One task reads the inbound stream into a channel; the session task owns
//! the state machine and feeds it every event (node messages, store answers,
//! lease losses, timers, releases seen by the view), then carries out the
//! actions it returns. The response stream is the receiving end of a channel,
//! so a node that goes away is an event (`Detached`), not an error lost in a
//! combinator.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use claims_proto::v1 as pb;
use futures::{Stream, StreamExt};
use pb::node_message::Msg as NodeMsg;
use pb::service_message::Msg as ServiceMsg;
use rand::Rng;
use tokio::sync::{broadcast, mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::access::{self, Access};
use crate::claims::ClaimOutcome;
use crate::claims::{Action, Event, NodeClaims};
use crate::config::SessionConfig;
use crate::error::{code_label, Error};
use crate::intake::{self, check_track, Intake};
use crate::log_budget::LogBudget;
use crate::metrics::Metrics;
use crate::names;
use crate::store::{
    unix_ms, Attempt, ClaimRequest, Holder, LeaseLoss, NodeRecord, Registration, Release, Store,
};
use crate::view::{View, ViewEvent};
use crate::wire::service_message;

/// Most tracks a `hello` may list as live.
pub const MAX_LIVE_TRACKS: usize = 100_000;
const OUTBOUND_QUEUE: usize = 1024;

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

    fn detach(&self, node_id: &str, session_id: &str) {
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
    fn count_refusal(&self, code: tonic::Code) {
        self.metrics
            .rejected_messages
            .with_label_values(&[code_label(code)])
            .inc();
    }

    /// Counts `refusal` as a refusal and answers it.
    fn refuse(&self, refusal: impl Into<Status>) -> Status {
        let status = refusal.into();
        self.count_refusal(status.code());
        status
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

type Outbound = mpsc::Sender<Result<pb::ServiceMessage, Status>>;

#[tonic::async_trait]
impl pb::claim_sessions_server::ClaimSessions for ClaimSessionsService {
    type AttachStream = Pin<Box<dyn Stream<Item = Result<pb::ServiceMessage, Status>> + Send>>;

    async fn attach(
        &self,
        request: Request<Streaming<pb::NodeMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let identities = access::identities(&request);
        let max_message = self.ctx.config.max_message_size;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(self.ctx.config.hello_timeout, inbound.message())
            .await
            .map_err(|_| {
                Status::from(Error::DeadlineExceeded(format!(
                    "no hello within {:?}; a session starts with hello",
                    self.ctx.config.hello_timeout
                )))
            })?
            .map_err(|s| message_limit(s, max_message))?;
        let hello = match first.and_then(|m| m.msg) {
            Some(NodeMsg::Hello(hello)) => hello,
            Some(other) => {
                return Err(self.ctx.refuse(Error::FailedPrecondition(format!(
                    "{} before hello; a session must start with hello",
                    message_name(&other)
                ))));
            }
            None => {
                return Err(Error::FailedPrecondition(
                    "the stream ended or sent an empty message before hello".into(),
                )
                .into())
            }
        };
        check_hello(&hello).map_err(|e| self.ctx.refuse(e))?;
        if let Err(refusal) = self.ctx.access.check_node(&identities, &hello.node_id) {
            if let Some(unlogged) = self.ctx.refusal_log.admit() {
                tracing::warn!(node_id = %hello.node_id, certificate = ?identities, error = %refusal, unlogged, "session refused: node identity");
            }
            return Err(self.ctx.refuse(refusal));
        }
        let session_id = format!("{:016x}", rand::rng().random::<u64>());
        let superseded = self
            .ctx
            .sessions
            .attach(&hello.node_id, &session_id, self.ctx.config.max_sessions)
            .map_err(|refusal| {
                if let Some(unlogged) = self.ctx.refusal_log.admit() {
                    tracing::warn!(node_id = %hello.node_id, error = %refusal, unlogged, "session refused");
                }
                self.ctx.refuse(refusal)
            })?;
        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
        let (in_tx, in_rx) = mpsc::channel(256);
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
        let session = Session::new(self.ctx.clone(), hello, session_id, out_tx);
        let span = tracing::info_span!("session", node_id = %session.holder.node_id, session_id = %session.holder.session_id);
        tokio::spawn(session.run(in_rx, superseded).instrument(span));
        Ok(Response::new(ReceiverStream::new(out_rx).boxed()))
    }
}

/// tonic refuses an over-long message with `OUT_OF_RANGE`; a node is told
/// `RESOURCE_EXHAUSTED` naming the limit, as for every other limit.
fn message_limit(status: Status, max: usize) -> Status {
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

fn message_name(msg: &NodeMsg) -> &'static str {
    match msg {
        NodeMsg::Hello(_) => "hello",
        NodeMsg::Created(_) => "created",
        NodeMsg::Closed(_) => "closed",
        NodeMsg::Goodbye(_) => "goodbye",
    }
}

fn check_hello(hello: &pb::Hello) -> Result<(), Error> {
    names::check_node_id(&hello.node_id).map_err(Error::InvalidArgument)?;
    names::check_endpoints(&hello.endpoints).map_err(Error::InvalidArgument)?;
    if hello.live.len() > MAX_LIVE_TRACKS {
        return Err(Error::InvalidArgument(format!(
            "hello lists {} live tracks; at most {MAX_LIVE_TRACKS} are allowed",
            hello.live.len()
        )));
    }
    for t in &hello.live {
        check_track(t).map_err(|e| Error::InvalidArgument(format!("hello.live: {e}")))?;
    }
    Ok(())
}

/// Results of work the session started, coming back to its loop.
enum Internal {
    Core(Event),
    NodeRegistered(Registration),
    NodeRecordFailed(String),
    /// The node's record was written by another session while this one's
    /// lease was lost: this session is superseded.
    RecordTaken(String),
    /// A claim found the node's record on another lease.
    Fenced {
        broadcast: String,
        session_id: String,
    },
}

struct Session {
    ctx: Arc<Context>,
    /// The node, its endpoints, this session's id: what all of this
    /// session's claims share (and its node record).
    holder: Holder,
    ttl: Duration,
    core: NodeClaims,
    out: Outbound,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,
    loss_tx: mpsc::UnboundedSender<LeaseLoss>,
    loss_rx: mpsc::UnboundedReceiver<LeaseLoss>,
    timers: DelayQueue<Event>,
    /// Leases this session asked the keep-alive to renew.
    kept: HashSet<i64>,
    /// The lease of this session's node record: the fence every claim
    /// checks. Claims wait in `unfenced` until the record is written.
    node_lease: Option<i64>,
    registered_revision: i64,
    unfenced: Vec<String>,
    /// Still reading the node's messages (not after goodbye, a protocol
    /// error, a half-close or a detach).
    reading: bool,
    /// What the node was last told about draining.
    draining: bool,
    live: pb::Hello,
    finished: bool,
    /// Lifecycle events per second this session may send.
    events: Option<EventLimiter>,
}

type EventLimiter = governor::DefaultDirectRateLimiter;

fn event_limiter(per_second: u32) -> Option<EventLimiter> {
    let rate = std::num::NonZeroU32::new(per_second)?;
    let burst = rate.saturating_mul(std::num::NonZeroU32::new(2).expect("2 is not zero"));
    Some(governor::RateLimiter::direct(
        governor::Quota::per_second(rate).allow_burst(burst),
    ))
}

impl Session {
    fn new(ctx: Arc<Context>, hello: pb::Hello, session_id: String, out: Outbound) -> Self {
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let (loss_tx, loss_rx) = mpsc::unbounded_channel();
        let holder = Holder {
            node_id: hello.node_id.as_str().into(),
            endpoints: Arc::new(hello.endpoints.clone()),
            session_id: session_id.as_str().into(),
            service_id: ctx.config.service_id.as_str().into(),
        };
        Self {
            holder,
            events: event_limiter(ctx.config.max_events_per_second),
            core: NodeClaims::with_limits(ctx.config.limits),
            ttl: ctx.config.lease_ttl(hello.lease_ttl_ms),
            ctx,
            out,
            internal_tx,
            internal_rx,
            loss_tx,
            loss_rx,
            timers: DelayQueue::new(),
            kept: HashSet::new(),
            node_lease: None,
            registered_revision: 0,
            unfenced: Vec::new(),
            reading: true,
            draining: false,
            live: hello,
            finished: false,
        }
    }

    async fn send(&self, msg: pb::ServiceMessage) {
        // A node that went away is noticed on the inbound side.
        let _ = self.out.send(Ok(msg)).await;
    }

    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Result<Option<pb::NodeMessage>, Status>>,
        superseded: Arc<Notify>,
    ) {
        let ctx = self.ctx.clone();
        ctx.metrics.sessions_attached.inc();
        let mut view_events = ctx.view.subscribe();
        tracing::info!(
            endpoints = ?self.holder.endpoints,
            live = self.live.live.len(),
            lease_ttl = ?self.ttl,
            "node attached"
        );
        self.send(service_message(ServiceMsg::Welcome(pb::Welcome {
            session_id: self.holder.session_id.to_string(),
            service_id: ctx.config.service_id.clone(),
            lease_ttl_ms: self.ttl.as_millis() as u64,
        })))
        .await;
        self.start_background_reads();
        for track in std::mem::take(&mut self.live.live) {
            self.apply(Event::Created {
                broadcast: track.broadcast,
                track: track.track,
            })
            .await;
        }

        // Reading stops at goodbye, a protocol error, or the node's
        // half-close; the session itself lasts until the node goes away.
        let out = self.out.clone();
        while !self.finished {
            let attached = !self.core.is_detached() && !self.core.is_closing();
            tokio::select! {
                item = inbound.recv(), if self.reading => {
                    match item {
                        Some(Ok(Some(msg))) => {
                            if let Err(status) = self.on_message(msg).await {
                                let _ = self.out.send(Err(status)).await;
                                self.reading = false;
                                self.detach().await;
                            } else if self.core.is_closing() {
                                self.reading = false;
                            }
                        }
                        Some(Ok(None)) | None => {
                            tracing::debug!("node closed its sending side; the session lasts until the stream ends");
                            self.reading = false;
                        }
                        Some(Err(status)) => {
                            tracing::info!(error = %status, "session stream broke");
                            self.reading = false;
                            self.detach().await;
                        }
                    }
                }
                _ = out.closed(), if attached => {
                    self.reading = false;
                    self.detach().await;
                }
                Some(internal) = self.internal_rx.recv() => match internal {
                    Internal::Core(event) => self.apply(event).await,
                    Internal::NodeRegistered(registration) => self.registered(registration).await,
                    Internal::RecordTaken(by) => {
                        for broadcast in std::mem::take(&mut self.unfenced) {
                            let outcome = ClaimOutcome::Unavailable { reason: format!("session {by} of this node took over") };
                            self.apply(Event::ClaimAnswered { broadcast, outcome }).await;
                        }
                        if attached {
                            self.supersede(&format!("session {by}")).await;
                        }
                    }
                    Internal::NodeRecordFailed(reason) => {
                        for broadcast in std::mem::take(&mut self.unfenced) {
                            let outcome = ClaimOutcome::Unavailable { reason: reason.clone() };
                            self.apply(Event::ClaimAnswered { broadcast, outcome }).await;
                        }
                    }
                    Internal::Fenced { broadcast, session_id } => {
                        // Another session's record supersedes this one; our
                        // own renewed record, or none (lost in an outage and
                        // being written again), only means: try again.
                        let taken = !session_id.is_empty() && *session_id != *self.holder.session_id;
                        let reason = if taken {
                            format!("session {session_id} of this node took over")
                        } else {
                            "this session's node record is being renewed; retrying".to_string()
                        };
                        let outcome = ClaimOutcome::Unavailable { reason };
                        self.apply(Event::ClaimAnswered { broadcast, outcome }).await;
                        if taken && attached {
                            self.supersede(&session_id).await;
                        }
                    }
                },
                Some(loss) = self.loss_rx.recv() => self.on_loss(loss).await,
                Some(expired) = self.timers.next(), if !self.timers.is_empty() => {
                    self.apply(expired.into_inner()).await;
                }
                event = view_events.recv() => self.on_view(event).await,
                _ = superseded.notified(), if attached => {
                    self.supersede("on this replica").await;
                }
                _ = ctx.shutdown.cancelled() => {
                    self.leave_for_adoption().await;
                    return;
                }
            }
        }
        // Every claim is released: drop the node's record too.
        if let Some(lease_id) = self.node_lease.take() {
            ctx.store.keepalive().forget(lease_id, &self.loss_tx);
            ctx.store.revoke_until_gone(lease_id, self.ttl).await;
        }
        if self.core.is_closing() {
            tracing::info!("node said goodbye; every claim released");
        } else {
            tracing::info!("detach grace over; claims released");
        }
        ctx.sessions
            .detach(&self.holder.node_id, &self.holder.session_id);
        if !self.core.is_detached() {
            ctx.metrics.sessions_attached.dec();
        }
    }

    /// Reads that the session needs but must not wait for: the claims an
    /// earlier session of this node left (released unless live now), and the
    /// node's record. Both retry until etcd answers.
    fn start_background_reads(&self) {
        let store = self.ctx.store.clone();
        let tx = self.internal_tx.clone();
        let node_id = self.holder.node_id.clone();
        tokio::spawn(async move {
            let found = until_done("cannot read this node's earlier claims", &tx, || {
                store.claims_of_node(&node_id)
            })
            .await;
            if let Some(claims) = found {
                let _ = tx.send(Internal::Core(Event::Existing { claims }));
            }
        });
        self.record_node(None);
    }

    /// Writes the node's record on a lease of its own, retrying until etcd
    /// answers; each failure is reported, so waiting claims can say why.
    /// `fence` is the record's previous lease when it is written again.
    fn record_node(&self, fence: Option<i64>) {
        let store = self.ctx.store.clone();
        let tx = self.internal_tx.clone();
        let node_id = self.holder.node_id.clone();
        let record = NodeRecord {
            endpoints: (*self.holder.endpoints).clone(),
            session_id: self.holder.session_id.to_string(),
            service_id: self.ctx.config.service_id.clone(),
            attached_at_unix_ms: unix_ms(),
            draining: false,
        };
        let ttl = self.ttl;
        tokio::spawn(async move {
            let mut failures = 0;
            while !tx.is_closed() {
                match store.register_node(&node_id, &record, ttl, fence).await {
                    Ok(registration) => {
                        if tx.send(Internal::NodeRegistered(registration)).is_err() {
                            // The session ended meanwhile.
                            let _ = store.revoke(registration.lease_id).await;
                        }
                        return;
                    }
                    Err(Error::Superseded(by)) => {
                        let _ = tx.send(Internal::RecordTaken(by));
                        return;
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %e, "cannot record the node in etcd; retrying");
                        let _ = tx.send(Internal::NodeRecordFailed(e.public()));
                        tokio::time::sleep(crate::claims::backoff(failures)).await;
                    }
                }
            }
        });
    }

    /// The node's record is written: claims can be made under its fence.
    async fn registered(&mut self, registration: Registration) {
        self.node_lease = Some(registration.lease_id);
        self.registered_revision = registration.revision;
        let renew = self.ctx.config.renew_for(self.ttl);
        self.ctx.store.keepalive().keep(
            registration.lease_id,
            self.ttl,
            renew,
            self.loss_tx.clone(),
            tokio::time::Instant::now(),
        );
        if registration.draining {
            self.tell_draining(true).await;
        }
        for broadcast in std::mem::take(&mut self.unfenced) {
            self.start_claim(broadcast);
        }
    }

    /// Another session of this node took over: end this one with `ABORTED`
    /// and keep its claims for the grace (the newer session adopts them).
    async fn supersede(&mut self, by: &str) {
        tracing::info!(by, "superseded by a newer session of the same node");
        let _ = self
            .out
            .send(Err(Error::Superseded(format!(
                "a newer session of node {:?} attached ({by}); this one is closed",
                self.holder.node_id
            ))
            .into()))
            .await;
        self.reading = false;
        self.detach().await;
    }

    fn start_claim(&self, broadcast: String) {
        let Some(guard_lease) = self.node_lease else {
            unreachable!("claims start only once the node record is written");
        };
        let req = ClaimRequest {
            broadcast: broadcast.clone(),
            holder: self.holder.clone(),
            ttl: self.ttl,
            guard_lease,
        };
        let tx = self.internal_tx.clone();
        self.ctx.store.submit_claim(req, move |attempt| {
            // If the session is gone (replica shutting down), the lease is
            // left to expire or be adopted.
            let _ = match attempt {
                Attempt::Outcome(outcome) => {
                    tx.send(Internal::Core(Event::ClaimAnswered { broadcast, outcome }))
                }
                Attempt::Fenced { session_id } => tx.send(Internal::Fenced {
                    broadcast,
                    session_id,
                }),
            };
        });
    }

    async fn tell_draining(&mut self, draining: bool) {
        self.draining = draining;
        tracing::info!(draining, "node draining mark changed");
        self.send(service_message(ServiceMsg::Draining(pb::Draining {
            draining,
        })))
        .await;
    }

    async fn on_message(&mut self, msg: pb::NodeMessage) -> Result<(), Status> {
        let verdict = intake::admit(msg.msg);
        // Every lifecycle message spends the session's event budget, good
        // or bad; over it, a `created` is refused. A `closed` never is:
        // refusing it would keep a claim its owner closed.
        let spends = matches!(
            verdict,
            Intake::Event(Event::Created { .. } | Event::Closed { .. }) | Intake::Refused { .. }
        );
        let within = !spends || self.within_event_rate();
        let verdict = match verdict {
            Intake::Event(Event::Created { broadcast, track }) if !within => {
                let per_second = self.ctx.config.max_events_per_second;
                Intake::Refused {
                    broadcast,
                    track,
                    reason: format!(
                        "limit max-events-per-second ({per_second}) exceeded: slow down; nothing was claimed for this track"
                    ),
                    code: tonic::Code::ResourceExhausted,
                }
            }
            other => other,
        };
        match verdict {
            Intake::Event(event) => {
                if event == Event::Goodbye {
                    tracing::info!("goodbye: releasing every claim");
                }
                self.apply(event).await;
                Ok(())
            }
            Intake::Refused {
                broadcast,
                track,
                reason,
                code,
            } => {
                // Answered, not fatal: the node's other claims go on.
                self.ctx.count_refusal(code);
                if let Some(unlogged) = self.ctx.refusal_log.admit() {
                    tracing::info!(
                        broadcast = %names::quote(&broadcast),
                        track = %names::quote(&track),
                        %reason,
                        unlogged,
                        "refused a message"
                    );
                }
                self.send(service_message(ServiceMsg::Rejected(pb::Rejected {
                    broadcast,
                    track,
                    reason,
                    code: code as i32,
                })))
                .await;
                Ok(())
            }
            Intake::Fatal { code, message } => Err(self.ctx.refuse(Status::new(code, message))),
        }
    }

    /// Spends one lifecycle event of the session's rate; false when over it.
    fn within_event_rate(&self) -> bool {
        self.events.as_ref().is_none_or(|l| l.check().is_ok())
    }

    async fn detach(&mut self) {
        if self.core.is_detached() || self.finished {
            return;
        }
        self.ctx.metrics.sessions_attached.dec();
        let held = self.core.held().count();
        tracing::info!(held, grace = ?self.ctx.config.detach_grace, "node detached without goodbye; keeping its claims for the grace");
        self.apply(Event::Detached).await;
        self.timers
            .insert(Event::GraceExpired, self.ctx.config.detach_grace);
    }

    async fn on_loss(&mut self, loss: LeaseLoss) {
        if Some(loss.lease_id) == self.node_lease {
            // The node record's lease: write the record again, unless a
            // newer session of the node wrote it meanwhile.
            self.node_lease = None;
            self.record_node(Some(loss.lease_id));
            return;
        }
        if self.kept.contains(&loss.lease_id) {
            self.ctx
                .metrics
                .claims_lost
                .with_label_values(&[loss.kind.label()])
                .inc();
        }
        self.apply(Event::LeaseLost {
            lease_id: loss.lease_id,
            reason: loss.reason,
        })
        .await;
    }

    async fn on_view(&mut self, event: Result<ViewEvent, broadcast::error::RecvError>) {
        match event {
            Ok(ViewEvent::Released {
                broadcast,
                revision,
            }) => {
                if self.core.standby().any(|b| b == broadcast) {
                    self.apply(Event::OwnerReleased {
                        broadcast,
                        revision,
                    })
                    .await;
                }
            }
            Ok(ViewEvent::Forced {
                broadcast,
                fencing_token,
                reason,
            }) => {
                let held = self
                    .core
                    .held()
                    .find(|(b, c)| *b == broadcast && c.fencing_token == fencing_token)
                    .map(|(_, c)| c.lease_id);
                if let Some(lease_id) = held {
                    self.ctx
                        .metrics
                        .claims_lost
                        .with_label_values(&["force_released"])
                        .inc();
                    tracing::warn!(%broadcast, %reason, "an operator force-released this claim");
                    self.apply(Event::LeaseLost {
                        lease_id,
                        reason: format!("force-released by an operator: {reason}"),
                    })
                    .await;
                }
            }
            Ok(ViewEvent::Node {
                node_id,
                session_id,
                draining,
                revision,
            }) => {
                if *node_id != *self.holder.node_id {
                    return;
                }
                if *session_id == *self.holder.session_id {
                    if draining != self.draining {
                        self.tell_draining(draining).await;
                    }
                } else if !session_id.is_empty()
                    && revision > self.registered_revision
                    && self.registered_revision > 0
                    && !self.core.is_detached()
                    && !self.core.is_closing()
                {
                    // A newer session of this node, on any replica.
                    self.supersede(&format!("session {session_id}")).await;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Releases may have been missed: every standby tries again.
                let standby: Vec<String> = self.core.standby().map(String::from).collect();
                for broadcast in standby {
                    self.apply(Event::OwnerReleased {
                        broadcast,
                        revision: i64::MAX,
                    })
                    .await;
                }
            }
            Err(broadcast::error::RecvError::Closed) => {}
        }
    }

    async fn apply(&mut self, event: Event) {
        for action in self.core.handle(event) {
            self.act(action).await;
        }
    }

    async fn act(&mut self, action: Action) {
        let ctx = self.ctx.clone();
        match action {
            Action::Claim { broadcast } => {
                if self.node_lease.is_some() {
                    self.start_claim(broadcast);
                } else {
                    self.unfenced.push(broadcast);
                }
            }
            Action::KeepAlive {
                lease_id,
                broadcast,
                ttl_ms,
            } => {
                let ttl = Duration::from_millis(ttl_ms);
                ctx.store.keep_claim(
                    lease_id,
                    ttl,
                    ctx.config.renew_for(ttl),
                    self.loss_tx.clone(),
                );
                if self.kept.insert(lease_id) {
                    ctx.metrics.claims_held.inc();
                }
                tracing::debug!(%broadcast, lease_id, "keeping the claim's lease alive");
            }
            Action::Release {
                broadcast,
                lease_id,
                revision,
            } => {
                // The store stops its renewals (see `Store::release_batch`).
                let owner = self.kept.remove(&lease_id).then(|| {
                    ctx.metrics.claims_held.dec();
                    self.loss_tx.clone()
                });
                ctx.metrics.claims_released.inc();
                let tx = self.internal_tx.clone();
                let release = Release {
                    session: self.holder.session_id.clone(),
                    broadcast: broadcast.clone(),
                    lease_id,
                    revision,
                    ttl: self.ttl,
                    owner,
                };
                ctx.store.submit_release(release, move || {
                    let _ = tx.send(Internal::Core(Event::Released { broadcast }));
                });
            }
            Action::ReleaseStale {
                broadcast,
                lease_id,
                revision,
            } => {
                tracing::info!(%broadcast, lease_id, "releasing a claim an earlier session of this node left and the node no longer has");
                let release = Release {
                    session: self.holder.session_id.clone(),
                    broadcast,
                    lease_id,
                    revision,
                    ttl: self.ttl,
                    owner: None,
                };
                ctx.store.submit_release(release, || {});
            }
            Action::Forget { lease_id } => self.unkeep(lease_id),
            Action::Send(reply) => {
                log_reply(&reply, &ctx.refusal_log);
                self.send(reply.into()).await;
            }
            Action::RetryAfter {
                broadcast,
                timer,
                delay,
            } => {
                let jitter = rand::rng().random_range(0..=delay.as_millis() as u64 / 5);
                self.timers.insert(
                    Event::RetryDue { broadcast, timer },
                    delay + Duration::from_millis(jitter),
                );
            }
            Action::Finished => self.finished = true,
        }
    }

    fn unkeep(&mut self, lease_id: i64) {
        if self.kept.remove(&lease_id) {
            self.ctx.store.keepalive().forget(lease_id, &self.loss_tx);
            self.ctx.metrics.claims_held.dec();
        }
    }

    /// Replica shutdown: end the stream, leaving every claim in etcd for the
    /// node to re-attach elsewhere and adopt. The leases are still renewed
    /// until the process exits, so adoption has the whole TTL after that.
    async fn leave_for_adoption(&mut self) {
        let _ = self
            .out
            .send(Err(Error::Unavailable(
                "claim-service replica is shutting down; attach to another replica (claims are kept for adoption)".into(),
            )
            .into()))
            .await;
        if !self.core.is_detached() {
            self.ctx.metrics.sessions_attached.dec();
        }
        self.ctx
            .sessions
            .detach(&self.holder.node_id, &self.holder.session_id);
        tracing::info!(
            held = self.kept.len(),
            "session ended by shutdown; claims left for adoption"
        );
    }
}

/// Retries `attempt` with backoff until it succeeds, or `None` once the
/// session (the receiving end of `tx`) is gone.
async fn until_done<T, F, Fut>(
    what: &str,
    tx: &mpsc::UnboundedSender<Internal>,
    mut attempt: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut failures = 0;
    loop {
        match attempt().await {
            Ok(value) => return Some(value),
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "{what}; retrying");
                tokio::time::sleep(crate::claims::backoff(failures)).await;
                if tx.is_closed() {
                    return None;
                }
            }
        }
    }
}

fn log_reply(reply: &crate::claims::Reply, refusal_log: &LogBudget) {
    use crate::claims::Reply;
    match reply {
        Reply::Claimed { claim, adopted } => tracing::info!(
            broadcast = %claim.broadcast,
            fencing_token = claim.fencing_token,
            lease_id = claim.lease_id,
            adopted,
            "claimed"
        ),
        Reply::Conflict { broadcast, owner } => tracing::info!(
            %broadcast,
            owner = %owner.node_id,
            fencing_token = owner.fencing_token,
            "conflict: standing by behind the owner"
        ),
        Reply::Released { broadcast } => tracing::info!(%broadcast, "released"),
        Reply::Refused {
            broadcast,
            track,
            reason,
        } => {
            if let Some(unlogged) = refusal_log.admit() {
                tracing::warn!(%broadcast, %track, %reason, unlogged, "refused over a limit")
            }
        }
        Reply::Lost { broadcast, reason } => tracing::warn!(%broadcast, %reason, "claim lost"),
        Reply::Retrying {
            broadcast,
            reason,
            retry_in,
        } => tracing::warn!(%broadcast, %reason, ?retry_in, "claim not possible now; retrying"),
    }
}
