//! The rules of a session as a whole (see `events.rs`), one by one.

use super::tests::{claim_action, fenced, RECORD};
use super::*;

fn created(b: &str) -> Event {
    Event::Created {
        broadcast: b.into(),
        track: "video".into(),
    }
}

fn held(b: &str, lease_id: i64, token: i64) -> Event {
    Event::ClaimAnswered {
        broadcast: b.into(),
        outcome: ClaimOutcome::Claimed {
            claim: Claim {
                broadcast: b.into(),
                node_id: "node-a".into(),
                lease_id,
                fencing_token: token,
                lease_ttl_ms: 10_000,
                ..Claim::default()
            },
            adopted: false,
        },
    }
}

fn written(lease_id: i64, revision: i64, draining: bool) -> Event {
    Event::RecordWritten {
        lease_id,
        revision,
        draining,
        earlier: Earlier::None,
    }
}

fn retrying(actions: &[Action]) -> Vec<(&str, &str)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(Reply::Retrying {
                broadcast, reason, ..
            }) => Some((broadcast.as_str(), reason.as_str())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_session_begins_by_writing_its_record_and_claims_wait_for_it() {
    let mut core = NodeClaims::new("s1", Limits::default());
    assert_eq!(
        core.handle(Event::Began),
        vec![Action::WriteRecord { replaces: None }]
    );
    assert_eq!(core.handle(created("live/a")), vec![]);
    assert_eq!(core.handle(created("live/b")), vec![]);
    assert_eq!(
        core.handle(written(5, 10, false)),
        vec![
            Action::KeepRecord { lease_id: 5 },
            Action::Claim {
                broadcast: "live/a".into(),
                guard_lease: 5
            },
            Action::Claim {
                broadcast: "live/b".into(),
                guard_lease: 5
            },
        ]
    );
    assert_eq!(core.record_lease(), Some(5));
}

#[test]
fn a_failed_record_write_tells_waiting_claims_why_and_they_retry() {
    let mut core = NodeClaims::new("s1", Limits::default());
    core.handle(Event::Began);
    core.handle(created("live/a"));
    let acts = core.handle(Event::RecordFailed {
        reason: "etcd down".into(),
    });
    assert_eq!(retrying(&acts), vec![("live/a", "etcd down")]);
    let Some(Action::RetryAfter { timer, .. }) = acts
        .iter()
        .find(|a| matches!(a, Action::RetryAfter { .. }))
        .cloned()
    else {
        panic!("no retry timer: {acts:?}");
    };
    // The retry comes before the record: it waits again, and goes once
    // the record is written.
    let retry = Event::RetryDue {
        broadcast: "live/a".into(),
        timer,
    };
    assert_eq!(core.handle(retry), vec![]);
    let acts = core.handle(written(5, 10, false));
    assert!(acts.contains(&Action::Claim {
        broadcast: "live/a".into(),
        guard_lease: 5
    }));
}

#[test]
fn a_lost_record_is_written_again_fenced_by_its_old_lease() {
    let mut core = fenced(Limits::default());
    core.handle(created("live/a"));
    core.handle(held("live/a", 7, 100));
    assert_eq!(
        core.handle(Event::LeaseLost {
            lease_id: RECORD,
            reason: "expired".into()
        }),
        vec![Action::WriteRecord {
            replaces: Some(RECORD)
        }]
    );
    // The claim stays held; a new one waits for the record.
    assert_eq!(core.held().count(), 1);
    assert_eq!(core.handle(created("live/b")), vec![]);
    let acts = core.handle(written(9, 20, false));
    assert_eq!(
        acts,
        vec![
            Action::KeepRecord { lease_id: 9 },
            Action::Claim {
                broadcast: "live/b".into(),
                guard_lease: 9
            }
        ]
    );
}

#[test]
fn fenced_by_its_own_or_no_record_a_claim_only_retries() {
    for session_id in ["s1", ""] {
        let mut core = fenced(Limits::default());
        core.handle(created("live/a"));
        let acts = core.handle(Event::Fenced {
            broadcast: "live/a".into(),
            session_id: session_id.into(),
        });
        assert_eq!(
            retrying(&acts),
            vec![(
                "live/a",
                "this session's node record is being renewed; retrying"
            )]
        );
        assert!(!acts.iter().any(|a| matches!(a, Action::Supersede { .. })));
        assert!(!core.is_detached());
    }
}

/// Every way another session of the node shows itself ends this one: the
/// stream ends, held claims are kept for the grace, nothing new is claimed
/// and the node is told nothing more.
#[test]
fn another_sessions_record_supersedes_this_one() {
    let cases: Vec<(Event, &str)> = vec![
        (
            Event::NodeSeen {
                session_id: "s2".into(),
                draining: false,
                revision: 2,
            },
            "session s2",
        ),
        (Event::RecordTaken { by: "s2".into() }, "session s2"),
        (
            Event::Fenced {
                broadcast: "live/b".into(),
                session_id: "s2".into(),
            },
            "session s2",
        ),
        (Event::Superseded, "on this replica"),
    ];
    for (event, by) in cases {
        let mut core = fenced(Limits::default());
        core.handle(created("live/a"));
        core.handle(held("live/a", 7, 100));
        core.handle(created("live/b"));
        let acts = core.handle(event.clone());
        let supersede = acts
            .iter()
            .position(|a| *a == Action::Supersede { by: by.into() });
        let grace = acts.iter().position(|a| *a == Action::StartGrace);
        assert!(
            supersede.is_some() && supersede < grace,
            "{event:?}: {acts:?}"
        );
        assert!(
            !acts
                .iter()
                .any(|a| matches!(a, Action::Send(_) | Action::Claim { .. })),
            "{event:?}: {acts:?}"
        );
        assert!(core.is_detached());
        assert_eq!(core.held().count(), 1, "{event:?}: held claims are kept");
        // Once superseded, the session claims nothing and is not
        // superseded again.
        assert_eq!(core.handle(created("live/c")), vec![]);
        assert_eq!(core.handle(Event::Superseded), vec![]);
    }
}

#[test]
fn an_older_record_or_one_before_this_sessions_own_supersedes_nothing() {
    let mut core = NodeClaims::new("s1", Limits::default());
    core.handle(Event::Began);
    // Before this session's record is written, any other record is older.
    let seen = |revision| Event::NodeSeen {
        session_id: "s0".into(),
        draining: false,
        revision,
    };
    assert_eq!(core.handle(seen(50)), vec![]);
    core.handle(written(5, 100, false));
    assert_eq!(core.handle(seen(99)), vec![]);
    assert_eq!(
        core.handle(Event::NodeSeen {
            session_id: String::new(),
            draining: false,
            revision: 200
        }),
        vec![]
    );
    assert!(!core.is_detached());
}

#[test]
fn draining_is_told_when_it_changes_only() {
    let mut core = NodeClaims::new("s1", Limits::default());
    core.handle(Event::Began);
    let draining = |d| Action::Send(Reply::Draining { draining: d });
    let acts = core.handle(written(5, 10, true));
    assert!(acts.contains(&draining(true)), "{acts:?}");
    let seen = |d, revision| Event::NodeSeen {
        session_id: "s1".into(),
        draining: d,
        revision,
    };
    assert_eq!(core.handle(seen(true, 11)), vec![]);
    assert_eq!(core.handle(seen(false, 12)), vec![draining(false)]);
    assert_eq!(core.handle(seen(false, 13)), vec![]);
    assert!(!core.is_draining());
}

#[test]
fn a_forced_release_of_the_current_claim_is_lost_and_claimed_again() {
    let mut core = fenced(Limits::default());
    core.handle(created("live/a"));
    core.handle(held("live/a", 7, 100));
    let forced = |token| Event::Forced {
        broadcast: "live/a".into(),
        fencing_token: token,
        reason: "stuck encoder".into(),
    };
    // A stale token (an older claim of the broadcast) changes nothing.
    assert_eq!(core.handle(forced(99)), vec![]);
    assert_eq!(
        core.handle(forced(100)),
        vec![
            Action::Forget {
                lease_id: 7,
                forced: true
            },
            // Its lease (one an earlier session left) carries nothing more.
            Action::LetGoLease { lease_id: 7 },
            Action::Send(Reply::Lost {
                broadcast: "live/a".into(),
                reason: "force-released by an operator: stuck encoder".into()
            }),
            claim_action("live/a"),
        ]
    );
}

#[test]
fn a_lagging_view_sends_every_standby_to_try_again() {
    let mut core = fenced(Limits::default());
    for b in ["live/a", "live/b"] {
        core.handle(created(b));
        core.handle(Event::ClaimAnswered {
            broadcast: b.into(),
            outcome: ClaimOutcome::Conflict {
                owner: Claim {
                    node_id: "node-b".into(),
                    ..Claim::default()
                },
                revision: 10,
            },
        });
    }
    assert_eq!(
        core.handle(Event::ViewLagged),
        vec![claim_action("live/a"), claim_action("live/b")]
    );
}

#[test]
fn ending_drops_the_record_after_every_claim_and_drops_claims_never_started() {
    let mut core = NodeClaims::new("s1", Limits::default());
    core.handle(Event::Began);
    // A claim waiting for the record is dropped at goodbye, never started.
    core.handle(created("live/a"));
    assert_eq!(core.handle(Event::Goodbye), vec![Action::Finished]);

    let mut core = fenced(Limits::default());
    core.handle(created("live/a"));
    core.handle(held("live/a", 7, 100));
    let acts = core.handle(Event::Goodbye);
    assert!(matches!(acts[..], [Action::Release { lease_id: 7, .. }]));
    let acts = core.handle(Event::Released {
        broadcast: "live/a".into(),
    });
    assert_eq!(
        acts[acts.len() - 2..],
        [Action::DropRecord { lease_id: RECORD }, Action::Finished]
    );
}
