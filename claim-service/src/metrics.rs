//! Prometheus metrics of the claim-service, served as text on their own port.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Claims whose leases this replica keeps alive now.
    pub claims_held: IntGauge,
    /// Claims granted, by `how` (`created` or `adopted`).
    pub claims_granted: IntCounterVec,
    pub claims_conflicted: IntCounter,
    pub claims_released: IntCounter,
    /// Held claims that went away without being released, by `reason`.
    pub claims_lost: IntCounterVec,
    pub sessions_attached: IntGauge,
    /// From `created` (or a retry) to the store's answer.
    pub claim_latency: Histogram,
    pub keepalive_failures: IntCounter,
    /// Renewals sent to etcd.
    pub keepalive_renewals: IntCounter,
    /// Open keep-alive streams to etcd.
    pub keepalive_streams: IntGauge,
    /// 1 while this replica can make claims (health SERVING), else 0.
    pub serving: IntGauge,
    /// Lease grants that waited for due renewals to go out first.
    pub grants_held: IntCounter,
    /// etcd unary round trips, by `op`.
    pub etcd_rtt: HistogramVec,
    /// Session messages refused, by `code`.
    pub rejected_messages: IntCounterVec,
    /// `WatchClaims` streams open now.
    pub watches_open: IntGauge,
    /// Watches ended because their watcher fell too far behind.
    pub watches_behind: IntCounter,
    /// RPCs answered, by method and code (a stream's start).
    pub rpcs: IntCounterVec,
    /// Time to answer an RPC (to a stream's start), by method.
    pub rpc_duration: HistogramVec,
    /// Attached node sessions each replica holds, as this one's view sees
    /// them, by `replica` (service id).
    pub replica_sessions: IntGaugeVec,
    /// Nodes this replica asked to attach to another, by `reason` (spread
    /// or drain).
    pub session_moves: IntCounterVec,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    r.expect("metric definitions are static and valid")
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("claims".into()), None)
            .expect("the prefix \"claims\" is a valid metric prefix");
        let latency_buckets = vec![
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        let m = Self {
            claims_held: must(IntGauge::new(
                "held",
                "claims whose leases this replica keeps alive",
            )),
            claims_granted: must(IntCounterVec::new(
                Opts::new(
                    "granted_total",
                    "claims granted, by how (created or adopted)",
                ),
                &["how"],
            )),
            claims_conflicted: must(IntCounter::new(
                "conflicted_total",
                "claim attempts answered with another owner",
            )),
            claims_released: must(IntCounter::new(
                "released_total",
                "claims released after the last track closed or goodbye",
            )),
            claims_lost: must(IntCounterVec::new(
                Opts::new("lost_total", "held claims lost, by reason"),
                &["reason"],
            )),
            sessions_attached: must(IntGauge::new(
                "sessions_attached",
                "ingest-node sessions attached to this replica",
            )),
            claim_latency: must(Histogram::with_opts(
                HistogramOpts::new(
                    "claim_latency_seconds",
                    "from claim request to store answer",
                )
                .buckets(latency_buckets.clone()),
            )),
            keepalive_failures: must(IntCounter::new(
                "keepalive_failures_total",
                "keep-alive streams that broke or could not be opened",
            )),
            keepalive_renewals: must(IntCounter::new(
                "keepalive_renewals_total",
                "lease renewals sent to etcd",
            )),
            keepalive_streams: must(IntGauge::new(
                "keepalive_streams",
                "open keep-alive streams to etcd",
            )),
            serving: must(IntGauge::new(
                "serving",
                "1 while this replica can make claims (etcd answers and the view has read it), else 0",
            )),
            grants_held: must(IntCounter::new(
                "grants_held_total",
                "lease grants that waited because renewals were behind",
            )),
            etcd_rtt: must(HistogramVec::new(
                HistogramOpts::new("etcd_rtt_seconds", "etcd unary round-trip time, by op")
                    .buckets(latency_buckets.clone()),
                &["op"],
            )),
            rejected_messages: must(IntCounterVec::new(
                Opts::new(
                    "rejected_messages_total",
                    "session messages refused, by gRPC code",
                ),
                &["code"],
            )),
            watches_open: must(IntGauge::new(
                "watches_open",
                "WatchClaims streams open on this replica",
            )),
            watches_behind: must(IntCounter::new(
                "watches_behind_total",
                "WatchClaims streams ended because their watcher fell too far behind",
            )),
            rpcs: must(IntCounterVec::new(
                Opts::new(
                    "rpc_requests_total",
                    "RPCs answered, by method and gRPC code (a stream: how it started)",
                ),
                &["method", "code"],
            )),
            rpc_duration: must(HistogramVec::new(
                HistogramOpts::new(
                    "rpc_duration_seconds",
                    "time to answer an RPC (a stream: to its start), by method",
                )
                .buckets(latency_buckets),
                &["method"],
            )),
            replica_sessions: must(IntGaugeVec::new(
                Opts::new(
                    "replica_sessions",
                    "attached node sessions per replica, as this replica's view sees them",
                ),
                &["replica"],
            )),
            session_moves: must(IntCounterVec::new(
                Opts::new(
                    "session_moves_total",
                    "nodes this replica asked to attach to another replica, by reason (spread, drain)",
                ),
                &["reason"],
            )),
            registry,
        };
        for c in [
            Box::new(m.claims_held.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.claims_granted.clone()),
            Box::new(m.claims_conflicted.clone()),
            Box::new(m.claims_released.clone()),
            Box::new(m.claims_lost.clone()),
            Box::new(m.sessions_attached.clone()),
            Box::new(m.claim_latency.clone()),
            Box::new(m.keepalive_failures.clone()),
            Box::new(m.keepalive_streams.clone()),
            Box::new(m.serving.clone()),
            Box::new(m.keepalive_renewals.clone()),
            Box::new(m.grants_held.clone()),
            Box::new(m.etcd_rtt.clone()),
            Box::new(m.rejected_messages.clone()),
            Box::new(m.watches_open.clone()),
            Box::new(m.watches_behind.clone()),
            Box::new(m.rpcs.clone()),
            Box::new(m.rpc_duration.clone()),
            Box::new(m.replica_sessions.clone()),
            Box::new(m.session_moves.clone()),
        ] {
            must(m.registry.register(c));
        }
        m
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding gathered metrics into a Vec cannot fail");
        String::from_utf8(buf).expect("the text encoder writes UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
