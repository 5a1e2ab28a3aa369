//! Telling a media server to drop a publisher, for the servers whose hooks
//! cannot (nginx-rtmp's `on_update` answer can; SRS, MediaMTX and
//! OvenMediaEngine have no such hook): through their HTTP API, on the host
//! and port of `--media-server-api`. Used when this node's claim of a
//! broadcast its server still publishes was taken over, or another node
//! holds it: two servers must not stay live on one broadcast.
//!
//! - SRS: `DELETE /api/v1/clients/{client_id}`;
//! - MediaMTX: the path's source as its API names it
//!   (`GET /v3/paths/get/{path}`), then `POST /v3/{rtmpconns,rtspsessions,
//!   srtconns,webrtcsessions}/kick/{id}`;
//! - OvenMediaEngine: `DELETE /v1/vhosts/{vhost}/apps/{app}/streams/{stream}`
//!   (the listing URL names the vhost and application).

use serde::Deserialize;

use super::{Api, Kind};
use crate::error::{Error, Result};
use crate::lookup::http_call;

/// `scheme://host:port` of `url`.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

/// The request that drops the publisher of `broadcast` known as `client`,
/// for the servers that need no lookup first.
pub fn request(kind: Kind, api_url: &str, broadcast: &str, client: &str) -> Option<String> {
    match kind {
        Kind::Srs if !client.is_empty() => {
            Some(format!("{}/api/v1/clients/{client}", origin(api_url)))
        }
        Kind::Ome => {
            let streams = api_url.split(['?', '#']).next().unwrap_or(api_url);
            let stream = broadcast.split_once('/').map(|(_, s)| s)?;
            Some(format!("{}/{stream}", streams.trim_end_matches('/')))
        }
        _ => None,
    }
}

#[derive(Deserialize)]
struct MtxPath {
    source: Option<MtxSource>,
}

#[derive(Deserialize)]
struct MtxSource {
    #[serde(rename = "type")]
    kind: String,
    id: String,
}

/// MediaMTX's kick endpoint for a source of type `kind`.
fn mediamtx_kick(origin: &str, kind: &str, id: &str) -> Option<String> {
    let list = match kind {
        "rtmpConn" => "rtmpconns",
        "rtspSession" | "rtspsSession" => "rtspsessions",
        "srtConn" => "srtconns",
        "webRTCSession" => "webrtcsessions",
        _ => return None,
    };
    Some(format!("{origin}/v3/{list}/kick/{id}"))
}

/// Drops the publisher of `broadcast` (`client` as its hooks named it).
pub async fn kick(kind: Kind, api: &Api, broadcast: &str, client: &str) -> Result<()> {
    let token = api.token.as_deref();
    let url = match kind {
        Kind::NginxRtmp => {
            return Err(Error::media_server(
                "nginx-rtmp drops it at its next on_update",
            ))
        }
        Kind::Mediamtx => {
            let origin = origin(&api.url);
            let body = http_call(
                reqwest::Method::GET,
                &format!("{origin}/v3/paths/get/{broadcast}"),
                token,
            )
            .await?;
            let path: MtxPath = serde_json::from_slice(&body)
                .map_err(|e| Error::Unreadable(format!("not MediaMTX's path: {e}")))?;
            let source = path.source.ok_or_else(|| {
                Error::media_server(format!("{broadcast} has no publisher at MediaMTX any more"))
            })?;
            mediamtx_kick(origin, &source.kind, &source.id).ok_or_else(|| {
                Error::media_server(format!(
                    "{broadcast}'s source is a {}, which MediaMTX cannot kick",
                    source.kind
                ))
            })?
        }
        _ => request(kind, &api.url, broadcast, client).ok_or_else(|| {
            Error::media_server(format!("no client id known for {broadcast}'s publisher"))
        })?,
    };
    let method = match kind {
        Kind::Mediamtx => reqwest::Method::POST,
        _ => reqwest::Method::DELETE,
    };
    http_call(method, &url, token).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kick_requests_on_the_api_of_the_listing() {
        assert_eq!(
            request(
                Kind::Srs,
                "http://127.0.0.1:1985/api/v1/streams",
                "live/a",
                "191f2g5s"
            ),
            Some("http://127.0.0.1:1985/api/v1/clients/191f2g5s".into())
        );
        assert_eq!(
            request(Kind::Srs, "http://h:1985/api/v1/streams", "live/a", ""),
            None
        );
        assert_eq!(
            request(
                Kind::Ome,
                "http://127.0.0.1:8081/v1/vhosts/default/apps/live/streams",
                "live/cam1",
                "127.0.0.1:5000"
            ),
            Some("http://127.0.0.1:8081/v1/vhosts/default/apps/live/streams/cam1".into())
        );
        assert_eq!(
            mediamtx_kick("http://h:9997", "rtspSession", "ba33"),
            Some("http://h:9997/v3/rtspsessions/kick/ba33".into())
        );
        assert_eq!(mediamtx_kick("http://h:9997", "rtmpSource", "x"), None);
        assert_eq!(origin("http://h:9997/v3/paths/list?x"), "http://h:9997");
        assert_eq!(origin("http://h:9997"), "http://h:9997");
    }
}
