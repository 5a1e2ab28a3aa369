use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn change(seq: u64, created: bool, broadcast: &str, track: &str) -> Change {
    let (broadcast, track) = (broadcast.to_string(), track.to_string());
    Change {
        seq,
        lifecycle: if created {
            Lifecycle::Created { broadcast, track }
        } else {
            Lifecycle::Closed { broadcast, track }
        },
    }
}

fn claimed(broadcast: &str, token: i64) -> ServiceMsg {
    ServiceMsg::Claimed(pb::Claimed {
        claim: Some(pb::Claim {
            broadcast: broadcast.into(),
            fencing_token: token,
            lease_id: 7,
            ..Default::default()
        }),
        adopted: false,
    })
}

fn conflict(broadcast: &str) -> ServiceMsg {
    ServiceMsg::Conflict(pb::Conflict {
        broadcast: broadcast.into(),
        owner: Some(pb::Claim {
            node_id: "node-b".into(),
            endpoints: [("rtmp".to_string(), "rtmp://b:1935".to_string())].into(),
            fencing_token: 3,
            ..Default::default()
        }),
    })
}

fn rejected(broadcast: &str) -> ServiceMsg {
    ServiceMsg::Rejected(pb::Rejected {
        broadcast: broadcast.into(),
        track: "t9".into(),
        reason: "limit".into(),
        code: 8,
    })
}

fn welcomed(live: &[(&str, &str)], seq: u64) -> (ClaimBook, BridgeView) {
    let live: Vec<(String, String)> = live
        .iter()
        .map(|(b, t)| (b.to_string(), t.to_string()))
        .collect();
    let mut view = BridgeView::default();
    let mut book = ClaimBook::default();
    book.welcome(&live, seq, "http://cs:50051", &mut view);
    (book, view)
}

#[test]
fn a_welcome_makes_every_live_broadcast_wait_and_forgets_the_rest() {
    let mut view = BridgeView::default();
    view.states.insert("live/gone".into(), ClaimState::Unknown);
    let mut book = ClaimBook::default();
    let live = vec![
        ("live/a".to_string(), "video".to_string()),
        ("live/a".to_string(), "audio".to_string()),
        ("live/b".to_string(), "video".to_string()),
    ];
    book.welcome(&live, 5, "http://cs:50051", &mut view);
    assert!(view.connected);
    assert_eq!(view.processed, 5);
    assert_eq!(view.service.as_deref(), Some("http://cs:50051"));
    assert_eq!(
        view.states.keys().collect::<Vec<_>>(),
        vec!["live/a", "live/b"]
    );
    assert!(view.states.values().all(|s| *s == ClaimState::Pending));
}

#[test]
fn a_broadcast_waits_once_per_episode_and_goes_with_its_last_track() {
    let (mut book, mut view) = welcomed(&[], 0);
    let msg = book.forward(change(1, true, "live/a", "video"), &mut view);
    assert!(matches!(msg, NodeMsg::Created(t) if t.broadcast == "live/a" && t.track == "video"));
    assert_eq!(view.states["live/a"], ClaimState::Pending);
    book.answer(claimed("live/a", 10), &mut view);
    // A second track joins the claim: no new episode.
    book.forward(change(2, true, "live/a", "audio"), &mut view);
    assert!(matches!(
        view.states["live/a"],
        ClaimState::Claimed {
            fencing_token: 10,
            ..
        }
    ));
    book.forward(change(3, false, "live/a", "video"), &mut view);
    assert!(view.states.contains_key("live/a"));
    let msg = book.forward(change(4, false, "live/a", "audio"), &mut view);
    assert!(matches!(msg, NodeMsg::Closed(_)));
    assert!(!view.states.contains_key("live/a"));
    assert_eq!(view.processed, 4);
    // The release that follows is history.
    book.answer(
        ServiceMsg::Released(pb::Released {
            broadcast: "live/a".into(),
        }),
        &mut view,
    );
    assert!(!view.states.contains_key("live/a"));
}

#[test]
fn a_refused_extra_track_never_undoes_a_claim() {
    let (mut book, mut view) = welcomed(&[("live/a", "video")], 1);
    book.answer(claimed("live/a", 10), &mut view);
    book.answer(rejected("live/a"), &mut view);
    assert!(matches!(view.states["live/a"], ClaimState::Claimed { .. }));
    // Refused before any claim: the broadcast is rejected.
    book.forward(change(2, true, "live/b", "video"), &mut view);
    book.answer(rejected("live/b"), &mut view);
    assert_eq!(
        view.states["live/b"],
        ClaimState::Rejected {
            reason: "limit".into()
        }
    );
}

#[test]
fn decisions_wait_for_the_answer_to_their_own_publish() {
    let (mut book, mut view) = welcomed(&[], 0);
    book.forward(change(1, true, "live/a", "video"), &mut view);
    book.answer(claimed("live/a", 10), &mut view);
    // A publish at change 2 is not answered by the claim of change 1.
    assert_eq!(decision(&view, "live/a", 2), None);
    book.forward(change(2, false, "live/a", "video"), &mut view);
    book.forward(change(3, true, "live/a", "video"), &mut view);
    assert_eq!(decision(&view, "live/a", 3), None);
    book.answer(conflict("live/a"), &mut view);
    assert_eq!(
        decision(&view, "live/a", 3),
        Some(Decision::OwnedElsewhere {
            owner_node: "node-b".into(),
            owner_rtmp: Some("rtmp://b:1935".into()),
            owner_detached: false,
            grace_ends_unix_ms: 0,
        })
    );
    disconnected(&mut view);
    assert_eq!(view.states["live/a"], ClaimState::Unknown);
    assert!(matches!(
        decision(&view, "live/a", 3),
        Some(Decision::Unavailable { .. })
    ));
}

#[test]
fn draining_is_noted_whatever_is_live() {
    let (book, mut view) = welcomed(&[], 0);
    book.answer(
        ServiceMsg::Draining(pb::Draining { draining: true }),
        &mut view,
    );
    assert!(view.draining);
}

#[test]
fn reconnecting_backs_off_to_five_seconds_and_a_healthy_session_resets_it() {
    let mut r = Reconnect::default();
    let waits: Vec<u64> = (0..8)
        .map(|_| r.after(Duration::ZERO).as_millis() as u64)
        .collect();
    assert_eq!(waits, vec![200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    assert_eq!(r.after(Reconnect::HEALTHY), Duration::from_millis(200));
}

#[derive(Debug, Clone)]
enum Step {
    Created(u8, u8),
    Closed(u8, u8),
    Answer(u8, u8),
    Disconnect,
    Welcome,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..3u8, 0..3u8).prop_map(|(b, t)| Step::Created(b, t)),
        3 => (0..3u8, 0..3u8).prop_map(|(b, t)| Step::Closed(b, t)),
        4 => (0..3u8, 0..7u8).prop_map(|(b, k)| Step::Answer(b, k)),
        1 => Just(Step::Disconnect),
        1 => Just(Step::Welcome),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    /// Whatever the registry and the claim service do, in any order: a
    /// broadcast has a state exactly while it has a live track, a claim is
    /// shown only as answered for a live broadcast, and a lost session
    /// leaves nothing but `Unknown`.
    #[test]
    fn the_picture_follows_the_live_tracks(steps in proptest::collection::vec(step(), 1..80), takeover in any::<bool>()) {
        // The registry: what is live, with its sequence (closing what is
        // not live is not a change it makes).
        let mut registry: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut seq = 0u64;
        let (mut book, mut view) = welcomed(&[], 0);
        let name = |b: u8| format!("live/{b}");
        for s in steps {
            match s {
                Step::Created(b, t) | Step::Closed(b, t) => {
                    let created = matches!(s, Step::Created(..));
                    let (b, t) = (name(b), format!("t{t}"));
                    let tracks = registry.entry(b.clone()).or_default();
                    let changed = if created { tracks.insert(t.clone()) } else { tracks.remove(&t) };
                    if tracks.is_empty() { registry.remove(&b); }
                    if !changed { continue; }
                    seq += 1;
                    if view.connected {
                        let was = view.states.get(&b).cloned();
                        book.forward(change(seq, created, &b, &t), &mut view);
                        prop_assert_eq!(view.processed, seq);
                        let became_live = created && registry.get(&b).is_some_and(|t| t.len() == 1);
                        if became_live {
                            prop_assert_eq!(view.states.get(&b), Some(&ClaimState::Pending));
                        } else if registry.contains_key(&b) {
                            prop_assert_eq!(view.states.get(&b), was.as_ref());
                        }
                    }
                }
                Step::Answer(b, kind) => {
                    if !view.connected { continue; }
                    let b = name(b);
                    let before = view.states.get(&b).cloned();
                    let msg = match kind {
                        0 => claimed(&b, 10),
                        1 => conflict(&b),
                        2 => rejected(&b),
                        3 => ServiceMsg::Released(pb::Released { broadcast: b.clone() }),
                        4 => ServiceMsg::Lost(pb::Lost { broadcast: b.clone(), reason: "expired".into(), taken_by: String::new() }),
                        5 => ServiceMsg::Lost(pb::Lost { broadcast: b.clone(), reason: "taken".into(), taken_by: "node-b".into() }),
                        _ => ServiceMsg::Retrying(pb::Retrying { broadcast: b.clone(), reason: "down".into(), retry_in_ms: 200 }),
                    };
                    let asked = book.answer(msg, &mut view);
                    // A takeover only under its policy, for a broadcast
                    // live here that met its first answer.
                    if asked.is_some() {
                        prop_assert!(takeover, "a takeover asked under another policy");
                        prop_assert_eq!(before.as_ref(), Some(&ClaimState::Pending));
                        prop_assert!(registry.contains_key(&b));
                    }
                    if !registry.contains_key(&b) {
                        prop_assert_eq!(view.states.get(&b), None, "an answer about {} that is not live", b);
                    }
                    if kind == 2 && matches!(before, Some(ClaimState::Claimed { .. })) {
                        prop_assert_eq!(view.states.get(&b), before.as_ref(), "a refused track undid a claim");
                    }
                }
                Step::Disconnect => {
                    disconnected(&mut view);
                    prop_assert!(view.states.values().all(|s| *s == ClaimState::Unknown));
                    prop_assert!(decision(&view, "live/0", 0).is_some());
                }
                Step::Welcome => {
                    let live: Vec<(String, String)> = registry
                        .iter()
                        .flat_map(|(b, ts)| ts.iter().map(move |t| (b.clone(), t.clone())))
                        .collect();
                    book = ClaimBook::new(if takeover { DuplicatePolicy::Takeover } else { DuplicatePolicy::Refuse });
                    book.welcome(&live, seq, "http://cs:50051", &mut view);
                    prop_assert!(view.states.values().all(|s| *s == ClaimState::Pending));
                }
            }
            // A state exactly while live, once a session forwarded it.
            if view.connected {
                let stated: Vec<&String> = view.states.keys().collect();
                let live: Vec<&String> = registry.keys().collect();
                prop_assert_eq!(stated, live);
                for b in registry.keys() {
                    prop_assert!(book.is_live(b));
                }
            }
        }
    }
}

fn gone_owner(grace_ends_unix_ms: i64) -> Decision {
    Decision::OwnedElsewhere {
        owner_node: "node-b".into(),
        owner_rtmp: None,
        owner_detached: true,
        grace_ends_unix_ms,
    }
}

#[test]
fn a_publish_is_held_behind_an_owner_only_as_the_policy_or_a_gone_owner_says() {
    let there = Decision::OwnedElsewhere {
        owner_node: "node-b".into(),
        owner_rtmp: None,
        owner_detached: false,
        grace_ends_unix_ms: 0,
    };
    let wait = Duration::from_secs(10);
    let hold = |duplicates| Hold {
        duplicates,
        claim_wait: wait,
    };
    assert!(!hold(DuplicatePolicy::Refuse).holds(&there));
    assert!(hold(DuplicatePolicy::Standby).holds(&there));
    assert!(hold(DuplicatePolicy::Takeover).holds(&there));
    for policy in [
        DuplicatePolicy::Refuse,
        DuplicatePolicy::Standby,
        DuplicatePolicy::Takeover,
    ] {
        assert!(hold(policy).holds(&gone_owner(0)), "{policy:?}");
        assert!(!hold(policy).holds(&Decision::Claimed { fencing_token: 1 }));
    }
    let hold = hold(DuplicatePolicy::Refuse);
    let started = std::time::Instant::now();
    // Seen 3 s after the publish began, at 1,000 ms on the wall clock.
    let now = started + Duration::from_secs(3);
    let deadline = |held: Option<&Decision>| hold.deadline(held, started, now, 1_000);
    assert_eq!(deadline(None), started + wait);
    assert_eq!(deadline(Some(&there)), started + wait);
    // Past a gone owner's grace (counted from now), even beyond the claim
    // wait (counted from the start).
    assert_eq!(
        deadline(Some(&gone_owner(1_000 + 9_000))),
        now + Duration::from_secs(9) + Hold::SETTLE
    );
    // A grace about to end: the claim wait still governs.
    assert_eq!(deadline(Some(&gone_owner(1_500))), started + wait);
    assert_eq!(
        deadline(Some(&gone_owner(0))),
        now + Hold::UNKNOWN_GRACE + Hold::SETTLE
    );
}

#[test]
fn under_takeover_a_new_publish_meeting_an_owner_asks_once_and_never_of_a_gone_one() {
    let mut view = BridgeView::default();
    let mut book = ClaimBook::new(DuplicatePolicy::Takeover);
    book.welcome(&[], 0, "http://cs:50051", &mut view);
    book.forward(change(1, true, "live/a", "video"), &mut view);
    let asked = book.answer(conflict("live/a"), &mut view);
    assert_eq!(
        asked,
        Some(NodeMsg::Takeover(pb::Takeover {
            broadcast: "live/a".into(),
            fencing_token: 3,
        }))
    );
    // The same owner told again asks nothing more.
    assert_eq!(book.answer(conflict("live/a"), &mut view), None);
    book.forward(change(2, true, "live/g", "video"), &mut view);
    let gone = ServiceMsg::Conflict(pb::Conflict {
        broadcast: "live/g".into(),
        owner: Some(pb::Claim {
            node_id: "node-b".into(),
            fencing_token: 4,
            detached: true,
            ..Default::default()
        }),
    });
    assert_eq!(book.answer(gone, &mut view), None);
    assert!(matches!(
        view.states["live/g"],
        ClaimState::Standby {
            owner_detached: true,
            ..
        }
    ));
}

#[test]
fn a_claim_another_node_now_holds_is_overtaken_and_says_by_whom() {
    let taken = ClaimState::Lost {
        reason: "taken".into(),
        taken_by: Some("node-b".into()),
    };
    let o = taken.overtaken("live/a").unwrap();
    assert_eq!((o.by.as_str(), o.label), ("node-b", "taken_over"));
    assert!(
        o.reason.contains("taken over by node node-b"),
        "{}",
        o.reason
    );
    let elsewhere = ClaimState::Standby {
        owner_node: "node-c".into(),
        owner_rtmp: None,
        owner_http: None,
        fencing_token: 9,
        owner_detached: false,
        grace_ends_unix_ms: 0,
    };
    let o = elsewhere.overtaken("live/a").unwrap();
    assert_eq!((o.by.as_str(), o.label), ("node-c", "owned_elsewhere"));
    // A claim merely lost (etcd away, force-released) is claimed again,
    // not dropped.
    let lost = ClaimState::Lost {
        reason: "etcd".into(),
        taken_by: None,
    };
    assert_eq!(lost.overtaken("live/a"), None);
    assert_eq!(ClaimState::Pending.overtaken("live/a"), None);
}
