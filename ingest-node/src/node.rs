//! Assembles an ingest node: registry, claim bridge, a front end (our RTMP
//! ingest, or a media server's hooks) and HTTP, and shuts them down in
//! order.

use crate::error::{Error, Result};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use claims_proto::listen::{self, Gate};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::bridge::{Bridge, BridgeConfig, Hold};
use crate::config::Config;
use crate::gate::PublishGate;
use crate::hooks::{self, publishers::Publishers, Kind, Sidecar};
use crate::http::{router, HttpState};
use crate::layers;
use crate::lookup::OwnerLookup;
use crate::media::Hub;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::relay::Relays;
use crate::rtmp::{self, Ingest};

/// Where publishers come in: our RTMP listener, or a media server's hooks.
enum Front {
    Rtmp(TcpListener),
    Hooks(Kind, TcpListener),
}

/// How long open HTTP requests may go on once the node stops.
const HTTP_GRACE: Duration = Duration::from_secs(2);
/// Longest a playback request (a lookup, a redirect) takes to answer.
const HTTP_TIME_LIMIT: Duration = Duration::from_secs(10);
/// Playback and API requests answered at once; more get `503`.
const HTTP_IN_FLIGHT: usize = 1024;
/// Hooks answered at once (a publish hook waits for its claim); more get
/// `503`, which every media server takes as a refusal.
const HOOKS_IN_FLIGHT: usize = 512;

/// Longest a hook takes to answer: a publish may be held for its claim
/// past the claim wait, up to a gone owner's grace ([`Hold`]).
fn hooks_time_limit(claim_wait: Duration) -> Duration {
    claim_wait.max(Hold::UNKNOWN_GRACE) + Hold::SETTLE + Duration::from_secs(5)
}

/// A listener on `addr`, for `what`.
async fn listen(what: &'static str, addr: std::net::SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen { what, addr, source })
}

/// Runs the node until `shutdown` resolves: then RTMP stops (its tracks
/// close), the bridge says goodbye (claims released at once), HTTP stops.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let front = match config.hooks.media_server {
        None => Front::Rtmp(listen("RTMP", config.rtmp_listen).await?),
        Some(kind) => Front::Hooks(
            kind,
            listen("media-server hooks", config.hooks.hooks_listen).await?,
        ),
    };
    let http_listener = listen("HTTP", config.http_listen).await?;
    let claim_services = config.claim_services()?;
    let advertise_rtmp = config.advertise_rtmp();
    let advertise_http = config.advertise_http();
    let registry = Registry::new();
    let hub = Hub::default();
    let metrics = Arc::new(Metrics::new());
    // A sidecar that restarted finds what its media server still publishes
    // before its claim session starts, so the claims are adopted.
    let api = config.hooks.api()?;
    let restored = match (&front, &api) {
        (Front::Hooks(kind, _), Some(api)) => match hooks::read_listing(*kind, api).await {
            Ok(page) => hooks::restore(*kind, &registry, &page.listed, &metrics),
            Err(e) => {
                tracing::warn!(api = %api.url, error = %e, "cannot read the media server's publishers at start; its hooks will tell");
                Publishers::new(kind.replaces_publishers())
            }
        },
        (Front::Hooks(kind, _), None) => Publishers::new(kind.replaces_publishers()),
        _ => Publishers::default(),
    };
    let bridge_stop = CancellationToken::new();
    let (bridge, mut bridge_task) = Bridge::start(
        BridgeConfig {
            node_id: config.node_id.clone(),
            endpoints: [
                Some(("rtmp".to_string(), advertise_rtmp.clone())),
                Some(("http".to_string(), advertise_http.clone())),
                config
                    .advertise_ovt
                    .clone()
                    .map(|ovt| ("ovt".to_string(), ovt)),
            ]
            .into_iter()
            .flatten()
            .collect(),
            claim_services: claim_services.clone(),
            lease_ttl_ms: config.lease_ttl.map(|d| d.as_millis() as u64).unwrap_or(0),
            duplicates: config.duplicate_publisher,
        },
        registry.clone(),
        bridge_stop.clone(),
    );
    let ingest = match config.hooks.media_server {
        None => format!("rtmp on {}", config.rtmp_listen),
        Some(kind) => format!(
            "{kind:?} hooks on {}{}",
            config.hooks.hooks_listen,
            kind.path()
        ),
    };
    tracing::info!(
        node_id = %config.node_id,
        %ingest,
        http = %config.http_listen,
        %advertise_rtmp,
        %advertise_http,
        claim_services = ?config.claim_service,
        tls = claim_services.tls.is_some(),
        mtls = config.tls_cert.is_some(),
        on_claim_unavailable = ?config.on_claim_unavailable,
        "ingest node starting"
    );

    let front_stop = CancellationToken::new();
    let (rtmp_limits, http_limits) = config.limits.listen_limits();
    let gate = Arc::new(PublishGate {
        registry: registry.clone(),
        bridge: bridge.clone(),
        metrics: metrics.clone(),
        hold: Hold {
            duplicates: config.duplicate_publisher,
            claim_wait: config.claim_wait,
        },
        on_unavailable: config.on_claim_unavailable,
    });
    let mut sidecar_of_front = None;
    let front_task = match front {
        Front::Rtmp(listener) => {
            let ingest = Arc::new(Ingest {
                gate: gate.clone(),
                hub: hub.clone(),
                idle_timeout: config.idle_timeout,
                max_message: config.limits.max_rtmp_message,
                advertise_http: advertise_http.clone(),
            });
            tokio::spawn(rtmp::serve(
                listener,
                Gate::new("rtmp", rtmp_limits),
                ingest,
                front_stop.clone(),
            ))
        }
        Front::Hooks(kind, listener) => {
            let ome_secret = match &config.hooks.ome_secret_file {
                Some(path) => Some(std::fs::read(path).map_err(|e| {
                    Error::Config(format!(
                        "cannot read --ome-secret-file {}: {e}",
                        path.display()
                    ))
                })?),
                None => None,
            };
            let sidecar = Arc::new(Sidecar {
                kind,
                gate: gate.clone(),
                lookup: OwnerLookup::new(claim_services.clone()),
                ome_secret: ome_secret.map(|s| s.trim_ascii().to_vec()),
                publishers: std::sync::Mutex::new(restored),
                api,
                liveness: std::sync::Mutex::new(hooks::liveness::Liveness::new(
                    std::time::Instant::now(),
                    config.hooks.media_server_gone_after,
                )),
                relays: kind
                    .takes_relays()
                    .then(|| Arc::new(Relays::new(front_stop.clone()))),
                local_rtmp: advertise_rtmp.clone(),
            });
            tracing::info!(media_server = ?kind, hooks = %config.hooks.hooks_listen, path = kind.path(), api = ?config.hooks.media_server_api, gone_after = ?config.hooks.media_server_gone_after, "serving the media server's hooks instead of RTMP");
            sidecar_of_front = Some(sidecar.clone());
            tokio::spawn(hooks::watch(
                sidecar.clone(),
                config.hooks.update_timeout(),
                config.hooks.media_server_api_interval,
                front_stop.clone(),
            ));
            tokio::spawn(listen::serve_http(
                listener,
                Gate::new("hooks", http_limits),
                layers::limited(
                    hooks::router(sidecar),
                    hooks_time_limit(config.claim_wait),
                    HOOKS_IN_FLIGHT,
                ),
                config.limits.handshake_timeout,
                front_stop.clone(),
                HTTP_GRACE,
            ))
        }
    };

    let http_stop = CancellationToken::new();
    // Redirects answered from a watch-fed cache: no etcd read per viewer.
    let owners = config
        .owner_cache
        .then(|| crate::owners::OwnerCache::start(claim_services.clone()));
    let state = Arc::new(HttpState {
        node_id: config.node_id.clone(),
        advertise_http,
        lookup: OwnerLookup::cached(claim_services.clone(), owners, metrics.clone()),
        claim_services: claim_services.clone(),
        hub,
        registry,
        bridge: bridge.clone(),
        metrics,
    });
    let http_task = tokio::spawn(listen::serve_http(
        http_listener,
        Gate::new("http", http_limits),
        layers::limited(router(state), HTTP_TIME_LIMIT, HTTP_IN_FLIGHT),
        config.limits.handshake_timeout,
        http_stop.clone(),
        HTTP_GRACE,
    ));

    shutdown.await;
    // A sidecar whose media server goes on publishing leaves its claims to
    // be adopted by its next run (same fencing tokens, nothing released):
    // it ends its session without goodbye before its publishers close.
    if let Some(sidecar) = &sidecar_of_front {
        if !config.hooks.release_on_exit && sidecar.server_goes_on().await {
            tracing::info!(grace = "the claim service's --detach-grace", "shutting down while the media server still publishes: leaving the claim session without goodbye, so the claims wait for this sidecar's next run");
            bridge.leave_without_goodbye();
            bridge_stop.cancel();
            // The session is gone before any publisher closes here.
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut bridge_task).await;
        }
    }
    tracing::info!("shutting down: closing publishers, saying goodbye, stopping HTTP");
    front_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), front_task).await;
    if !bridge_stop.is_cancelled() {
        bridge_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), bridge_task).await;
    }
    http_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), http_task).await;
    tracing::info!("ingest node stopped");
    Ok(())
}
