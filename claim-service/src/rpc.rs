//! What every RPC goes through, as one tower layer the server puts in front
//! of all its services: a count per method and answer code, a duration per
//! method, and a time limit on the unary RPCs. Streams are bounded by rules
//! of their own (a session's hello in time, a watcher that keeps up).
//!
//! Who may call what is checked in front of each service by interceptors
//! built from [`crate::access`] (see `server.rs`), so handlers never check
//! credentials themselves.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::{Code, Status};

use crate::error::{code_label, Error};
use crate::metrics::Metrics;

/// The methods this server answers, each with its metric label and
/// whether its answer is a stream (no time limit on those); any other path
/// (a hostile client can send any) counts as `unknown`, unary.
const METHODS: [(&str, &str, bool); 12] = [
    ("/claims.v1.ClaimSessions/Attach", "Attach", true),
    ("/claims.v1.Ownership/GetOwner", "GetOwner", false),
    ("/claims.v1.Ownership/ListClaims", "ListClaims", false),
    ("/claims.v1.Ownership/ListNodes", "ListNodes", false),
    ("/claims.v1.Ownership/WatchClaims", "WatchClaims", true),
    ("/claims.v1.Admin/ForceRelease", "ForceRelease", false),
    ("/claims.v1.Admin/DrainNode", "DrainNode", false),
    ("/grpc.health.v1.Health/Check", "Check", false),
    ("/grpc.health.v1.Health/Watch", "Watch", true),
    ("/grpc.health.v1.Health/List", "List", false),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "ServerReflectionInfo",
        true,
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "ServerReflectionInfo",
        true,
    ),
];

/// A request path's metric label, and whether its answer is a stream.
fn method(path: &str) -> (&'static str, bool) {
    METHODS
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|(_, label, stream)| (*label, *stream))
        .unwrap_or(("unknown", false))
}

/// The layer: per-RPC metrics into `metrics`, unary RPCs bounded by
/// `unary_limit`.
#[derive(Clone)]
pub struct RpcLayer {
    metrics: Arc<Metrics>,
    unary_limit: Duration,
}

impl RpcLayer {
    pub fn new(metrics: Arc<Metrics>, unary_limit: Duration) -> Self {
        Self {
            metrics,
            unary_limit,
        }
    }
}

impl<S> tower::Layer<S> for RpcLayer {
    type Service = Rpc<S>;

    fn layer(&self, inner: S) -> Rpc<S> {
        Rpc {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Rpc<S> {
    inner: S,
    layer: RpcLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Rpc<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let (method, stream) = method(request.uri().path());
        let limit = (!stream).then_some(self.layer.unary_limit);
        let metrics = self.layer.metrics.clone();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let started = Instant::now();
            let answer = match limit {
                Some(limit) => match tokio::time::timeout(limit, answer).await {
                    Ok(answer) => answer,
                    Err(_) => Ok(Status::from(Error::DeadlineExceeded(format!(
                        "{method} took longer than this replica's limit ({limit:?}, --rpc-timeout); retry, or ask another replica"
                    )))
                    .into_http()),
                },
                None => answer.await,
            };
            // A stream's code comes in its trailers, after this: counted
            // here is how its start was answered.
            let code = match &answer {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map(Code::from_i32)
                    .unwrap_or(Code::Ok),
                Err(_) => Code::Internal,
            };
            metrics
                .rpcs
                .with_label_values(&[method, code_label(code)])
                .inc();
            metrics
                .rpc_duration
                .with_label_values(&[method])
                .observe(started.elapsed().as_secs_f64());
            answer
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{Layer, Service, ServiceExt};

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    #[test]
    fn only_known_methods_become_labels() {
        assert_eq!(method("/claims.v1.Ownership/GetOwner").0, "GetOwner");
        assert_eq!(method("/claims.v1.ClaimSessions/Attach").0, "Attach");
        assert_eq!(method("/claims.v1.Ownership/Nope").0, "unknown");
        assert_eq!(method(&format!("/{}", "x".repeat(10_000))).0, "unknown");
    }

    /// `path` through the layer (limit 5 s) to a service that answers
    /// after 60 s; the answer, and the metrics.
    async fn through_a_slow_service(path: &str) -> (http::Response<()>, String) {
        let metrics = Arc::new(Metrics::new());
        let slow = tower::service_fn(|_: http::Request<()>| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, Infallible>(http::Response::new(()))
        });
        let mut svc = RpcLayer::new(metrics.clone(), Duration::from_secs(5)).layer(slow);
        let answer = svc
            .ready()
            .await
            .unwrap()
            .call(request(path))
            .await
            .unwrap();
        (answer, metrics.render())
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_unary_rpc_is_answered_deadline_exceeded_and_counted() {
        let (answer, metrics) = through_a_slow_service("/claims.v1.Ownership/GetOwner").await;
        let status = Status::from_header_map(answer.headers()).expect("a grpc-status");
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert!(
            status.message().contains("--rpc-timeout"),
            "{}",
            status.message()
        );
        assert!(
            metrics.contains(
                r#"claims_rpc_requests_total{code="deadline_exceeded",method="GetOwner"} 1"#
            ),
            "{metrics}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn streams_have_no_time_limit() {
        let (answer, metrics) = through_a_slow_service("/claims.v1.Ownership/WatchClaims").await;
        assert!(answer.headers().get("grpc-status").is_none());
        assert!(metrics.contains(r#"claims_rpc_requests_total{code="ok",method="WatchClaims"} 1"#));
    }
}
