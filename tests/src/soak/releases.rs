//! Every claim released within detach grace + lease TTL of its last
//! publisher leaving, each on its own: for every publisher that left while
//! its node held the broadcast (as the watch said) and no other publisher
//! of it was left, the time from its leaving to the watch's RELEASED event.
//! A publisher leaves when the soak stops it, or when its ffmpeg ends by
//! itself (its node was killed, or dropped it): that one is timed from when
//! the soak saw it gone, one turn of its loop at most after the fact.
//!
//! A release is judged against the bound unless an etcd fault (a member
//! stopped, quorum lost, a disk stalled) or a cut link was on meanwhile, or
//! the follower was not following (its events then arrive late): those are
//! reported, not judged. Replica and node kills and pauses, clock steps,
//! lossy and slow links and stalled clients are judged: the bound is made
//! for them. A broadcast published again before its release is not judged
//! (the claim may rightly stay).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::faults::Fault;
use super::record::Watched;
use crate::v1::claim_event::Kind;

/// A publisher that left, the last of its broadcast.
pub(super) struct Leaving {
    pub(super) at: Instant,
    pub(super) broadcast: String,
    pub(super) node: String,
    /// Its ffmpeg ended by itself; the soak did not stop it.
    pub(super) by_itself: bool,
}

/// A fault, from its injection to its heal.
pub(super) struct Window {
    pub(super) fault: Fault,
    pub(super) from: Instant,
    pub(super) to: Instant,
}

#[derive(Default)]
pub(super) struct Releases {
    /// Times of the releases judged against the bound.
    pub(super) judged: Vec<Duration>,
    /// Times of the releases an etcd fault, a cut or a follower outage
    /// overlapped.
    pub(super) excused: Vec<Duration>,
    /// Leavings not judged: not owned by the leaving node when it left, or
    /// published again before the release.
    pub(super) unjudged: usize,
    /// Of the judged and excused, publishers that ended by themselves.
    pub(super) by_itself: usize,
    pub(super) anomalies: Vec<String>,
}

fn excuses(fault: Fault) -> bool {
    matches!(
        fault,
        Fault::EtcdMemberStop | Fault::EtcdQuorumLoss | Fault::DiskStall | Fault::Partition
    )
}

/// Judges every leaving; `publishes` are (when, broadcast) of every
/// publisher started.
pub(super) fn check(
    leavings: &[Leaving],
    publishes: &[(Instant, String)],
    windows: &[Window],
    watched: &Watched,
    bound: Duration,
) -> Releases {
    let mut out = Releases::default();
    let events = &watched.events;
    // Who holds what, as of the events seen so far (reset at each gap in
    // the watch history).
    let mut holder: BTreeMap<&str, &str> = BTreeMap::new();
    let mut seen = 0usize;
    let mut order: Vec<&Leaving> = leavings.iter().collect();
    order.sort_by_key(|l| l.at);
    for l in order {
        while seen < events.len() && events[seen].0 <= l.at {
            if watched.gaps.contains(&seen) {
                holder.clear();
            }
            let c = events[seen].1.claim.as_ref();
            let (b, n) = c.map_or(("", ""), |c| (c.broadcast.as_str(), c.node_id.as_str()));
            match Kind::try_from(events[seen].1.kind).unwrap_or(Kind::Unspecified) {
                Kind::Claimed | Kind::Adopted => {
                    holder.insert(b, n);
                }
                Kind::Released => {
                    holder.remove(b);
                }
                Kind::Unspecified => {}
            }
            seen += 1;
        }
        if holder.get(l.broadcast.as_str()) != Some(&l.node.as_str()) {
            out.unjudged += 1;
            continue;
        }
        let released = events[seen..].iter().find(|(_, e)| {
            e.kind == Kind::Released as i32
                && e.claim.as_ref().is_some_and(|c| c.broadcast == l.broadcast)
        });
        let again = publishes
            .iter()
            .find(|(at, b)| *at > l.at && *b == l.broadcast)
            .map(|(at, _)| *at);
        let took = match (released, again) {
            (Some((r, _)), None) => r.duration_since(l.at),
            (Some((r, _)), Some(a)) if *r <= a => r.duration_since(l.at),
            (_, Some(_)) => {
                out.unjudged += 1;
                continue;
            }
            (None, None) => {
                out.anomalies.push(format!(
                    "{} never released after its last publisher left {}",
                    l.broadcast, l.node
                ));
                continue;
            }
        };
        let until = l.at + bound;
        let overlaps = |from: Instant, to: Instant| from < until && to > l.at;
        let excused = windows
            .iter()
            .any(|w| excuses(w.fault) && overlaps(w.from, w.to + bound))
            || watched
                .outages
                .iter()
                .any(|(from, to)| overlaps(*from, *to));
        out.by_itself += usize::from(l.by_itself);
        if excused {
            out.excused.push(took);
        } else {
            if took > bound {
                out.anomalies.push(format!(
                    "{} released {:.1} s after its last publisher left {}{} (bound {bound:?}; faults on meanwhile: {:?})",
                    l.broadcast,
                    took.as_secs_f64(),
                    l.node,
                    if l.by_itself { " by itself" } else { "" },
                    windows
                        .iter()
                        .filter(|w| overlaps(w.from, w.to))
                        .map(|w| w.fault)
                        .collect::<Vec<_>>()
                ));
            }
            out.judged.push(took);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1;

    fn event(at: Instant, kind: Kind, broadcast: &str, node: &str) -> (Instant, v1::ClaimEvent) {
        (
            at,
            v1::ClaimEvent {
                kind: kind as i32,
                claim: Some(v1::Claim {
                    broadcast: broadcast.into(),
                    node_id: node.into(),
                    fencing_token: 1,
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
    }

    /// cam1 claimed by node-a, its publisher gone at 10 s, released at
    /// `released_after` seconds later.
    fn one(released_after: u64) -> (Instant, Vec<Leaving>, Watched) {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let watched = Watched {
            events: vec![
                event(s(1), Kind::Claimed, "cam1", "node-a"),
                event(s(10 + released_after), Kind::Released, "cam1", "node-a"),
            ],
            ..Default::default()
        };
        let leaving = Leaving {
            at: s(10),
            broadcast: "cam1".into(),
            node: "node-a".into(),
            by_itself: false,
        };
        (t0, vec![leaving], watched)
    }

    const BOUND: Duration = Duration::from_secs(15);

    #[test]
    fn a_release_in_time_is_judged_and_fine() {
        let (_, leavings, watched) = one(1);
        let r = check(&leavings, &[], &[], &watched, BOUND);
        assert_eq!(r.judged, vec![Duration::from_secs(1)]);
        assert!(r.anomalies.is_empty());
    }

    #[test]
    fn a_publisher_that_ended_by_itself_is_judged_and_said_so() {
        let (_, mut leavings, watched) = one(20);
        leavings[0].by_itself = true;
        let r = check(&leavings, &[], &[], &watched, BOUND);
        assert_eq!((r.judged.len(), r.by_itself), (1, 1));
        assert!(
            r.anomalies[0].contains("left node-a by itself"),
            "{:?}",
            r.anomalies
        );
    }

    #[test]
    fn a_late_release_is_an_anomaly_even_under_a_replica_fault() {
        let (t0, leavings, watched) = one(20);
        let paused = Window {
            fault: Fault::ReplicaPause,
            from: t0 + Duration::from_secs(9),
            to: t0 + Duration::from_secs(14),
        };
        let r = check(&leavings, &[], &[paused], &watched, BOUND);
        assert_eq!(r.anomalies.len(), 1, "{:?}", r.anomalies);
        assert!(r.anomalies[0].contains("ReplicaPause"));
    }

    #[test]
    fn a_late_release_under_a_quorum_loss_is_reported_not_judged() {
        let (t0, leavings, watched) = one(20);
        let lost = Window {
            fault: Fault::EtcdQuorumLoss,
            from: t0 + Duration::from_secs(12),
            to: t0 + Duration::from_secs(18),
        };
        let r = check(&leavings, &[], &[lost], &watched, BOUND);
        assert!(r.anomalies.is_empty());
        assert_eq!(r.excused, vec![Duration::from_secs(20)]);
    }

    #[test]
    fn a_broadcast_published_again_first_is_not_timed() {
        let (t0, leavings, watched) = one(20);
        let again = [(t0 + Duration::from_secs(11), "cam1".to_string())];
        let r = check(&leavings, &again, &[], &watched, BOUND);
        assert!(r.anomalies.is_empty() && r.judged.is_empty());
        assert_eq!(r.unjudged, 1);
    }

    #[test]
    fn a_claim_never_released_is_an_anomaly() {
        let (_, leavings, mut watched) = one(1);
        watched.events.pop();
        let r = check(&leavings, &[], &[], &watched, BOUND);
        assert_eq!(r.anomalies.len(), 1);
        assert!(r.anomalies[0].contains("never released"));
    }
}
