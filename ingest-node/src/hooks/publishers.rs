//! Who publishes what through the media server, as its hooks say it: the
//! sidecar's rules, without I/O.
//!
//! One publisher per broadcast, known by the media server's client id. A
//! start for a broadcast another client publishes is refused (the media
//! server's own duplicate); the same start twice is the same publisher; an
//! end, or an update, from a client that is not the publisher changes
//! nothing; a publisher the media server stopped reporting (no update for
//! the update timeout) is gone. Each publisher holds a value `T` (the
//! sidecar's track guard): removing the publisher drops it, which closes
//! the track and releases the claim.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What a start of `broadcast` by `client` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// A new publisher: claim it.
    New,
    /// The same client again (a retried hook): answer as before.
    Again,
    /// Another client already publishes it here.
    Busy { client: String },
}

/// What an update from `client` about `broadcast` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// The publisher this book knows: it is alive.
    Known,
    /// No publisher of it here (the sidecar restarted, or missed the
    /// start): to be claimed as a new one.
    Unknown,
    /// Another client publishes it here.
    Other { client: String },
}

#[derive(Debug)]
struct Publisher<T> {
    client: String,
    seen: Instant,
    held: T,
}

/// The publishers of one media server.
#[derive(Debug)]
pub struct Publishers<T> {
    by_broadcast: HashMap<String, Publisher<T>>,
}

impl<T> Default for Publishers<T> {
    fn default() -> Self {
        Self {
            by_broadcast: HashMap::new(),
        }
    }
}

impl<T> Publishers<T> {
    /// What a start would be, without changing anything.
    pub fn start(&self, broadcast: &str, client: &str) -> Start {
        match self.by_broadcast.get(broadcast) {
            None => Start::New,
            Some(p) if p.client == client => Start::Again,
            Some(p) => Start::Busy {
                client: p.client.clone(),
            },
        }
    }

    /// Records `client` as the publisher of `broadcast`, holding `held`;
    /// false (and `held` dropped) when another client publishes it.
    pub fn insert(&mut self, broadcast: &str, client: &str, held: T, now: Instant) -> bool {
        if let Start::Busy { .. } = self.start(broadcast, client) {
            return false;
        }
        self.by_broadcast.insert(
            broadcast.to_string(),
            Publisher {
                client: client.to_string(),
                seen: now,
                held,
            },
        );
        true
    }

    /// An update from `client`: refreshes its publisher if it is the one.
    pub fn seen(&mut self, broadcast: &str, client: &str, now: Instant) -> Seen {
        match self.by_broadcast.get_mut(broadcast) {
            None => Seen::Unknown,
            Some(p) if p.client == client => {
                p.seen = now;
                Seen::Known
            }
            Some(p) => Seen::Other {
                client: p.client.clone(),
            },
        }
    }

    /// The end of `client`'s publish: removed (and what it held returned)
    /// if it is the publisher; `None` changes nothing.
    pub fn done(&mut self, broadcast: &str, client: &str) -> Option<T> {
        match self.by_broadcast.get(broadcast) {
            Some(p) if p.client == client => self.by_broadcast.remove(broadcast).map(|p| p.held),
            _ => None,
        }
    }

    /// Publishers not seen for `timeout` at `now`, removed.
    pub fn expired(&mut self, now: Instant, timeout: Duration) -> Vec<(String, T)> {
        let gone: Vec<String> = self
            .by_broadcast
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.seen) > timeout)
            .map(|(b, _)| b.clone())
            .collect();
        gone.into_iter()
            .filter_map(|b| self.by_broadcast.remove(&b).map(|p| (b, p.held)))
            .collect()
    }

    /// Publishers the media server no longer lists (`listed`: broadcast
    /// and client, an empty client standing for any), removed, unless
    /// started after `since` (a listing taken before their start cannot
    /// show them).
    pub fn unlisted(&mut self, listed: &[(String, String)], since: Instant) -> Vec<(String, T)> {
        let gone: Vec<String> = self
            .by_broadcast
            .iter()
            .filter(|(b, p)| {
                p.seen < since
                    && !listed
                        .iter()
                        .any(|(lb, lc)| lb == *b && (lc.is_empty() || *lc == p.client))
            })
            .map(|(b, _)| b.clone())
            .collect();
        gone.into_iter()
            .filter_map(|b| self.by_broadcast.remove(&b).map(|p| (b, p.held)))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.by_broadcast.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_broadcast.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_publisher_per_broadcast_and_only_it_ends_or_refreshes_it() {
        let t0 = Instant::now();
        let mut book = Publishers::default();
        assert_eq!(book.start("live/a", "7"), Start::New);
        assert!(book.insert("live/a", "7", "guard", t0));
        assert_eq!(book.start("live/a", "7"), Start::Again);
        assert_eq!(
            book.start("live/a", "8"),
            Start::Busy { client: "7".into() }
        );
        assert!(!book.insert("live/a", "8", "other", t0));
        assert_eq!(
            book.seen("live/a", "8", t0),
            Seen::Other { client: "7".into() }
        );
        assert_eq!(book.seen("live/b", "7", t0), Seen::Unknown);
        // An end from another client, or twice, changes nothing.
        assert_eq!(book.done("live/a", "8"), None);
        assert_eq!(book.done("live/a", "7"), Some("guard"));
        assert_eq!(book.done("live/a", "7"), None);
        assert!(book.is_empty());
    }

    #[test]
    fn a_publisher_not_updated_for_the_timeout_is_gone() {
        let t0 = Instant::now();
        let mut book = Publishers::default();
        book.insert("live/a", "1", (), t0);
        book.insert("live/b", "2", (), t0);
        let later = t0 + Duration::from_secs(5);
        assert_eq!(book.seen("live/b", "2", later), Seen::Known);
        let gone = book.expired(t0 + Duration::from_secs(8), Duration::from_secs(6));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0, "live/a");
        assert_eq!(book.len(), 1);
    }

    #[test]
    fn a_listing_removes_only_what_it_could_have_shown() {
        let t0 = Instant::now();
        let mut book = Publishers::default();
        book.insert("live/a", "1", (), t0);
        book.insert("live/b", "2", (), t0);
        let listed_at = t0 + Duration::from_secs(1);
        book.insert("live/c", "3", (), listed_at + Duration::from_millis(5));
        let listed = vec![("live/a".to_string(), "1".to_string())];
        let gone = book.unlisted(&listed, listed_at);
        assert_eq!(
            gone.into_iter().map(|(b, _)| b).collect::<Vec<_>>(),
            vec!["live/b"]
        );
        assert_eq!(book.len(), 2);
        // A list that does not name clients keeps any publisher it lists.
        let listed = vec![("live/a".to_string(), String::new())];
        let gone = book.unlisted(&listed, listed_at);
        assert!(gone.is_empty());
    }
}
