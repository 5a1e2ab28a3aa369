//! The hooks front end: the same registry and claim bridge behind a media
//! server's HTTP hooks instead of our RTMP ingest (`--media-server`).
//!
//! The media server (nginx-rtmp, SRS, MediaMTX, OvenMediaEngine) asks
//! before it lets a publisher in; the sidecar opens a `publish` track for
//! it, waits for the claim like the RTMP gate does (the duplicate-publisher
//! policy and a gone owner's grace included), and answers allow or refuse
//! naming the owner. The end of the publish closes the track (the claim is
//! released at once). A player at a node that does not own the broadcast
//! is sent to the owner (nginx-rtmp relays it from there) or told where it
//! is. Liveness is the sidecar's: a publisher whose updates stop (nginx's
//! `on_update`), or that the server's complete listing no longer shows, is
//! gone, and so is everything a server published once its API has been
//! silent for `--media-server-gone-after`. A question the sidecar does not
//! decide is refused.
//!
//! - `model.rs`: what a hook means, and the answers;
//! - `nginx.rs`, `srs.rs`, `mediamtx.rs`, `ome.rs`: each server's requests
//!   and answers;
//! - `publishers.rs`: who publishes what (the rules, without I/O);
//! - `listing.rs`: what a server's API lists as published, read whole;
//! - `liveness.rs`: whether the server is still there;
//! - `kick.rs`: dropping a publisher through the server's API;
//! - `pull.rs`: OME pulling a broadcast from its owner for its players.

mod kick;
pub mod listing;
pub mod liveness;
mod mediamtx;
pub mod model;
mod nginx;
pub mod ome;
pub mod publishers;
mod pull;
mod srs;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::bridge::ClaimState;
use crate::gate::{Admission, Counted, PublishGate, Refusal, Refused};
use crate::lookup::{Freshness, OwnerLookup};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::relay::Relays;
use claims_proto::v1 as pb;
use liveness::{Liveness, Verdict};
use model::{Answer, Hook};
use publishers::{Done, Publishers, Seen, Start};

/// Which media server's hooks are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    NginxRtmp,
    Srs,
    Mediamtx,
    Ome,
}

impl Kind {
    /// The one URL path every hook of this server points at.
    pub fn path(self) -> &'static str {
        match self {
            Kind::NginxRtmp => "/nginx-rtmp",
            Kind::Srs => "/srs",
            Kind::Mediamtx => "/mediamtx",
            Kind::Ome => "/ome",
        }
    }

    /// What a hook body from this server means (untrusted input: any
    /// bytes give a hook or a reason).
    pub fn parse(self, body: &[u8]) -> Result<Hook, String> {
        match self {
            Kind::NginxRtmp => nginx::parse(body),
            Kind::Srs => srs::parse(body),
            Kind::Mediamtx => mediamtx::parse(body),
            Kind::Ome => ome::parse(body),
        }
    }

    /// Whether the server asks again and again about a live publisher
    /// (nginx-rtmp's `on_update`), so that its answer drops one whose claim
    /// went elsewhere; the others are told through their API.
    pub fn updates_publishers(self) -> bool {
        self == Kind::NginxRtmp
    }

    /// Whether a player at this server can be given the owner's stream:
    /// relayed in by the sidecar (SRS; MediaMTX with `runOnDemand`), or
    /// pulled by the server itself (OME, over OVT).
    pub fn takes_relays(self) -> bool {
        matches!(self, Kind::Srs | Kind::Mediamtx | Kind::Ome)
    }

    /// Whether the server follows a redirect of a player to the owner and
    /// relays the stream from there (nginx-rtmp's `on_play` 3xx); the
    /// others refuse the player, and the sidecar's log names the owner.
    pub fn relays_players(self) -> bool {
        self == Kind::NginxRtmp
    }

    /// Whether the server itself replaces a path's publisher with a newer
    /// one (MediaMTX's `overridePublisher`, on by default).
    pub fn replaces_publishers(self) -> bool {
        self == Kind::Mediamtx
    }

    pub fn answer(self, answer: Answer) -> Response {
        match self {
            Kind::NginxRtmp => nginx::answer(answer),
            Kind::Srs => srs::answer(answer),
            Kind::Mediamtx => mediamtx::answer(answer),
            Kind::Ome => ome::answer(answer),
        }
    }
}

/// Largest hook body accepted: nginx-rtmp's form with every field is well
/// under 4 KiB; an OME admission with long URLs under 16 KiB.
pub const MAX_HOOK_BODY: usize = 64 * 1024;

pub struct Sidecar {
    pub kind: Kind,
    /// Whether a publisher may start, and what it is told.
    pub gate: Arc<PublishGate>,
    pub lookup: OwnerLookup,
    /// OME's shared secret: its requests must be signed with it.
    pub ome_secret: Option<Vec<u8>>,
    pub publishers: Mutex<Publishers<Admission>>,
    /// Where the server lists what it publishes, if configured.
    pub api: Option<Api>,
    /// Whether that API still answers.
    pub liveness: Mutex<Liveness>,
    /// Relays of owners' streams into this server for its players, where
    /// the server can take them (SRS, MediaMTX).
    pub relays: Option<Arc<Relays>>,
    /// The media server's RTMP address (`--advertise-rtmp`): where relays
    /// publish.
    pub local_rtmp: String,
}

pub fn router(sidecar: Arc<Sidecar>) -> Router {
    Router::new()
        .route(sidecar.kind.path(), post(hook))
        .layer(DefaultBodyLimit::max(MAX_HOOK_BODY))
        .with_state(sidecar)
}

async fn hook(State(s): State<Arc<Sidecar>>, headers: HeaderMap, body: Bytes) -> Response {
    if let (Kind::Ome, Some(secret)) = (s.kind, s.ome_secret.as_ref()) {
        let signature = headers
            .get("x-ome-signature")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ome::signed(secret, &body, signature) {
            tracing::warn!(
                "hook refused: X-OME-Signature does not sign the body with the configured secret"
            );
            return s.kind.answer(Answer::Bad {
                reason: "X-OME-Signature does not match the body and this sidecar's secret".into(),
            });
        }
    }
    let answer = match s.kind.parse(&body) {
        Ok(hook) => s.handle(hook).await,
        Err(reason) => {
            tracing::info!(%reason, "hook refused: not understood");
            Answer::Bad { reason }
        }
    };
    s.kind.answer(answer)
}

impl Sidecar {
    async fn handle(self: &Arc<Self>, hook: Hook) -> Answer {
        match hook {
            Hook::Publish { broadcast, client } => self.publish(broadcast, client).await,
            Hook::Update { broadcast, client } => self.update(broadcast, client).await,
            Hook::PublishDone { broadcast, client } => {
                self.done(broadcast, client);
                Answer::Allow
            }
            Hook::Play { broadcast } => self.play(broadcast).await,
            Hook::Relay { broadcast } => {
                tracing::debug!(%broadcast, "the media server's relay from the owner: allowed, not claimed");
                Answer::Allow
            }
            Hook::Relayed {
                broadcast,
                client,
                query,
            } => match &self.relays {
                Some(relays) if relays.is_relay(&query) => {
                    relays.note_client(&client);
                    tracing::debug!(%broadcast, %client, "this sidecar's relay of the owner's stream: allowed, not claimed");
                    Answer::Allow
                }
                _ => self.publish(broadcast, client).await,
            },
            Hook::Demand { broadcast } => self.play(broadcast).await,
            Hook::Notice { what } => {
                tracing::debug!(%what, "notice from the media server; nothing to decide");
                Answer::Allow
            }
            Hook::Undecided { what } => {
                tracing::warn!(%what, "hook refused: this sidecar decides publishes and plays only; leave this action out of the media server's hooks (see the README)");
                Answer::Refuse {
                    reason: format!(
                        "{what} is not decided here: this sidecar answers publishes and plays only"
                    ),
                }
            }
        }
    }

    /// The end of a publish: the publisher's own end releases its claim;
    /// an end that names another client, or one not named yet, is checked
    /// against what the server lists now.
    fn done(self: &Arc<Self>, broadcast: String, client: String) {
        let done = self.lock().done(&broadcast, &client);
        match done {
            Done::Ended(_track) => tracing::info!(%broadcast, %client, "publish ended"),
            Done::Unknown => {
                tracing::info!(%broadcast, %client, "publish end for a publisher not known here; nothing changed")
            }
            Done::Unmatched if self.api.is_some() => {
                tracing::info!(%broadcast, %client, "publish end that does not name the publisher known here; asking the media server what it still publishes");
                let s = self.clone();
                tokio::spawn(async move { s.read_and_converge().await });
            }
            Done::Unmatched => {
                tracing::info!(%broadcast, %client, "publish end that does not name the publisher known here; nothing changed")
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Publishers<Admission>> {
        self.publishers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Turns a publisher away (counted and logged by the gate).
    fn refuse(&self, broadcast: &str, refusal: Refusal) -> Answer {
        let refusal = self.gate.refused(broadcast, refusal);
        Answer::Refuse {
            reason: refusal.reason,
        }
    }

    /// A publisher asks to start: allowed once claimed (the gate decides);
    /// the media server's own client id says whether it is a new one.
    async fn publish(&self, broadcast: String, client: String) -> Answer {
        let start = self.lock().start(&broadcast, &client);
        match start {
            Start::Busy { client: other } => {
                let reason = format!("{broadcast} is already published here by client {other}");
                return self.refuse(&broadcast, Refusal::new(Refused::Busy, reason));
            }
            Start::Again => return Answer::Allow,
            Start::Replaces { client } => {
                if self.lock().replace(&broadcast, &client, Instant::now()) {
                    tracing::info!(%broadcast, %client, "the media server replaces this broadcast's publisher with a newer one here; the claim stays");
                    return Answer::Allow;
                }
            }
            Start::New => {}
        }
        let admission = match self.gate.publish(&broadcast).await {
            Ok(admission) => admission,
            Err(refusal) => {
                return Answer::Refuse {
                    reason: refusal.reason,
                }
            }
        };
        if !self
            .lock()
            .insert(&broadcast, &client, admission, Instant::now())
        {
            let reason = format!("{broadcast} was taken by another client meanwhile");
            return self.refuse(&broadcast, Refusal::new(Refused::Busy, reason));
        }
        Answer::Allow
    }

    /// A publisher is still there; a claim lost to a takeover (or never
    /// made) ends it.
    async fn update(&self, broadcast: String, client: String) -> Answer {
        let seen = self.lock().seen(&broadcast, &client, Instant::now());
        match seen {
            Seen::Known => {}
            // A publisher this sidecar does not know (it restarted, or
            // missed the start): claimed now, or dropped.
            Seen::Unknown => return self.publish(broadcast, client).await,
            Seen::Other { client: other } => {
                let reason = format!("{broadcast} is published here by client {other}");
                return self.refuse(&broadcast, Refusal::new(Refused::Busy, reason));
            }
        }
        let (label, reason) = match self.gate.bridge.state(&broadcast) {
            Some(ClaimState::Lost {
                taken_by: Some(by), ..
            }) => {
                tracing::info!(%broadcast, %by, "claim taken over by another node; the media server is told to drop its publisher");
                let reason = format!(
                    "{broadcast} was taken over by node {by} (a newer publisher there won)"
                );
                ("taken_over", reason)
            }
            // Its claim went, and another node claimed the broadcast
            // meanwhile: two publishers of one broadcast; this one ends.
            Some(ClaimState::Standby { owner_node, .. }) => {
                tracing::warn!(%broadcast, owner = %owner_node, "claim now held by another node; the media server is told to drop its publisher");
                let reason = format!("{broadcast} is now owned by node {owner_node}");
                ("owned_elsewhere", reason)
            }
            _ => return Answer::Allow,
        };
        self.lock().done(&broadcast, &client);
        self.gate
            .metrics
            .publishes_refused
            .with_label_values(&[label])
            .inc();
        Answer::Refuse { reason }
    }

    /// A player: allowed where the broadcast is claimed, sent to the owner
    /// elsewhere.
    async fn play(&self, broadcast: String) -> Answer {
        if let Err(reason) = claims_proto::names::check_broadcast(&broadcast) {
            return Answer::Bad { reason };
        }
        if matches!(
            self.gate.bridge.state(&broadcast),
            Some(ClaimState::Claimed { .. })
        ) {
            return Answer::Allow;
        }
        match self.lookup.owner(&broadcast, Freshness::Linearizable).await {
            Ok(None) => Answer::NotFound {
                reason: format!("{broadcast} is not live anywhere"),
            },
            Ok(Some(owner)) if owner.detached => Answer::NotFound {
                reason: format!(
                    "{broadcast} is owned by node {}, which is gone; retry shortly",
                    owner.node_id
                ),
            },
            Ok(Some(owner)) => match owner.endpoints.get("rtmp") {
                Some(rtmp) if owner.node_id != self.gate.bridge.node_id() => {
                    let location = format!("{}/{broadcast}", rtmp.trim_end_matches('/'));
                    if let Some(answer) = self.relay(&broadcast, &owner, rtmp).await {
                        return answer;
                    }
                    if self.kind.relays_players() {
                        self.gate.metrics.redirects.inc();
                    } else {
                        tracing::info!(%broadcast, owner = %owner.node_id, %location, "player refused: the broadcast is owned by another node, and this media server cannot relay it from there; play it at the owner");
                    }
                    Answer::Redirect { location }
                }
                _ => Answer::NotFound {
                    reason: format!(
                        "{broadcast} is not live here and its claim points nowhere else"
                    ),
                },
            },
            Err(e) => Answer::Refuse {
                reason: format!("cannot ask who owns {broadcast}: {e}"),
            },
        }
    }

    /// A player of `broadcast`, which `owner` owns (its RTMP endpoint
    /// `rtmp`), at this server: the owner's stream brought here where the
    /// server can take it — relayed in (SRS, MediaMTX) or pulled by the
    /// server over OVT (OME, from an owner that advertises `ovt`) — and the
    /// player let in; `None` where it cannot be.
    async fn relay(&self, broadcast: &str, owner: &pb::Claim, rtmp: &str) -> Option<Answer> {
        let relays = self.relays.as_ref()?;
        if self.kind != Kind::Ome {
            relays.ensure(broadcast, rtmp, &self.local_rtmp);
            return Some(Answer::Allow);
        }
        let (Some(api), Some(ovt)) = (&self.api, owner.endpoints.get("ovt")) else {
            return None;
        };
        relays.note_pulled(broadcast);
        match pull::pull(api, broadcast, ovt).await {
            Ok(()) => {
                tracing::info!(%broadcast, owner = %owner.node_id, %ovt, "OME pulls the owner's stream for its players");
                Some(Answer::Allow)
            }
            Err(e) => {
                tracing::warn!(%broadcast, owner = %owner.node_id, %ovt, error = %e, "OME could not pull the owner's stream");
                None
            }
        }
    }

    /// Publishers without an update for `timeout` are gone (the media
    /// server died or lost them): their tracks close, their claims go.
    fn reap(&self, timeout: Duration) {
        for (broadcast, _track) in self.lock().expired(Instant::now(), timeout) {
            tracing::warn!(%broadcast, ?timeout, "no update from the media server for this publisher; it is gone");
        }
    }

    /// Converges to a complete listing: publishers it does not show go;
    /// ones it shows that are not known here are claimed.
    async fn converge(self: &Arc<Self>, listed: listing::Listed, read_at: Instant) {
        let listed = match &self.relays {
            Some(relays) => {
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
    async fn read_and_converge(self: &Arc<Self>) -> Option<Verdict> {
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
        let overtaken = self.lock().take_if(|b| {
            matches!(
                states.get(b),
                Some(ClaimState::Lost {
                    taken_by: Some(_),
                    ..
                }) | Some(ClaimState::Standby { .. })
            )
        });
        for (broadcast, client, _track) in overtaken {
            let by = match states.get(&broadcast) {
                Some(ClaimState::Lost {
                    taken_by: Some(by), ..
                }) => by.clone(),
                Some(ClaimState::Standby { owner_node, .. }) => owner_node.clone(),
                _ => String::new(),
            };
            self.gate
                .metrics
                .publishes_refused
                .with_label_values(&["taken_over"])
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
pub fn parse_listing(
    kind: Kind,
    url: &str,
    body: &[u8],
    asked: usize,
) -> Result<listing::Page, String> {
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
pub async fn read_listing(kind: Kind, api: &Api) -> Result<listing::Listed, String> {
    let mut asked = listing::FIRST_ASK;
    loop {
        let url = listing::url(kind, &api.url, asked);
        let body = crate::lookup::http_get(&url, api.token.as_deref()).await?;
        let page = listing::parse(kind, &api.url, &body, asked)?;
        if page.complete {
            return Ok(page.listed);
        }
        if asked >= listing::MOST_ASKED {
            return Err(format!(
                "{url} is not the whole listing even asking for {asked} items"
            ));
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
