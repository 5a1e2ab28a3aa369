//! What a replica says about itself, and to whom.
//!
//! - **Liveness** (`/livez`, and `claim-service healthcheck`, which the
//!   images' Docker `HEALTHCHECK` runs): the process answers. Nothing shared
//!   and nothing about etcd can flip it, so an orchestrator that restarts
//!   unhealthy containers never restarts a replica that can do nothing
//!   about etcd (a restart would only drop its sessions).
//! - **Readiness** (`/readyz`; `/healthz` says the same in gRPC health's
//!   words; `grpc.health.v1`; the `claims_serving` gauge): claims can be
//!   made here. etcd answers a linearizable read on the claims' own
//!   connection — so it has a quorum: a member that answers without one
//!   does not count — and the ownership view has read etcd, the layout etcd
//!   holds is one this build serves, and the replica is not draining. A
//!   load balancer follows it; the `ClaimServiceCannotReachEtcd` alert
//!   fires on it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use crate::metrics::Metrics;
use crate::replica::ReplicaState;
use crate::store::Store;
use crate::view::View;

const CHECK_EVERY: Duration = Duration::from_secs(1);
const VIEW_SYNC_CHECK_EVERY: Duration = Duration::from_millis(50);

/// The gRPC services whose health is reported ("" is the server's).
pub const SERVICES: [&str; 4] = [
    "",
    "claims.v1.ClaimSessions",
    "claims.v1.Ownership",
    "claims.v1.Admin",
];

/// Why a replica is not ready.
#[derive(Debug, Clone, PartialEq)]
enum Why {
    Starting,
    EtcdUnreachable {
        since: Instant,
        error: String,
    },
    ViewNotSynced,
    /// The layout version etcd holds is not checked yet.
    LayoutUnchecked,
    /// etcd holds a layout this build does not know: it writes nothing.
    UnknownLayout(String),
    /// Moving its sessions away (`drain-replica`, or stopping).
    Draining {
        sessions: usize,
    },
    ShuttingDown,
}

/// The replica's readiness, as the last check found it.
#[derive(Default)]
pub struct Readiness {
    ready: AtomicBool,
    why: Mutex<Option<Why>>,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn set(&self, why: Option<Why>) {
        self.ready.store(why.is_none(), Ordering::Relaxed);
        *self.why.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    /// What `/readyz` answers: `READY`, or `NOT_READY: ` and why.
    pub fn answer(&self) -> (StatusCode, String) {
        let why = self.why.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let reason = match why {
            None if self.is_ready() => return (StatusCode::OK, "READY\n".into()),
            None | Some(Why::Starting) => "starting: etcd not asked yet".to_string(),
            Some(Why::EtcdUnreachable { since, error }) => format!(
                "etcd has not answered a linearizable read for {}s (no quorum, or unreachable): {error}",
                since.elapsed().as_secs()
            ),
            Some(Why::ViewNotSynced) => "the ownership view has not read etcd yet".into(),
            Some(Why::LayoutUnchecked) => "checking the layout version etcd holds".into(),
            Some(Why::UnknownLayout(problem)) => problem,
            Some(Why::Draining { sessions: 0 }) => {
                "drained: this replica holds no session and takes none; restart it to serve again".into()
            }
            Some(Why::Draining { sessions }) => format!(
                "draining: moving its {sessions} sessions to the other replicas"
            ),
            Some(Why::ShuttingDown) => "shutting down".into(),
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("NOT_READY: {reason}\n"),
        )
    }

    /// What `/healthz` answers: readiness in gRPC health's words.
    pub fn serving(&self) -> (StatusCode, &'static str) {
        if self.is_ready() {
            (StatusCode::OK, "SERVING\n")
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "NOT_SERVING\n")
        }
    }
}

/// Everything the health loop tells.
pub struct Reporters {
    pub health: tonic_health::server::HealthReporter,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    /// Whether the gRPC health has been set once.
    told: AtomicBool,
    /// Held while telling, so two tellings do not interleave; true once
    /// the replica stops: a check still under way then tells nothing.
    stopping: tokio::sync::Mutex<bool>,
}

impl Reporters {
    pub fn new(
        health: tonic_health::server::HealthReporter,
        readiness: Arc<Readiness>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            health,
            readiness,
            metrics,
            told: AtomicBool::new(false),
            stopping: tokio::sync::Mutex::new(false),
        }
    }

    async fn tell(&self, why: Option<Why>) {
        let mut stopping = self.stopping.lock().await;
        if *stopping {
            return;
        }
        *stopping = why == Some(Why::ShuttingDown);
        let ready = why.is_none();
        // gRPC health watchers hear changes only.
        if ready != self.readiness.is_ready() || !self.told.swap(true, Ordering::Relaxed) {
            let status = if ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for s in SERVICES {
                self.health.set_service_status(s, status).await;
            }
            self.metrics.serving.set(i64::from(ready));
        }
        self.readiness.set(why);
    }

    /// Not ready any more: the replica stops.
    pub async fn shutting_down(&self) {
        self.tell(Some(Why::ShuttingDown)).await;
    }
}

/// Checks readiness every second until `token` is cancelled, telling every
/// reporter when it changes.
pub async fn watch(
    store: Store,
    view: Arc<View>,
    replica: Arc<ReplicaState>,
    reporters: Arc<Reporters>,
    token: CancellationToken,
) {
    reporters.tell(Some(Why::Starting)).await;
    let mut ready = None;
    let mut failures = 0;
    let mut unreachable_since = None;
    loop {
        // One failed read can be a dead member of a cluster that still
        // answers through the others: only two in a row count.
        let error = match store.ping().await {
            Ok(_) => {
                failures = 0;
                unreachable_since = None;
                None
            }
            Err(e) => {
                failures += 1;
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                Some((since, e.to_string()))
            }
        };
        if token.is_cancelled() {
            return;
        }
        let why = match error {
            Some((since, error)) if failures >= 2 => Some(Why::EtcdUnreachable { since, error }),
            _ if !view.synced() => Some(Why::ViewNotSynced),
            _ => match replica.layout_problem() {
                Some(problem) => Some(Why::UnknownLayout(problem)),
                None if !replica.may_write() => Some(Why::LayoutUnchecked),
                None if replica.is_draining() => Some(Why::Draining {
                    sessions: replica.held(),
                }),
                None => None,
            },
        };
        let now_ready = why.is_none();
        if ready != Some(now_ready) {
            match &why {
                None => tracing::info!("etcd reachable: SERVING"),
                Some(Why::ViewNotSynced) => {
                    tracing::info!("ownership view has not read etcd yet: NOT_SERVING")
                }
                Some(Why::EtcdUnreachable { error, .. }) => {
                    tracing::warn!(error = %error, "etcd unreachable: NOT_SERVING")
                }
                Some(Why::UnknownLayout(_)) => {
                    tracing::warn!("layout version unknown to this build: NOT_SERVING")
                }
                Some(Why::Draining { .. }) => tracing::info!("draining: NOT_SERVING"),
                Some(Why::Starting | Why::ShuttingDown | Why::LayoutUnchecked) => {}
            }
            ready = Some(now_ready);
        }
        // The reason's age changes while it lasts: keep it current.
        reporters.tell(why.clone()).await;
        let next = if matches!(why, Some(Why::ViewNotSynced | Why::LayoutUnchecked)) {
            VIEW_SYNC_CHECK_EVERY
        } else {
            CHECK_EVERY
        };
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = token.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_replica_shutting_down_stays_not_serving_whatever_a_late_check_finds() {
        let (health, _service) = tonic_health::server::health_reporter();
        let reporters = Reporters::new(
            health,
            Arc::new(Readiness::default()),
            Arc::new(Metrics::new()),
        );
        reporters.tell(None).await;
        assert!(reporters.readiness.is_ready());
        reporters.shutting_down().await;
        // A check that was under way when the replica began to stop.
        reporters.tell(None).await;
        assert!(!reporters.readiness.is_ready());
        assert_eq!(reporters.readiness.answer().1, "NOT_READY: shutting down\n");
        assert_eq!(reporters.metrics.serving.get(), 0);
    }

    #[test]
    fn readiness_says_why_it_is_not_ready() {
        let r = Readiness::default();
        assert_eq!(r.answer().0, StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.answer().1.starts_with("NOT_READY: starting"));
        r.set(Some(Why::EtcdUnreachable {
            since: Instant::now(),
            error: "etcdserver: no leader".into(),
        }));
        let (code, body) = r.answer();
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("linearizable read for 0s"), "{body}");
        assert!(body.contains("no leader"), "{body}");
        assert_eq!(r.serving().1, "NOT_SERVING\n");
        r.set(None);
        assert_eq!(r.answer(), (StatusCode::OK, "READY\n".into()));
        assert_eq!(r.serving(), (StatusCode::OK, "SERVING\n"));
    }
}
