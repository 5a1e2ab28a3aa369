//! HTTP: HTTP-FLV playback, redirects to the owner, health, metrics and the
//! JSON list of local broadcasts.
//!
//! `GET /APP/STREAM.flv` plays a broadcast published on this node. On a node
//! that does not have it, the owner is read linearizably from the claim
//! service (`GetOwner { consistent: true }`), and the viewer is sent there
//! with `302` and the same path and query. A redirect never points at this
//! node (its id or its own `http` endpoint): a claim naming this node for a
//! broadcast it does not have is stale, and answers `404`. With linearizable
//! reads, two nodes cannot send a viewer back and forth on stale views.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use claims_proto::v1 as pb;
use futures::StreamExt;
use serde::Serialize;
use tokio_stream::wrappers::ReceiverStream;

use crate::bridge::{Bridge, ClaimServices, ClaimState};
use crate::lookup::{Freshness, OwnerLookup};
use crate::media::Hub;
use crate::metrics::Metrics;
use crate::registry::Registry;

pub struct HttpState {
    pub node_id: String,
    pub advertise_http: String,
    pub claim_services: ClaimServices,
    pub hub: Hub,
    pub registry: Registry,
    pub bridge: Arc<Bridge>,
    pub metrics: Arc<Metrics>,
    /// Who owns a broadcast this node does not play.
    pub lookup: OwnerLookup,
}

pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/broadcasts", get(broadcasts))
        .fallback(get(play))
        .with_state(state)
}

/// Liveness: the process answers. Claim-service trouble does not make a
/// node unhealthy: it keeps serving its publishers.
async fn healthz(State(s): State<Arc<HttpState>>) -> impl IntoResponse {
    let view = s.bridge.view();
    axum::Json(serde_json::json!({
        "status": "ok",
        "node_id": s.node_id,
        "claim_service_connected": view.connected,
        "claim_service": view.service,
        "draining": view.draining,
    }))
}

/// Readiness for new publishers: 503 while draining.
async fn readyz(State(s): State<Arc<HttpState>>) -> Response {
    if s.bridge.view().draining {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining: no new publishers",
        )
    } else {
        text(StatusCode::OK, "ready")
    }
}

async fn metrics(State(s): State<Arc<HttpState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(&s.bridge.view()),
    )
}

#[derive(Serialize)]
struct BroadcastInfo {
    broadcast: String,
    tracks: Vec<String>,
    claim: ClaimState,
    fencing_token: Option<i64>,
    viewers: usize,
}

async fn broadcasts(State(s): State<Arc<HttpState>>) -> impl IntoResponse {
    let view = s.bridge.view();
    let viewers: std::collections::HashMap<String, usize> = s.hub.list().into_iter().collect();
    let mut names: Vec<String> = s.registry.live().into_iter().map(|(b, _)| b).collect();
    names.dedup();
    let list: Vec<BroadcastInfo> = names
        .into_iter()
        .map(|b| {
            let claim = view.states.get(&b).cloned().unwrap_or(if view.connected {
                ClaimState::Pending
            } else {
                ClaimState::Unknown
            });
            BroadcastInfo {
                tracks: s.registry.tracks(&b),
                fencing_token: match &claim {
                    ClaimState::Claimed { fencing_token, .. } => Some(*fencing_token),
                    _ => None,
                },
                viewers: viewers.get(&b).copied().unwrap_or(0),
                claim,
                broadcast: b,
            }
        })
        .collect();
    axum::Json(list)
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut body = msg.into();
    body.push('\n');
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Holds the viewer gauge up while a viewer's body streams.
struct ViewerGuard(Arc<Metrics>);

impl Drop for ViewerGuard {
    fn drop(&mut self) {
        self.0.viewers.dec();
    }
}

async fn play(State(s): State<Arc<HttpState>>, request: Request) -> Response {
    let uri = request.uri().clone();
    let path = uri.path();
    let Some(broadcast) = path.strip_prefix('/').and_then(|p| p.strip_suffix(".flv")) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no such page {path:?}; play a broadcast at /APP/STREAM.flv"),
        );
    };
    if let Err(why) = claims_proto::names::check_broadcast(broadcast) {
        return text(StatusCode::BAD_REQUEST, why);
    }
    if let Some(stream) = s.hub.get(broadcast) {
        let serving = !matches!(
            s.bridge.state(broadcast),
            Some(ClaimState::Standby { .. }) | Some(ClaimState::Rejected { .. })
        );
        if serving {
            return play_local(&s, stream.subscribe());
        }
    }
    redirect(&s, broadcast, &uri).await
}

fn play_local(s: &Arc<HttpState>, rx: tokio::sync::mpsc::Receiver<bytes::Bytes>) -> Response {
    s.metrics.viewers.inc();
    let guard = ViewerGuard(s.metrics.clone());
    let metrics = s.metrics.clone();
    let body = ReceiverStream::new(rx).map(move |tag| {
        let _held = &guard;
        metrics.bytes_out.inc_by(tag.len() as u64);
        Ok::<_, Infallible>(tag)
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "video/x-flv")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|e| text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// The owner's node is gone and its claim not yet moved: a redirect there
/// would end in a refused connection, so the viewer is told to come back
/// when the grace ends (`503` with `Retry-After`), by which time the
/// broadcast is claimed anew wherever its publisher went.
fn owner_gone(broadcast: &str, owner: &pb::Claim) -> Response {
    let now = crate::bridge::unix_ms();
    let wait_s = if owner.grace_ends_unix_ms > 0 {
        ((owner.grace_ends_unix_ms - now).max(0) as u64)
            .div_ceil(1000)
            .max(1)
    } else {
        owner.lease_ttl_ms.div_ceil(1000).max(1)
    };
    let mut response = text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "{broadcast} is owned by node {}, which is gone; its claim moves in at most {wait_s} s: retry then",
            owner.node_id
        ),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(wait_s));
    response
}

/// Marks a redirected request, so that the node it is sent to looks the
/// owner up linearizably if it does not own the broadcast itself: two stale
/// caches can then never send a viewer back and forth.
const HOP: &str = "claims_hop=1";

async fn redirect(s: &Arc<HttpState>, broadcast: &str, uri: &axum::http::Uri) -> Response {
    let hopped = uri.query().is_some_and(|q| q.split('&').any(|p| p == HOP));
    let freshness = match hopped {
        true => Freshness::Linearizable,
        false => Freshness::Cached,
    };
    let owner = match s.lookup.owner(broadcast, freshness).await {
        Ok(Some(owner)) => owner,
        Ok(None) => {
            return text(
                StatusCode::NOT_FOUND,
                format!("{broadcast} is not live anywhere"),
            )
        }
        Err(e) => {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot ask who owns {broadcast}: {e}"),
            )
        }
    };
    if owner.detached {
        return owner_gone(broadcast, &owner);
    }
    let http = owner.endpoints.get("http").map(|h| h.trim_end_matches('/'));
    let to_self =
        owner.node_id == s.node_id || http == Some(s.advertise_http.trim_end_matches('/'));
    let Some(http) = http.filter(|_| !to_self) else {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "{broadcast} is not live here and its claim (node {}) points nowhere else",
                owner.node_id
            ),
        );
    };
    let mut location = format!("{http}{}?", uri.path());
    if let Some(q) = uri.query().filter(|q| !q.is_empty()) {
        location.push_str(q);
        location.push('&');
    }
    if !hopped {
        location.push_str(HOP);
    } else {
        location.pop();
    }
    let Ok(value) = HeaderValue::from_str(&location) else {
        return text(
            StatusCode::BAD_GATEWAY,
            format!("owner endpoint {http:?} is not a usable URL"),
        );
    };
    s.metrics.redirects.inc();
    tracing::debug!(%broadcast, owner = %owner.node_id, %location, "redirecting viewer");
    (StatusCode::FOUND, [(header::LOCATION, value)]).into_response()
}
