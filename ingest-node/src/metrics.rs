//! Prometheus metrics of the ingest node, served at `/metrics`.

use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::bridge::{BridgeView, ClaimState};

pub struct Metrics {
    registry: Registry,
    pub publishers: IntGauge,
    pub viewers: IntGauge,
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    pub redirects: IntCounter,
    /// Owners looked up for redirects, by where the answer came from.
    pub owner_lookups: IntCounterVec,
    pub viewers_dropped: IntCounter,
    pub publishes_refused: IntCounterVec,
    pub rtmp_connections: IntGauge,
    claim_states: IntGaugeVec,
    claim_service_connected: IntGauge,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    r.expect("metric definitions are static and valid")
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("ingest".into()), None)
            .expect("the prefix \"ingest\" is a valid metric prefix");
        let m = Self {
            publishers: must(IntGauge::new(
                "publishers",
                "publishers streaming to this node",
            )),
            viewers: must(IntGauge::new(
                "viewers",
                "HTTP-FLV viewers playing from this node",
            )),
            bytes_in: must(IntCounter::new("bytes_in_total", "RTMP bytes received")),
            bytes_out: must(IntCounter::new(
                "bytes_out_total",
                "HTTP-FLV bytes sent to viewers",
            )),
            redirects: must(IntCounter::new(
                "redirects_total",
                "viewers sent to the owning node",
            )),
            owner_lookups: must(IntCounterVec::new(
                Opts::new(
                    "owner_lookups_total",
                    "owners looked up for a viewer, by source: cache (the node's watch-fed owner cache, no round trip) or claim_service (a linearizable GetOwner: an etcd read)",
                ),
                &["source"],
            )),
            viewers_dropped: must(IntCounter::new(
                "viewers_dropped_total",
                "viewers dropped for falling behind",
            )),
            publishes_refused: must(IntCounterVec::new(
                Opts::new(
                    "publishes_refused_total",
                    "publishes refused (and publishers dropped: taken_over), by reason",
                ),
                &["reason"],
            )),
            rtmp_connections: must(IntGauge::new("rtmp_connections", "open RTMP connections")),
            claim_states: must(IntGaugeVec::new(
                Opts::new("claim_states", "local broadcasts by claim state"),
                &["state"],
            )),
            claim_service_connected: must(IntGauge::new(
                "claim_service_connected",
                "1 while a claim-service session is open",
            )),
            registry,
        };
        for c in [
            Box::new(m.publishers.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.viewers.clone()),
            Box::new(m.bytes_in.clone()),
            Box::new(m.bytes_out.clone()),
            Box::new(m.redirects.clone()),
            Box::new(m.owner_lookups.clone()),
            Box::new(m.viewers_dropped.clone()),
            Box::new(m.publishes_refused.clone()),
            Box::new(m.rtmp_connections.clone()),
            Box::new(m.claim_states.clone()),
            Box::new(m.claim_service_connected.clone()),
        ] {
            must(m.registry.register(c));
        }
        m
    }

    /// The text exposition, with claim states read from the bridge now.
    pub fn render(&self, bridge: &BridgeView) -> String {
        for label in ClaimState::LABELS {
            let n = bridge
                .states
                .values()
                .filter(|s| s.label() == label)
                .count();
            self.claim_states.with_label_values(&[label]).set(n as i64);
        }
        self.claim_service_connected
            .set(i64::from(bridge.connected));
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
