//! Assembles the replica: store, view, sessions, the gRPC server with
//! health and reflection, the metrics endpoint, and graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use claims_proto::listen::{self, Gate};
use claims_proto::v1::admin_server::AdminServer;
use claims_proto::v1::{
    claim_sessions_server::ClaimSessionsServer, ownership_server::OwnershipServer,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

use crate::admin::AdminService;
use crate::attach::ClaimSessionsService;
use crate::config::{Config, Loaded};
use crate::error::{Error, Result};
use crate::health::{self, Readiness};
use crate::log_budget::LogBudget;
use crate::metrics::Metrics;
use crate::ownership::OwnershipService;
use crate::replica::{self, ReplicaState};
use crate::rpc::RpcLayer;
use crate::sessions::{Context, Sessions};
use crate::spread;
use crate::store::Store;
use crate::ui;
use crate::view::{ReplicaLoad, View};
use crate::watchers::Watches;

/// Largest read-side request.
const MAX_QUERY_MESSAGE: usize = 64 * 1024;
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(5);
/// Longest a stopping replica waits for its record to be taken out.
const RECORD_OUT_LIMIT: Duration = Duration::from_secs(2);

async fn bind(addr: std::net::SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot listen for {what} on {addr}: {e}")))
}

/// Runs the replica (with the files `config` names, as read by
/// [`Config::load_files`]) until `shutdown` resolves, then ends every session
/// (leaving their claims in etcd for adoption) and stops.
pub async fn run(config: Config, files: Loaded, shutdown: impl Future<Output = ()>) -> Result<()> {
    let metrics = Arc::new(Metrics::new());
    let Loaded {
        access,
        server_tls,
        store: store_config,
    } = files;
    let grpc_listener = bind(config.listen, "gRPC").await?;
    let metrics_listener = bind(config.metrics_listen, "metrics").await?;
    let store = Store::connect(&store_config, metrics.clone()).await?;
    let view = View::start(store.clone());
    let token = CancellationToken::new();
    let service_id = config.service_id();
    tracing::info!(
        %service_id,
        listen = %config.listen,
        metrics = %config.metrics_listen,
        etcd = ?config.etcd_endpoints,
        prefix = %config.key_prefix,
        lease_ttl = ?config.lease_ttl,
        renew = ?config.renew_interval(),
        detach_grace = ?config.detach_grace,
        tls = server_tls.is_some(),
        mtls = access.node_identity,
        admin_api = access.admin_token.is_some() || !access.admin_identities.is_empty(),
        read_token = access.read_token.is_some(),
        etcd_tls = store_config.security.tls.is_some(),
        etcd_user = ?store_config.security.user.as_ref().map(|(u, _)| u),
        "claim-service starting"
    );

    let replica = Arc::new(ReplicaState::new(service_id.clone()));
    let replica_record = tokio::spawn(replica::run(
        store.clone(),
        view.clone(),
        replica.clone(),
        replica.record(&config.spread.advertise),
        config.lease_ttl,
        config.renew_interval(),
        token.clone(),
    ));
    let ctx = Arc::new(Context {
        store: store.clone(),
        view: view.clone(),
        metrics: metrics.clone(),
        replica: replica.clone(),
        config: config.sessions(service_id.clone()),
        access: access.clone(),
        sessions: Sessions::default(),
        refusal_log: LogBudget::default(),
        shutdown: token.clone(),
    });

    let (health, health_service) = tonic_health::server::health_reporter();
    let readiness = Arc::new(Readiness::default());
    let reporters = Arc::new(health::Reporters::new(
        health,
        readiness.clone(),
        metrics.clone(),
    ));
    tokio::spawn(health::watch(
        store.clone(),
        view.clone(),
        replica.clone(),
        reporters.clone(),
        token.clone(),
    ));
    tokio::spawn(spread::run(
        ctx.clone(),
        replica.clone(),
        config.spread.clone(),
        token.clone(),
    ));

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(claims_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Unavailable(format!("reflection: {e}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(claims_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| Error::Unavailable(format!("reflection: {e}")))?;

    let metrics_app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get({
                let metrics = metrics.clone();
                move || async move { metrics.render() }
            }),
        )
        // Liveness and readiness: see `health`.
        .route("/livez", axum::routing::get(|| async { "ALIVE\n" }))
        .route(
            "/readyz",
            axum::routing::get({
                let readiness = readiness.clone();
                move || async move { readiness.answer() }
            }),
        )
        .route(
            "/healthz",
            axum::routing::get({
                let readiness = readiness.clone();
                move || async move { readiness.serving() }
            }),
        )
        .merge(ui::router(Arc::new(ui::Page {
            ctx: ctx.clone(),
            readiness: readiness.clone(),
            changes: ui::Changes::start(view.clone(), token.clone()),
            shutdown: token.clone(),
        })));
    let metrics_server = tokio::spawn(listen::serve_http(
        metrics_listener,
        Gate::new("metrics", config.limits.metrics_limits()),
        metrics_app,
        config.limits.handshake_timeout,
        token.clone(),
        Duration::from_secs(1),
    ));

    let grpc_token = token.clone();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = server_tls {
        builder = builder
            .tls_config(tls.timeout(config.limits.handshake_timeout))
            .map_err(|e| Error::InvalidArgument(format!("TLS settings: {e}")))?;
    }
    let max_message = config.limits.max_message_size;
    let grpc = builder
        .http2_keepalive_interval(Some(config.http2_keepalive))
        .http2_keepalive_timeout(Some(config.http2_keepalive * 2))
        .concurrency_limit_per_connection(1024)
        .trace_fn(|req| tracing::debug_span!("grpc", path = %req.uri().path()))
        // Every RPC: metrics per method and code, a time limit on unary ones.
        .layer(RpcLayer::new(metrics.clone(), config.rpc_timeout))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            ClaimSessionsServer::new(ClaimSessionsService::new(ctx.clone()))
                .max_decoding_message_size(max_message),
        )
        // Operators only: the admin credential is checked in front.
        .add_service(InterceptedService::new(
            AdminServer::new(AdminService::new(
                store.clone(),
                view.clone(),
                replica.clone(),
            ))
            .max_decoding_message_size(MAX_QUERY_MESSAGE),
            access.admins(),
        ))
        // Readers: the read token, when one is set, is checked in front.
        .add_service(InterceptedService::new(
            OwnershipServer::new(OwnershipService::new(
                store.clone(),
                view.clone(),
                Watches::new(config.limits.watch_limits(), metrics.clone()),
                token.clone(),
            ))
            .max_decoding_message_size(MAX_QUERY_MESSAGE),
            access.reads(),
        ))
        .serve_with_incoming_shutdown(
            // Nagle's algorithm is off on these (see `listen::accept`):
            // with it, small answers waited for the previous one's
            // acknowledgement.
            listen::incoming(
                grpc_listener,
                Gate::new("grpc", config.limits.grpc_limits()),
                grpc_token.clone(),
            ),
            grpc_token.cancelled_owned(),
        );
    let grpc = tokio::spawn(grpc);

    shutdown.await;
    drain(&ctx, &replica, config.spread.drain_timeout).await;
    tracing::info!("shutting down: health NOT_SERVING, sessions end, claims stay for adoption");
    reporters.shutting_down().await;
    token.cancel();
    match tokio::time::timeout(SHUTDOWN_LIMIT, grpc).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server task failed"),
        Err(_) => tracing::warn!(
            "gRPC connections did not close within {SHUTDOWN_LIMIT:?}; stopping anyway"
        ),
    }
    let _ = metrics_server.await;
    // The record is taken out of etcd before the process ends: left there,
    // the others would count this replica live until its lease expired.
    if tokio::time::timeout(RECORD_OUT_LIMIT, replica_record)
        .await
        .is_err()
    {
        tracing::warn!("this replica's record was not taken out within {RECORD_OUT_LIMIT:?}; it expires with its lease");
    }
    tracing::info!("claim-service stopped");
    Ok(())
}

/// Before stopping: the sessions move to the other replicas (as
/// `drain-replica` does), for up to `limit`; what is left then is adopted
/// as after a crash. Nothing to wait for when no other replica runs.
async fn drain(ctx: &Context, replica: &ReplicaState, limit: Duration) {
    if limit.is_zero() || replica.held() == 0 {
        return;
    }
    // Who can take the sessions, read from etcd itself: the view may lag
    // (etcd just came back, a replica just started).
    let read = tokio::time::timeout(Duration::from_secs(1), ctx.store.replicas()).await;
    let replicas = match read {
        Ok(Ok(records)) => records
            .into_iter()
            .map(|(service_id, record)| ReplicaLoad {
                service_id,
                sessions: 0,
                record: Some(record),
            })
            .collect(),
        _ => ctx.view.replica_loads().unwrap_or_default(),
    };
    if !spread::others_can_take(&replicas, &replica.service_id) {
        return;
    }
    replica.set_stopping();
    tracing::info!(sessions = replica.held(), limit = ?limit, "stopping: moving the sessions to the other replicas first");
    // The others stop sending sessions here.
    let mark = ctx.store.set_replica_draining(&replica.service_id, true);
    if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(1), mark).await {
        tracing::debug!(error = %e, "could not mark this replica draining in etcd");
    }
    match tokio::time::timeout(limit, replica.drained()).await {
        Ok(()) => tracing::info!("every session moved to another replica"),
        Err(_) => tracing::warn!(
            sessions = replica.held(),
            "drain time is up; the sessions left are adopted as after a crash"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn grpc_connections_send_small_answers_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = <Config as clap::Parser>::parse_from(["claim-service"]);
        let incoming = listen::incoming(
            listener,
            Gate::new("grpc", config.limits.grpc_limits()),
            CancellationToken::new(),
        );
        let mut incoming = std::pin::pin!(incoming);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.get_ref().nodelay().unwrap(), "TCP_NODELAY is off");
    }
}
