//! gRPC clients that speak `claims.v1` as an ingest node (a session) or a
//! watcher would.

use anyhow::{anyhow, bail, Context as _, Result};
use claims_proto::v1 as pb;
use pb::claim_sessions_client::ClaimSessionsClient;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tonic::Streaming;

use crate::*;

pub fn hello(node_id: &str) -> pb::Hello {
    pb::Hello {
        node_id: node_id.into(),
        endpoints: [
            ("rtmp".to_string(), format!("rtmp://{node_id}.test:1935")),
            ("http".to_string(), format!("http://{node_id}.test:8080")),
        ]
        .into(),
        lease_ttl_ms: 0,
        live: vec![],
    }
}

pub fn track(broadcast: &str, track: &str) -> pb::Track {
    pb::Track {
        broadcast: broadcast.into(),
        track: track.into(),
    }
}

/// An ingest node's session, driven by hand.
pub struct Node {
    tx: mpsc::Sender<pb::NodeMessage>,
    rx: Streaming<pb::ServiceMessage>,
    /// Messages read while waiting for another one, oldest first.
    unclaimed: std::collections::VecDeque<ServiceMsg>,
    pub welcome: pb::Welcome,
}

use pb::node_message::Msg as NodeMsg;
use pb::service_message::Msg as ServiceMsg;

impl Node {
    /// Opens a session with `first` as its first message; the RPC's own
    /// error is returned as is.
    pub async fn open(addr: &str, first: NodeMsg) -> std::result::Result<Self, tonic::Status> {
        let endpoint = Endpoint::from_shared(addr.to_string())
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        Self::open_on(endpoint, first).await
    }

    /// As [`Node::open`], on a prepared endpoint (TLS, a client certificate).
    /// A connection that fails (a TLS handshake refused) is `UNAVAILABLE`
    /// with the whole cause chain in the message.
    pub async fn open_on(
        endpoint: Endpoint,
        first: NodeMsg,
    ) -> std::result::Result<Self, tonic::Status> {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(error_chain(&e)))?;
        let mut client = ClaimSessionsClient::new(channel);
        let (tx, rx) = mpsc::channel(1024);
        tx.send(pb::NodeMessage { msg: Some(first) })
            .await
            .map_err(|_| tonic::Status::internal("queue closed"))?;
        let mut stream = client.attach(ReceiverStream::new(rx)).await?.into_inner();
        let welcome = match tokio::time::timeout(WAIT, stream.message()).await {
            Ok(Ok(Some(pb::ServiceMessage {
                msg: Some(ServiceMsg::Welcome(w)),
            }))) => w,
            Ok(Err(status)) => return Err(status),
            other => {
                return Err(tonic::Status::internal(format!(
                    "expected welcome, got {other:?}"
                )))
            }
        };
        Ok(Self {
            tx,
            rx: stream,
            unclaimed: Default::default(),
            welcome,
        })
    }

    pub async fn attach(addr: &str, hello: pb::Hello) -> Result<Self> {
        Self::open(addr, NodeMsg::Hello(hello))
            .await
            .map_err(|s| anyhow!("attach failed: {s}"))
    }

    pub async fn send(&self, msg: NodeMsg) -> Result<()> {
        self.tx
            .send(pb::NodeMessage { msg: Some(msg) })
            .await
            .map_err(|_| anyhow!("session send queue closed"))
    }

    /// A sender of this session's messages, for a task of its own (a node
    /// reads its answers while it sends: one that sends a million messages
    /// before reading any stalls on flow control).
    pub fn sender(&self) -> mpsc::Sender<pb::NodeMessage> {
        self.tx.clone()
    }

    pub async fn created(&self, broadcast: &str, t: &str) -> Result<()> {
        self.send(NodeMsg::Created(track(broadcast, t))).await
    }

    pub async fn closed(&self, broadcast: &str, t: &str) -> Result<()> {
        self.send(NodeMsg::Closed(track(broadcast, t))).await
    }

    pub async fn goodbye(&self) -> Result<()> {
        self.send(NodeMsg::Goodbye(pb::Goodbye {})).await
    }

    /// The next message, or the status the stream ended with.
    pub async fn next(&mut self) -> Result<std::result::Result<ServiceMsg, tonic::Status>> {
        if let Some(m) = self.unclaimed.pop_front() {
            return Ok(Ok(m));
        }
        self.read().await
    }

    async fn read(&mut self) -> Result<std::result::Result<ServiceMsg, tonic::Status>> {
        match tokio::time::timeout(WAIT, self.rx.message()).await {
            Err(_) => bail!("no message from the claim-service within {WAIT:?}"),
            Ok(Ok(Some(m))) => m
                .msg
                .map(Ok)
                .ok_or_else(|| anyhow!("empty service message")),
            Ok(Ok(None)) => bail!("session stream ended cleanly"),
            Ok(Err(status)) => Ok(Err(status)),
        }
    }

    /// Waits for a message `pick` accepts; others are kept, in order, for
    /// later calls.
    pub async fn expect<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&ServiceMsg) -> Option<T>,
    ) -> Result<T> {
        if let Some(i) = self.unclaimed.iter().position(|m| pick(m).is_some()) {
            let msg = self.unclaimed.remove(i).expect("index was just found");
            return Ok(pick(&msg).expect("matched above"));
        }
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match self.read().await {
                Ok(Ok(msg)) => {
                    if let Some(t) = pick(&msg) {
                        return Ok(t);
                    }
                    self.unclaimed.push_back(msg);
                }
                Ok(Err(status)) => bail!(
                    "waiting for {what}, the session ended: {status}; unclaimed {:?}",
                    self.unclaimed
                ),
                Err(e) => bail!("waiting for {what}: {e}; unclaimed {:?}", self.unclaimed),
            }
        }
        bail!("no {what} within {WAIT:?}; unclaimed {:?}", self.unclaimed)
    }

    /// The next `claimed`, of any broadcast.
    pub async fn expect_any_claimed(&mut self) -> Result<pb::Claimed> {
        self.expect("claimed", |m| match m {
            ServiceMsg::Claimed(c) => Some(c.clone()),
            _ => None,
        })
        .await
    }

    pub async fn expect_claimed(&mut self, broadcast: &str) -> Result<pb::Claimed> {
        self.expect(&format!("claimed {broadcast}"), |m| match m {
            ServiceMsg::Claimed(c)
                if c.claim.as_ref().is_some_and(|c| c.broadcast == broadcast) =>
            {
                Some(c.clone())
            }
            _ => None,
        })
        .await
    }

    /// `claimed` for `broadcast` with `adopted: true`: the claim.
    pub async fn expect_adopted(&mut self, broadcast: &str) -> Result<pb::Claim> {
        let claimed = self.expect_claimed(broadcast).await?;
        if !claimed.adopted {
            bail!("{broadcast} was claimed anew, not adopted: {claimed:?}");
        }
        claimed.claim.context("a claimed message names its claim")
    }

    pub async fn expect_conflict(&mut self, broadcast: &str) -> Result<pb::Claim> {
        self.expect(&format!("conflict {broadcast}"), |m| match m {
            ServiceMsg::Conflict(c) if c.broadcast == broadcast => c.owner.clone(),
            _ => None,
        })
        .await
    }

    pub async fn expect_released(&mut self, broadcast: &str) -> Result<()> {
        self.expect(&format!("released {broadcast}"), |m| match m {
            ServiceMsg::Released(r) if r.broadcast == broadcast => Some(()),
            _ => None,
        })
        .await
    }

    pub async fn expect_lost(&mut self, broadcast: &str) -> Result<String> {
        self.expect(&format!("lost {broadcast}"), |m| match m {
            ServiceMsg::Lost(l) if l.broadcast == broadcast => Some(l.reason.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for the stream to end with an error status.
    pub async fn expect_status(&mut self) -> Result<tonic::Status> {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Err(status) = self.next().await? {
                return Ok(status);
            }
        }
        bail!("the session did not end within {WAIT:?}")
    }

    /// Whether a message arrives within `quiet`; for asserting that nothing
    /// is said (a bound, not a timing claim).
    pub async fn silent_for(&mut self, quiet: Duration) -> Option<ServiceMsg> {
        if let Some(m) = self.unclaimed.pop_front() {
            return Some(m);
        }
        match tokio::time::timeout(quiet, self.rx.message()).await {
            Ok(Ok(Some(m))) => m.msg,
            _ => None,
        }
    }

    /// Drops the session without goodbye, as a crashed node would.
    pub fn vanish(self) {}
}

/// A `WatchClaims` stream.
pub struct Watcher {
    rx: Streaming<pb::ClaimEvent>,
}

impl Watcher {
    pub async fn open(svc: &ClaimService, prefix: &str, start_revision: i64) -> Result<Self> {
        let mut client = svc.ownership().await?;
        let rx = client
            .watch_claims(pb::WatchClaimsRequest {
                prefix: prefix.into(),
                start_revision,
            })
            .await?
            .into_inner();
        Ok(Self { rx })
    }

    pub async fn next(&mut self) -> Result<pb::ClaimEvent> {
        match tokio::time::timeout(WAIT, self.rx.message()).await {
            Err(_) => bail!("no watch event within {WAIT:?}"),
            Ok(Ok(Some(e))) => Ok(e),
            Ok(Ok(None)) => bail!("watch ended"),
            Ok(Err(s)) => bail!("watch failed: {s}"),
        }
    }

    /// Waits for an event of `kind` for `broadcast`, skipping others.
    pub async fn expect(
        &mut self,
        kind: pb::claim_event::Kind,
        broadcast: &str,
    ) -> Result<pb::ClaimEvent> {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let e = self.next().await?;
            if e.kind == kind as i32 && e.claim.as_ref().is_some_and(|c| c.broadcast == broadcast) {
                return Ok(e);
            }
        }
        bail!("no {kind:?} for {broadcast} within {WAIT:?}")
    }

    /// Any event within `quiet`, if one comes.
    pub async fn quiet_for(&mut self, quiet: Duration) -> Option<pb::ClaimEvent> {
        match tokio::time::timeout(quiet, self.rx.message()).await {
            Ok(Ok(Some(e))) => Some(e),
            _ => None,
        }
    }
}
