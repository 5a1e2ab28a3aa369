//! The real `ingest-node` binary for a test, HTTP requests to it, and
//! publishers and players (ffmpeg, ffprobe) against it.

use anyhow::{anyhow, bail, Context as _, Result};
use std::process::Command;
use std::time::Duration;

use crate::netns::Host;
use crate::processes::daemon_handle;
use crate::*;

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
        Self::start_binary(&binary("ingest-node"), node_id, claim_services, extra).await
    }

    /// As [`IngestNode::start`], from another build's binary (an older
    /// version's, for the compatibility matrix).
    pub async fn start_binary(
        bin: &std::path::Path,
        node_id: &str,
        claim_services: &[String],
        extra: &[&str],
    ) -> Result<Self> {
        let cmd = Command::new(bin);
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
        until(
            Duration::from_millis(50),
            async || {
                Ok(http_get_at(&self.ip, self.http_port, "/healthz")
                    .await
                    .is_ok())
            },
            |answered| *answered,
        )
        .await
        .with_context(|| {
            format!(
                "ingest-node never answered /healthz; log:\n{}",
                self.log_text()
            )
        })?;
        Ok(())
    }

    pub fn rtmp_url(&self, broadcast: &str) -> String {
        format!("rtmp://127.0.0.1:{}/{broadcast}", self.rtmp_port)
    }

    pub fn flv_url(&self, broadcast: &str) -> String {
        format!("http://127.0.0.1:{}/{broadcast}.flv", self.http_port)
    }

    /// Waits until the node's claim session is attached.
    pub async fn wait_attached(&self) -> Result<()> {
        until(
            std::time::Duration::from_millis(50),
            async || self.healthz().await,
            |h| h["claim_service_connected"] == true,
        )
        .await
        .map(|_| ())
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
        until(
            Duration::from_millis(50),
            async || {
                let list = self.broadcasts().await?;
                Ok(list
                    .as_array()
                    .and_then(|a| a.iter().find(|b| b["broadcast"] == broadcast))
                    .cloned()
                    .unwrap_or(serde_json::Value::Null))
            },
            check,
        )
        .await
        .with_context(|| {
            format!(
                "{broadcast} on {} never matched\nlog:\n{}",
                self.node_id,
                self.log_text()
            )
        })
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

    /// The same test pattern muxed as `format` (`flv` for RTMP, `rtsp`
    /// over TCP, `mpegts` for SRT).
    pub fn start_as(url: &str, format: &str) -> Result<Self> {
        let mut cmd = Command::new("ffmpeg");
        cmd.args(&PUBLISH_ARGS[..PUBLISH_ARGS.len() - 3]);
        if format == "rtsp" {
            cmd.args(["-rtsp_transport", "tcp"]);
        }
        cmd.args(["-f", format, url]);
        Ok(Self(Daemon::spawn("ffmpeg", cmd)?))
    }

    /// One encoder publishing the test pattern to every RTMP URL of `urls`
    /// at once (ffmpeg's tee muxer: encoded once, sent to each).
    pub fn start_many(urls: &[String]) -> Result<Self> {
        let mut cmd = Command::new("ffmpeg");
        cmd.args(&PUBLISH_ARGS[..PUBLISH_ARGS.len() - 3]);
        let outputs: Vec<String> = urls
            .iter()
            .map(|u| format!("[f=flv:onfail=ignore]{u}"))
            .collect();
        // Each FLV output needs the codec headers up front.
        cmd.args([
            "-flags",
            "+global_header",
            "-map",
            "0:v",
            "-map",
            "1:a",
            "-f",
            "tee",
        ])
        .arg(outputs.join("|"));
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

/// POSTs `body` to the sidecar's nginx-rtmp hook; the HTTP status.
pub fn nginx_hook_post(hooks_port: u16, body: &str) -> Result<u16> {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--data-binary",
            "@-",
        ])
        .arg(format!("http://127.0.0.1:{hooks_port}/nginx-rtmp"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin is piped")
                .write_all(body.as_bytes())?;
            child.wait_with_output()
        })?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

pub fn nginx_hook(call: &str, name: &str, client: &str) -> String {
    format!("call={call}&app=live&name={name}&clientid={client}&addr=127.0.0.1&tcurl=rtmp%3A%2F%2Fh%2Flive")
}
