//! Keeping the sidecar true to its media server: publishers whose updates
//! stopped are gone; the server's listing, read whole every interval, is
//! converged to; a server that stops answering detaches the node and, gone
//! for good, takes its publishers with it; a publisher whose claim another
//! node holds is dropped through the server's API; a sidecar that stops
//! while its server goes on leaves its claims to be adopted.

use crate::error::{Error, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::liveness::{Liveness, Verdict};
use super::publishers::{Publishers, Start};
use super::{kick, listing, Kind, Sidecar};
use crate::bridge::Overtaken;
use crate::gate::{Admission, Counted};
use crate::metrics::Metrics;
use crate::registry::Registry;

impl Sidecar {
    /// Publishers without an update for `timeout` are gone (the media
    /// server died or lost them): their tracks close, their claims go.
    fn reap(&self, timeout: Duration) {
        for (broadcast, _track) in self.lock().expired(Instant::now(), timeout) {
            tracing::warn!(%broadcast, ?timeout, "no update from the media server for this publisher; it is gone");
        }
    }

    /// Converges to a complete listing: publishers it does not show go;
    /// ones it shows that are not known here are claimed.
    async fn converge(self: &Arc<Self>, page: listing::Page, read_at: Instant) {
        let listed = page.listed;
        let listed = match &self.relays {
            Some(relays) => {
                relays.readers(&page.readers, Instant::now());
                relays.forget_unlisted(&listed);
                let (relayed, listed): (Vec<_>, Vec<_>) = listed
                    .into_iter()
                    .partition(|(b, c)| relays.is_listed_relay(b, c));
                for (broadcast, _) in relayed {
                    tracing::debug!(%broadcast, "listed: this sidecar's relay, not a publisher");
                }
                listed
            }
            None => listed,
        };
        let gone = self.lock().unlisted(&listed, read_at);
        for (broadcast, _track) in gone {
            tracing::warn!(%broadcast, "the media server no longer lists this publisher; it is gone");
        }
        for (broadcast, client) in listed {
            if self.lock().start(&broadcast, &client) == Start::New {
                let s = self.clone();
                tokio::spawn(async move {
                    tracing::info!(%broadcast, %client, "the media server lists a publisher not known here; claiming it");
                    s.publish(broadcast, client).await;
                });
            }
        }
    }

    /// Reads the server's listing (if it has an API) and converges to it;
    /// what the read says of the server's liveness. A failed or
    /// incomplete listing releases nothing by itself; a server silent for
    /// the bound takes its publishers with it.
    pub(super) async fn read_and_converge(self: &Arc<Self>) -> Option<Verdict> {
        let api = self.api.as_ref()?;
        let read_at = Instant::now();
        let read = read_listing(self.kind, api).await;
        let now = Instant::now();
        let verdict = match &read {
            Ok(_) => self.liveness().answered(now),
            Err(_) => self.liveness().failed(now),
        };
        match read {
            Ok(listed) => {
                if verdict == Verdict::Back {
                    tracing::info!(api = %api.url, "the media server answers again; attaching to the claim service again");
                    self.gate.bridge.attach();
                }
                self.converge(listed, read_at).await;
            }
            Err(e) => match verdict {
                Verdict::Suspect => {
                    tracing::warn!(api = %api.url, error = %e, "the media server does not answer; detaching from the claim service, so its claims wait out the detach grace (adopted if it answers within it; a publisher failing over elsewhere is held there meanwhile)");
                    self.gate.bridge.detach();
                }
                Verdict::Gone => {
                    let gone = self.lock().clear();
                    tracing::error!(api = %api.url, error = %e, released = gone.len(), "the media server has not answered for --media-server-gone-after; it is gone, and so are its publishers: their claims are released");
                    // The node attaches again with nothing live: its
                    // claims, if any are left, are released there.
                    self.gate.bridge.attach();
                }
                Verdict::StillAway => {
                    tracing::debug!(api = %api.url, error = %e, "the media server still does not answer")
                }
                Verdict::There | Verdict::Back => {
                    tracing::warn!(api = %api.url, error = %e, "cannot read the media server's publishers; nothing is released until it answers or is gone")
                }
            },
        }
        Some(verdict)
    }

    /// Publishers whose claim another node now holds (taken over, or
    /// claimed there while this claim was lost) are dropped: removed here
    /// and kicked at the server through its API, so that two servers are
    /// never live on one broadcast. nginx-rtmp is told by its next
    /// `on_update` instead.
    async fn drop_overtaken(&self) {
        let states = self.gate.bridge.view().states;
        let overtaken = |b: &str| states.get(b).and_then(|s| s.overtaken(b));
        let dropped = self.lock().take_if(|b| overtaken(b).is_some());
        for (broadcast, client, _track) in dropped {
            let Some(Overtaken { by, label, .. }) = overtaken(&broadcast) else {
                continue;
            };
            self.gate
                .metrics
                .publishes_refused
                .with_label_values(&[label])
                .inc();
            let Some(api) = &self.api else {
                tracing::error!(%broadcast, %client, node = %by, "another node holds this claim and the media server cannot be told to drop its publisher here (no --media-server-api)");
                continue;
            };
            match kick::kick(self.kind, api, &broadcast, &client).await {
                Ok(()) => {
                    tracing::info!(%broadcast, %client, node = %by, "claim now held by another node; the media server was told to drop its publisher")
                }
                Err(e) => {
                    tracing::error!(%broadcast, %client, node = %by, error = %e, "claim now held by another node, and the media server could not be told to drop its publisher")
                }
            }
        }
    }

    fn liveness(&self) -> std::sync::MutexGuard<'_, Liveness> {
        self.liveness.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this sidecar, stopping, leaves its claims to be adopted by
    /// its next run: only while its media server still answers (it goes on
    /// publishing without the sidecar); a server that is gone, or one the
    /// sidecar cannot ask, gets a goodbye.
    pub async fn server_goes_on(&self) -> bool {
        let Some(api) = &self.api else { return false };
        if self.liveness().is_away() {
            return false;
        }
        match read_listing(self.kind, api).await {
            Ok(_) => true,
            Err(e) => {
                tracing::info!(api = %api.url, error = %e, "the media server does not answer; its claims are released with the goodbye");
                false
            }
        }
    }
}

/// Before the claim session starts: every publisher the media server
/// lists is live here, so that `hello.live` names it and its claim (left by
/// this node's previous run) is adopted, same fencing token.
pub fn restore(
    kind: Kind,
    registry: &Registry,
    listed: &listing::Listed,
    metrics: &Metrics,
) -> Publishers<Admission> {
    let now = Instant::now();
    let mut book = Publishers::new(kind.replaces_publishers());
    for (broadcast, client) in listed {
        if claims_proto::names::check_broadcast(broadcast).is_err() {
            continue;
        }
        if let Some(track) = registry.open(broadcast, "publish") {
            let admission = Admission {
                track,
                fencing_token: None,
                counted: Counted::new(&metrics.publishers),
            };
            if book.insert(broadcast, client, admission, now) {
                tracing::info!(%broadcast, %client, "publisher listed by the media server at start");
            }
        }
    }
    book
}

/// What a listing from this server's API at `url` says is published
/// (untrusted input, like the hooks), asked for `asked` items.
pub fn parse_listing(kind: Kind, url: &str, body: &[u8], asked: usize) -> Result<listing::Page> {
    listing::parse(kind, url, body, asked)
}

/// Where a media server lists its publishers, and the credential it wants.
#[derive(Debug, Clone)]
pub struct Api {
    pub url: String,
    /// Sent as `Authorization: Basic base64(token)`: OME's AccessToken, or
    /// `user:password` for SRS's or MediaMTX's API.
    pub token: Option<String>,
}

/// Reads the media server's whole list of publishers: asks for more until
/// the server's counts say nothing was left out; a listing never known to
/// be complete is an error.
pub async fn read_listing(kind: Kind, api: &Api) -> Result<listing::Page> {
    let mut asked = listing::FIRST_ASK;
    loop {
        let url = listing::url(kind, &api.url, asked);
        let body = crate::lookup::http_get(&url, api.token.as_deref()).await?;
        let page = listing::parse(kind, &api.url, &body, asked)?;
        if page.complete {
            return Ok(page);
        }
        if asked >= listing::MOST_ASKED {
            return Err(Error::media_server(format!(
                "{url} is not the whole listing even asking for {asked} items"
            )));
        }
        asked *= 16;
    }
}

/// Keeps the sidecar true to the media server until `stop`: reaps
/// publishers whose updates stopped (`update_timeout`), and every
/// `interval` (sooner while it does not answer) reads its API, if it has
/// one, and converges to it.
pub async fn watch(
    sidecar: Arc<Sidecar>,
    update_timeout: Option<Duration>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut reap = tokio::time::interval(Duration::from_secs(1));
    let mut next_read = tokio::time::Instant::now() + interval;
    let mut claims = sidecar.gate.bridge.subscribe();
    let kicks = !sidecar.kind.updates_publishers();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = claims.changed(), if kicks => {
                if changed.is_err() {
                    return;
                }
                sidecar.drop_overtaken().await;
            }
            _ = reap.tick() => {
                if let Some(timeout) = update_timeout {
                    sidecar.reap(timeout);
                }
            }
            _ = tokio::time::sleep_until(next_read), if sidecar.api.is_some() => {
                sidecar.read_and_converge().await;
                next_read = tokio::time::Instant::now() + sidecar.liveness().next_read(interval);
            }
        }
    }
}
