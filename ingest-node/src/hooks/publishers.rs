//! Who publishes what through the media server, as its hooks and its
//! listing say it: the sidecar's rules, without I/O.
//!
//! One publisher per broadcast, known by the media server's own client or
//! connection id wherever the server gives one (empty: not named yet, as
//! for a publisher adopted from a listing that names no client; the first
//! hook or listing that names it fills it in). The rules:
//!
//! - a start for a broadcast another client publishes is refused (the
//!   media server's own duplicate), unless the server itself replaces a
//!   path's publisher with the newest (MediaMTX's `overridePublisher`):
//!   then the newest is the publisher and the claim stays;
//! - the same start twice is the same publisher;
//! - an end, or an update, names its client: only the publisher's own end
//!   removes it; any other end changes nothing here and is checked against
//!   what the server lists ([`Done::Unmatched`]);
//! - a publisher the media server stopped reporting (no update for the
//!   update timeout) is gone;
//! - a listing removes only a broadcast it does not list at all, and only a
//!   publisher it could have shown (seen before the listing was asked
//!   for); a listing that names a broadcast's client teaches it.
//!
//! Each publisher holds a value `T` (the sidecar's track guard): removing
//! the publisher drops it, which closes the track and releases the claim.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What a start of `broadcast` by `client` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// A new publisher: claim it.
    New,
    /// The same client again (a retried hook): answer as before.
    Again,
    /// The server replaces the publisher with this client (it does so by
    /// itself): the claim stays, the newest client is the publisher.
    Replaces { client: String },
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

/// What an end of `broadcast` by `client` is.
#[derive(Debug, PartialEq, Eq)]
pub enum Done<T> {
    /// The publisher ended: what it held (its claim goes).
    Ended(T),
    /// A publisher of it is known, but this end does not name it (another
    /// client, or one not named yet): nothing changed; what the server
    /// lists decides.
    Unmatched,
    /// No publisher of it here.
    Unknown,
}

#[derive(Debug)]
struct Publisher<T> {
    /// Empty: not named yet.
    client: String,
    seen: Instant,
    held: T,
}

/// The publishers of one media server.
#[derive(Debug)]
pub struct Publishers<T> {
    by_broadcast: HashMap<String, Publisher<T>>,
    /// The server replaces a broadcast's publisher with the newest.
    replaces: bool,
}

impl<T> Default for Publishers<T> {
    fn default() -> Self {
        Self::new(false)
    }
}

impl<T> Publishers<T> {
    /// An empty book; `replaces`: the server replaces a broadcast's
    /// publisher with the newest by itself.
    pub fn new(replaces: bool) -> Self {
        Self {
            by_broadcast: HashMap::new(),
            replaces,
        }
    }

    /// What a start would be, without changing anything.
    pub fn start(&self, broadcast: &str, client: &str) -> Start {
        match self.by_broadcast.get(broadcast) {
            None => Start::New,
            Some(p) if p.client == client && !client.is_empty() => Start::Again,
            Some(_) if self.replaces => Start::Replaces {
                client: client.to_string(),
            },
            Some(p) => Start::Busy {
                client: if p.client.is_empty() {
                    "(one listed by the server)".into()
                } else {
                    p.client.clone()
                },
            },
        }
    }

    /// Makes `client` the publisher of `broadcast` in place of the one
    /// known (the server replaced it); false when there is none.
    pub fn replace(&mut self, broadcast: &str, client: &str, now: Instant) -> bool {
        match self.by_broadcast.get_mut(broadcast) {
            Some(p) => {
                p.client = client.to_string();
                p.seen = now;
                true
            }
            None => false,
        }
    }

    /// Records `client` as the publisher of `broadcast`, holding `held`;
    /// false (and `held` dropped) when another client publishes it.
    pub fn insert(&mut self, broadcast: &str, client: &str, held: T, now: Instant) -> bool {
        if self.by_broadcast.contains_key(broadcast) {
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

    /// An update from `client`: refreshes its publisher if it is the one
    /// (naming it, if it was not named yet).
    pub fn seen(&mut self, broadcast: &str, client: &str, now: Instant) -> Seen {
        match self.by_broadcast.get_mut(broadcast) {
            None => Seen::Unknown,
            Some(p) if p.client == client || p.client.is_empty() => {
                p.client = client.to_string();
                p.seen = now;
                Seen::Known
            }
            Some(p) => Seen::Other {
                client: p.client.clone(),
            },
        }
    }

    /// The end of `client`'s publish: removed (and what it held returned)
    /// if it is the publisher.
    pub fn done(&mut self, broadcast: &str, client: &str) -> Done<T> {
        match self.by_broadcast.get(broadcast) {
            None => Done::Unknown,
            Some(p) if p.client == client && !client.is_empty() => self
                .by_broadcast
                .remove(broadcast)
                .map_or(Done::Unknown, |p| Done::Ended(p.held)),
            Some(_) => Done::Unmatched,
        }
    }

    /// Publishers not seen for `timeout` at `now`, removed.
    pub fn expired(&mut self, now: Instant, timeout: Duration) -> Vec<(String, T)> {
        self.remove_where(|_, p| now.saturating_duration_since(p.seen) > timeout)
    }

    /// Converges to a complete listing taken at `since` (`listed`:
    /// broadcast and client, an empty client where the server names none):
    /// publishers of broadcasts it does not list are removed (unless seen
    /// after `since`: the listing could not show them); a listed client
    /// names the publisher of its broadcast.
    pub fn unlisted(&mut self, listed: &[(String, String)], since: Instant) -> Vec<(String, T)> {
        for (broadcast, client) in listed {
            if let Some(p) = self.by_broadcast.get_mut(broadcast) {
                if !client.is_empty() && p.seen < since {
                    p.client = client.clone();
                }
            }
        }
        self.remove_where(|b, p| p.seen < since && !listed.iter().any(|(lb, _)| lb == b))
    }

    /// The publishers of the broadcasts `overtaken` picks, removed, with
    /// their clients (to be dropped at the server).
    pub fn take_if(&mut self, overtaken: impl Fn(&str) -> bool) -> Vec<(String, String, T)> {
        let picked: Vec<String> = self
            .by_broadcast
            .keys()
            .filter(|b| overtaken(b))
            .cloned()
            .collect();
        picked
            .into_iter()
            .filter_map(|b| self.by_broadcast.remove(&b).map(|p| (b, p.client, p.held)))
            .collect()
    }

    /// Every publisher, removed (the media server is gone).
    pub fn clear(&mut self) -> Vec<(String, T)> {
        self.by_broadcast
            .drain()
            .map(|(b, p)| (b, p.held))
            .collect()
    }

    fn remove_where(&mut self, gone: impl Fn(&str, &Publisher<T>) -> bool) -> Vec<(String, T)> {
        let gone: Vec<String> = self
            .by_broadcast
            .iter()
            .filter(|(b, p)| gone(b, p))
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
        // An end from another client changes nothing; twice, neither.
        assert_eq!(book.done("live/a", "8"), Done::Unmatched);
        assert_eq!(book.done("live/a", "7"), Done::Ended("guard"));
        assert_eq!(book.done("live/a", "7"), Done::Unknown);
        assert!(book.is_empty());
    }

    #[test]
    fn a_server_that_replaces_its_publisher_keeps_the_claim_and_ignores_the_old_end() {
        // MediaMTX's overridePublisher: the second publisher is let in, the
        // first's end arrives after it.
        let t0 = Instant::now();
        let mut book = Publishers::new(true);
        assert!(book.insert("live/a", "first", "guard", t0));
        assert_eq!(
            book.start("live/a", "second"),
            Start::Replaces {
                client: "second".into()
            }
        );
        assert!(book.replace("live/a", "second", t0));
        assert_eq!(book.done("live/a", "first"), Done::Unmatched);
        assert_eq!(book.len(), 1);
        assert_eq!(book.done("live/a", "second"), Done::Ended("guard"));
    }

    #[test]
    fn an_adopted_publisher_is_named_by_its_first_hook_or_listing_and_then_matched() {
        let t0 = Instant::now();
        let mut book = Publishers::default();
        // Listed by a server whose list names no client (OME).
        assert!(book.insert("live/a", "", "a", t0));
        assert!(book.insert("live/b", "", "b", t0));
        // Nobody's end is taken for it while it is not named...
        assert_eq!(book.done("live/a", ""), Done::Unmatched);
        assert_eq!(book.done("live/a", "1.2.3.4:5"), Done::Unmatched);
        // ...and a start from a client is another publisher.
        assert!(matches!(book.start("live/a", "9"), Start::Busy { .. }));
        // Its first update names it.
        assert_eq!(book.seen("live/a", "1.2.3.4:5", t0), Seen::Known);
        assert_eq!(book.done("live/a", "1.2.3.4:5"), Done::Ended("a"));
        // A listing that names the client names it too.
        let later = t0 + Duration::from_secs(1);
        let listed = vec![("live/b".to_string(), "cid".to_string())];
        assert!(book.unlisted(&listed, later).is_empty());
        assert_eq!(book.done("live/b", "cid"), Done::Ended("b"));
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
        // A broadcast listed under another client (the server's id for the
        // same publisher, or its replacement) is still published: kept.
        let listed = vec![
            ("live/a".to_string(), "other".to_string()),
            ("live/c".to_string(), String::new()),
        ];
        assert!(book.unlisted(&listed, listed_at).is_empty());
        assert_eq!(book.done("live/a", "other"), Done::Ended(()));
    }

    #[test]
    fn overtaken_publishers_are_taken_with_their_clients() {
        let t0 = Instant::now();
        let mut book = Publishers::default();
        book.insert("live/a", "1", (), t0);
        book.insert("live/b", "2", (), t0);
        assert_eq!(
            book.take_if(|b| b == "live/b"),
            vec![("live/b".to_string(), "2".to_string(), ())]
        );
        assert_eq!(book.len(), 1);
    }

    #[test]
    fn a_gone_server_takes_every_publisher_with_it() {
        let t0 = Instant::now();
        let mut book = Publishers::default();
        book.insert("live/a", "1", (), t0);
        book.insert("live/b", "", (), t0);
        assert_eq!(book.clear().len(), 2);
        assert!(book.is_empty());
    }
}
