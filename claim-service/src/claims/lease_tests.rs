//! The rules of one lease per session: a node's claims are on its record's
//! lease, so they are lost together; a release is fenced by the record; an
//! operator's forced release takes one claim, not its lease-mates.

use super::tests::{claim, claimed, created, fenced, sends, RECORD};
use super::*;

#[test]
fn losing_the_record_lease_loses_every_claim_on_it_and_writes_the_record_again() {
    let mut core = fenced(Limits::default());
    core.handle(created("a", "video"));
    core.handle(created("b", "video"));
    core.handle(created("c", "video"));
    core.handle(claimed("a", RECORD, 10));
    core.handle(claimed("b", RECORD, 11));
    // c was adopted from an earlier session: on that session's lease.
    core.handle(claimed("c", 77, 5));
    let acts = core.handle(Event::LeaseLost {
        lease_id: RECORD,
        reason: "expired".into(),
    });
    let lost: Vec<&str> = sends(&acts)
        .into_iter()
        .filter_map(|r| match r {
            Reply::Lost { broadcast, .. } => Some(broadcast.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(lost, ["a", "b"]);
    assert!(acts.contains(&Action::WriteRecord {
        replaces: Some(RECORD)
    }));
    // Still live: claimed again once the record is written again.
    assert_eq!(core.held().map(|(b, _)| b).collect::<Vec<_>>(), ["c"]);
    let again = core.handle(Event::RecordWritten {
        lease_id: RECORD + 1,
        revision: 20,
        draining: false,
        earlier: Earlier::None,
    });
    let claims: Vec<&Action> = again
        .iter()
        .filter(|a| matches!(a, Action::Claim { .. }))
        .collect();
    assert_eq!(
        claims,
        [
            &Action::Claim {
                broadcast: "a".into(),
                guard_lease: RECORD + 1
            },
            &Action::Claim {
                broadcast: "b".into(),
                guard_lease: RECORD + 1
            }
        ]
    );
}

#[test]
fn a_release_is_fenced_by_the_record_lease_even_while_it_is_written_again() {
    let mut core = fenced(Limits::default());
    core.handle(created("c", "video"));
    core.handle(claimed("c", 77, 5));
    core.handle(Event::LeaseLost {
        lease_id: RECORD,
        reason: "expired".into(),
    });
    assert_eq!(
        core.handle(Event::Closed {
            broadcast: "c".into(),
            track: "video".into()
        }),
        vec![Action::Release {
            broadcast: "c".into(),
            lease_id: 77,
            fencing_token: 5,
            guard_lease: RECORD
        }]
    );
}

#[test]
fn a_forced_release_takes_one_claim_not_the_others_on_its_lease() {
    let mut core = fenced(Limits::default());
    core.handle(created("a", "video"));
    core.handle(created("b", "video"));
    core.handle(claimed("a", RECORD, 10));
    core.handle(claimed("b", RECORD, 11));
    let acts = core.handle(Event::Forced {
        broadcast: "a".into(),
        fencing_token: 10,
        reason: "maintenance".into(),
    });
    assert_eq!(
        acts[0],
        Action::Forget {
            lease_id: RECORD,
            forced: true
        }
    );
    assert!(matches!(sends(&acts)[..], [Reply::Lost { broadcast, .. }] if broadcast == "a"));
    assert_eq!(core.held().map(|(b, _)| b).collect::<Vec<_>>(), ["b"]);
}

#[test]
fn earlier_claims_are_looked_for_where_the_replaced_record_says() {
    let mut core = NodeClaims::new("s2", Limits::default());
    assert_eq!(
        core.handle(Event::Began),
        vec![Action::WriteRecord { replaces: None }]
    );
    let acts = core.handle(Event::RecordWritten {
        lease_id: 3,
        revision: 4,
        draining: false,
        earlier: Earlier::OnLease(2),
    });
    assert_eq!(
        acts,
        vec![
            Action::KeepRecord { lease_id: 3 },
            Action::FindEarlierClaims {
                earlier: Earlier::OnLease(2)
            }
        ]
    );
    // Those not live now are released, fenced by this session's record.
    assert_eq!(
        core.handle(Event::Existing {
            claims: vec![claim("gone", 2, 9)]
        }),
        vec![Action::ReleaseStale {
            broadcast: "gone".into(),
            lease_id: 2,
            fencing_token: 9,
            guard_lease: 3
        }]
    );
}

fn closed(b: &str, t: &str) -> Event {
    Event::Closed {
        broadcast: b.into(),
        track: t.into(),
    }
}

fn released(b: &str) -> Event {
    Event::Released {
        broadcast: b.into(),
    }
}

fn let_go(acts: &[Action]) -> Vec<i64> {
    acts.iter()
        .filter_map(|a| match a {
            Action::LetGoLease { lease_id } => Some(*lease_id),
            _ => None,
        })
        .collect()
}

#[test]
fn an_adopted_lease_is_kept_from_its_first_claim_and_let_go_after_its_last_release() {
    let mut core = fenced(Limits::default());
    core.handle(created("a", "video"));
    core.handle(created("b", "video"));
    let first = core.handle(claimed("a", 77, 5));
    assert!(first.contains(&Action::KeepLease {
        lease_id: 77,
        ttl_ms: 10_000
    }));
    assert!(first.contains(&Action::FindEarlierClaims {
        earlier: Earlier::OnLease(77)
    }));
    let second = core.handle(claimed("b", 77, 6));
    assert!(
        !second.iter().any(|a| matches!(
            a,
            Action::KeepLease { .. } | Action::FindEarlierClaims { .. }
        )),
        "kept and looked at once: {second:?}"
    );
    core.handle(closed("a", "video"));
    assert_eq!(let_go(&core.handle(released("a"))), Vec::<i64>::new());
    core.handle(closed("b", "video"));
    assert_eq!(core.claims_on(77), 1, "counted until its release is done");
    assert_eq!(let_go(&core.handle(released("b"))), [77]);
    assert_eq!(
        let_go(&core.handle(released("b"))),
        Vec::<i64>::new(),
        "once"
    );
}

#[test]
fn the_record_lease_is_never_let_go_by_a_claim_and_goes_with_the_record() {
    let mut core = fenced(Limits::default());
    core.handle(created("a", "video"));
    core.handle(claimed("a", RECORD, 5));
    core.handle(closed("a", "video"));
    assert_eq!(let_go(&core.handle(released("a"))), Vec::<i64>::new());
    let acts = core.handle(Event::Goodbye);
    assert_eq!(
        acts,
        vec![Action::DropRecord { lease_id: RECORD }, Action::Finished]
    );
}

#[test]
fn a_lost_or_forced_claim_lets_its_adopted_lease_go_when_it_was_the_last() {
    let mut core = fenced(Limits::default());
    core.handle(created("a", "video"));
    core.handle(claimed("a", 77, 5));
    let acts = core.handle(Event::Forced {
        broadcast: "a".into(),
        fencing_token: 5,
        reason: "ops".into(),
    });
    assert_eq!(let_go(&acts), [77]);
}

#[test]
fn a_claim_that_lands_unwanted_is_released_without_touching_a_held_leases_count() {
    let mut core = fenced(Limits::default());
    core.handle(created("a", "video"));
    core.handle(created("b", "video"));
    core.handle(claimed("a", 77, 5));
    // b closed while its claim was in flight: the claim that lands is
    // given back at once; a, on the same lease, is still held.
    core.handle(closed("b", "video"));
    core.handle(claimed("b", 77, 6));
    assert_eq!(let_go(&core.handle(released("b"))), Vec::<i64>::new());
    assert_eq!(core.claims_on(77), 1);
}

#[test]
fn a_stale_release_holds_its_lease_and_the_sessions_end_until_it_is_done() {
    let mut core = fenced(Limits::default());
    core.handle(created("a", "video"));
    core.handle(claimed("a", 77, 5));
    core.handle(Event::Existing {
        claims: vec![claim("gone", 77, 3)],
    });
    let acts = core.handle(Event::Goodbye);
    assert!(matches!(acts[..], [Action::Release { lease_id: 77, .. }]));
    let acts = core.handle(released("a"));
    assert_eq!(
        let_go(&acts),
        Vec::<i64>::new(),
        "a stale release is in flight"
    );
    assert!(!acts.contains(&Action::Finished));
    assert_eq!(
        core.handle(Event::StaleReleased { lease_id: 77 }),
        vec![
            Action::LetGoLease { lease_id: 77 },
            Action::DropRecord { lease_id: RECORD },
            Action::Finished
        ]
    );
}
