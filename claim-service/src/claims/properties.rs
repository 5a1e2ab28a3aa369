//! A store that answers in any order, a node that does anything, a view
//! that repeats, lags or reports other sessions, an operator who forces
//! releases: whatever happens, a session's rules keep their invariants.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Step {
    Created(u8, u8),
    Closed(u8, u8),
    /// etcd answers a claim in flight: claimed, conflict, unavailable, or
    /// fenced (by this session's own record, by none, by another's); a
    /// claim lands on the record's lease, on one an earlier session of the
    /// node left (shared), or on a lease of its own.
    Answer(u8, u8, u8),
    /// The claims an earlier session left on a lease are found: one the
    /// node may no longer have.
    Existing(u8, u8),
    /// A release of such a claim is done.
    StaleDone,
    Revoked(u8),
    Lost(u8),
    OwnerReleased(u8),
    Retry(u8),
    Goodbye,
    Detach,
    /// The replica asks the node to move to another.
    Moved,
    Grace,
    /// etcd answers the node record's write: written (draining or not),
    /// failed, taken by another session.
    Record(u8),
    RecordLost,
    /// The view sees the node record: this session's (draining or not), or
    /// another's (older or newer).
    NodeSeen(u8),
    Superseded,
    /// An operator force-releases a broadcast, with its holder's fencing
    /// token or a stale one.
    Forced(u8, bool),
    ViewLagged,
    /// The node asks for a takeover, with the owner's token or another.
    TakeoverAsked(u8, bool),
    /// etcd answers a takeover request: written, changed, unavailable.
    TakeoverAnswered(u8, u8),
    /// The view sees a takeover request: of this session's claim (its token
    /// or a stale one), by this node or another.
    TakenOver(u8, bool, bool),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..3u8, 0..2u8).prop_map(|(b, t)| Step::Created(b, t)),
        3 => (0..3u8, 0..2u8).prop_map(|(b, t)| Step::Closed(b, t)),
        4 => (0..3u8, 0..6u8, 0..3u8).prop_map(|(b, k, on)| Step::Answer(b, k, on)),
        1 => (0..4u8, 0..2u8).prop_map(|(b, l)| Step::Existing(b, l)),
        1 => Just(Step::StaleDone),
        3 => (0..3u8).prop_map(Step::Revoked),
        1 => (0..3u8).prop_map(Step::Lost),
        1 => (0..3u8).prop_map(Step::OwnerReleased),
        1 => (0..3u8).prop_map(Step::Retry),
        1 => Just(Step::Goodbye),
        1 => Just(Step::Detach),
        1 => Just(Step::Moved),
        1 => Just(Step::Grace),
        3 => (0..5u8).prop_map(Step::Record),
        1 => Just(Step::RecordLost),
        1 => (0..4u8).prop_map(Step::NodeSeen),
        1 => Just(Step::Superseded),
        1 => (0..3u8, any::<bool>()).prop_map(|(b, t)| Step::Forced(b, t)),
        1 => Just(Step::ViewLagged),
        2 => (0..3u8, any::<bool>()).prop_map(|(b, t)| Step::TakeoverAsked(b, t)),
        2 => (0..3u8, 0..3u8).prop_map(|(b, k)| Step::TakeoverAnswered(b, k)),
        2 => (0..3u8, any::<bool>(), any::<bool>()).prop_map(|(b, t, me)| Step::TakenOver(b, t, me)),
    ]
}

/// The lease an earlier session of the node left claims on (and the one
/// after it).
const SHARED: i64 = 50;

/// What the shell would have in flight, and what the node was told.
#[derive(Default)]
struct Shell {
    claims_in_flight: BTreeSet<String>,
    takeovers_in_flight: BTreeSet<String>,
    /// Fencing token of the owner last told in `conflict`, per broadcast.
    told_owner: BTreeMap<String, i64>,
    /// Releases in flight: their lease, and whether the claim was held.
    revokes_in_flight: BTreeMap<String, (i64, bool)>,
    /// Releases of claims an earlier session left, in flight, by lease.
    stale_in_flight: Vec<i64>,
    /// Leases other than the record's being kept alive.
    kept: BTreeSet<i64>,
    /// Leases whose earlier claims were looked for.
    looked_at: BTreeSet<i64>,
    timers: BTreeMap<String, u64>,
    /// The node record's lease being kept, and whether a write is in flight.
    record: Option<i64>,
    record_writing: bool,
    record_revision: i64,
    /// The record's lease whose loss the rules were just told of.
    lost_record: Option<i64>,
    next_lease: i64,
    revision: i64,
    finished: u32,
    superseded: u32,
    told_claimed: BTreeSet<String>,
    /// The node's live tracks as far as the rules were told (no limits
    /// here): created while attached, minus closed; none once it left.
    live: BTreeMap<String, BTreeSet<String>>,
    attached: bool,
    told_draining: Option<bool>,
    /// Told or asked something after the session detached or was superseded.
    after_end: Vec<String>,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]
    #[test]
    fn invariants_hold_under_any_order(steps in proptest::collection::vec(step(), 1..80)) {
        let mut core = NodeClaims::new("s1", Limits::default());
        let mut sh = Shell { next_lease: 100, revision: 1000, attached: true, ..Shell::default() };
        let mut events = vec![Event::Began];
        for s in steps {
            let name = |b: u8| format!("b{b}");
            let event = match s {
                Step::Created(b, t) => Some(Event::Created { broadcast: name(b), track: format!("t{t}") }),
                Step::Closed(b, t) => Some(Event::Closed { broadcast: name(b), track: format!("t{t}") }),
                Step::Answer(b, kind, on) => {
                    let b = name(b);
                    if sh.claims_in_flight.remove(&b) {
                        sh.revision += 1;
                        sh.next_lease += 1;
                        let lease_id = match (on, sh.record) {
                            (0, Some(record)) => record,
                            (1, _) => SHARED,
                            _ => sh.next_lease,
                        };
                        let claim = Claim {
                            broadcast: b.clone(),
                            node_id: "node-a".into(),
                            lease_id,
                            fencing_token: sh.revision,
                            lease_ttl_ms: 10_000,
                            ..Claim::default()
                        };
                        Some(match kind {
                            0 => Event::ClaimAnswered { broadcast: b, outcome: ClaimOutcome::Claimed { claim, adopted: false } },
                            1 => Event::ClaimAnswered { broadcast: b, outcome: ClaimOutcome::Conflict {
                                owner: Claim { node_id: "other".into(), lease_id: 1, fencing_token: sh.revision - 1, ..claim },
                                revision: sh.revision,
                            } },
                            2 => Event::ClaimAnswered { broadcast: b, outcome: ClaimOutcome::Unavailable { reason: "down".into() } },
                            3 => Event::Fenced { broadcast: b, session_id: "s1".into() },
                            4 => Event::Fenced { broadcast: b, session_id: String::new() },
                            _ => Event::Fenced { broadcast: b, session_id: "s2".into() },
                        })
                    } else { None }
                }
                Step::Revoked(b) => {
                    let b = name(b);
                    sh.revokes_in_flight.remove(&b).map(|_| Event::Released { broadcast: b })
                }
                Step::Lost(b) => core.held().find(|(n, _)| *n == name(b)).map(|(_, c)| c.lease_id)
                    .map(|lease_id| {
                        if sh.record == Some(lease_id) {
                            sh.record = None;
                            sh.lost_record = Some(lease_id);
                        }
                        Event::LeaseLost { lease_id, reason: "expired".into() }
                    }),
                Step::Existing(b, l) => {
                    sh.revision += 1;
                    let claim = Claim {
                        broadcast: name(b),
                        node_id: "node-a".into(),
                        lease_id: SHARED + i64::from(l),
                        fencing_token: sh.revision,
                        lease_ttl_ms: 10_000,
                        ..Claim::default()
                    };
                    Some(Event::Existing { claims: vec![claim] })
                }
                Step::StaleDone => sh.stale_in_flight.pop().map(|lease_id| Event::StaleReleased { lease_id }),
                Step::OwnerReleased(b) => { sh.revision += 1; Some(Event::OwnerReleased { broadcast: name(b), revision: sh.revision }) }
                Step::Retry(b) => sh.timers.remove(&name(b)).map(|timer| Event::RetryDue { broadcast: name(b), timer }),
                Step::Goodbye => Some(Event::Goodbye),
                Step::Detach => Some(Event::Detached),
                Step::Moved => Some(Event::Moved),
                Step::Grace => Some(Event::GraceExpired),
                Step::Record(kind) if sh.record_writing => {
                    sh.record_writing = false;
                    sh.revision += 1;
                    sh.next_lease += 1;
                    Some(match kind {
                        0 | 1 => Event::RecordWritten { lease_id: sh.next_lease, revision: sh.revision, draining: kind == 1, earlier: Earlier::None },
                        2 | 3 => {
                            // Failed: the shell retries the same write.
                            sh.record_writing = true;
                            Event::RecordFailed { reason: "down".into() }
                        }
                        _ => Event::RecordTaken { by: "s2".into() },
                    })
                }
                Step::Record(_) => None,
                Step::RecordLost => sh.record.take().map(|lease_id| {
                    sh.lost_record = Some(lease_id);
                    Event::LeaseLost { lease_id, reason: "expired".into() }
                }),
                Step::NodeSeen(kind) => {
                    sh.revision += 1;
                    Some(match kind {
                        0 | 1 => Event::NodeSeen { session_id: "s1".into(), draining: kind == 1, revision: sh.revision },
                        2 => Event::NodeSeen { session_id: "s0".into(), draining: false, revision: sh.record_revision.min(sh.revision) },
                        _ => Event::NodeSeen { session_id: "s2".into(), draining: false, revision: sh.revision },
                    })
                }
                Step::Superseded => Some(Event::Superseded),
                Step::Forced(b, current) => {
                    let token = core.held().find(|(n, _)| *n == name(b)).map(|(_, c)| c.fencing_token).unwrap_or(7);
                    Some(Event::Forced { broadcast: name(b), fencing_token: if current { token } else { token - 1 }, reason: "ops".into() })
                }
                Step::ViewLagged => Some(Event::ViewLagged),
                Step::TakeoverAsked(b, current) => {
                    let token = sh.told_owner.get(&name(b)).copied().unwrap_or(5);
                    Some(Event::TakeoverAsked { broadcast: name(b), fencing_token: if current { token } else { token + 1 } })
                }
                Step::TakeoverAnswered(b, kind) => sh.takeovers_in_flight.remove(&name(b)).then(|| Event::TakeoverAnswered {
                    broadcast: name(b),
                    outcome: match kind {
                        0 => TakeoverOutcome::Requested,
                        1 => TakeoverOutcome::Changed,
                        _ => TakeoverOutcome::Unavailable { reason: "down".into() },
                    },
                }),
                Step::TakenOver(b, current, by_this_node) => {
                    let token = core.held().find(|(n, _)| *n == name(b)).map(|(_, c)| c.fencing_token).unwrap_or(7);
                    Some(Event::TakenOver {
                        broadcast: name(b),
                        fencing_token: if current { token } else { token - 1 },
                        by: if by_this_node { "node-a".into() } else { "node-b".into() },
                        by_this_node,
                    })
                }
            };
            events.extend(event);
            for event in events.drain(..) {
                let ended = sh.finished > 0 || sh.superseded > 0 || core.is_detached();
                let held_before: BTreeMap<String, Claim> = core.held().map(|(b, c)| (b.to_string(), c.clone())).collect();
                if let Event::RecordWritten { revision, .. } = &event { sh.record_revision = *revision; }
                let forced = matches!(&event, Event::Forced { .. }).then(|| event.clone());
                match &event {
                    Event::Created { broadcast, track } if sh.attached => {
                        sh.live.entry(broadcast.clone()).or_default().insert(track.clone());
                    }
                    Event::Closed { broadcast, track } => {
                        if let Some(t) = sh.live.get_mut(broadcast) { t.remove(track); }
                    }
                    Event::Goodbye | Event::Detached | Event::Moved => {
                        sh.attached = false;
                        sh.live.clear();
                    }
                    _ => {}
                }
                let actions = core.handle(event);
                for action in actions {
                    match action {
                        Action::Claim { broadcast, guard_lease } => {
                            prop_assert_eq!(Some(guard_lease), sh.record, "a claim not under this session's record");
                            prop_assert!(sh.live.get(&broadcast).is_some_and(|t| !t.is_empty()), "a claim of {} with no live track", broadcast);
                            prop_assert!(!sh.claims_in_flight.contains(&broadcast), "two claims in flight for {}", broadcast);
                            prop_assert!(!sh.revokes_in_flight.contains_key(&broadcast), "claim while revoking {}", broadcast);
                            if ended { sh.after_end.push(format!("claim {broadcast}")); }
                            sh.claims_in_flight.insert(broadcast);
                        }
                        Action::Held { lease_id, broadcast } => {
                            prop_assert!(core.held().any(|(b, c)| b == broadcast && c.lease_id == lease_id));
                        }
                        Action::KeepLease { lease_id, .. } => {
                            prop_assert_ne!(Some(lease_id), sh.record, "the record's lease kept as a claim's");
                            prop_assert!(sh.kept.insert(lease_id), "lease {} kept twice", lease_id);
                        }
                        Action::LetGoLease { lease_id } => {
                            prop_assert_ne!(Some(lease_id), sh.record, "the record's lease let go");
                            prop_assert!(!core.held().any(|(_, c)| c.lease_id == lease_id), "lease {} let go with a claim held on it", lease_id);
                            prop_assert!(!sh.revokes_in_flight.values().any(|(l, held)| *held && *l == lease_id), "lease {} let go with a release in flight", lease_id);
                            prop_assert!(!sh.stale_in_flight.contains(&lease_id), "lease {} let go with a stale release in flight", lease_id);
                            sh.kept.remove(&lease_id);
                        }
                        Action::Release { broadcast, lease_id, fencing_token, .. } => {
                            prop_assert!(!sh.claims_in_flight.contains(&broadcast));
                            let held = held_before.get(&broadcast).is_some_and(|c| c.fencing_token == fencing_token && c.lease_id == lease_id);
                            prop_assert!(sh.revokes_in_flight.insert(broadcast, (lease_id, held)).is_none(), "two revokes in flight");
                        }
                        Action::ReleaseStale { lease_id, .. } => sh.stale_in_flight.push(lease_id),
                        Action::FindEarlierClaims { earlier } => {
                            if let Earlier::OnLease(lease_id) = earlier {
                                prop_assert!(sh.looked_at.insert(lease_id), "lease {} looked at twice", lease_id);
                            }
                        }
                        Action::Forget { lease_id, forced: by_operator } => {
                            prop_assert!(held_before.values().any(|c| c.lease_id == lease_id));
                            if by_operator {
                                let Some(Event::Forced { broadcast, fencing_token, .. }) = &forced else {
                                    return Err(TestCaseError::fail("forced forget without a forced release"));
                                };
                                let held = held_before.get(broadcast);
                                prop_assert!(held.is_some_and(|c| c.fencing_token == *fencing_token && c.lease_id == lease_id),
                                    "forced release of {} with token {} took {:?}", broadcast, fencing_token, held);
                            }
                        }
                        Action::RetryAfter { broadcast, timer, .. } => { sh.timers.insert(broadcast, timer); }
                        Action::WriteRecord { replaces } => {
                            prop_assert!(!sh.record_writing && sh.record.is_none(), "a second record write");
                            // A rewrite is fenced by the lease it replaces.
                            prop_assert_eq!(replaces, sh.lost_record.take());
                            sh.record_writing = true;
                        }
                        Action::KeepRecord { lease_id } => {
                            prop_assert!(sh.record.is_none());
                            sh.record = Some(lease_id);
                        }
                        Action::DropRecord { lease_id } => {
                            prop_assert_eq!(sh.record.take(), Some(lease_id));
                        }
                        Action::Supersede { .. } => {
                            prop_assert!(!ended, "superseded after the session ended");
                            sh.superseded += 1;
                            sh.attached = false;
                            sh.live.clear();
                        }
                        Action::StartGrace | Action::MarkDetached { .. } => {}
                        Action::RequestTakeover { broadcast, guard_lease, .. } => {
                            prop_assert!(!ended, "a takeover asked after the session ended");
                            prop_assert_eq!(Some(guard_lease), sh.record, "a takeover not under this session's record");
                            prop_assert!(sh.live.get(&broadcast).is_some_and(|t| !t.is_empty()), "a takeover of {} with no live track", broadcast);
                            prop_assert!(!sh.claims_in_flight.contains(&broadcast), "a takeover while claiming {}", broadcast);
                            sh.takeovers_in_flight.insert(broadcast);
                        }
                        Action::Send(reply) => {
                            if ended { sh.after_end.push(format!("{reply:?}")); }
                            match reply {
                                Reply::Claimed { claim, .. } => { prop_assert!(sh.told_claimed.insert(claim.broadcast)); }
                                Reply::Conflict { broadcast, owner } => { sh.told_owner.insert(broadcast, owner.fencing_token); }
                                Reply::Released { broadcast } | Reply::Lost { broadcast, .. } | Reply::TakenOver { broadcast, .. } => {
                                    prop_assert!(sh.told_claimed.remove(&broadcast), "released/lost for {} never told claimed", broadcast);
                                }
                                Reply::Draining { draining } => {
                                    prop_assert_ne!(sh.told_draining.unwrap_or(false), draining, "draining told twice");
                                    sh.told_draining = Some(draining);
                                }
                                _ => {}
                            }
                        }
                        Action::Finished => {
                            prop_assert!(sh.record.is_none(), "finished with the node record kept");
                            prop_assert!(sh.kept.is_empty(), "finished with leases kept: {:?}", sh.kept);
                            prop_assert!(sh.stale_in_flight.is_empty(), "finished with stale releases in flight");
                            sh.finished += 1;
                        }
                    }
                }
                // Every lease the core holds is being kept alive.
                for (_, c) in core.held() {
                    let kept = sh.kept.contains(&c.lease_id) || sh.record == Some(c.lease_id);
                    prop_assert!(kept, "held lease {} not kept alive", c.lease_id);
                }
                prop_assert_eq!(core.record_lease(), sh.record);
            }
        }
        prop_assert!(sh.finished <= 1);
        prop_assert!(sh.superseded <= 1);
        prop_assert!(sh.after_end.is_empty(), "after the session ended: {:?}", sh.after_end);
    }
}
