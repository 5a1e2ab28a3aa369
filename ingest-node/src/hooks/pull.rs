//! OvenMediaEngine pulling a broadcast from its owner for its own players:
//! OME plays no RTMP, so nothing can be relayed from an OME owner the way
//! the sidecar relays for SRS and MediaMTX; instead the non-owner OME pulls
//! the stream over OVT (OME's origin-to-edge protocol) from the owner's
//! `ovt` endpoint (`--advertise-ovt` of the owner's sidecar), created
//! through its REST API (`POST /v1/vhosts/{vhost}/apps/{app}/streams`,
//! `{"name": ..., "urls": ["ovt://HOST:PORT/app/stream"]}`), and the player
//! is let in once the pulled stream has its tracks.

use std::time::{Duration, Instant};

use serde::Deserialize;

use super::Api;
use crate::error::{Error, Result};
use crate::lookup::http_call;

/// How long a player's admission waits for the pulled stream's tracks
/// (below OME's webhook `Timeout`).
const READY_WITHIN: Duration = Duration::from_secs(4);

/// The body that asks OME to pull `stream` from `ovt` (the owner's
/// `ovt://HOST:PORT`) for application `app`.
pub fn request(app: &str, stream: &str, ovt: &str) -> serde_json::Value {
    serde_json::json!({
        "name": stream,
        "urls": [format!("{}/{app}/{stream}", ovt.trim_end_matches('/'))],
    })
}

#[derive(Deserialize)]
struct Detail {
    response: DetailBody,
}

#[derive(Deserialize)]
struct DetailBody {
    input: Input,
}

#[derive(Deserialize)]
struct Input {
    #[serde(default)]
    tracks: Vec<serde_json::Value>,
}

/// Asks the OME behind `api` (its streams URL) to pull `broadcast` from
/// `ovt`, and waits until the pulled stream has tracks.
pub async fn pull(api: &Api, broadcast: &str, ovt: &str) -> Result<()> {
    let (app, stream) = broadcast
        .split_once('/')
        .ok_or_else(|| Error::Unreadable(format!("{broadcast} has no APP/STREAM form")))?;
    let streams = api.url.split(['?', '#']).next().unwrap_or(&api.url);
    let streams = streams.trim_end_matches('/');
    let token = api.token.as_deref();
    let detail_url = format!("{streams}/{stream}");
    if ready(&detail_url, token).await != Some(true) {
        let body = request(app, stream, ovt).to_string();
        // A pull already asked for (another player, a moment ago) answers
        // 409: the wait below is the same.
        match crate::lookup::http_post_json(streams, &body, token).await {
            Ok(_)
            | Err(Error::MediaServer {
                status: Some(409), ..
            }) => {}
            Err(e) => return Err(e),
        }
    }
    let started = Instant::now();
    while started.elapsed() < READY_WITHIN {
        if ready(&detail_url, token).await == Some(true) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::media_server(format!(
        "OME's pull of {broadcast} from {ovt} had no tracks within {READY_WITHIN:?}"
    )))
}

/// Whether OME's stream at `url` exists with tracks (`None`: no answer).
async fn ready(url: &str, token: Option<&str>) -> Option<bool> {
    let body = http_call(reqwest::Method::GET, url, token).await.ok()?;
    let detail: Detail = serde_json::from_slice(&body).ok()?;
    Some(!detail.response.input.tracks.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_names_the_stream_and_the_owners_ovt_url() {
        assert_eq!(
            request("live", "cam1", "ovt://10.0.0.1:9000/"),
            serde_json::json!({"name": "cam1", "urls": ["ovt://10.0.0.1:9000/live/cam1"]})
        );
    }
}
