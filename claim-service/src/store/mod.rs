//! The one door to etcd.
//!
//! Everything that builds an etcd key or calls `etcd_client` lives under this
//! module: the key layout ([`layout`]), the claim transaction and adoption
//! ([`claim_txn`], batched per session), release and revoke, the reads, the
//! multiplexed keep-alive ([`keepalive`]) and the resuming watch ([`watch`]).
//!
//! One lease per node session: the session's node record and every claim it
//! makes are on it, so keeping a node's claims alive is one renewal per
//! TTL/4 however many it holds, and they expire together when nobody renews
//! them. A claim is one transaction: *if the key's create revision is 0 and
//! the node's record is still on this session's lease, put it on that
//! lease, else read them*, so a conflict names the owner from the same
//! atomic step. Its fencing token is the key's create revision. A key that
//! already names the claiming node (an earlier session's) is adopted as it
//! is, on the lease it is on, which the new session keeps alive: no write,
//! so a failover re-adopts as fast as etcd answers reads.
//!
//! The node record is the fence: a release deletes the key only if it still
//! has the claim's fencing token *and* the record is still on the releasing
//! session's lease, so a session that a newer one of its node superseded
//! (on any replica, even after a pause) deletes nothing. A lease may be
//! renewed by more than one session (an older one in its grace, a newer one
//! that adopted its claims), so a lease is revoked only when etcd says no
//! claim is on it any more ([`Store::let_go_lease`]): only the session whose
//! record is on a lease puts claims on it, so none can appear after.

mod claim_txn;
mod etcd;
pub mod keepalive;
pub mod layout;
mod nodes;
mod queue;
mod reads;
mod release;
mod replicas;
pub mod watch;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, ConnectOptions};
use tokio::sync::mpsc;

use crate::claims::{Claim, ClaimOutcome};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
pub use keepalive::{KeepAlive, LeaseLoss, LossKind};
pub use layout::{ClaimRecord, ForcedRecord, Key, Layout, NodeRecord, ReplicaRecord};
use queue::FairQueue;
pub use replicas::LayoutFound;

/// Lease grants in flight at once (node records, forced records).
const GRANTS_IN_FLIGHT: usize = 256;

/// A claim to give up, fenced as the releasing session holds it.
#[derive(Debug, Clone)]
pub struct Release {
    /// The releasing session's id (its line in the queue).
    pub session: Arc<str>,
    pub node_id: Arc<str>,
    pub broadcast: String,
    /// The claim's lease, for the logs.
    pub lease_id: i64,
    /// The key is deleted only while it still has this create revision...
    pub fencing_token: i64,
    /// ...and the node's record is still on this lease (the session's).
    pub guard_lease: i64,
    /// How long etcd is retried for: by then the lease is gone anyway.
    pub ttl: Duration,
}

/// Which of the store's etcd connections a call goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Claims,
    View,
    Reads,
}

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// Bound on every unary etcd call.
    pub op_timeout: Duration,
    /// HTTP/2 keep-alive on the etcd channel, so a dead etcd is noticed
    /// without waiting for a TCP time-out.
    pub http2_keepalive: Duration,
    /// How many keep-alive streams the leases are spread over.
    pub keepalive_streams: usize,
    pub security: EtcdSecurity,
}

/// TLS and credentials for etcd; both off by default.
#[derive(Clone, Default)]
pub struct EtcdSecurity {
    pub tls: Option<etcd_client::TlsOptions>,
    /// etcd user and password (etcd auth enabled).
    pub user: Option<(String, String)>,
}

impl std::fmt::Debug for EtcdSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        f.debug_struct("EtcdSecurity")
            .field("tls", &self.tls.is_some())
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .finish()
    }
}

/// What every claim of one session has in common, shared by all of them.
#[derive(Debug, Clone)]
pub struct Holder {
    pub node_id: Arc<str>,
    pub endpoints: Arc<HashMap<String, String>>,
    pub session_id: Arc<str>,
    pub service_id: Arc<str>,
}

/// What a node asks for when it claims a broadcast.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub broadcast: String,
    pub holder: Holder,
    pub ttl: Duration,
    /// The lease of this session's `nodes/{node_id}` record. Every claim and
    /// adoption checks, in the same transaction, that the record is still on
    /// it: a session superseded by a newer one of its node (on any replica)
    /// can change no claim, even if it was paused and wakes up late.
    pub guard_lease: i64,
    /// The node listed it live when it (re)attached: its key most likely
    /// names the node already, so it is read before any write (a failover
    /// adopts by linearizable reads, which etcd answers without a Raft
    /// entry, instead of by failing writes).
    pub adopting: bool,
}

/// What a claim attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    Outcome(ClaimOutcome),
    /// The node's record is no longer on this session's lease: written by
    /// the session `session_id` (possibly this one again, after renewing it).
    Fenced {
        session_id: String,
    },
}

/// A session's record of its node, written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    /// The record's lease: the session's fence (see [`ClaimRequest::guard_lease`])
    /// and the lease its claims go on.
    pub lease_id: i64,
    pub draining: bool,
    /// The etcd revision of the write: a record written later supersedes it.
    pub revision: i64,
    /// Where the session whose record this one replaced left its claims.
    pub earlier: crate::claims::Earlier,
}

/// The whole prefix at one revision.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub claims: Vec<Claim>,
    pub nodes: Vec<(String, NodeRecord)>,
    pub replicas: Vec<(String, ReplicaRecord)>,
    pub revision: i64,
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// Claim writes, grants, revokes and the reads sessions make.
    client: Client,
    /// The ownership view's read and watch.
    view: Client,
    /// Reads made for clients: consistent `GetOwner`, watches replaying
    /// history. A reader, however slow or many, waits only on this one.
    reads: Client,
    /// Claims and revokes wait here for a worker: a hello listing thousands
    /// of live tracks (or a goodbye releasing them) queues small jobs instead
    /// of flooding etcd past its time-outs or holding thousands of tasks,
    /// in a line of its session's own (see [`queue`]).
    jobs: FairQueue<worker::Job>,
    granting: tokio::sync::Semaphore,
    layout: Layout,
    op_timeout: Duration,
    metrics: Arc<Metrics>,
    keepalive: KeepAlive,
}

pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// etcd leases have whole-second TTLs; round up so a lease never lives
/// shorter than asked.
pub fn ttl_seconds(ttl: Duration) -> i64 {
    (ttl.as_millis().div_ceil(1000)).max(1) as i64
}

impl Store {
    /// Connects lazily: this returns at once even when etcd is down; calls
    /// fail (and are retried by their callers) until it is up.
    pub async fn connect(config: &StoreConfig, metrics: Arc<Metrics>) -> Result<Self> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(config.http2_keepalive, config.http2_keepalive)
            .with_keep_alive_while_idle(true);
        if let Some(tls) = &config.security.tls {
            options = options.with_tls(tls.clone());
        }
        if let Some((user, password)) = &config.security.user {
            options = options
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        // One HTTP/2 connection per purpose, so none waits in another's
        // flow control: renewals never behind a burst of claims, and claims
        // never behind the view's watch or a reader's.
        let connect = || Client::connect(&config.endpoints, Some(options.clone()));
        let client = connect().await?;
        let view = connect().await?;
        let reads = connect().await?;
        let renewals = connect().await?;
        let keepalive = KeepAlive::start(renewals, config.keepalive_streams, metrics.clone());
        let store = Self {
            inner: Arc::new(Inner {
                client,
                view,
                reads,
                jobs: FairQueue::default(),
                granting: tokio::sync::Semaphore::new(GRANTS_IN_FLIGHT),
                layout: Layout::new(config.prefix.clone()),
                op_timeout: config.op_timeout,
                metrics,
                keepalive,
            }),
        };
        for _ in 0..worker::WORKERS {
            tokio::spawn(store.clone().work());
        }
        Ok(store)
    }

    fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    fn keepalive(&self) -> &KeepAlive {
        &self.inner.keepalive
    }

    /// Keeps a node record's lease alive, its TTL counted from now (it was
    /// just written); its loss is reported to `notify`.
    pub fn keep_record(
        &self,
        lease_id: i64,
        ttl: Duration,
        renew: Duration,
        notify: mpsc::UnboundedSender<LeaseLoss>,
    ) {
        self.keepalive()
            .keep(lease_id, ttl, renew, notify, tokio::time::Instant::now());
    }

    /// Stops keeping a lease alive for `notify` (a claim or record given up).
    pub fn stop_keeping(&self, lease_id: i64, notify: &mpsc::UnboundedSender<LeaseLoss>) {
        self.keepalive().forget(lease_id, notify);
    }

    /// Watches the claims of broadcasts whose names start with
    /// `name_prefix` on the connection for `purpose`, from `start_revision`.
    pub fn watch_claims(
        &self,
        purpose: Purpose,
        name_prefix: &str,
        start_revision: i64,
    ) -> mpsc::Receiver<Result<watch::Batch, Error>> {
        self.watch(
            purpose,
            self.layout().broadcasts(name_prefix),
            start_revision,
        )
    }

    /// Watches every claim and node record of this deployment.
    pub fn watch_everything(
        &self,
        purpose: Purpose,
        start_revision: i64,
    ) -> mpsc::Receiver<Result<watch::Batch, Error>> {
        self.watch(purpose, self.layout().prefix().to_string(), start_revision)
    }

    /// Keeps an adopted claim's lease alive for `notify`. Its first renewal
    /// goes at once: how much of its TTL is left is not known (its last
    /// renewal was another session's).
    pub fn keep_adopted(
        &self,
        lease_id: i64,
        ttl: Duration,
        renew: Duration,
        notify: mpsc::UnboundedSender<LeaseLoss>,
    ) {
        let now = tokio::time::Instant::now();
        let valid_from = now.checked_sub(ttl / 4).unwrap_or(now);
        self.inner
            .keepalive
            .keep(lease_id, ttl, renew, notify, valid_from);
    }
}
