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
//! - `players.rs`: what a player at this server gets;
//! - `server.rs`: keeping true to the server (its listing, its liveness,
//!   dropping overtaken publishers, leaving claims at a stop);
//! - `kick.rs`: dropping a publisher through the server's API;
//! - `pull.rs`: OME pulling a broadcast from its owner for its players.

mod kick;
pub mod listing;
pub mod liveness;
mod mediamtx;
pub mod model;
mod nginx;
pub mod ome;
mod players;
pub mod publishers;
mod pull;
mod server;
mod srs;

pub use server::{parse_listing, read_listing, restore, watch, Api};

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use axum::Router;

use crate::gate::{Admission, PublishGate, Refusal, Refused};
use crate::lookup::OwnerLookup;
use crate::relay::Relays;
use liveness::Liveness;
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
    pub fn parse(self, body: &[u8]) -> crate::error::Result<Hook> {
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
            Answer::Bad {
                reason: reason.to_string(),
            }
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
        let Some(overtaken) = self
            .gate
            .bridge
            .state(&broadcast)
            .and_then(|state| state.overtaken(&broadcast))
        else {
            return Answer::Allow;
        };
        if overtaken.label == "taken_over" {
            tracing::info!(%broadcast, by = %overtaken.by, "claim taken over by another node; the media server is told to drop its publisher");
        } else {
            tracing::warn!(%broadcast, owner = %overtaken.by, "claim now held by another node; the media server is told to drop its publisher");
        }
        self.lock().done(&broadcast, &client);
        self.gate
            .metrics
            .publishes_refused
            .with_label_values(&[overtaken.label])
            .inc();
        Answer::Refuse {
            reason: overtaken.reason,
        }
    }
}
