//! A real nginx with nginx-rtmp (Debian's `nginx` + `libnginx-mod-rtmp`),
//! one process, its hooks pointing at a sidecar, its `rtmp_stat` page
//! served for the sidecar to read.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use crate::processes::{scratch_dir, Daemon};
use crate::{free_port, until};

/// Where Debian installs the RTMP module.
const MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";

pub struct NginxRtmp {
    daemon: Daemon,
    pub rtmp_port: u16,
    pub stat_port: u16,
    dir: PathBuf,
}

crate::processes::daemon_handle!(NginxRtmp, daemon);

impl NginxRtmp {
    /// Starts nginx-rtmp with application `live`, every hook posting to
    /// `hooks_url`, updates every `update_s` seconds; waits until its stat
    /// page answers.
    pub async fn start(hooks_url: &str, update_s: u32) -> Result<Self> {
        let hooks = format!(
            "notify_method post;
      on_publish {hooks_url};
      on_publish_done {hooks_url};
      on_play {hooks_url};
      on_update {hooks_url};
      notify_update_timeout {update_s}s;"
        );
        Self::launch(&hooks).await
    }

    /// nginx-rtmp with no hooks at all: the baseline.
    pub async fn start_plain() -> Result<Self> {
        Self::launch("").await
    }

    async fn launch(hooks: &str) -> Result<Self> {
        let dir = scratch_dir("nginx");
        let (rtmp_port, stat_port) = (free_port(), free_port());
        let d = dir.display();
        let conf = format!(
            "load_module {MODULE};
daemon off;
master_process off;
worker_processes 1;
error_log {d}/error.log info;
pid {d}/nginx.pid;
events {{ worker_connections 256; }}
rtmp {{
  server {{
    listen 127.0.0.1:{rtmp_port};
    application live {{
      live on;
      {hooks}
    }}
  }}
}}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{ listen 127.0.0.1:{stat_port}; location /stat {{ rtmp_stat all; }} }}
}}
"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf)?;
        let mut cmd = Command::new("nginx");
        cmd.arg("-c").arg(&path).arg("-p").arg(&dir);
        let daemon = Daemon::spawn("nginx", cmd)?;
        let nginx = Self {
            daemon,
            rtmp_port,
            stat_port,
            dir,
        };
        let stat = nginx.stat_url();
        until(
            std::time::Duration::from_millis(50),
            async || Ok(crate::ingest::http_get(stat_port, "/stat").await.is_ok()),
            |up| *up,
        )
        .await
        .with_context(|| format!("nginx never served {stat}:\n{}", nginx.error_log()))?;
        Ok(nginx)
    }

    pub fn rtmp_url(&self, broadcast: &str) -> String {
        format!("rtmp://127.0.0.1:{}/{broadcast}", self.rtmp_port)
    }

    pub fn stat_url(&self) -> String {
        format!("http://127.0.0.1:{}/stat", self.stat_port)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

/// A sidecar (`ingest-node --media-server nginx-rtmp`) for `nginx`, its
/// hooks on `hooks_port`, attached to `claim_service`; `extra` flags after
/// the sidecar's own.
pub async fn sidecar(
    node_id: &str,
    claim_service: &str,
    nginx: &NginxRtmp,
    hooks_port: u16,
    extra: &[&str],
) -> Result<crate::IngestNode> {
    let hooks = format!("127.0.0.1:{hooks_port}");
    let advertise = format!("rtmp://127.0.0.1:{}", nginx.rtmp_port);
    let api = nginx.stat_url();
    let mut args = vec![
        "--media-server",
        "nginx-rtmp",
        "--hooks-listen",
        &hooks,
        "--advertise-rtmp",
        &advertise,
        "--media-server-api",
        &api,
    ];
    args.extend_from_slice(extra);
    let node = crate::IngestNode::start(node_id, &[claim_service.to_string()], &args).await?;
    node.wait_attached().await?;
    Ok(node)
}
