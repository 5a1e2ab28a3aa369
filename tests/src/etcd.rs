//! A real etcd for a test: one member or a cluster, on free loopback ports
//! (or in network namespaces), its data in a temporary folder.

use anyhow::{bail, Context as _, Result};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use crate::netns::Host;
use crate::*;

/// A unique etcd key prefix for one test.
pub fn test_prefix(name: &str) -> String {
    format!("/test/{name}-{:x}/", rand_u64())
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
    /// More flags, as an operator would add (compaction, quotas).
    flags: Vec<String>,
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
            flags: Vec::new(),
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
            .args(&self.flags)
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
        let options = self.connect_options()?;
        until(
            Duration::from_millis(50),
            async || {
                if let Ok(mut c) = etcd_client::Client::connect([&client], options.clone()).await {
                    if c.status().await.is_ok() {
                        return Ok(true);
                    }
                }
                if self.exited() {
                    bail!(
                        "etcd exited before it became healthy on {client}; its log:\n{}",
                        self.log_text()
                    );
                }
                Ok(false)
            },
            |healthy| *healthy,
        )
        .await
        .with_context(|| {
            format!(
                "etcd did not become healthy on {client}; its log:\n{}",
                self.log_text()
            )
        })?;
        Ok(())
    }

    pub async fn client(&self) -> Result<etcd_client::Client> {
        Ok(etcd_client::Client::connect([self.endpoint()], self.connect_options()?).await?)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL, keeping the data folder.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, as an operator's stop, keeping the data folder; SIGKILL
    /// after 10 s.
    pub fn terminate(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let pid = c.id();
        signal_pid(pid, libc::SIGTERM);
        let (done, exited) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _ = c.wait();
            let _ = done.send(());
        });
        if exited.recv_timeout(TERM_GRACE).is_err() {
            signal_pid(pid, libc::SIGKILL);
        }
        let _ = waiter.join();
    }

    /// Sends `signal` (SIGSTOP, SIGCONT) to the running member.
    pub fn signal(&self, signal: libc::c_int) {
        if let Some(pid) = self.pid() {
            signal_pid(pid, signal);
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
        Self::elected(members).await
    }

    /// The cluster of started `members`, once it has a leader.
    async fn elected(members: Vec<Etcd>) -> Result<Self> {
        let c = Self { members };
        until(
            Duration::from_millis(100),
            async || Ok(c.leader().is_ok()),
            |elected| *elected,
        )
        .await
        .context("the etcd cluster never elected a leader")?;
        Ok(c)
    }

    /// A cluster with one member in each of `hosts` (their own addresses,
    /// ports 2379 and 2380), each run with `flags` too.
    pub async fn start_in(hosts: &[Host], flags: &[&str]) -> Result<Self> {
        let cluster = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| format!("m{i}=http://{}:2380", h.ip))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, host) in hosts.iter().enumerate() {
            let mut m = Etcd::member(&format!("m{i}"), 2379, 2380, cluster.clone());
            m.host = Some(host.clone());
            m.flags = flags.iter().map(|f| f.to_string()).collect();
            m.spawn().await?;
            members.push(m);
        }
        Self::elected(members).await
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

/// How long a member stopped with SIGTERM has before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(10);

fn signal_pid(pid: u32, signal: libc::c_int) {
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}
