//! Claiming for a media server already in place: where its hooks are
//! served, where its API lists what it publishes, and when it is taken as
//! gone (the Media-server hooks heading of `--help`).

use std::net::SocketAddr;
use std::time::Duration;

use super::duration;
use crate::error::{Error, Result};
use crate::hooks::Kind as HookKind;

#[derive(Debug, Clone, clap::Args)]
pub struct HooksConfig {
    /// Claim for a media server already in place instead of ingesting RTMP
    /// here: serve its publish/play hooks (on --hooks-listen, at
    /// /nginx-rtmp, /srs, /mediamtx or /ome) and turn our RTMP listener
    /// off. --advertise-rtmp is then the media server's.
    #[arg(
        long,
        env = "INGEST_MEDIA_SERVER",
        value_enum,
        help_heading = "Media-server hooks"
    )]
    pub media_server: Option<HookKind>,

    /// Where the media server's hooks are served.
    #[arg(
        long,
        env = "INGEST_HOOKS_LISTEN",
        default_value = "127.0.0.1:8090",
        help_heading = "Media-server hooks"
    )]
    pub hooks_listen: SocketAddr,

    /// Where the media server lists its live streams (nginx-rtmp's
    /// `rtmp_stat` page, SRS's /api/v1/streams, MediaMTX's
    /// /v3/paths/list, OME's /v1/vhosts/VHOST/apps/APP/streams), read
    /// whole: at start, so that a restarted sidecar adopts what is still
    /// published; every --media-server-api-interval, so that a missed hook
    /// converges to the truth; and as the server's liveness (two failed
    /// reads detach the node). Its host and port also serve the kicks,
    /// and OME's pulls, the sidecar asks of the server.
    #[arg(
        long,
        env = "INGEST_MEDIA_SERVER_API",
        help_heading = "Media-server hooks"
    )]
    pub media_server_api: Option<String>,

    /// File holding the credential the media server's API wants, sent as
    /// `Authorization: Basic base64(CONTENT)`: OME's AccessToken, or
    /// `user:password` for SRS's or MediaMTX's API.
    #[arg(
        long,
        env = "INGEST_MEDIA_SERVER_API_TOKEN_FILE",
        help_heading = "Media-server hooks"
    )]
    pub media_server_api_token_file: Option<std::path::PathBuf>,

    /// How often the media server's API is read (every second while it
    /// does not answer).
    #[arg(
        long,
        env = "INGEST_MEDIA_SERVER_API_INTERVAL",
        default_value = "5s",
        value_parser = duration,
        help_heading = "Media-server hooks"
    )]
    pub media_server_api_interval: Duration,

    /// A media server whose API has not answered for this long is gone:
    /// its publishers are taken as ended and their claims released. (After
    /// two failed reads in a row the node already detaches from the claim
    /// service, so its claims move after the claim service's detach grace,
    /// and come back if the server answers within it.)
    #[arg(
        long,
        env = "INGEST_MEDIA_SERVER_GONE_AFTER",
        default_value = "12s",
        value_parser = duration,
        help_heading = "Media-server hooks"
    )]
    pub media_server_gone_after: Duration,

    /// Release every claim when this sidecar stops, even while its media
    /// server goes on publishing (by default a stopped sidecar whose server
    /// still answers leaves its claims for its next run to adopt, within
    /// the claim service's --detach-grace).
    #[arg(
        long,
        env = "INGEST_RELEASE_ON_EXIT",
        help_heading = "Media-server hooks"
    )]
    pub release_on_exit: bool,

    /// A publisher the media server sends no update for this long is gone
    /// (nginx-rtmp: set it above `notify_update_timeout`; [default: 35s for
    /// nginx-rtmp, off for servers without an update hook]).
    #[arg(long, env = "INGEST_HOOKS_UPDATE_TIMEOUT", value_parser = duration, help_heading = "Media-server hooks")]
    pub hooks_update_timeout: Option<Duration>,

    /// File holding OvenMediaEngine's AdmissionWebhooks secret key: every
    /// request must carry its HMAC-SHA1 in X-OME-Signature (required with
    /// --media-server ome).
    #[arg(
        long,
        env = "INGEST_OME_SECRET_FILE",
        help_heading = "Media-server hooks"
    )]
    pub ome_secret_file: Option<std::path::PathBuf>,
}

impl HooksConfig {
    pub fn validate(&self) -> Result<()> {
        if self.media_server == Some(HookKind::Ome) && self.ome_secret_file.is_none() {
            return Err(Error::Config("--media-server ome needs --ome-secret-file (INGEST_OME_SECRET_FILE): the AdmissionWebhooks secret key every request is signed with".into()));
        }
        if let Some(api) = &self.media_server_api {
            if !(api.starts_with("http://") || api.starts_with("https://")) {
                return Err(Error::Config(format!(
                    "--media-server-api {api:?} must be an http:// URL"
                )));
            }
        }
        if self.media_server_api_interval.is_zero()
            || self.media_server_gone_after <= self.media_server_api_interval
        {
            return Err(Error::Config(format!(
                "--media-server-gone-after ({:?}) must be longer than --media-server-api-interval ({:?}), which must not be zero",
                self.media_server_gone_after, self.media_server_api_interval
            )));
        }
        Ok(())
    }

    /// Where the media server lists its publishers, with its credential.
    pub fn api(&self) -> Result<Option<crate::hooks::Api>> {
        let Some(url) = &self.media_server_api else {
            return Ok(None);
        };
        let token = match &self.media_server_api_token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        Error::Config(format!(
                            "cannot read --media-server-api-token-file {}: {e}",
                            path.display()
                        ))
                    })?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        Ok(Some(crate::hooks::Api {
            url: url.clone(),
            token,
        }))
    }

    /// How long a publisher may go without an update from the media
    /// server: as set, or 35 s for nginx-rtmp (its `notify_update_timeout`
    /// defaults to 30 s), none for the others.
    pub fn update_timeout(&self) -> Option<Duration> {
        match (self.hooks_update_timeout, self.media_server) {
            (Some(t), _) => Some(t),
            (None, Some(HookKind::NginxRtmp)) => Some(Duration::from_secs(35)),
            _ => None,
        }
    }
}
