//! The live ownership page: `/ui/` on the metrics listener, behind the read
//! credential when one is configured.
//!
//! What it shows comes from this replica's watch-fed view (nodes, claims,
//! recent changes) and its sessions (what they stand by for); it reads
//! nothing from etcd. The page pages through claims (never the whole list
//! in the browser) and follows changes over server-sent events. Its HTML,
//! script and style are compiled into the binary (`assets/`); the script
//! is the repository's own, with no build step.
//!
//! - `api.rs`: the JSON the page reads (overview, a page of claims);
//! - `changes.rs`: the recent ownership changes and their live feed.

mod api;
mod changes;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

pub use changes::Changes;

use crate::access::Access;
use crate::health::Readiness;
use crate::sessions::Context;

/// What the page's handlers share.
pub struct Page {
    pub ctx: Arc<Context>,
    pub readiness: Arc<Readiness>,
    pub changes: Arc<Changes>,
    /// Ends the change feeds when the replica stops.
    pub shutdown: CancellationToken,
}

/// The page's routes, each behind the read credential.
pub fn router(page: Arc<Page>) -> Router {
    let access = page.ctx.access.clone();
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(index))
        .route("/ui/app.js", get(script))
        .route("/ui/style.css", get(style))
        .route("/ui/api/overview", get(api::overview))
        .route("/ui/api/claims", get(api::claims))
        .route("/ui/api/changes", get(changes::feed))
        .with_state(page)
        .layer(axum::middleware::from_fn_with_state(access, require_read))
}

/// The read credential, in front of every route of the page.
async fn require_read(State(access): State<Access>, request: Request, next: Next) -> Response {
    match access.check_read_http(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refusal) => (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(
                    "Basic realm=\"claim-service: any user name, the read token as password\"",
                ),
            )],
            format!("{refusal}\n"),
        )
            .into_response(),
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Only this page's own script and style; names are shown as
            // text, never as markup.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset(
        "text/html; charset=utf-8",
        include_str!("assets/index.html"),
    )
}

async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    )
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", include_str!("assets/style.css"))
}
