//! Who owns a broadcast: from the node's owner cache when it follows the
//! claim plane (see [`crate::owners`]), else asked of the claim service (a
//! linearizable `GetOwner`) over one cached channel; what the HTTP
//! redirects and the media-server hooks send viewers by. And a plain `GET`
//! of a media server's API.

use crate::error::{Error, Result};
use std::sync::Arc;
use std::time::Duration;

use claims_proto::v1 as pb;
use pb::ownership_client::OwnershipClient;
use tonic::transport::Channel;

use crate::bridge::ClaimServices;
use crate::metrics::Metrics;
use crate::owners::OwnerCache;

const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// Where an owner's answer may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// The owner cache, when it follows the claim plane.
    Cached,
    /// A linearizable read (a request already redirected once, a hook).
    Linearizable,
}

pub struct OwnerLookup {
    claim_services: ClaimServices,
    channel: tokio::sync::Mutex<Option<Channel>>,
    cache: Option<Arc<OwnerCache>>,
    metrics: Option<Arc<Metrics>>,
}

impl OwnerLookup {
    /// Lookups asked of the claim service only.
    pub fn new(claim_services: ClaimServices) -> Self {
        Self {
            claim_services,
            channel: tokio::sync::Mutex::new(None),
            cache: None,
            metrics: None,
        }
    }

    /// Lookups answered from `cache` while it follows the claim plane,
    /// counted in `metrics`.
    pub fn cached(
        claim_services: ClaimServices,
        cache: Option<Arc<OwnerCache>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            cache,
            metrics: Some(metrics),
            ..Self::new(claim_services)
        }
    }

    fn count(&self, source: &str) {
        if let Some(m) = &self.metrics {
            m.owner_lookups.with_label_values(&[source]).inc();
        }
    }

    /// The owner of `broadcast`, `None` when nobody owns it, or why no
    /// claim service could say.
    pub async fn owner(&self, broadcast: &str, freshness: Freshness) -> Result<Option<pb::Claim>> {
        if freshness == Freshness::Cached {
            // Only an owner is taken from the cache: "nobody" may be a claim
            // made a moment ago that its watch has not brought yet, and is
            // asked of the claim service.
            if let Some(Some(owner)) = self.cache.as_ref().and_then(|c| c.owner(broadcast)) {
                self.count("cache");
                return Ok(Some(owner));
            }
        }
        self.count("claim_service");
        let mut cached = self.channel.lock().await;
        let channel = match cached.as_ref() {
            Some(c) => c.clone(),
            None => {
                let c = self.claim_services.query_channel().await?;
                *cached = Some(c.clone());
                c
            }
        };
        drop(cached);
        let mut client = OwnershipClient::new(channel);
        let request = pb::GetOwnerRequest {
            broadcast: broadcast.to_string(),
            consistent: true,
        };
        match tokio::time::timeout(LOOKUP_TIMEOUT, client.get_owner(request)).await {
            Ok(Ok(claim)) => Ok(Some(claim.into_inner())),
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => Ok(None),
            Ok(Err(status)) => {
                *self.channel.lock().await = None;
                Err(Error::ClaimService(status.message().to_string()))
            }
            Err(_) => {
                *self.channel.lock().await = None;
                Err(Error::ClaimService(format!(
                    "no answer within {LOOKUP_TIMEOUT:?}"
                )))
            }
        }
    }
}

/// The body of `GET url` (a media server's API; `token` sent as
/// `Authorization: Basic base64(token)`), or why not.
pub async fn http_get(url: &str, token: Option<&str>) -> Result<Vec<u8>> {
    http_call(reqwest::Method::GET, url, token).await
}

/// The body of `POST url` with the JSON `body` (a media server's API,
/// `token` as for [`http_get`]).
pub async fn http_post_json(url: &str, body: &str, token: Option<&str>) -> Result<Vec<u8>> {
    send(reqwest::Method::POST, url, token, Some(body.to_string())).await
}

/// The body of `METHOD url` (a media server's API, `token` as for
/// [`http_get`]); an answer that is not 2xx is an error.
pub async fn http_call(method: reqwest::Method, url: &str, token: Option<&str>) -> Result<Vec<u8>> {
    send(method, url, token, None).await
}

async fn send(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    json: Option<String>,
) -> Result<Vec<u8>> {
    let client = reqwest::Client::builder()
        .timeout(LOOKUP_TIMEOUT)
        .build()
        .map_err(|e| Error::media_server(format!("cannot make an HTTP client: {e}")))?;
    let mut request = client.request(method.clone(), url);
    if let Some(token) = token {
        use base64::Engine;
        let basic = base64::engine::general_purpose::STANDARD.encode(token);
        request = request.header("authorization", format!("Basic {basic}"));
    }
    if let Some(json) = json {
        request = request
            .header("content-type", "application/json")
            .body(json);
    }
    let response = request
        .send()
        .await
        .map_err(|e| Error::media_server(format!("{method} {url}: {e}")))?;
    let status = response.status();
    if !status.is_success() {
        return Err(Error::MediaServer {
            message: format!("{method} {url}: {status}"),
            status: Some(status.as_u16()),
        });
    }
    response
        .bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| Error::media_server(format!("{method} {url}: {e}")))
}
