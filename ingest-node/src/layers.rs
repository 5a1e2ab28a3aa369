//! What every HTTP request to the node goes through, as tower layers
//! around its routers (playback and the media-server hooks): a time limit
//! on producing the answer, and a cap on requests being answered at once —
//! over it a request is answered `503` at once instead of queueing, so a
//! flood costs the flood, not everyone behind it. (Connections are capped
//! before this, at the listener; a playback's body streams after its
//! answer, outside the time limit.)

use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::http::StatusCode;
use axum::Router;
use tower::{BoxError, ServiceBuilder};

/// `router` with a time limit of `timeout` per answer and at most
/// `in_flight` answers being made at once.
pub fn limited(router: Router, timeout: Duration, in_flight: usize) -> Router {
    // Around the router as one service (not `Router::layer`, which puts a
    // layer around each route, each with a cap of its own).
    let service = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(move |e: BoxError| async move {
            refusal(e, timeout)
        }))
        .load_shed()
        .concurrency_limit(in_flight)
        .timeout(timeout)
        .service(router);
    Router::new().fallback_service(service)
}

/// The answer to a request a layer turned away.
fn refusal(e: BoxError, timeout: Duration) -> (StatusCode, String) {
    if e.is::<tower::timeout::error::Elapsed>() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no answer within {timeout:?}; retry\n"),
        )
    } else if e.is::<tower::load_shed::error::Overloaded>() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests being answered at once; retry\n".into(),
        )
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use axum::routing::get;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_slow_answer_is_cut_at_the_time_limit() {
        let slow = Router::new().route(
            "/",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
        let app = limited(slow, Duration::from_millis(50), 8);
        let answer = app
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn over_the_cap_is_refused_at_once_not_queued() {
        let (entered_tx, mut entered) = tokio::sync::mpsc::channel::<()>(1);
        let release = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        let held = release.clone();
        let busy = Router::new().route(
            "/",
            get(move || {
                let (entered_tx, held) = (entered_tx.clone(), held.clone());
                async move {
                    let _ = entered_tx.send(()).await;
                    let _ = held.acquire().await;
                    "done"
                }
            }),
        );
        let app = limited(busy, Duration::from_secs(10), 1);
        let first = tokio::spawn(
            app.clone()
                .oneshot(Request::get("/").body(Body::empty()).unwrap()),
        );
        entered
            .recv()
            .await
            .expect("the first request is being answered");
        let t = std::time::Instant::now();
        let second = app
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
        release.add_permits(1);
        assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
    }
}
