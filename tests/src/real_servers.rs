//! SRS, MediaMTX and OvenMediaEngine, the real servers, each run as a user
//! following our README would: its configuration is the README's block for
//! that server (read from README.md, only ports, paths and secrets
//! changed) around a base of ports and folders, and its sidecar is started
//! with the README's command line, likewise changed.
//!
//! The binaries are built from each server's source (no release can be
//! downloaded here) and kept beside the project in
//! `../shared/media-servers/`; `scripts/test.sh` unpacks them into
//! `target/media-servers/` and installs what they need at run time. Where
//! they are missing, every test that needs one fails saying where to get
//! it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::processes::{daemon_handle, scratch_dir, Daemon};
use crate::{free_port, until, workspace_root, IngestNode};

/// Which real media server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Srs,
    Mediamtx,
    Ome,
}

impl Server {
    /// Its name in the README's markers and in `--media-server`.
    pub fn name(self) -> &'static str {
        match self {
            Server::Srs => "srs",
            Server::Mediamtx => "mediamtx",
            Server::Ome => "ome",
        }
    }

    fn file(self) -> &'static str {
        match self {
            Server::Srs => "srs",
            Server::Mediamtx => "mediamtx",
            Server::Ome => "OvenMediaEngine",
        }
    }

    /// The unpacked binary, or where to get it.
    pub fn binary(self) -> Result<PathBuf> {
        let path = workspace_root()
            .join("target/media-servers")
            .join(self.file());
        if path.exists() {
            return Ok(path);
        }
        bail!(
            "{} is missing: scripts/test.sh unpacks it from ../shared/media-servers/bin/{}.xz \
             (SRS 6.0.157 from github.com/ossrs/srs branch 6.0release, MediaMTX v1.12.2 from \
             github.com/bluenviron/mediamtx, OvenMediaEngine v0.18.0 from \
             github.com/AirenSoft/OvenMediaEngine, each built from source as \
             ../shared/media-servers/README.md says)",
            path.display(),
            self.file()
        )
    }
}

/// The fenced block that follows `<!-- MARKER -->` in the README.
pub fn readme_block(marker: &str) -> Result<String> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md"))?;
    let tag = format!("<!-- {marker} -->");
    let after = readme
        .split_once(&tag)
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("README.md has no {tag}"))?;
    let fence = after
        .find("```")
        .ok_or_else(|| anyhow!("no code block after {tag}"))?;
    let body = &after[fence..];
    let body = &body[body.find('\n').map_or(body.len(), |n| n + 1)..];
    let end = body
        .find("\n```")
        .ok_or_else(|| anyhow!("the code block after {tag} never ends"))?;
    Ok(body[..end].to_string())
}

/// Ports of one server instance and of its sidecar's hooks.
#[derive(Debug, Clone)]
pub struct Ports {
    pub rtmp: u16,
    pub api: u16,
    /// SRS's HTTP server (HTTP-FLV), OME's LL-HLS.
    pub http: u16,
    pub rtsp: u16,
    pub rtp: u16,
    pub multicast: u16,
    pub srt: u16,
    /// OME's OVT publisher.
    pub ovt: u16,
    pub hooks: u16,
}

/// Two free UDP ports in a row, the first even (RTP and RTCP).
fn udp_pair() -> u16 {
    loop {
        let p = free_port() & !1;
        let both = std::net::UdpSocket::bind(("127.0.0.1", p))
            .and_then(|_a| std::net::UdpSocket::bind(("127.0.0.1", p + 1)).map(|_| ()));
        if p > 1024 && both.is_ok() {
            return p;
        }
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("the OS hands out a free loopback UDP port")
}

impl Ports {
    fn pick() -> Self {
        Self {
            rtmp: free_port(),
            api: free_port(),
            http: free_port(),
            rtsp: free_port(),
            rtp: udp_pair(),
            multicast: udp_pair(),
            srt: free_udp_port(),
            ovt: free_port(),
            hooks: free_port(),
        }
    }
}

/// The OME secret and API token the tests use.
pub const OME_SECRET: &str = "claims-test-secret";
pub const OME_TOKEN: &str = "claims-test-token";

/// One running media server.
pub struct MediaServer {
    daemon: Daemon,
    pub server: Server,
    pub ports: Ports,
    dir: PathBuf,
    /// What a test changes in the README's block (to show what a line of
    /// it prevents).
    edit: fn(&str) -> String,
}

daemon_handle!(MediaServer, daemon);

impl MediaServer {
    /// Starts `server` configured as the README says, its hooks pointing at
    /// a sidecar on `ports.hooks`; waits until its API answers.
    pub async fn start(server: Server) -> Result<Self> {
        Self::start_edited(server, str::to_string).await
    }

    /// The same, with the README's block changed by `edit` first.
    pub async fn start_edited(server: Server, edit: fn(&str) -> String) -> Result<Self> {
        let dir = scratch_dir(server.name());
        let ports = Ports::pick();
        let daemon = launch(server, &ports, &dir, edit).await?;
        Ok(Self {
            daemon,
            server,
            ports,
            dir,
            edit,
        })
    }

    /// Starts it again (after a kill) on the same ports.
    pub async fn restart(&mut self) -> Result<()> {
        self.daemon.kill();
        self.daemon = launch(self.server, &self.ports, &self.dir, self.edit).await?;
        Ok(())
    }

    pub fn rtmp_url(&self, broadcast: &str) -> String {
        format!("rtmp://127.0.0.1:{}/{broadcast}", self.ports.rtmp)
    }

    /// Where a player plays `broadcast` from this server: RTMP, or for OME
    /// (which plays no RTMP) its LL-HLS playlist.
    pub fn play_url(&self, broadcast: &str) -> String {
        match self.server {
            Server::Ome => format!(
                "http://127.0.0.1:{}/{broadcast}/llhls.m3u8",
                self.ports.http
            ),
            _ => self.rtmp_url(broadcast),
        }
    }

    /// Waits until a player decodes `broadcast` here (the server has it
    /// live, not merely let its publisher in).
    pub async fn wait_playable(&self, broadcast: &str) -> Result<()> {
        let url = self.play_url(broadcast);
        let _played = until(
            Duration::from_millis(200),
            async || Ok(crate::probe(&url).await.map_err(|e| e.to_string())),
            |played| played.is_ok(),
        )
        .await
        .with_context(|| format!("{url} never played:\n{}", self.own_log()))?;
        Ok(())
    }

    pub fn rtsp_url(&self, broadcast: &str) -> String {
        format!("rtsp://127.0.0.1:{}/{broadcast}", self.ports.rtsp)
    }

    /// The SRT URL that publishes `broadcast` (`mode`: `publish` or `read`).
    pub fn srt_url(&self, broadcast: &str, mode: &str) -> String {
        match self.server {
            // OME: the stream id is the URL-encoded srt URL of app/stream.
            Server::Ome => format!(
                "srt://127.0.0.1:{}?streamid=srt%3A%2F%2F127.0.0.1%3A{}%2F{}",
                self.ports.srt,
                self.ports.srt,
                broadcast.replace('/', "%2F")
            ),
            _ => format!(
                "srt://127.0.0.1:{}?streamid={mode}:{broadcast}",
                self.ports.srt
            ),
        }
    }

    /// What the README's text says, with this instance's ports and files.
    fn localise(&self, text: &str) -> String {
        localise(self.server, &self.ports, &self.dir, text)
    }

    /// Its sidecar, started with the README's command line for this server
    /// (ports and files changed), then `extra`; attached to
    /// `claim_service`.
    pub async fn sidecar(
        &self,
        node_id: &str,
        claim_service: &str,
        extra: &[&str],
    ) -> Result<IngestNode> {
        let line = self.localise(&readme_block(&format!(
            "tested-sidecar: {}",
            self.server.name()
        ))?);
        let words: Vec<String> = line
            .split_whitespace()
            .filter(|w| *w != "\\")
            .map(String::from)
            .collect();
        let (first, args) = words
            .split_first()
            .ok_or_else(|| anyhow!("the README's sidecar line is empty"))?;
        if first != "ingest-node" {
            bail!("the README's sidecar line starts with {first:?}, not ingest-node");
        }
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend_from_slice(extra);
        let node = IngestNode::start(node_id, &[claim_service.to_string()], &all).await?;
        node.wait_attached().await?;
        Ok(node)
    }
}

/// The README's ports, files and secrets, changed to this instance's.
fn localise(server: Server, ports: &Ports, dir: &Path, text: &str) -> String {
    let d = dir.display();
    let api_default = match server {
        Server::Srs => "127.0.0.1:1985",
        Server::Mediamtx => "127.0.0.1:9997",
        Server::Ome => "127.0.0.1:8081",
    };
    text.replace("127.0.0.1:8090", &format!("127.0.0.1:{}", ports.hooks))
        .replace(api_default, &format!("127.0.0.1:{}", ports.api))
        .replace(
            "rtmp://127.0.0.1:1935",
            &format!("rtmp://127.0.0.1:{}", ports.rtmp),
        )
        .replace("127.0.0.1:9000", &format!("127.0.0.1:{}", ports.ovt))
        .replace("<Port>9000</Port>", &format!("<Port>{}</Port>", ports.ovt))
        .replace("/etc/ome-secret", &format!("{d}/ome-secret"))
        .replace("/etc/ome-access-token", &format!("{d}/ome-access-token"))
        .replace("the same secret as in --ome-secret-file", OME_SECRET)
}

/// Writes the configuration and starts the server; waits until its RTMP
/// and API ports accept connections.
async fn launch(
    server: Server,
    ports: &Ports,
    dir: &Path,
    edit: fn(&str) -> String,
) -> Result<Daemon> {
    let binary = server.binary()?;
    let block = readme_block(&format!("tested-config: {}", server.name()))?;
    let block = localise(server, ports, dir, &edit(&block));
    let d = dir.display();
    let p = ports;
    let mut cmd = Command::new(&binary);
    match server {
        Server::Srs => {
            std::fs::create_dir_all(dir.join("html"))?;
            let conf = format!(
                "listen {rtmp};
max_connections 1000;
daemon off;
srs_log_tank file;
srs_log_file {d}/srs.log;
pid {d}/srs.pid;
http_server {{ enabled on; listen {http}; dir {d}/html; }}
{block}",
                rtmp = p.rtmp,
                http = p.http,
            );
            std::fs::write(dir.join("srs.conf"), conf)?;
            cmd.arg("-c").arg(dir.join("srs.conf"));
        }
        Server::Mediamtx => {
            let conf = format!(
                "logLevel: info
logDestinations: [stdout]
rtsp: yes
rtspTransports: [tcp]
rtspAddress: 127.0.0.1:{rtsp}
rtpAddress: 127.0.0.1:{rtp}
rtcpAddress: 127.0.0.1:{rtcp}
multicastRTPPort: {mrtp}
multicastRTCPPort: {mrtcp}
rtmp: yes
rtmpAddress: 127.0.0.1:{rtmp}
hls: no
webrtc: no
srt: yes
srtAddress: 127.0.0.1:{srt}
metrics: no
pprof: no
playback: no
{block}",
                rtsp = p.rtsp,
                rtp = p.rtp,
                rtcp = p.rtp + 1,
                mrtp = p.multicast,
                mrtcp = p.multicast + 1,
                rtmp = p.rtmp,
                srt = p.srt,
            );
            std::fs::write(dir.join("mediamtx.yml"), conf)?;
            cmd.arg(dir.join("mediamtx.yml"));
        }
        Server::Ome => {
            std::fs::create_dir_all(dir.join("logs"))?;
            std::fs::write(dir.join("ome-secret"), OME_SECRET)?;
            std::fs::write(dir.join("ome-access-token"), OME_TOKEN)?;
            std::fs::write(
                dir.join("Logger.xml"),
                format!(
                    r#"<?xml version="1.0" encoding="UTF-8"?>
<Logger version="2"><Path>{d}/logs</Path><Tag name=".*" level="info" /></Logger>
"#
                ),
            )?;
            let ome_bind = localise(
                server,
                ports,
                dir,
                &readme_block("tested-config: ome-bind")?,
            );
            let ome_providers = readme_block("tested-config: ome-app-providers")?;
            let ome_publishers = readme_block("tested-config: ome-app-publishers")?;
            let conf = format!(
                r#"<?xml version="1.0" encoding="UTF-8"?>
<Server version="8">
  <Name>OME</Name>
  <Type>origin</Type>
  <IP>*</IP>
  <PrivacyProtection>false</PrivacyProtection>
  <Modules><HTTP2><Enable>false</Enable></HTTP2><LLHLS><Enable>true</Enable></LLHLS></Modules>
  <Bind>
    <Managers><API><Port>{api}</Port><WorkerCount>1</WorkerCount></API></Managers>
    <Providers>
      <RTMP><Port>{rtmp}</Port><WorkerCount>1</WorkerCount></RTMP>
      <SRT><Port>{srt}</Port><WorkerCount>1</WorkerCount></SRT>
    </Providers>
    <Publishers><LLHLS><Port>{http}</Port><WorkerCount>1</WorkerCount></LLHLS>
{ome_bind}
    </Publishers>
  </Bind>
  <Managers>
    <Host><Names><Name>*</Name></Names></Host>
    <API><AccessToken>{OME_TOKEN}</AccessToken></API>
  </Managers>
  <VirtualHosts>
    <VirtualHost>
      <Name>default</Name>
      <Host><Names><Name>*</Name></Names></Host>
{block}
      <Applications>
        <Application>
          <Name>live</Name>
          <Type>live</Type>
          <OutputProfiles>
            <OutputProfile>
              <Name>bypass_stream</Name>
              <OutputStreamName>${{OriginStreamName}}</OutputStreamName>
              <Encodes><Video><Bypass>true</Bypass></Video><Audio><Bypass>true</Bypass></Audio></Encodes>
            </OutputProfile>
          </OutputProfiles>
          {ome_providers}
          <Publishers><LLHLS><ChunkDuration>0.5</ChunkDuration><SegmentDuration>2</SegmentDuration><SegmentCount>10</SegmentCount><CrossDomains><Url>*</Url></CrossDomains></LLHLS>
{ome_publishers}
          </Publishers>
        </Application>
      </Applications>
    </VirtualHost>
  </VirtualHosts>
</Server>
"#,
                api = p.api,
                rtmp = p.rtmp,
                srt = p.srt,
                http = p.http,
            );
            std::fs::write(dir.join("Server.xml"), conf)?;
            cmd.arg("-c").arg(dir);
        }
    }
    cmd.current_dir(dir);
    let daemon = Daemon::spawn(server.name(), cmd)?;
    for port in [p.rtmp, p.api] {
        until(
            Duration::from_millis(50),
            async || {
                Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok())
            },
            |up| *up,
        )
        .await
        .with_context(|| {
            format!(
                "{} never listened on {port}:\n{}\n{}",
                server.name(),
                daemon.log_text(),
                server_log(server, dir)
            )
        })?;
    }
    Ok(daemon)
}

/// What the server wrote to its own log files (SRS and OME log to files).
pub fn server_log(server: Server, dir: &Path) -> String {
    let file = match server {
        Server::Srs => dir.join("srs.log"),
        Server::Ome => dir.join("logs/ovenmediaengine.log"),
        Server::Mediamtx => return String::new(),
    };
    std::fs::read_to_string(file).unwrap_or_default()
}

impl MediaServer {
    /// The server's own log (its output, and its log file where it keeps
    /// one).
    pub fn own_log(&self) -> String {
        format!(
            "{}{}",
            self.daemon.log_text(),
            server_log(self.server, &self.dir)
        )
    }
}
