//! Relays: a player at a media server that does not own the broadcast gets
//! the owner's stream. The sidecar plays the broadcast from the owner over
//! RTMP and publishes it into its own media server, which then serves its
//! players as if the broadcast were published there (SRS lets a player
//! wait for a publisher; MediaMTX waits when the path has `runOnDemand`).
//!
//! A relay's publish carries this sidecar's relay token
//! (`?claims_relay=TOKEN`, random per run): its publish hook is allowed and
//! never claimed, and the server's listing of it is not taken for a
//! publisher here. One relay per broadcast; it ends when the owner's
//! stream ends (the owner left, or its claim moved: players then come back
//! to the new owner), when the local server drops it, when the server's
//! listing has shown it without a player for [`IDLE_STOP`], or when the
//! sidecar stops.

pub mod client;

use crate::error::{Error, Result};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rml_rtmp::sessions::ClientSessionEvent;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use client::RtmpClient;

/// The query parameter a relay's publish carries.
pub const PARAM: &str = "claims_relay";

/// A relay the server's listing shows without a player for this long
/// ends (the next player starts another).
pub const IDLE_STOP: Duration = Duration::from_secs(10);

/// One relay as the sidecar keeps it.
struct Running {
    stop: CancellationToken,
    /// Since when the listing has shown it without a player.
    idle_since: Option<Instant>,
}

/// Whether a relay listed with `readers` players at `now`, idle since
/// `idle_since`, is to end (pure); its new idle mark.
pub fn idle(idle_since: Option<Instant>, readers: usize, now: Instant) -> (Option<Instant>, bool) {
    if readers > 0 {
        return (None, false);
    }
    let since = idle_since.unwrap_or(now);
    (
        Some(since),
        now.saturating_duration_since(since) >= IDLE_STOP,
    )
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Relays {
    token: String,
    running: Mutex<HashMap<String, Running>>,
    /// The media server's client ids of the relays' publishes, so that its
    /// listing of them is not taken for publishers (also for a moment
    /// after a relay ended).
    clients: Mutex<HashSet<String>>,
    /// Broadcasts the media server pulls from their owner by itself (OME),
    /// while its listing shows them.
    pulled: Mutex<HashSet<String>>,
    stop: CancellationToken,
}

impl Relays {
    /// Relays that end when `stop` is cancelled.
    pub fn new(stop: CancellationToken) -> Self {
        use rand::Rng;
        let token: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(24)
            .map(char::from)
            .collect();
        Self {
            token,
            running: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashSet::new()),
            pulled: Mutex::new(HashSet::new()),
            stop,
        }
    }

    /// The media server named a relay's publish `client`.
    pub fn note_client(&self, client: &str) {
        lock(&self.clients).insert(client.to_string());
    }

    /// The media server was asked to pull `broadcast` from its owner.
    pub fn note_pulled(&self, broadcast: &str) {
        lock(&self.pulled).insert(broadcast.to_string());
    }

    /// Whether a listed publisher is one of the relays: `client` is a
    /// relay's, a relay of `broadcast` runs, or the server pulls it.
    pub fn is_listed_relay(&self, broadcast: &str, client: &str) -> bool {
        self.is_running(broadcast)
            || lock(&self.pulled).contains(broadcast)
            || (!client.is_empty() && lock(&self.clients).contains(client))
    }

    /// Forgets the relay clients and pulls a listing no longer shows.
    pub fn forget_unlisted(&self, listed: &[(String, String)]) {
        lock(&self.clients).retain(|c| listed.iter().any(|(_, lc)| lc == c));
        lock(&self.pulled).retain(|b| listed.iter().any(|(lb, _)| lb == b));
    }

    /// Whether a publish whose query (or SRS's `param`) is `query` is one
    /// of this sidecar's relays.
    pub fn is_relay(&self, query: &str) -> bool {
        query
            .trim_start_matches('?')
            .split('&')
            .any(|kv| kv.split_once('=') == Some((PARAM, self.token.as_str())))
    }

    /// Whether a relay of `broadcast` runs.
    pub fn is_running(&self, broadcast: &str) -> bool {
        self.running().contains_key(broadcast)
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the server's listing at `now` says of the players of each
    /// broadcast (`readers`, where it counts them): a relay without any for
    /// [`IDLE_STOP`] ends.
    pub fn readers(&self, readers: &HashMap<String, usize>, now: Instant) {
        for (broadcast, relay) in self.running().iter_mut() {
            let Some(&count) = readers.get(broadcast) else {
                continue;
            };
            let (since, stop) = idle(relay.idle_since, count, now);
            relay.idle_since = since;
            if stop {
                tracing::info!(%broadcast, idle = ?IDLE_STOP, "relay stopped: no player at this media server");
                relay.stop.cancel();
            }
        }
    }

    /// Starts relaying `broadcast` from the RTMP server at `from`
    /// (`rtmp://HOST:PORT`, the owner's) into the one at `to` (the local
    /// media server), unless a relay of it runs already.
    pub fn ensure(self: &Arc<Self>, broadcast: &str, from: &str, to: &str) {
        let stop = self.stop.child_token();
        {
            let mut running = self.running();
            if running.contains_key(broadcast) {
                return;
            }
            running.insert(
                broadcast.to_string(),
                Running {
                    stop: stop.clone(),
                    idle_since: None,
                },
            );
        }
        let (relays, broadcast) = (self.clone(), broadcast.to_string());
        let (from, to) = (from.to_string(), to.to_string());
        tokio::spawn(async move {
            tracing::info!(%broadcast, %from, %to, "relaying the owner's stream into this media server for its players");
            let ended = tokio::select! {
                r = relays.run(&broadcast, &from, &to) => r,
                _ = stop.cancelled() => Ok(()),
            };
            match ended {
                Ok(()) => tracing::info!(%broadcast, "relay ended"),
                Err(e) => tracing::warn!(%broadcast, %from, error = %e, "relay ended"),
            }
            relays.running().remove(&broadcast);
        });
    }

    async fn run(&self, broadcast: &str, from: &str, to: &str) -> Result<()> {
        let (app, key) = broadcast
            .split_once('/')
            .ok_or_else(|| Error::Rtmp(format!("{broadcast} has no APP/STREAM form")))?;
        let mut source = open(from, app).await?;
        source.play(key).await?;
        let mut sink = open(to, app).await?;
        sink.publish(&format!("{key}?{PARAM}={}", self.token))
            .await?;
        let (mut a, mut b) = (vec![0u8; 64 * 1024], vec![0u8; 16 * 1024]);
        loop {
            tokio::select! {
                n = source.read(&mut a) => {
                    let n = n?;
                    if n == 0 {
                        return Ok(());
                    }
                    source.feed(&a[..n]).await?;
                    for event in source.take_events() {
                        forward(&mut sink, event).await?;
                    }
                }
                n = sink.read(&mut b) => {
                    let n = n?;
                    if n == 0 {
                        return Err(Error::Rtmp("the local media server closed the relay's publish".into()));
                    }
                    sink.feed(&b[..n]).await?;
                    sink.take_events();
                }
            }
        }
    }
}

fn lock(set: &Mutex<HashSet<String>>) -> std::sync::MutexGuard<'_, HashSet<String>> {
    set.lock().unwrap_or_else(|p| p.into_inner())
}

/// Connects to the RTMP server at `base` (`rtmp://HOST[:PORT]`) and its
/// application `app`.
async fn open(base: &str, app: &str) -> Result<RtmpClient<TcpStream>> {
    let base = base.trim_end_matches('/');
    let host = base
        .strip_prefix("rtmp://")
        .ok_or_else(|| Error::Rtmp(format!("{base} is not an rtmp:// URL")))?;
    let host = host.split('/').next().unwrap_or(host);
    let addr = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:1935")
    };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr))
        .await
        .map_err(|_| {
            Error::Rtmp(format!(
                "no connection to {addr} within {CONNECT_TIMEOUT:?}"
            ))
        })?
        .map_err(|e| Error::Rtmp(format!("cannot connect to {addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let tc_url = format!("{base}/{app}");
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        RtmpClient::connect(stream, app, Some(tc_url), false),
    )
    .await
    .map_err(|_| {
        Error::Rtmp(format!(
            "no RTMP connect from {addr} within {CONNECT_TIMEOUT:?}"
        ))
    })?
}

/// Passes one event of the owner's stream on to the local server.
async fn forward(sink: &mut RtmpClient<TcpStream>, event: ClientSessionEvent) -> Result<()> {
    match event {
        ClientSessionEvent::VideoDataReceived { timestamp, data } => {
            sink.media(true, data, timestamp.value).await
        }
        ClientSessionEvent::AudioDataReceived { timestamp, data } => {
            sink.media(false, data, timestamp.value).await
        }
        ClientSessionEvent::StreamMetadataReceived { metadata } => sink.metadata(&metadata).await,
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_without_players_for_the_bound_ends() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Watched: nothing changes.
        assert_eq!(idle(None, 2, at(0)), (None, false));
        // Nobody: idle from now, not yet over.
        let (since, stop) = idle(None, 0, at(1));
        assert_eq!((since, stop), (Some(at(1)), false));
        // A player came back: the mark goes.
        assert_eq!(idle(since, 1, at(5)), (None, false));
        // Nobody for the whole bound: it ends.
        assert_eq!(idle(Some(at(1)), 0, at(1) + IDLE_STOP), (Some(at(1)), true));
    }

    #[test]
    fn only_this_sidecars_token_marks_a_relay() {
        let relays = Relays::new(CancellationToken::new());
        let token = relays.token.clone();
        assert!(relays.is_relay(&format!("?claims_relay={token}")));
        assert!(relays.is_relay(&format!("a=1&claims_relay={token}")));
        assert!(!relays.is_relay("claims_relay=guess"));
        assert!(!relays.is_relay(""));
        assert!(!relays.is_relay(&format!("claims_relay={token}x")));
    }
}
