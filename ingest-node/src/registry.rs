//! The registry of live broadcasters on this node: which `(broadcast, track)`
//! pairs exist right now, and the ordered stream of their creation and end.
//!
//! A track is live exactly while its [`TrackGuard`] exists, so every way a
//! broadcaster can end (unpublish, a dropped connection, a time-out, even a
//! panic in the connection's task) closes its tracks. Every change gets a
//! sequence number; a subscriber receives the live set and the sequence it
//! was taken at, then every later change in order, with nothing lost or
//! repeated in between.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

/// A change of the live set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lifecycle {
    Created { broadcast: String, track: String },
    Closed { broadcast: String, track: String },
}

/// A change and its sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub seq: u64,
    pub lifecycle: Lifecycle,
}

#[derive(Default)]
struct Inner {
    live: BTreeMap<String, BTreeSet<String>>,
    seq: u64,
    subscribers: Vec<mpsc::UnboundedSender<Change>>,
}

#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
}

/// Holds a track live; dropping it closes the track.
#[must_use = "the track closes when the guard is dropped"]
pub struct TrackGuard {
    registry: Registry,
    broadcast: String,
    track: String,
    /// Sequence number of the `created` change.
    pub seq: u64,
}

impl std::fmt::Debug for TrackGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TrackGuard({}/{} #{})",
            self.broadcast, self.track, self.seq
        )
    }
}

impl Drop for TrackGuard {
    fn drop(&mut self) {
        self.registry.close(&self.broadcast, &self.track);
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a track live; `None` when it already is.
    pub fn open(&self, broadcast: &str, track: &str) -> Option<TrackGuard> {
        let mut inner = self.lock();
        if !inner
            .live
            .entry(broadcast.to_string())
            .or_default()
            .insert(track.to_string())
        {
            return None;
        }
        let seq = publish(
            &mut inner,
            Lifecycle::Created {
                broadcast: broadcast.to_string(),
                track: track.to_string(),
            },
        );
        Some(TrackGuard {
            registry: self.clone(),
            broadcast: broadcast.to_string(),
            track: track.to_string(),
            seq,
        })
    }

    fn close(&self, broadcast: &str, track: &str) {
        let mut inner = self.lock();
        let Some(tracks) = inner.live.get_mut(broadcast) else {
            return;
        };
        if !tracks.remove(track) {
            return;
        }
        if tracks.is_empty() {
            inner.live.remove(broadcast);
        }
        publish(
            &mut inner,
            Lifecycle::Closed {
                broadcast: broadcast.to_string(),
                track: track.to_string(),
            },
        );
    }

    /// The live tracks of a broadcast, in name order.
    pub fn tracks(&self, broadcast: &str) -> Vec<String> {
        self.lock()
            .live
            .get(broadcast)
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn is_live(&self, broadcast: &str) -> bool {
        self.lock().live.contains_key(broadcast)
    }

    /// Every live `(broadcast, track)`.
    pub fn live(&self) -> Vec<(String, String)> {
        flatten(&self.lock().live)
    }

    /// The live set now, the sequence number it includes, and every change
    /// after it.
    pub fn subscribe(&self) -> (Vec<(String, String)>, u64, mpsc::UnboundedReceiver<Change>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut inner = self.lock();
        inner.subscribers.push(tx);
        (flatten(&inner.live), inner.seq, rx)
    }
}

fn flatten(live: &BTreeMap<String, BTreeSet<String>>) -> Vec<(String, String)> {
    live.iter()
        .flat_map(|(b, ts)| ts.iter().map(move |t| (b.clone(), t.clone())))
        .collect()
}

fn publish(inner: &mut Inner, lifecycle: Lifecycle) -> u64 {
    inner.seq += 1;
    let change = Change {
        seq: inner.seq,
        lifecycle,
    };
    inner.subscribers.retain(|s| s.send(change.clone()).is_ok());
    inner.seq
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_open_and_close_tracks_in_order() {
        let registry = Registry::new();
        let (live, seq, mut rx) = registry.subscribe();
        assert!(live.is_empty());
        assert_eq!(seq, 0);
        let video = registry.open("live/x", "video").expect("new track");
        assert!(registry.open("live/x", "video").is_none(), "duplicate");
        let audio = registry.open("live/x", "audio").expect("new track");
        assert_eq!(registry.tracks("live/x"), vec!["audio", "video"]);
        drop(video);
        assert!(registry.is_live("live/x"));
        drop(audio);
        assert!(!registry.is_live("live/x"));
        let changes: Vec<Change> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        let seqs: Vec<u64> = changes.iter().map(|c| c.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4]);
        assert_eq!(
            changes[2].lifecycle,
            Lifecycle::Closed {
                broadcast: "live/x".into(),
                track: "video".into()
            }
        );
    }

    #[test]
    fn a_late_subscriber_gets_the_live_set_and_what_follows() {
        let registry = Registry::new();
        let _a = registry.open("a", "video");
        let (live, seq, mut rx) = registry.subscribe();
        assert_eq!(live, vec![("a".to_string(), "video".to_string())]);
        assert_eq!(seq, 1);
        let _b = registry.open("b", "video");
        assert_eq!(rx.try_recv().map(|c| c.seq), Ok(2));
    }

    #[test]
    fn a_panicking_owner_still_closes_its_track() {
        let registry = Registry::new();
        let r = registry.clone();
        let result = std::panic::catch_unwind(move || {
            let _guard = r.open("live/x", "video");
            panic!("connection task failed");
        });
        assert!(result.is_err());
        assert!(!registry.is_live("live/x"));
    }
}
