//! The takeover rules: asked only as the standby of exactly that owner,
//! refused otherwise; the owner tells its node and lets go; a third standby
//! lets the taker claim first.

use super::tests::{claim, claimed, created, fenced, RECORD};
use super::*;

/// A standby behind the owner with token 5.
fn standing_by(core: &mut NodeClaims, b: &str) {
    core.handle(created(b, "video"));
    core.handle(Event::ClaimAnswered {
        broadcast: b.into(),
        outcome: ClaimOutcome::Conflict {
            owner: claim(b, 5, 5),
            revision: 6,
        },
    });
}

#[test]
fn a_takeover_is_asked_only_for_a_live_standby_behind_the_owner_named() {
    let mut core = fenced(Limits::default());
    standing_by(&mut core, "s");
    let refused = |actions: Vec<Action>| {
        matches!(
            actions.as_slice(),
            [Action::Send(Reply::TakeoverRefused { .. })]
        )
    };
    // Not the owner it was told of.
    assert!(refused(core.handle(Event::TakeoverAsked {
        broadcast: "s".into(),
        fencing_token: 4,
    })));
    // Not live here.
    assert!(refused(core.handle(Event::TakeoverAsked {
        broadcast: "x".into(),
        fencing_token: 5,
    })));
    assert_eq!(
        core.handle(Event::TakeoverAsked {
            broadcast: "s".into(),
            fencing_token: 5,
        }),
        vec![Action::RequestTakeover {
            broadcast: "s".into(),
            fencing_token: 5,
            guard_lease: RECORD,
        }]
    );
    // Written: the claim comes when the owner lets it go.
    assert_eq!(
        core.handle(Event::TakeoverAnswered {
            broadcast: "s".into(),
            outcome: TakeoverOutcome::Requested,
        }),
        vec![]
    );
    // Its own request seen in the view changes nothing; the release does.
    assert_eq!(
        core.handle(Event::TakenOver {
            broadcast: "s".into(),
            fencing_token: 5,
            by: "node-a".into(),
            by_this_node: true,
        }),
        vec![]
    );
    assert_eq!(
        core.handle(Event::OwnerReleased {
            broadcast: "s".into(),
            revision: 7,
        }),
        vec![Action::Claim {
            broadcast: "s".into(),
            guard_lease: RECORD,
        }]
    );
}

#[test]
fn a_takeover_turned_off_is_refused_and_a_changed_owner_is_asked_again() {
    let mut core = fenced(Limits {
        takeover: false,
        ..Limits::default()
    });
    standing_by(&mut core, "s");
    assert!(matches!(
        core.handle(Event::TakeoverAsked {
            broadcast: "s".into(),
            fencing_token: 5,
        })
        .as_slice(),
        [Action::Send(Reply::TakeoverRefused { reason, .. })] if reason.contains("--takeover deny")
    ));
    let mut core = fenced(Limits::default());
    standing_by(&mut core, "s");
    core.handle(Event::TakeoverAsked {
        broadcast: "s".into(),
        fencing_token: 5,
    });
    assert_eq!(
        core.handle(Event::TakeoverAnswered {
            broadcast: "s".into(),
            outcome: TakeoverOutcome::Changed,
        }),
        vec![Action::Claim {
            broadcast: "s".into(),
            guard_lease: RECORD,
        }]
    );
}

#[test]
fn an_owner_taken_over_tells_its_node_lets_go_and_stands_by() {
    let mut core = fenced(Limits::default());
    core.handle(created("a", "video"));
    core.handle(claimed("a", 1, 10));
    // A stale request (another token) changes nothing.
    assert_eq!(
        core.handle(Event::TakenOver {
            broadcast: "a".into(),
            fencing_token: 9,
            by: "node-b".into(),
            by_this_node: false,
        }),
        vec![]
    );
    let actions = core.handle(Event::TakenOver {
        broadcast: "a".into(),
        fencing_token: 10,
        by: "node-b".into(),
        by_this_node: false,
    });
    assert!(matches!(&actions[0], Action::Release { broadcast, .. } if broadcast == "a"));
    assert_eq!(
        actions[1],
        Action::Send(Reply::TakenOver {
            broadcast: "a".into(),
            by: "node-b".into(),
        })
    );
    assert_eq!(core.held().count(), 0);
    // Released: no `released` told (it was told taken over), and no claim
    // again while its tracks live.
    assert_eq!(
        core.handle(Event::Released {
            broadcast: "a".into()
        }),
        vec![Action::LetGoLease { lease_id: 1 }]
    );
    assert_eq!(core.standby().collect::<Vec<_>>(), vec!["a"]);
    assert_eq!(
        core.handle(Event::OwnerReleased {
            broadcast: "a".into(),
            revision: 50,
        }),
        vec![]
    );
}

#[test]
fn a_third_standby_lets_the_taker_claim_first() {
    let mut core = fenced(Limits::default());
    standing_by(&mut core, "s");
    core.handle(Event::TakenOver {
        broadcast: "s".into(),
        fencing_token: 5,
        by: "node-b".into(),
        by_this_node: false,
    });
    let actions = core.handle(Event::OwnerReleased {
        broadcast: "s".into(),
        revision: 7,
    });
    assert!(matches!(
        actions.as_slice(),
        [Action::RetryAfter { broadcast, .. }] if broadcast == "s"
    ));
}
