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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use claims_proto::v1 as pb;
use pb::claim_sessions_client::ClaimSessionsClient;
use pb::node_message::Msg as NodeMsg;
use pb::service_message::Msg as ServiceMsg;
use rand::Rng;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, ClientTlsConfig};

use crate::registry::{Lifecycle, Registry};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const GOODBYE_WAIT: Duration = Duration::from_secs(3);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A session that lasted this long resets the backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(10);

/// The claim state of one local broadcast.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ClaimState {
    /// Asked for, no answer yet.
    Pending,
    Claimed {
        fencing_token: i64,
        lease_id: i64,
        adopted: bool,
    },
    /// Another node owns it; this node would be offered it on release.
    Standby {
        owner_node: String,
        owner_rtmp: Option<String>,
        owner_http: Option<String>,
        fencing_token: i64,
    },
    /// A held claim went away; the service claims it again while live.
    Lost { reason: String },
    /// The service cannot reach its store and keeps trying.
    Retrying { reason: String },
    /// The service refused the name.
    Rejected { reason: String },
    /// No claim service answers.
    Unknown,
}

impl ClaimState {
    pub fn label(&self) -> &'static str {
        match self {
            ClaimState::Pending => "pending",
            ClaimState::Claimed { .. } => "claimed",
            ClaimState::Standby { .. } => "standby",
            ClaimState::Lost { .. } => "lost",
            ClaimState::Retrying { .. } => "retrying",
            ClaimState::Rejected { .. } => "rejected",
            ClaimState::Unknown => "unknown",
        }
    }

    pub const LABELS: [&'static str; 7] = [
        "pending", "claimed", "standby", "lost", "retrying", "rejected", "unknown",
    ];
}

/// What the bridge knows, as one consistent picture.
#[derive(Debug, Clone, Default)]
pub struct BridgeView {
    /// A session is open and welcomed.
    pub connected: bool,
    /// The last registry change the session has forwarded.
    pub processed: u64,
    pub states: BTreeMap<String, ClaimState>,
    /// Which claim service the session is on.
    pub service: Option<String>,
    /// An operator asked this node to take no new publishers.
    pub draining: bool,
}

/// The answer a publish waits for.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Claimed {
        fencing_token: i64,
    },
    OwnedElsewhere {
        owner_node: String,
        owner_rtmp: Option<String>,
    },
    Rejected {
        reason: String,
    },
    /// No claim service could answer in time.
    Unavailable {
        reason: String,
    },
}

#[derive(Debug, Clone)]
pub struct BridgeConfig {
    pub node_id: String,
    pub endpoints: HashMap<String, String>,
    pub claim_services: ClaimServices,
    /// Requested lease TTL; 0 for the service's default.
    pub lease_ttl_ms: u64,
}

pub struct Bridge {
    view: watch::Sender<BridgeView>,
}

enum SessionEnd {
    Shutdown,
    Broken(String),
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
        let bridge = Arc::new(Self { view });
        let task = tokio::spawn(bridge.clone().run(config, registry, shutdown));
        (bridge, task)
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

    /// Waits (at most `limit`) for the claim answer to the registry change
    /// `seq` that made `broadcast` live.
    pub async fn decide(&self, broadcast: &str, seq: u64, limit: Duration) -> Decision {
        let mut rx = self.view.subscribe();
        let decided = tokio::time::timeout(
            limit,
            rx.wait_for(|v| {
                !v.connected
                    || (v.processed >= seq
                        && !matches!(v.states.get(broadcast), Some(ClaimState::Pending) | None))
            }),
        )
        .await;
        let view = match decided {
            Ok(Ok(v)) => v.clone(),
            _ => {
                return Decision::Unavailable {
                    reason: format!("no claim answer within {limit:?}"),
                }
            }
        };
        if !view.connected {
            return Decision::Unavailable {
                reason: "no claim service reachable".into(),
            };
        }
        match view.states.get(broadcast) {
            Some(ClaimState::Claimed { fencing_token, .. }) => Decision::Claimed {
                fencing_token: *fencing_token,
            },
            Some(ClaimState::Standby {
                owner_node,
                owner_rtmp,
                ..
            }) => Decision::OwnedElsewhere {
                owner_node: owner_node.clone(),
                owner_rtmp: owner_rtmp.clone(),
            },
            Some(ClaimState::Rejected { reason }) => Decision::Rejected {
                reason: reason.clone(),
            },
            Some(ClaimState::Retrying { reason }) | Some(ClaimState::Lost { reason }) => {
                Decision::Unavailable {
                    reason: reason.clone(),
                }
            }
            _ => Decision::Unavailable {
                reason: "claim state unknown".into(),
            },
        }
    }

    async fn run(
        self: Arc<Self>,
        config: BridgeConfig,
        registry: Registry,
        shutdown: CancellationToken,
    ) {
        let mut failures: u32 = 0;
        let mut next = 0usize;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let urls = &config.claim_services.urls;
            let addr = urls[next % urls.len()].clone();
            next += 1;
            let started = tokio::time::Instant::now();
            match self.session(&config, &registry, &addr, &shutdown).await {
                SessionEnd::Shutdown => return,
                SessionEnd::Broken(why) => {
                    self.view.send_modify(|v| {
                        v.connected = false;
                        v.service = None;
                        for state in v.states.values_mut() {
                            *state = ClaimState::Unknown;
                        }
                    });
                    if started.elapsed() >= HEALTHY_SESSION {
                        failures = 0;
                    }
                    failures += 1;
                    let base = Duration::from_millis(100u64 << failures.min(6)).min(MAX_BACKOFF);
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
            Err(e) => return SessionEnd::Broken(e),
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
        // Live tracks per broadcast as of the last change forwarded: the
        // registry itself may already be ahead of the session.
        let mut live_tracks: HashMap<String, usize> = HashMap::new();
        for (b, _) in &live {
            *live_tracks.entry(b.clone()).or_default() += 1;
        }
        self.view.send_modify(|v| {
            v.connected = true;
            v.processed = seq;
            v.service = Some(addr.to_string());
            let live_broadcasts: std::collections::BTreeSet<&String> =
                live.iter().map(|(b, _)| b).collect();
            v.states.retain(|b, _| live_broadcasts.contains(b));
            for b in live_broadcasts {
                v.states.insert(b.clone(), ClaimState::Pending);
            }
        });

        loop {
            tokio::select! {
                change = changes.recv() => {
                    let Some(change) = change else {
                        return SessionEnd::Broken("registry closed".into());
                    };
                    let (msg, broadcast, created) = match change.lifecycle {
                        Lifecycle::Created { broadcast, track } => (
                            NodeMsg::Created(pb::Track { broadcast: broadcast.clone(), track }),
                            broadcast,
                            true,
                        ),
                        Lifecycle::Closed { broadcast, track } => (
                            NodeMsg::Closed(pb::Track { broadcast: broadcast.clone(), track }),
                            broadcast,
                            false,
                        ),
                    };
                    let count = live_tracks.entry(broadcast.clone()).or_default();
                    let (was, now) = if created {
                        *count += 1;
                        (*count - 1, *count)
                    } else {
                        *count = count.saturating_sub(1);
                        (*count + 1, *count)
                    };
                    if now == 0 {
                        live_tracks.remove(&broadcast);
                    }
                    self.view.send_modify(|v| {
                        v.processed = change.seq;
                        if was == 0 && now > 0 {
                            // The broadcast became live: a new claim episode.
                            v.states.insert(broadcast.clone(), ClaimState::Pending);
                        } else if now == 0 {
                            v.states.remove(&broadcast);
                        }
                    });
                    if out.send(pb::NodeMessage { msg: Some(msg) }).await.is_err() {
                        return SessionEnd::Broken("session send queue closed".into());
                    }
                }
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => self.on_service(m, &live_tracks),
                    Ok(None) => return SessionEnd::Broken("claim service ended the session".into()),
                    Err(status) => return SessionEnd::Broken(format!("session ended: {status}")),
                },
                _ = shutdown.cancelled() => {
                    let _ = out.send(pb::NodeMessage { msg: Some(NodeMsg::Goodbye(pb::Goodbye {})) }).await;
                    // Read the releases until the service ends the stream.
                    let _ = tokio::time::timeout(GOODBYE_WAIT, async {
                        while let Ok(Some(m)) = inbound.message().await {
                            self.on_service(m, &live_tracks);
                        }
                    }).await;
                    tracing::info!("said goodbye to the claim service");
                    self.view.send_modify(|v| v.connected = false);
                    return SessionEnd::Shutdown;
                }
            }
        }
    }

    fn on_service(&self, msg: pb::ServiceMessage, live_tracks: &HashMap<String, usize>) {
        let Some(msg) = msg.msg else { return };
        let (broadcast, next) = match msg {
            ServiceMsg::Claimed(c) => {
                let Some(claim) = c.claim else { return };
                tracing::info!(broadcast = %claim.broadcast, fencing_token = claim.fencing_token, adopted = c.adopted, "claimed");
                (
                    claim.broadcast,
                    Some(ClaimState::Claimed {
                        fencing_token: claim.fencing_token,
                        lease_id: claim.lease_id,
                        adopted: c.adopted,
                    }),
                )
            }
            ServiceMsg::Conflict(c) => {
                let owner = c.owner.unwrap_or_default();
                tracing::info!(broadcast = %c.broadcast, owner = %owner.node_id, "owned by another node");
                (
                    c.broadcast,
                    Some(ClaimState::Standby {
                        owner_rtmp: owner.endpoints.get("rtmp").cloned(),
                        owner_http: owner.endpoints.get("http").cloned(),
                        owner_node: owner.node_id,
                        fencing_token: owner.fencing_token,
                    }),
                )
            }
            ServiceMsg::Released(r) => {
                // Still live: published again, the service claims it anew.
                (r.broadcast, Some(ClaimState::Pending))
            }
            ServiceMsg::Lost(l) => {
                tracing::warn!(broadcast = %l.broadcast, reason = %l.reason, "claim lost");
                (l.broadcast, Some(ClaimState::Lost { reason: l.reason }))
            }
            ServiceMsg::Retrying(r) => {
                (r.broadcast, Some(ClaimState::Retrying { reason: r.reason }))
            }
            ServiceMsg::Rejected(r) => {
                tracing::warn!(broadcast = %r.broadcast, track = %r.track, code = r.code, reason = %r.reason, "claim service rejected a track");
                // One track over a limit does not undo the broadcast's claim.
                if matches!(self.state(&r.broadcast), Some(ClaimState::Claimed { .. })) {
                    return;
                }
                (r.broadcast, Some(ClaimState::Rejected { reason: r.reason }))
            }
            ServiceMsg::Welcome(_) => return,
            ServiceMsg::Draining(d) => {
                tracing::warn!(
                    draining = d.draining,
                    "an operator changed this node's draining mark"
                );
                self.view.send_modify(|v| v.draining = d.draining);
                return;
            }
        };
        // Answers about broadcasts no longer live here are history.
        if !live_tracks.contains_key(&broadcast) {
            return;
        }
        if let Some(state) = next {
            self.view.send_modify(|v| {
                v.states.insert(broadcast, state);
            });
        }
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
    async fn connect(&self, addr: &str) -> Result<Channel, String> {
        claims_proto::client::endpoint(addr, self.tls.as_ref())?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(4))
            .keep_alive_while_idle(true)
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| {
                format!(
                    "cannot connect to {addr}: {}",
                    claims_proto::client::error_chain(&e)
                )
            })
    }

    /// A channel to any claim service, for read-side queries (`Ownership`).
    pub async fn query_channel(&self) -> Result<Channel, String> {
        let mut last = String::from("no claim-service address configured");
        for addr in &self.urls {
            match self.connect(addr).await {
                Ok(c) => return Ok(c),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}
