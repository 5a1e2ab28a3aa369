//! Harness for system tests and benchmarks: a real etcd on free loopback
//! ports, the real `claim-service` binary, and gRPC clients that speak
//! `claims.v1` as an ingest node or a watcher would.
//!
//! Every process is killed by its PID when its handle drops; every wait has a
//! deadline, so a broken build fails instead of hanging.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use claims_proto::v1 as pb;
use pb::claim_sessions_client::ClaimSessionsClient;
use pb::ownership_client::OwnershipClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::Streaming;

pub use claims_proto::v1;

pub mod checker;
pub mod fuzz;
pub mod hostile;
pub mod netns;
pub mod pki;
pub mod rtmp_client;
use netns::Host;

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

/// The `p` quantile (0..=1) of `samples`, sorted in place.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[(((samples.len() - 1) as f64) * p).round() as usize]
}

/// A duration in milliseconds, for reports.
pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// How long any single expectation may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

pub use claims_proto::client::error_chain;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the OS hands out a free loopback port")
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// Waits (up to [`WAIT`]) until `check` holds, polling every
/// `every`; the last value seen when it never does.
pub async fn until<T: std::fmt::Debug>(
    every: Duration,
    mut probe: impl AsyncFnMut() -> Result<T>,
    check: impl Fn(&T) -> bool,
) -> Result<T> {
    let deadline = Instant::now() + WAIT;
    loop {
        let value = probe().await?;
        if check(&value) {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(anyhow!("still {value:?} after {:?}", WAIT));
        }
        tokio::time::sleep(every).await;
    }
}

/// The value of the metric `name` (with its labels, if any) in Prometheus
/// text, if it is there.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// A gRPC request body as it goes on the wire: a flag (not compressed), the
/// message's length (big-endian), the message.
pub fn grpc_frame(msg: &impl prost::Message) -> Vec<u8> {
    let message = msg.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend((message.len() as u32).to_be_bytes());
    frame.extend(message);
    frame
}

/// Path to a workspace binary, built once per test run — unless
/// `CLAIMS_TEST_BUILT` is set: the scripts build the workspace first, and a
/// build of `claim-service` alone unifies features differently, so it would
/// compile it (and the crates it shares) again.
pub fn binary(name: &str) -> PathBuf {
    let root = workspace_root();
    let profile = std::env::var("CLAIMS_TEST_PROFILE").unwrap_or_else(|_| "debug".into());
    let prebuilt = std::env::var_os("CLAIMS_TEST_BUILT").is_some_and(|v| !v.is_empty());
    if !prebuilt {
        build_once(&root, &profile);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let path = target.join(profile).join(name);
    if prebuilt && !path.exists() {
        panic!(
            "CLAIMS_TEST_BUILT is set but {} is missing: build it first",
            path.display()
        );
    }
    path
}

/// Builds the binaries for `profile`, the first time it is called.
fn build_once(root: &Path, profile: &str) {
    static BUILT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(root)
            .args(["build", "--quiet", "-p", "claim-service"]);
        if profile == "release" {
            cmd.arg("--release");
        }
        match cmd.status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("cargo build of the binaries failed: {s}")),
            Err(e) => Err(format!("cannot run cargo: {e}")),
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
}

fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "claims-{tag}-{}-{:x}",
        std::process::id(),
        rand_u64()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir is writable");
    dir
}

pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// A unique etcd key prefix for one test.
pub fn test_prefix(name: &str) -> String {
    format!("/test/{name}-{:x}/", rand_u64())
}

fn kill(child: &mut Child, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status();
}

/// A single-member etcd on free loopback ports, with its data in a
/// temporary folder; killed and removed on drop.
pub struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    pub client_port: u16,
    peer_port: u16,
    name: String,
    /// `--initial-cluster`; empty for a single member.
    cluster: String,
    /// The network namespace it runs in; loopback when `None`.
    host: Option<Host>,
    /// Serve clients over TLS with the PKI folder's `etcd.pem`.
    tls: Option<PathBuf>,
}

impl Etcd {
    pub async fn start() -> Result<Self> {
        Self::start_on_free_ports(None).await
    }

    /// A single loopback member on ports found free just before. If etcd
    /// exits at once (another process took one of them meanwhile: loopback
    /// ports are picked, released, then bound by etcd), it is started again
    /// on other ports, twice at most.
    async fn start_on_free_ports(tls: Option<PathBuf>) -> Result<Self> {
        let mut attempt = 1;
        loop {
            let mut etcd = Self::member("default", free_port(), free_port(), String::new());
            etcd.tls = tls.clone();
            match etcd.spawn().await {
                Ok(()) => return Ok(etcd),
                Err(e) if attempt < 3 && etcd.exited() => {
                    eprintln!("etcd exited at start, trying other ports: {e:#}");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether the process has exited.
    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    fn member(name: &str, client_port: u16, peer_port: u16, cluster: String) -> Self {
        Self {
            child: None,
            dir: scratch_dir("etcd"),
            client_port,
            peer_port,
            name: name.into(),
            cluster,
            host: None,
            tls: None,
        }
    }

    /// A single-member etcd serving clients over TLS with `pki`'s
    /// `etcd.pem` (https:// endpoint).
    pub async fn start_tls(pki: &pki::Pki) -> Result<Self> {
        Self::start_on_free_ports(Some(pki.dir.clone())).await
    }

    /// A single-member etcd inside `host`.
    pub async fn start_in(host: &Host) -> Result<Self> {
        let mut etcd = Self::member("default", 2379, 2380, String::new());
        etcd.host = Some(host.clone());
        etcd.spawn().await?;
        Ok(etcd)
    }

    fn ip(&self) -> &str {
        self.host
            .as_ref()
            .map(|h| h.ip.as_str())
            .unwrap_or("127.0.0.1")
    }

    /// What this member has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.ip(), self.client_port)
    }

    fn connect_options(&self) -> Result<Option<etcd_client::ConnectOptions>> {
        let Some(dir) = &self.tls else {
            return Ok(None);
        };
        let ca = std::fs::read(dir.join("ca.pem"))?;
        Ok(Some(etcd_client::ConnectOptions::new().with_tls(
            etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(ca)),
        )))
    }

    async fn spawn(&mut self) -> Result<()> {
        let client = self.endpoint();
        let peer = format!("http://{}:{}", self.ip(), self.peer_port);
        let log = std::fs::File::create(self.dir.join("etcd.log"))?;
        let cluster = if self.cluster.is_empty() {
            format!("{}={peer}", self.name)
        } else {
            self.cluster.clone()
        };
        let mut cmd = match &self.host {
            Some(h) => h.command("etcd"),
            None => Command::new("etcd"),
        };
        if let Some(dir) = &self.tls {
            cmd.arg("--cert-file")
                .arg(dir.join("etcd.pem"))
                .arg("--key-file")
                .arg(dir.join("etcd.key"));
        }
        let child = cmd
            .args([
                "--name",
                &self.name,
                "--data-dir",
                &self.dir.join("data").to_string_lossy(),
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &cluster,
            ])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context(
                "cannot start etcd: is etcd-server installed? (scripts/test.sh installs it)",
            )?;
        self.child = Some(child);
        if !self.cluster.is_empty() {
            // Members of a cluster are healthy together; the cluster waits.
            return Ok(());
        }
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(mut c) =
                etcd_client::Client::connect([&client], self.connect_options()?).await
            {
                if c.status().await.is_ok() {
                    return Ok(());
                }
            }
            if self.exited() {
                bail!(
                    "etcd exited before it became healthy on {client}; its log:\n{}",
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd did not become healthy on {client}; its log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn client(&self) -> Result<etcd_client::Client> {
        Ok(etcd_client::Client::connect([self.endpoint()], self.connect_options()?).await?)
    }

    /// SIGKILL, keeping the data folder.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same ports and data.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn().await
    }

    /// Runs `etcdctl` against this etcd.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("etcdctl");
        if let Some(dir) = &self.tls {
            cmd.arg("--cacert").arg(dir.join("ca.pem"));
        }
        let out = cmd
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoint())
            .args(args)
            .output()
            .context("cannot run etcdctl")?;
        if !out.status.success() {
            bail!(
                "etcdctl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A three-member (or larger) etcd cluster on loopback.
pub struct EtcdCluster {
    pub members: Vec<Etcd>,
}

impl EtcdCluster {
    pub async fn start(size: usize) -> Result<Self> {
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let mut m = Etcd::member(&format!("m{i}"), *client, *peer, cluster.clone());
            m.spawn().await?;
            members.push(m);
        }
        let c = Self { members };
        let deadline = Instant::now() + WAIT;
        while c.leader().is_err() {
            if Instant::now() > deadline {
                bail!("the etcd cluster never elected a leader");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(c)
    }

    /// Every member's client URL, comma-separated.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(Etcd::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the current leader, as the members say.
    pub fn leader(&self) -> Result<usize> {
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            let Ok(out) = m.etcdctl(&["endpoint", "status", "-w", "json"]) else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&out)?;
            let status = &v[0]["Status"];
            if status["leader"].as_u64().is_some()
                && status["leader"] == status["header"]["member_id"]
            {
                return Ok(i);
            }
        }
        bail!("no member says it leads")
    }
}

/// Gives a process handle the [`Daemon`] methods (log, pid, kill, ...).
macro_rules! daemon_handle {
    ($ty:ty, $field:tt) => {
        impl std::ops::Deref for $ty {
            type Target = Daemon;
            fn deref(&self) -> &Daemon {
                &self.$field
            }
        }

        impl std::ops::DerefMut for $ty {
            fn deref_mut(&mut self) -> &mut Daemon {
                &mut self.$field
            }
        }
    };
}

/// A process a test started, logging to a file in its own scratch folder;
/// killed by its PID when dropped.
pub struct Daemon {
    child: Option<Child>,
    what: &'static str,
    pub log: PathBuf,
    dir: PathBuf,
}

impl Daemon {
    /// Spawns `cmd` with stdout and stderr going to the log file.
    pub fn spawn(what: &'static str, mut cmd: Command) -> Result<Self> {
        let dir = scratch_dir(what);
        let log = dir.join(format!("{what}.log"));
        let file = std::fs::File::create(&log)?;
        let child = cmd
            .stdout(file.try_clone()?)
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| {
                format!("cannot start {what} (scripts/test.sh installs what is missing)")
            })?;
        Ok(Self {
            child: Some(child),
            what,
            log,
            dir,
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (up to [`WAIT`]) until the log says `needle`; the log then.
    pub async fn wait_log(&self, needle: &str) -> Result<String> {
        until(
            Duration::from_millis(50),
            async || Ok(self.log_text()),
            |log| log.contains(needle),
        )
        .await
        .with_context(|| format!("{} never logged {needle:?}", self.what))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for the process to exit by itself, returning its status.
    pub async fn wait_exit(&mut self) -> Result<std::process::ExitStatus> {
        let what = self.what;
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("{what} not running"))?;
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{what} still running after {WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then wait for the process to exit.
    pub async fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        if let Some(child) = self.child.as_mut() {
            kill(child, "-TERM");
        }
        let status = self.wait_exit().await;
        if status.is_err() {
            self.kill();
        }
        status
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        if std::env::var_os("CLAIMS_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

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
        let cmd = Command::new(binary("claim-service"));
        Self::start_on_loopback(cmd, port, etcd_endpoints, prefix, extra, None).await
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
        Self::start_on_loopback(cmd, free_port(), etcd_endpoints, prefix, extra, None).await
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
        Self::start_on_loopback(cmd, free_port(), etcd_endpoints, prefix, extra, Some(probe)).await
    }

    async fn start_on_loopback(
        cmd: Command,
        port: u16,
        etcd_endpoints: &str,
        prefix: &str,
        extra: &[&str],
        tls: Option<ClientTlsConfig>,
    ) -> Result<Self> {
        Self::launch(
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
        .await
    }

    /// A claim-service inside `host`, on its address.
    pub async fn start_in(
        host: &Host,
        etcd_endpoints: &str,
        prefix: &str,
        extra: &[&str],
    ) -> Result<Self> {
        let cmd = host.command(binary("claim-service"));
        Self::launch(
            cmd,
            "0.0.0.0",
            &host.ip,
            50051,
            9464,
            etcd_endpoints,
            prefix,
            extra,
            None,
        )
        .await
    }

    /// Spawns `cmd` listening on `bind`, reached at `ip`, and waits until it
    /// says SERVING.
    #[allow(clippy::too_many_arguments)]
    async fn launch(
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
        let svc = Self {
            daemon: Daemon::spawn("claim-service", cmd)?,
            port,
            metrics_port,
            ip: ip.into(),
            tls,
        };
        svc.wait_serving(true).await?;
        Ok(svc)
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
        let deadline = Instant::now() + WAIT;
        loop {
            match self.endpoint_with(self.tls.as_ref())?.connect().await {
                Ok(c) => return Ok(c),
                Err(e) if Instant::now() > deadline => {
                    return Err(anyhow!("cannot connect to {}: {e}", self.addr()))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
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
        let deadline = Instant::now() + WAIT;
        loop {
            if matches!(self.serving().await, Ok(s) if s == want) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "claim-service never reported serving={want}; log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn metrics(&self) -> Result<String> {
        let url = format!("{}:{}", self.ip, self.metrics_port);
        let mut stream = tokio::net::TcpStream::connect(&url).await?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .await?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await?;
        Ok(body)
    }
}

pub fn hello(node_id: &str) -> pb::Hello {
    pb::Hello {
        node_id: node_id.into(),
        endpoints: [
            ("rtmp".to_string(), format!("rtmp://{node_id}.test:1935")),
            ("http".to_string(), format!("http://{node_id}.test:8080")),
        ]
        .into(),
        lease_ttl_ms: 0,
        live: vec![],
    }
}

pub fn track(broadcast: &str, track: &str) -> pb::Track {
    pb::Track {
        broadcast: broadcast.into(),
        track: track.into(),
    }
}

/// An ingest node's session, driven by hand.
pub struct Node {
    tx: mpsc::Sender<pb::NodeMessage>,
    rx: Streaming<pb::ServiceMessage>,
    /// Messages read while waiting for another one, oldest first.
    unclaimed: std::collections::VecDeque<ServiceMsg>,
    pub welcome: pb::Welcome,
}

use pb::node_message::Msg as NodeMsg;
use pb::service_message::Msg as ServiceMsg;

impl Node {
    /// Opens a session with `first` as its first message; the RPC's own
    /// error is returned as is.
    pub async fn open(addr: &str, first: NodeMsg) -> std::result::Result<Self, tonic::Status> {
        let endpoint = Endpoint::from_shared(addr.to_string())
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        Self::open_on(endpoint, first).await
    }

    /// As [`Node::open`], on a prepared endpoint (TLS, a client certificate).
    /// A connection that fails (a TLS handshake refused) is `UNAVAILABLE`
    /// with the whole cause chain in the message.
    pub async fn open_on(
        endpoint: Endpoint,
        first: NodeMsg,
    ) -> std::result::Result<Self, tonic::Status> {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(error_chain(&e)))?;
        let mut client = ClaimSessionsClient::new(channel);
        let (tx, rx) = mpsc::channel(1024);
        tx.send(pb::NodeMessage { msg: Some(first) })
            .await
            .map_err(|_| tonic::Status::internal("queue closed"))?;
        let mut stream = client.attach(ReceiverStream::new(rx)).await?.into_inner();
        let welcome = match tokio::time::timeout(WAIT, stream.message()).await {
            Ok(Ok(Some(pb::ServiceMessage {
                msg: Some(ServiceMsg::Welcome(w)),
            }))) => w,
            Ok(Err(status)) => return Err(status),
            other => {
                return Err(tonic::Status::internal(format!(
                    "expected welcome, got {other:?}"
                )))
            }
        };
        Ok(Self {
            tx,
            rx: stream,
            unclaimed: Default::default(),
            welcome,
        })
    }

    pub async fn attach(addr: &str, hello: pb::Hello) -> Result<Self> {
        Self::open(addr, NodeMsg::Hello(hello))
            .await
            .map_err(|s| anyhow!("attach failed: {s}"))
    }

    pub async fn send(&self, msg: NodeMsg) -> Result<()> {
        self.tx
            .send(pb::NodeMessage { msg: Some(msg) })
            .await
            .map_err(|_| anyhow!("session send queue closed"))
    }

    pub async fn created(&self, broadcast: &str, t: &str) -> Result<()> {
        self.send(NodeMsg::Created(track(broadcast, t))).await
    }

    pub async fn closed(&self, broadcast: &str, t: &str) -> Result<()> {
        self.send(NodeMsg::Closed(track(broadcast, t))).await
    }

    pub async fn goodbye(&self) -> Result<()> {
        self.send(NodeMsg::Goodbye(pb::Goodbye {})).await
    }

    /// The next message, or the status the stream ended with.
    pub async fn next(&mut self) -> Result<std::result::Result<ServiceMsg, tonic::Status>> {
        if let Some(m) = self.unclaimed.pop_front() {
            return Ok(Ok(m));
        }
        self.read().await
    }

    async fn read(&mut self) -> Result<std::result::Result<ServiceMsg, tonic::Status>> {
        match tokio::time::timeout(WAIT, self.rx.message()).await {
            Err(_) => bail!("no message from the claim-service within {WAIT:?}"),
            Ok(Ok(Some(m))) => m
                .msg
                .map(Ok)
                .ok_or_else(|| anyhow!("empty service message")),
            Ok(Ok(None)) => bail!("session stream ended cleanly"),
            Ok(Err(status)) => Ok(Err(status)),
        }
    }

    /// Waits for a message `pick` accepts; others are kept, in order, for
    /// later calls.
    pub async fn expect<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&ServiceMsg) -> Option<T>,
    ) -> Result<T> {
        if let Some(i) = self.unclaimed.iter().position(|m| pick(m).is_some()) {
            let msg = self.unclaimed.remove(i).expect("index was just found");
            return Ok(pick(&msg).expect("matched above"));
        }
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match self.read().await {
                Ok(Ok(msg)) => {
                    if let Some(t) = pick(&msg) {
                        return Ok(t);
                    }
                    self.unclaimed.push_back(msg);
                }
                Ok(Err(status)) => bail!(
                    "waiting for {what}, the session ended: {status}; unclaimed {:?}",
                    self.unclaimed
                ),
                Err(e) => bail!("waiting for {what}: {e}; unclaimed {:?}", self.unclaimed),
            }
        }
        bail!("no {what} within {WAIT:?}; unclaimed {:?}", self.unclaimed)
    }

    pub async fn expect_claimed(&mut self, broadcast: &str) -> Result<pb::Claimed> {
        self.expect(&format!("claimed {broadcast}"), |m| match m {
            ServiceMsg::Claimed(c)
                if c.claim.as_ref().is_some_and(|c| c.broadcast == broadcast) =>
            {
                Some(c.clone())
            }
            _ => None,
        })
        .await
    }

    /// `claimed` for `broadcast` with `adopted: true`: the claim.
    pub async fn expect_adopted(&mut self, broadcast: &str) -> Result<pb::Claim> {
        let claimed = self.expect_claimed(broadcast).await?;
        if !claimed.adopted {
            bail!("{broadcast} was claimed anew, not adopted: {claimed:?}");
        }
        claimed.claim.context("a claimed message names its claim")
    }

    pub async fn expect_conflict(&mut self, broadcast: &str) -> Result<pb::Claim> {
        self.expect(&format!("conflict {broadcast}"), |m| match m {
            ServiceMsg::Conflict(c) if c.broadcast == broadcast => c.owner.clone(),
            _ => None,
        })
        .await
    }

    pub async fn expect_released(&mut self, broadcast: &str) -> Result<()> {
        self.expect(&format!("released {broadcast}"), |m| match m {
            ServiceMsg::Released(r) if r.broadcast == broadcast => Some(()),
            _ => None,
        })
        .await
    }

    pub async fn expect_lost(&mut self, broadcast: &str) -> Result<String> {
        self.expect(&format!("lost {broadcast}"), |m| match m {
            ServiceMsg::Lost(l) if l.broadcast == broadcast => Some(l.reason.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for the stream to end with an error status.
    pub async fn expect_status(&mut self) -> Result<tonic::Status> {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Err(status) = self.next().await? {
                return Ok(status);
            }
        }
        bail!("the session did not end within {WAIT:?}")
    }

    /// Whether a message arrives within `quiet`; for asserting that nothing
    /// is said (a bound, not a timing claim).
    pub async fn silent_for(&mut self, quiet: Duration) -> Option<ServiceMsg> {
        if let Some(m) = self.unclaimed.pop_front() {
            return Some(m);
        }
        match tokio::time::timeout(quiet, self.rx.message()).await {
            Ok(Ok(Some(m))) => m.msg,
            _ => None,
        }
    }

    /// Drops the session without goodbye, as a crashed node would.
    pub fn vanish(self) {}
}

/// A `WatchClaims` stream.
pub struct Watcher {
    rx: Streaming<pb::ClaimEvent>,
}

impl Watcher {
    pub async fn open(svc: &ClaimService, prefix: &str, start_revision: i64) -> Result<Self> {
        let mut client = svc.ownership().await?;
        let rx = client
            .watch_claims(pb::WatchClaimsRequest {
                prefix: prefix.into(),
                start_revision,
            })
            .await?
            .into_inner();
        Ok(Self { rx })
    }

    pub async fn next(&mut self) -> Result<pb::ClaimEvent> {
        match tokio::time::timeout(WAIT, self.rx.message()).await {
            Err(_) => bail!("no watch event within {WAIT:?}"),
            Ok(Ok(Some(e))) => Ok(e),
            Ok(Ok(None)) => bail!("watch ended"),
            Ok(Err(s)) => bail!("watch failed: {s}"),
        }
    }

    /// Waits for an event of `kind` for `broadcast`, skipping others.
    pub async fn expect(
        &mut self,
        kind: pb::claim_event::Kind,
        broadcast: &str,
    ) -> Result<pb::ClaimEvent> {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let e = self.next().await?;
            if e.kind == kind as i32 && e.claim.as_ref().is_some_and(|c| c.broadcast == broadcast) {
                return Ok(e);
            }
        }
        bail!("no {kind:?} for {broadcast} within {WAIT:?}")
    }

    /// Any event within `quiet`, if one comes.
    pub async fn quiet_for(&mut self, quiet: Duration) -> Option<pb::ClaimEvent> {
        match tokio::time::timeout(quiet, self.rx.message()).await {
            Ok(Ok(Some(e))) => Some(e),
            _ => None,
        }
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
        let deadline = Instant::now() + WAIT;
        loop {
            let owner = self.owner(broadcast, false).await?;
            if check(&owner) {
                return Ok(owner);
            }
            if Instant::now() > deadline {
                bail!("owner of {broadcast} never matched; last {owner:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// An HTTP/1.0 answer: status, headers (lower-case names), body.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A plain GET to 127.0.0.1 that does not follow redirects.
pub async fn http_get(port: u16, path_and_query: &str) -> Result<HttpAnswer> {
    http_get_at("127.0.0.1", port, path_and_query).await
}

/// A plain GET that does not follow redirects.
pub async fn http_get_at(ip: &str, port: u16, path_and_query: &str) -> Result<HttpAnswer> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect((ip, port)).await?;
    s.write_all(format!("GET {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .map_err(|_| anyhow!("GET {path_and_query}: no complete answer within {WAIT:?}"))??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad HTTP answer: {head}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(HttpAnswer {
        status,
        headers,
        body: body.to_string(),
    })
}

/// A running `ingest-node` process.
pub struct IngestNode {
    daemon: Daemon,
    pub node_id: String,
    pub rtmp_port: u16,
    pub http_port: u16,
    /// Where it is reached: 127.0.0.1, or its host's address.
    pub ip: String,
}

daemon_handle!(IngestNode, daemon);

impl IngestNode {
    /// Starts a node attached to `claim_services` and waits until its HTTP
    /// side answers.
    pub async fn start(node_id: &str, claim_services: &[String], extra: &[&str]) -> Result<Self> {
        let cmd = Command::new(binary("ingest-node"));
        Self::launch(
            cmd,
            "127.0.0.1",
            "127.0.0.1",
            free_port(),
            free_port(),
            node_id,
            claim_services,
            extra,
        )
        .await
    }

    /// An ingest node inside `host`, advertising its address.
    pub async fn start_in(
        host: &Host,
        node_id: &str,
        claim_services: &[String],
        extra: &[&str],
    ) -> Result<Self> {
        let cmd = host.command(binary("ingest-node"));
        Self::launch(
            cmd,
            "0.0.0.0",
            &host.ip,
            1935,
            8080,
            node_id,
            claim_services,
            extra,
        )
        .await
    }

    /// Spawns `cmd` listening on `bind`, advertising and reached at `ip`.
    #[allow(clippy::too_many_arguments)]
    async fn launch(
        mut cmd: Command,
        bind: &str,
        ip: &str,
        rtmp_port: u16,
        http_port: u16,
        node_id: &str,
        claim_services: &[String],
        extra: &[&str],
    ) -> Result<Self> {
        cmd.env("INGEST_NODE_ID", node_id)
            .env("INGEST_CLAIM_SERVICE", claim_services.join(","))
            .env("INGEST_RTMP_LISTEN", format!("{bind}:{rtmp_port}"))
            .env("INGEST_HTTP_LISTEN", format!("{bind}:{http_port}"))
            .env("INGEST_ADVERTISE_RTMP", format!("rtmp://{ip}:{rtmp_port}"))
            .env("INGEST_ADVERTISE_HTTP", format!("http://{ip}:{http_port}"))
            .env("RUST_LOG", "info")
            .args(extra);
        let node = Self {
            daemon: Daemon::spawn("ingest-node", cmd)?,
            node_id: node_id.into(),
            rtmp_port,
            http_port,
            ip: ip.into(),
        };
        node.wait_http().await?;
        Ok(node)
    }

    async fn wait_http(&self) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        while http_get_at(&self.ip, self.http_port, "/healthz")
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!(
                    "ingest-node never answered /healthz; log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    pub fn rtmp_url(&self, broadcast: &str) -> String {
        format!("rtmp://127.0.0.1:{}/{broadcast}", self.rtmp_port)
    }

    pub fn flv_url(&self, broadcast: &str) -> String {
        format!("http://127.0.0.1:{}/{broadcast}.flv", self.http_port)
    }

    pub async fn healthz(&self) -> Result<serde_json::Value> {
        let answer = http_get_at(&self.ip, self.http_port, "/healthz").await?;
        Ok(serde_json::from_str(&answer.body)?)
    }

    pub async fn broadcasts(&self) -> Result<serde_json::Value> {
        let answer = http_get_at(&self.ip, self.http_port, "/api/broadcasts").await?;
        Ok(serde_json::from_str(&answer.body)?)
    }

    /// The claim entry of one local broadcast, once `check` holds for it.
    pub async fn wait_broadcast(
        &self,
        broadcast: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let list = self.broadcasts().await?;
            let entry = list
                .as_array()
                .and_then(|a| a.iter().find(|b| b["broadcast"] == broadcast))
                .cloned()
                .unwrap_or(serde_json::Value::Null);
            if check(&entry) {
                return Ok(entry);
            }
            if Instant::now() > deadline {
                bail!(
                    "{broadcast} on {} never matched; last {entry}\nlog:\n{}",
                    self.node_id,
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn metric(&self, name: &str) -> Result<f64> {
        let answer = http_get_at(&self.ip, self.http_port, "/metrics").await?;
        metric_value(&answer.body, name).ok_or_else(|| anyhow!("metric {name} not found"))
    }
}

/// A real ffmpeg publishing a generated test pattern (H.264 + AAC) in real
/// time; its log is its stderr.
pub struct Publisher(Daemon);

daemon_handle!(Publisher, 0);

/// ffmpeg's arguments for a real-time test pattern (H.264 + AAC) to `url`.
const PUBLISH_ARGS: [&str; 28] = [
    "-hide_banner",
    "-nostdin",
    "-loglevel",
    "error",
    "-re",
    "-f",
    "lavfi",
    "-i",
    "testsrc=size=320x240:rate=25",
    "-f",
    "lavfi",
    "-i",
    "sine=frequency=440:sample_rate=44100",
    "-c:v",
    "libx264",
    "-preset",
    "ultrafast",
    "-tune",
    "zerolatency",
    "-g",
    "25",
    "-c:a",
    "aac",
    "-b:a",
    "64k",
    "-f",
    "flv",
    "URL",
];

impl Publisher {
    pub fn start(url: &str) -> Result<Self> {
        Self::spawn(Command::new("ffmpeg"), url)
    }

    /// The same, run inside `host` (publishing to its own loopback).
    pub fn start_in(host: &Host, url: &str) -> Result<Self> {
        Self::spawn(host.command("ffmpeg"), url)
    }

    fn spawn(mut cmd: Command, url: &str) -> Result<Self> {
        cmd.args(
            PUBLISH_ARGS
                .iter()
                .map(|a| if *a == "URL" { url } else { a }),
        );
        Ok(Self(Daemon::spawn("ffmpeg", cmd)?))
    }
}

/// The stream types ffprobe decodes from `url` (following redirects).
pub async fn probe(url: &str) -> Result<Vec<String>> {
    let url = url.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args([
                "20",
                "ffprobe",
                "-hide_banner",
                "-v",
                "error",
                "-show_entries",
                "stream=codec_type,codec_name",
                "-of",
                "csv=p=0",
                &url,
            ])
            .output()
    })
    .await??;
    if !out.status.success() {
        bail!("ffprobe failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut kinds: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    kinds.sort();
    Ok(kinds)
}

/// Decodes `seconds` of `url` with ffmpeg (following redirects); the number
/// of video frames decoded.
pub async fn decode(url: &str, seconds: u32) -> Result<u64> {
    let url = url.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args([
                "30",
                "ffmpeg",
                "-hide_banner",
                "-nostdin",
                "-v",
                "error",
                "-stats_period",
                "0.5",
                "-progress",
                "pipe:1",
                "-i",
                &url,
                "-t",
                &seconds.to_string(),
                "-f",
                "null",
                "-",
            ])
            .output()
    })
    .await??;
    if !out.status.success() {
        bail!(
            "decoding {} failed: {}",
            "the stream",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let frames = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("frame="))
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    Ok(frames)
}

/// A `/proc/PID/status` field in KiB, e.g. `VmRSS:`.
pub fn proc_status_kib(pid: u32, field: &str) -> Result<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("{field} not in /proc/{pid}/status"))
}

/// Resident memory of process `pid`, in bytes.
pub fn rss(pid: u32) -> Result<u64> {
    Ok(proc_status_kib(pid, "VmRSS:")? * 1024)
}

/// Open file descriptors of process `pid`.
pub fn open_files(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// User + system CPU time of a process, in clock ticks (1/100 s).
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("unexpected /proc/PID/stat format")?
        .1
        .split_whitespace()
        .collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}
