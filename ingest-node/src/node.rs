//! Assembles an ingest node: registry, claim bridge, RTMP ingest and HTTP,
//! and shuts them down in order.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use claims_proto::listen::{self, Gate};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::bridge::{Bridge, BridgeConfig};
use crate::config::Config;
use crate::http::{router, HttpState};
use crate::media::Hub;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::rtmp::{self, Ingest};

/// How long open HTTP requests may go on once the node stops.
const HTTP_GRACE: Duration = Duration::from_secs(2);

/// Runs the node until `shutdown` resolves: then RTMP stops (its tracks
/// close), the bridge says goodbye (claims released at once), HTTP stops.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let rtmp_listener = TcpListener::bind(config.rtmp_listen)
        .await
        .map_err(|e| format!("cannot listen for RTMP on {}: {e}", config.rtmp_listen))?;
    let http_listener = TcpListener::bind(config.http_listen)
        .await
        .map_err(|e| format!("cannot listen for HTTP on {}: {e}", config.http_listen))?;
    let claim_services = config.claim_services()?;
    let advertise_rtmp = config.advertise_rtmp();
    let advertise_http = config.advertise_http();
    let registry = Registry::new();
    let hub = Hub::default();
    let metrics = Arc::new(Metrics::new());
    let bridge_stop = CancellationToken::new();
    let (bridge, bridge_task) = Bridge::start(
        BridgeConfig {
            node_id: config.node_id.clone(),
            endpoints: [
                ("rtmp".to_string(), advertise_rtmp.clone()),
                ("http".to_string(), advertise_http.clone()),
            ]
            .into(),
            claim_services: claim_services.clone(),
            lease_ttl_ms: config.lease_ttl.map(|d| d.as_millis() as u64).unwrap_or(0),
            duplicates: config.duplicate_publisher,
        },
        registry.clone(),
        bridge_stop.clone(),
    );
    tracing::info!(
        node_id = %config.node_id,
        rtmp = %config.rtmp_listen,
        http = %config.http_listen,
        %advertise_rtmp,
        %advertise_http,
        claim_services = ?config.claim_service,
        tls = claim_services.tls.is_some(),
        mtls = config.tls_cert.is_some(),
        on_claim_unavailable = ?config.on_claim_unavailable,
        "ingest node starting"
    );

    let rtmp_stop = CancellationToken::new();
    let ingest = Arc::new(Ingest {
        registry: registry.clone(),
        hub: hub.clone(),
        bridge: bridge.clone(),
        metrics: metrics.clone(),
        on_unavailable: config.on_claim_unavailable,
        claim_wait: config.claim_wait,
        duplicates: config.duplicate_publisher,
        idle_timeout: config.idle_timeout,
        max_message: config.max_rtmp_message,
        advertise_http: advertise_http.clone(),
    });
    let (rtmp_limits, http_limits) = config.listen_limits();
    let rtmp_task = tokio::spawn(rtmp::serve(
        rtmp_listener,
        Gate::new("rtmp", rtmp_limits),
        ingest,
        rtmp_stop.clone(),
    ));

    let http_stop = CancellationToken::new();
    let state = Arc::new(HttpState::new(
        config.node_id.clone(),
        advertise_http,
        claim_services.clone(),
        hub,
        registry,
        bridge,
        metrics,
    ));
    let http_task = tokio::spawn(listen::serve_http(
        http_listener,
        Gate::new("http", http_limits),
        router(state),
        config.handshake_timeout,
        http_stop.clone(),
        HTTP_GRACE,
    ));

    shutdown.await;
    tracing::info!("shutting down: closing publishers, saying goodbye, stopping HTTP");
    rtmp_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), rtmp_task).await;
    bridge_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), bridge_task).await;
    http_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), http_task).await;
    tracing::info!("ingest node stopped");
    Ok(())
}
