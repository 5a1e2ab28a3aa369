//! The real `claim-service` binary for a test, alone or as a stack with
//! its etcd.

use anyhow::{anyhow, Context as _, Result};
use claims_proto::v1 as pb;
use pb::ownership_client::OwnershipClient;
use std::process::Command;
use std::time::Duration;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::netns::Host;
use crate::processes::daemon_handle;
use crate::*;

/// Claim-service flags for tests that wait out a lease: the shortest TTL etcd
/// keeps reliably, and a grace below it.
pub const SHORT_LEASE: [&str; 6] = [
    "--lease-ttl",
    "5s",
    "--min-lease-ttl",
    "5s",
    "--detach-grace",
    "2s",
];
/// A running `claim-service` process.
pub struct ClaimService {
    daemon: Daemon,
    pub port: u16,
    pub metrics_port: u16,
    /// Where it is reached: 127.0.0.1, or its host's address.
    pub ip: String,
    /// How the harness reaches it when it serves TLS.
    pub tls: Option<ClientTlsConfig>,
}

daemon_handle!(ClaimService, daemon);

impl ClaimService {
    /// Starts the binary against `etcd_endpoints` with `prefix` and extra
    /// flags, and waits until its health check says SERVING.
    pub async fn start(etcd_endpoints: &str, prefix: &str, extra: &[&str]) -> Result<Self> {
        Self::start_at(free_port(), etcd_endpoints, prefix, extra).await
    }

    /// As [`ClaimService::start`], on a given gRPC port.
    pub async fn start_at(
        port: u16,
        etcd_endpoints: &str,
        prefix: &str,
        extra: &[&str],
    ) -> Result<Self> {
        Self::start_binary_at(
            &binary("claim-service"),
            port,
            etcd_endpoints,
            prefix,
            extra,
        )
        .await
    }

    /// As [`ClaimService::start`], allowed at most `files` open file
    /// descriptors (so a test can run it out of them).
    pub async fn start_with_file_limit(
        etcd_endpoints: &str,
        prefix: &str,
        extra: &[&str],
        files: u32,
    ) -> Result<Self> {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={files}:{files}"))
            .arg("--")
            .arg(binary("claim-service"));
        Self::spawn_on_loopback(cmd, free_port(), etcd_endpoints, prefix, extra, None)?
            .once_serving()
            .await
    }

    /// As [`ClaimService::start`], for a service serving TLS (its flags in
    /// `extra`); the harness's own calls (health, GetOwner) use `probe`.
    pub async fn start_tls(
        etcd_endpoints: &str,
        prefix: &str,
        extra: &[&str],
        probe: ClientTlsConfig,
    ) -> Result<Self> {
        let cmd = Command::new(binary("claim-service"));
        Self::spawn_on_loopback(cmd, free_port(), etcd_endpoints, prefix, extra, Some(probe))?
            .once_serving()
            .await
    }

    /// Spawns `cmd` on loopback at `port` (its metrics on a free port).
    fn spawn_on_loopback(
        cmd: Command,
        port: u16,
        etcd_endpoints: &str,
        prefix: &str,
        extra: &[&str],
        tls: Option<ClientTlsConfig>,
    ) -> Result<Self> {
        Self::spawn(
            cmd,
            "127.0.0.1",
            "127.0.0.1",
            port,
            free_port(),
            etcd_endpoints,
            prefix,
            extra,
            tls,
        )
    }

    /// A claim-service inside `host`, on its address.
    pub async fn start_in(
        host: &Host,
        etcd_endpoints: &str,
        prefix: &str,
        extra: &[&str],
    ) -> Result<Self> {
        Self::start_in_with_env(host, &[], etcd_endpoints, prefix, extra).await
    }

    /// As [`ClaimService::start_in`], with more environment (a preloaded
    /// libfaketime, say).
    pub async fn start_in_with_env(
        host: &Host,
        env: &[(String, String)],
        etcd_endpoints: &str,
        prefix: &str,
        extra: &[&str],
    ) -> Result<Self> {
        let mut cmd = host.command(binary("claim-service"));
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        Self::spawn(
            cmd,
            "0.0.0.0",
            &host.ip,
            50051,
            9464,
            etcd_endpoints,
            prefix,
            extra,
            None,
        )?
        .once_serving()
        .await
    }

    /// As [`ClaimService::start_at`], from another build's binary (an older
    /// version's, for the compatibility matrix).
    pub async fn start_binary_at(
        bin: &std::path::Path,
        port: u16,
        etcd_endpoints: &str,
        prefix: &str,
        extra: &[&str],
    ) -> Result<Self> {
        let cmd = Command::new(bin);
        Self::spawn_on_loopback(cmd, port, etcd_endpoints, prefix, extra, None)?
            .once_serving()
            .await
    }

    /// Starts the binary as [`ClaimService::start`] does, on a given port,
    /// without waiting for it to say SERVING (a replica that must not).
    pub fn spawn_at(port: u16, etcd_endpoints: &str, prefix: &str, extra: &[&str]) -> Result<Self> {
        let cmd = Command::new(binary("claim-service"));
        Self::spawn_on_loopback(cmd, port, etcd_endpoints, prefix, extra, None)
    }

    /// Spawns `cmd` listening on `bind`, reached at `ip`.
    #[allow(clippy::too_many_arguments)]
    fn spawn(
        mut cmd: Command,
        bind: &str,
        ip: &str,
        port: u16,
        metrics_port: u16,
        etcd_endpoints: &str,
        prefix: &str,
        extra: &[&str],
        tls: Option<ClientTlsConfig>,
    ) -> Result<Self> {
        cmd.env("CLAIMS_LISTEN", format!("{bind}:{port}"))
            .env("CLAIMS_METRICS_LISTEN", format!("{bind}:{metrics_port}"))
            .env("CLAIMS_ETCD_ENDPOINTS", etcd_endpoints)
            .env("CLAIMS_KEY_PREFIX", prefix)
            .env("RUST_LOG", "info")
            .args(extra);
        Ok(Self {
            daemon: Daemon::spawn("claim-service", cmd)?,
            port,
            metrics_port,
            ip: ip.into(),
            tls,
        })
    }

    /// Waits until it says SERVING.
    async fn once_serving(self) -> Result<Self> {
        self.wait_serving(true).await?;
        Ok(self)
    }

    /// What `/readyz` on the metrics port answers (status line and body).
    pub async fn readyz(&self) -> Result<String> {
        self.http_get("/readyz").await
    }

    async fn http_get(&self, path: &str) -> Result<String> {
        let url = format!("{}:{}", self.ip, self.metrics_port);
        let mut stream = tokio::net::TcpStream::connect(&url).await?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await?;
        Ok(body)
    }

    /// ListNodes: every attached node, with the replica it is on.
    pub async fn nodes(&self) -> Result<Vec<pb::Node>> {
        let mut client = self.ownership().await?;
        Ok(client
            .list_nodes(pb::ListNodesRequest {})
            .await?
            .into_inner()
            .nodes)
    }

    pub fn addr(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.ip, self.port)
    }

    /// The service's endpoint, over TLS with `tls` when it serves TLS.
    pub fn endpoint_with(&self, tls: Option<&ClientTlsConfig>) -> Result<Endpoint> {
        claims_proto::client::endpoint(&self.addr(), tls).map_err(|e| anyhow!(e))
    }

    pub async fn channel(&self) -> Result<Channel> {
        let endpoint = self.endpoint_with(self.tls.as_ref())?;
        let connected = until(
            Duration::from_millis(50),
            async || Ok(endpoint.connect().await.map_err(|e| e.to_string())),
            |c| c.is_ok(),
        )
        .await
        .with_context(|| format!("cannot connect to {}", self.addr()))?;
        connected.map_err(|e| anyhow!(e))
    }

    pub async fn ownership(&self) -> Result<OwnershipClient<Channel>> {
        Ok(OwnershipClient::new(self.channel().await?))
    }

    /// GetOwner: `None` for NOT_FOUND.
    pub async fn owner(&self, broadcast: &str, consistent: bool) -> Result<Option<pb::Claim>> {
        let mut client = self.ownership().await?;
        match client
            .get_owner(pb::GetOwnerRequest {
                broadcast: broadcast.into(),
                consistent,
            })
            .await
        {
            Ok(r) => Ok(Some(r.into_inner())),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(anyhow!("GetOwner failed: {s}")),
        }
    }

    /// Health of the whole server ("" service).
    pub async fn serving(&self) -> Result<bool> {
        use tonic_health::pb::health_client::HealthClient;
        let mut client = HealthClient::new(self.channel().await?);
        let resp = client
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        Ok(resp.into_inner().status
            == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
    }

    pub async fn wait_serving(&self, want: bool) -> Result<()> {
        until(
            Duration::from_millis(50),
            async || Ok(self.serving().await.ok()),
            |serving| *serving == Some(want),
        )
        .await
        .with_context(|| {
            format!(
                "claim-service never reported serving={want}; log:\n{}",
                self.log_text()
            )
        })?;
        Ok(())
    }

    pub async fn metrics(&self) -> Result<String> {
        self.http_get("/metrics").await
    }
}
/// Etcd plus one claim-service with a fresh prefix: the common start of a test.
pub struct Stack {
    pub etcd: Etcd,
    pub svc: ClaimService,
    pub prefix: String,
}

impl Stack {
    pub async fn start(name: &str, extra: &[&str]) -> Result<Self> {
        let etcd = Etcd::start().await?;
        let prefix = test_prefix(name);
        let svc = ClaimService::start(&etcd.endpoint(), &prefix, extra).await?;
        Ok(Self { etcd, svc, prefix })
    }

    pub async fn owner(&self, broadcast: &str, consistent: bool) -> Result<Option<pb::Claim>> {
        self.svc.owner(broadcast, consistent).await
    }

    /// Polls the (eventually consistent) view until `check` holds.
    pub async fn eventually_owner(
        &self,
        broadcast: &str,
        check: impl Fn(&Option<pb::Claim>) -> bool,
    ) -> Result<Option<pb::Claim>> {
        until(
            Duration::from_millis(20),
            async || self.owner(broadcast, false).await,
            check,
        )
        .await
        .with_context(|| format!("owner of {broadcast} never matched"))
    }
}
