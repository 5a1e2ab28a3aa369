//! The async shell around one node's [`NodeClaims`]: it feeds the rules
//! every event (the node's messages, store answers, lease losses, timers,
//! what the view saw) and carries out the actions they return. It decides
//! nothing about claims itself.
//!
//! The node's messages arrive through a channel a reader task fills (see
//! [`crate::attach`]); the response stream is the receiving end of another,
//! so a node that goes away is an event (`Detached`), not an error lost in
//! a combinator. The work it starts in etcd without waiting for it, and what
//! it logs of the replies, are in `work.rs`.

mod actions;
mod work;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use claims_proto::v1 as pb;
use futures::StreamExt;
use pb::service_message::Msg as ServiceMsg;
use tokio::sync::{broadcast, mpsc};
use tokio_util::time::DelayQueue;
use tonic::Status;

use crate::claims::{Event, NodeClaims};
use crate::error::Error;
use crate::intake::{self, Intake};
use crate::names;
use crate::sessions::{Attached, Context, MoveAsk, STANDBY_LISTED};
use crate::store::{Holder, LeaseLoss};
use crate::view::ViewEvent;
use crate::wire::service_message;

type Outbound = mpsc::Sender<Result<pb::ServiceMessage, Status>>;
type Inbound = mpsc::Receiver<Result<Option<pb::NodeMessage>, Status>>;

pub struct Session {
    ctx: Arc<Context>,
    /// The node, its endpoints, this session's id: what all of this
    /// session's claims share (and its node record).
    holder: Holder,
    ttl: Duration,
    core: NodeClaims,
    out: Outbound,
    /// Answers of work the session started, for the rules.
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    loss_tx: mpsc::UnboundedSender<LeaseLoss>,
    loss_rx: mpsc::UnboundedReceiver<LeaseLoss>,
    timers: DelayQueue<Event>,
    /// How this session's releases went.
    releases: Arc<Releases>,
    /// Still reading the node's messages (not after goodbye, a protocol
    /// error, a half-close, a detach or being superseded).
    reading: bool,
    /// The tracks `hello` listed as live, created once the session began.
    live: Vec<pb::Track>,
    /// Their broadcasts, until first claimed: likely adopted (see
    /// [`crate::store::ClaimRequest::adopting`]).
    relive: std::collections::HashSet<String>,
    finished: bool,
    /// Lifecycle events per second this session may send.
    events: Option<EventLimiter>,
}

type EventLimiter = governor::DefaultDirectRateLimiter;

/// How a session's releases went: keys deleted here, and keys left (held
/// by a newer session of the node, whose record refused the delete, or
/// gone), for the log at its end.
#[derive(Default)]
struct Releases {
    here: AtomicUsize,
    left: AtomicUsize,
}

impl Releases {
    fn count(&self, deleted: bool) {
        let counter = if deleted { &self.here } else { &self.left };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

fn event_limiter(per_second: u32) -> Option<EventLimiter> {
    let rate = std::num::NonZeroU32::new(per_second)?;
    let burst = rate.saturating_mul(std::num::NonZeroU32::new(2).expect("2 is not zero"));
    Some(governor::RateLimiter::direct(
        governor::Quota::per_second(rate).allow_burst(burst),
    ))
}

impl Session {
    pub fn new(ctx: Arc<Context>, hello: pb::Hello, session_id: String, out: Outbound) -> Self {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (loss_tx, loss_rx) = mpsc::unbounded_channel();
        let holder = Holder {
            node_id: hello.node_id.as_str().into(),
            endpoints: Arc::new(hello.endpoints),
            session_id: session_id.as_str().into(),
            service_id: ctx.config.service_id.as_str().into(),
        };
        Self {
            events: event_limiter(ctx.config.max_events_per_second),
            core: NodeClaims::new(&session_id, ctx.config.limits),
            ttl: ctx.config.lease_ttl(hello.lease_ttl_ms),
            holder,
            ctx,
            out,
            events_tx,
            events_rx,
            loss_tx,
            loss_rx,
            timers: DelayQueue::new(),
            releases: Default::default(),
            reading: true,
            relive: hello.live.iter().map(|t| t.broadcast.clone()).collect(),
            live: hello.live,
            finished: false,
        }
    }

    pub fn node_id(&self) -> &str {
        &self.holder.node_id
    }

    pub fn session_id(&self) -> &str {
        &self.holder.session_id
    }

    async fn send(&self, msg: pb::ServiceMessage) {
        // A node that went away is noticed on the inbound side.
        let _ = self.out.send(Ok(msg)).await;
    }

    pub async fn run(mut self, mut inbound: Inbound, attached: Attached) {
        let Attached {
            superseded,
            mut asks,
            mut moves,
        } = attached;
        let ctx = self.ctx.clone();
        ctx.metrics.sessions_attached.inc();
        let mut view_events = ctx.view.subscribe();
        tracing::info!(
            endpoints = ?self.holder.endpoints,
            live = self.live.len(),
            lease_ttl = ?self.ttl,
            "node attached"
        );
        self.send(service_message(ServiceMsg::Welcome(pb::Welcome {
            session_id: self.holder.session_id.to_string(),
            service_id: ctx.config.service_id.clone(),
            lease_ttl_ms: self.ttl.as_millis() as u64,
        })))
        .await;
        self.apply(Event::Began).await;
        for track in std::mem::take(&mut self.live) {
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
                item = inbound.recv(), if self.reading => self.on_inbound(item).await,
                _ = out.closed(), if attached => self.detach().await,
                Some(event) = self.events_rx.recv() => self.apply(event).await,
                Some(loss) = self.loss_rx.recv() => self.on_loss(loss).await,
                Some(expired) = self.timers.next(), if !self.timers.is_empty() => {
                    self.apply(expired.into_inner()).await;
                }
                event = view_events.recv() => self.on_view(event).await,
                Some(ask) = asks.recv() => {
                    let standby = self.core.standby().take(STANDBY_LISTED).map(String::from);
                    let _ = ask.send(standby.collect());
                }
                _ = superseded.notified(), if attached => self.apply(Event::Superseded).await,
                Some(ask) = moves.recv(), if attached => self.move_away(ask).await,
                _ = ctx.shutdown.cancelled() => {
                    self.leave_for_adoption().await;
                    return;
                }
            }
        }
        let released = self.releases.here.load(Ordering::Relaxed);
        let left = self.releases.left.load(Ordering::Relaxed);
        if self.core.is_closing() {
            tracing::info!(released, left, "node said goodbye; its claims are released");
        } else if left == 0 && released > 0 {
            tracing::info!(released, "detach grace over; claims released");
        } else if left == 0 {
            tracing::info!("detach grace over; nothing was left to release");
        } else {
            // Superseded, or etcd away: a newer session of the node holds
            // what this one could not release (or etcd expires it).
            tracing::info!(
                released,
                left,
                "detach grace over; claims a newer session of the node holds were left to it"
            );
        }
        ctx.sessions
            .detach(&self.holder.node_id, &self.holder.session_id);
        if !self.core.is_detached() {
            ctx.metrics.sessions_attached.dec();
        }
    }

    async fn on_inbound(&mut self, item: Option<Result<Option<pb::NodeMessage>, Status>>) {
        match item {
            Some(Ok(Some(msg))) => {
                if let Err(status) = self.on_message(msg).await {
                    let _ = self.out.send(Err(status)).await;
                    self.detach().await;
                } else if self.core.is_closing() {
                    self.reading = false;
                }
            }
            Some(Ok(None)) | None => {
                tracing::debug!(
                    "node closed its sending side; the session lasts until the stream ends"
                );
                self.reading = false;
            }
            Some(Err(status)) => {
                tracing::info!(error = %status, "session stream broke");
                self.detach().await;
            }
        }
    }

    async fn detach(&mut self) {
        self.reading = false;
        self.apply(Event::Detached).await;
    }

    /// This replica asks the node to attach to another (`ask.to`, when
    /// set): told so, then the stream ends; the claims are kept for the
    /// grace, for the node's next session to adopt (tokens kept, nothing
    /// released). A node that does not know `move` sees the stream end
    /// and reconnects, which does the same.
    async fn move_away(&mut self, ask: MoveAsk) {
        tracing::info!(to = %ask.to, reason = %ask.reason, held = self.core.held().count(), "asking the node to attach to another replica");
        self.send(service_message(ServiceMsg::Move(pb::Move {
            to: ask.to,
            reason: ask.reason.clone(),
        })))
        .await;
        let _ = self
            .out
            .send(Err(Error::Unavailable(format!(
                "this replica asked the node to attach to another ({}); its claims are kept for adoption",
                ask.reason
            ))
            .into()))
            .await;
        self.reading = false;
        self.apply(Event::Moved).await;
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
            Intake::Fatal(error) => Err(self.ctx.refuse(error)),
        }
    }

    /// Spends one lifecycle event of the session's rate; false when over it.
    fn within_event_rate(&self) -> bool {
        self.events.as_ref().is_none_or(|l| l.check().is_ok())
    }

    async fn on_loss(&mut self, loss: LeaseLoss) {
        let lost = self.core.claims_on(loss.lease_id);
        self.ctx
            .metrics
            .claims_lost
            .with_label_values(&[loss.kind.label()])
            .inc_by(lost as u64);
        self.apply(Event::LeaseLost {
            lease_id: loss.lease_id,
            reason: loss.reason,
        })
        .await;
    }

    async fn on_view(&mut self, event: Result<ViewEvent, broadcast::error::RecvError>) {
        let event = match event {
            Ok(ViewEvent::Released {
                broadcast,
                revision,
            }) => Event::OwnerReleased {
                broadcast,
                revision,
            },
            Ok(ViewEvent::Forced {
                broadcast,
                fencing_token,
                taken_by: Some(by),
                ..
            }) => Event::TakenOver {
                broadcast,
                fencing_token,
                by_this_node: *by == *self.holder.node_id,
                by,
            },
            Ok(ViewEvent::Forced {
                broadcast,
                fencing_token,
                reason,
                taken_by: None,
            }) => Event::Forced {
                broadcast,
                fencing_token,
                reason,
            },
            Ok(ViewEvent::Node {
                node_id,
                session_id,
                draining,
                revision,
                ..
            }) if *node_id == *self.holder.node_id => Event::NodeSeen {
                session_id: session_id.to_string(),
                draining,
                revision,
            },
            Ok(ViewEvent::Node {
                node_id,
                detached: true,
                ..
            })
            | Ok(ViewEvent::NodeGone { node_id }) => {
                if *node_id == *self.holder.node_id {
                    return;
                }
                Event::OwnerGone { node_id }
            }
            Ok(ViewEvent::Node { .. }) | Err(broadcast::error::RecvError::Closed) => return,
            Err(broadcast::error::RecvError::Lagged(_)) => Event::ViewLagged,
        };
        self.apply(event).await;
    }

    async fn apply(&mut self, event: Event) {
        for action in self.core.handle(event) {
            self.act(action).await;
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
            held = self.core.held().count(),
            "session ended by shutdown; claims left for adoption"
        );
    }
}
