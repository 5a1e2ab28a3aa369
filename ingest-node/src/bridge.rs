//! The claim bridge: one `ClaimSessions.Attach` session from this node to a
//! claim service, fed by the [`Registry`].
//!
//! It sends `hello` with the node's endpoints and every live track, then
//! forwards each created / closed in order, and keeps the claim state of each
//! local broadcast (pending, claimed with its fencing token, standby behind an
//! owner, lost, retrying, unknown while no claim service answers). When the
//! session breaks it reconnects by itself — with backoff and jitter, to the
//! next of several claim-service addresses — and resyncs with `hello.live`.
//! On shutdown it says `goodbye`, so the node's claims are released at once.
//!
//! Every state carries the registry sequence it is current for: a caller that
//! just opened a track waits until the bridge has seen that change, so it
//! never mistakes the answer to an earlier publish for the answer to its own.
//!
//! What the states are is decided in [`book`], without I/O; this file only
//! moves messages between the registry, the claim service and the picture
//! callers read.

mod book;

pub use book::{
    decision, BridgeView, ClaimBook, ClaimState, Decision, DuplicatePolicy, Hold, Overtaken,
    Reconnect,
};

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use claims_proto::v1 as pb;
use pb::claim_sessions_client::ClaimSessionsClient;
use pb::node_message::Msg as NodeMsg;
use pb::service_message::Msg as ServiceMsg;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, ClientTlsConfig};

use crate::registry::Registry;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const GOODBYE_WAIT: Duration = Duration::from_secs(3);

/// Milliseconds since the Unix epoch, as claims carry times.
pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Clone)]
pub struct BridgeConfig {
    pub node_id: String,
    pub endpoints: HashMap<String, String>,
    pub claim_services: ClaimServices,
    /// Requested lease TTL; 0 for the service's default.
    pub lease_ttl_ms: u64,
    /// What to do with a publisher of a broadcast another node owns.
    pub duplicates: DuplicatePolicy,
}

pub struct Bridge {
    view: watch::Sender<BridgeView>,
    node_id: String,
    /// At shutdown, end the session without goodbye: the claims wait for
    /// the detach grace, to be adopted by this node's next run.
    without_goodbye: std::sync::atomic::AtomicBool,
    /// Whether the node may hold a session: false while what it fronts
    /// (a media server) does not answer, so that its claims wait out the
    /// detach grace as after a node's death.
    may_attach: watch::Sender<bool>,
}

enum SessionEnd {
    Shutdown,
    Broken(String),
    /// The node was detached on purpose ([`Bridge::detach`]).
    Detached,
    /// The claim service asked the node to attach to another replica
    /// (`to`, when it named one).
    Moved {
        to: String,
    },
}

impl Bridge {
    /// Starts the bridge; it runs until `shutdown` is cancelled, then says
    /// goodbye and the returned task ends.
    pub fn start(
        config: BridgeConfig,
        registry: Registry,
        shutdown: CancellationToken,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let (view, _) = watch::channel(BridgeView::default());
        let bridge = Arc::new(Self {
            view,
            node_id: config.node_id.clone(),
            without_goodbye: std::sync::atomic::AtomicBool::new(false),
            may_attach: watch::channel(true).0,
        });
        let task = tokio::spawn(bridge.clone().run(config, registry, shutdown));
        (bridge, task)
    }

    /// When shut down, end the session without goodbye (the node's next
    /// run adopts its claims) instead of releasing them.
    pub fn leave_without_goodbye(&self) {
        self.without_goodbye
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Ends the session without goodbye and holds no other until
    /// [`Bridge::attach`]: the claim service keeps the claims for its
    /// detach grace (a publisher of them elsewhere is held, not pointed
    /// here), and they are adopted if the node attaches within it.
    pub fn detach(&self) {
        self.may_attach.send_replace(false);
    }

    /// Lets the node hold a session again after [`Bridge::detach`].
    pub fn attach(&self) {
        self.may_attach.send_replace(true);
    }

    /// The node this bridge attaches as.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn view(&self) -> BridgeView {
        self.view.borrow().clone()
    }

    pub fn state(&self, broadcast: &str) -> Option<ClaimState> {
        self.view.borrow().states.get(broadcast).cloned()
    }

    pub fn subscribe(&self) -> watch::Receiver<BridgeView> {
        self.view.subscribe()
    }

    /// Waits for the claim answer to the registry change `seq` that made
    /// `broadcast` live: at most `hold.claim_wait`, and while another node
    /// owns it, as long as [`Hold`] says (standing by behind an owner that
    /// may leave; past a gone owner's grace). Then the last answer.
    pub async fn decide(&self, broadcast: &str, seq: u64, hold: Hold) -> Decision {
        let started = std::time::Instant::now();
        let mut rx = self.view.subscribe();
        let mut held: Option<Decision> = None;
        loop {
            let now = std::time::Instant::now();
            let deadline = hold.deadline(held.as_ref(), started, now, unix_ms());
            let deadline = tokio::time::Instant::from_std(deadline);
            let next = tokio::time::timeout_at(
                deadline,
                rx.wait_for(|v| {
                    let d = decision(v, broadcast, seq);
                    d.is_some() && d != held
                }),
            )
            .await;
            let answer = match next {
                Ok(Ok(view)) => decision(&view, broadcast, seq),
                _ => None,
            };
            match answer {
                Some(d) if hold.holds(&d) => held = Some(d),
                Some(d) => return d,
                None => {
                    return held.unwrap_or(Decision::Unavailable {
                        reason: format!("no claim answer within {:?}", started.elapsed()),
                    })
                }
            }
        }
    }

    async fn run(
        self: Arc<Self>,
        config: BridgeConfig,
        registry: Registry,
        shutdown: CancellationToken,
    ) {
        let mut reconnect = Reconnect::default();
        let mut next = 0usize;
        let mut may_attach = self.may_attach.subscribe();
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            tokio::select! {
                open = async { may_attach.wait_for(|may| *may).await.is_ok() } => if !open { return },
                _ = shutdown.cancelled() => return,
            }
            let urls = &config.claim_services.urls;
            let addr = urls[next % urls.len()].clone();
            next += 1;
            let started = tokio::time::Instant::now();
            match self.session(&config, &registry, &addr, &shutdown).await {
                SessionEnd::Shutdown => return,
                SessionEnd::Detached => {
                    self.view.send_modify(book::disconnected);
                    tracing::warn!(claim_service = %addr, "claim session left without goodbye: detached until what this node fronts answers again");
                }
                SessionEnd::Moved { to } => {
                    // At once, without backoff: the claims wait for this
                    // node's next session to adopt them.
                    self.view.send_modify(book::disconnected);
                    match urls
                        .iter()
                        .position(|u| u.trim_end_matches('/') == to.trim_end_matches('/'))
                    {
                        Some(i) => next = i,
                        None if !to.is_empty() => {
                            tracing::warn!(claim_service = %addr, %to, "asked to move to an address this node was not given; attaching to the next one it knows")
                        }
                        None => {}
                    }
                }
                SessionEnd::Broken(why) => {
                    self.view.send_modify(book::disconnected);
                    let base = reconnect.after(started.elapsed());
                    let delay = base.mul_f64(rand::rng().random_range(0.5..1.5));
                    tracing::warn!(claim_service = %addr, error = %why, retry_in = ?delay, "claim session down; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    async fn session(
        &self,
        config: &BridgeConfig,
        registry: &Registry,
        addr: &str,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        let channel = match config.claim_services.connect(addr).await {
            Ok(c) => c,
            Err(e) => return SessionEnd::Broken(e.to_string()),
        };
        let mut client = ClaimSessionsClient::new(channel);
        let (live, seq, mut changes) = registry.subscribe();
        let (out, out_rx) = mpsc::channel(4096);
        let hello = pb::Hello {
            node_id: config.node_id.clone(),
            endpoints: config.endpoints.clone(),
            lease_ttl_ms: config.lease_ttl_ms,
            live: live
                .iter()
                .map(|(b, t)| pb::Track {
                    broadcast: b.clone(),
                    track: t.clone(),
                })
                .collect(),
        };
        let _ = out
            .send(pb::NodeMessage {
                msg: Some(NodeMsg::Hello(hello)),
            })
            .await;
        let mut inbound =
            match tokio::time::timeout(CONNECT_TIMEOUT, client.attach(ReceiverStream::new(out_rx)))
                .await
            {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(status)) => return SessionEnd::Broken(format!("attach refused: {status}")),
                Err(_) => return SessionEnd::Broken("attach timed out".into()),
            };
        match tokio::time::timeout(CONNECT_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(pb::ServiceMessage {
                msg: Some(ServiceMsg::Welcome(w)),
            }))) => {
                tracing::info!(claim_service = %addr, session_id = %w.session_id, live = live.len(), "claim session attached");
            }
            other => return SessionEnd::Broken(format!("no welcome: {other:?}")),
        }
        let mut book = ClaimBook::new(config.duplicates);
        self.view.send_modify(|v| book.welcome(&live, seq, addr, v));
        let mut may_attach = self.may_attach.subscribe();

        loop {
            tokio::select! {
                _ = async { may_attach.wait_for(|may| !*may).await.map(|_| ()) } => return SessionEnd::Detached,
                change = changes.recv() => {
                    let Some(change) = change else {
                        return SessionEnd::Broken("registry closed".into());
                    };
                    let mut msg = None;
                    self.view.send_modify(|v| msg = Some(book.forward(change, v)));
                    let Some(msg) = msg else { continue };
                    if out.send(pb::NodeMessage { msg: Some(msg) }).await.is_err() {
                        return SessionEnd::Broken("session send queue closed".into());
                    }
                }
                msg = inbound.message() => match msg {
                    Ok(Some(pb::ServiceMessage { msg: Some(ServiceMsg::Move(m)) })) => {
                        tracing::info!(claim_service = %addr, to = %m.to, reason = %m.reason, "the claim service asked this node to attach to another replica; its claims are adopted there");
                        return SessionEnd::Moved { to: m.to };
                    }
                    Ok(Some(m)) => {
                        if let Some(ask) = self.on_service(m, &book) {
                            if out.send(pb::NodeMessage { msg: Some(ask) }).await.is_err() {
                                return SessionEnd::Broken("session send queue closed".into());
                            }
                        }
                    }
                    Ok(None) => return SessionEnd::Broken("claim service ended the session".into()),
                    Err(status) => return SessionEnd::Broken(format!("session ended: {status}")),
                },
                _ = shutdown.cancelled() => {
                    if self.without_goodbye.load(std::sync::atomic::Ordering::SeqCst) {
                        tracing::info!("left the claim session without goodbye; the claims wait for the detach grace");
                        self.view.send_modify(|v| v.connected = false);
                        return SessionEnd::Shutdown;
                    }
                    let _ = out.send(pb::NodeMessage { msg: Some(NodeMsg::Goodbye(pb::Goodbye {})) }).await;
                    // Read the releases until the service ends the stream.
                    let _ = tokio::time::timeout(GOODBYE_WAIT, async {
                        while let Ok(Some(m)) = inbound.message().await {
                            let _ = self.on_service(m, &book);
                        }
                    }).await;
                    tracing::info!("said goodbye to the claim service");
                    self.view.send_modify(|v| v.connected = false);
                    return SessionEnd::Shutdown;
                }
            }
        }
    }

    /// Logs what the claim service said, and puts it in the picture; what
    /// to ask the service in turn (a takeover), if anything.
    fn on_service(&self, msg: pb::ServiceMessage, book: &ClaimBook) -> Option<NodeMsg> {
        let msg = msg.msg?;
        match &msg {
            ServiceMsg::Claimed(pb::Claimed {
                claim: Some(claim),
                adopted,
            }) => {
                tracing::info!(broadcast = %claim.broadcast, fencing_token = claim.fencing_token, adopted, "claimed")
            }
            ServiceMsg::Conflict(c) => {
                let owner = c.owner.as_ref().map(|o| o.node_id.as_str()).unwrap_or("");
                tracing::info!(broadcast = %c.broadcast, owner, "owned by another node")
            }
            ServiceMsg::Lost(l) if !l.taken_by.is_empty() => {
                tracing::info!(broadcast = %l.broadcast, taken_by = %l.taken_by, "claim taken over by another node; dropping the publisher here")
            }
            ServiceMsg::Lost(l) => {
                tracing::warn!(broadcast = %l.broadcast, reason = %l.reason, "claim lost")
            }
            ServiceMsg::Rejected(r) => {
                tracing::warn!(broadcast = %r.broadcast, track = %r.track, code = r.code, reason = %r.reason, "claim service rejected a track")
            }
            ServiceMsg::Draining(d) => tracing::warn!(
                draining = d.draining,
                "an operator changed this node's draining mark"
            ),
            _ => {}
        }
        let mut ask = None;
        self.view.send_modify(|v| ask = book.answer(msg, v));
        ask
    }
}

/// Where the claim services are and how to reach them (plain, TLS or
/// mutual TLS with this node's certificate).
#[derive(Debug, Clone)]
pub struct ClaimServices {
    /// URLs, tried in turn.
    pub urls: Vec<String>,
    pub tls: Option<ClientTlsConfig>,
}

impl ClaimServices {
    async fn connect(&self, addr: &str) -> Result<Channel> {
        claims_proto::client::endpoint(addr, self.tls.as_ref())
            .map_err(Error::Config)?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(4))
            .keep_alive_while_idle(true)
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| {
                Error::ClaimService(format!(
                    "cannot connect to {addr}: {}",
                    claims_proto::client::error_chain(&e)
                ))
            })
    }

    /// A channel to any claim service, for read-side queries (`Ownership`).
    pub async fn query_channel(&self) -> Result<Channel> {
        let mut last = Error::Config("no claim-service address configured".into());
        for addr in &self.urls {
            match self.connect(addr).await {
                Ok(c) => return Ok(c),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}
