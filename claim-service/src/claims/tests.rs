use super::*;

pub(super) fn claim(broadcast: &str, lease_id: i64, token: i64) -> Claim {
    Claim {
        broadcast: broadcast.into(),
        node_id: "node-a".into(),
        lease_id,
        fencing_token: token,
        lease_ttl_ms: 10_000,
        ..Claim::default()
    }
}

pub(super) fn created(b: &str, t: &str) -> Event {
    Event::Created {
        broadcast: b.into(),
        track: t.into(),
    }
}

fn closed(b: &str, t: &str) -> Event {
    Event::Closed {
        broadcast: b.into(),
        track: t.into(),
    }
}

pub(super) fn claimed(b: &str, lease: i64, token: i64) -> Event {
    Event::ClaimAnswered {
        broadcast: b.into(),
        outcome: ClaimOutcome::Claimed {
            claim: claim(b, lease, token),
            adopted: false,
        },
    }
}

/// The lease of the node record in these tests.
pub(super) const RECORD: i64 = 9_000;

/// A session's rules once its node record is written (on [`RECORD`]).
pub(super) fn fenced(limits: Limits) -> NodeClaims {
    let mut core = NodeClaims::new("s1", limits);
    core.handle(Event::RecordWritten {
        lease_id: RECORD,
        revision: 1,
        draining: false,
        earlier: Earlier::None,
    });
    core
}

/// A claim of `b` under the node record.
pub(super) fn claim_action(b: &str) -> Action {
    Action::Claim {
        broadcast: b.into(),
        guard_lease: RECORD,
    }
}

pub(super) fn sends(actions: &[Action]) -> Vec<&Reply> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(r) => Some(r),
            _ => None,
        })
        .collect()
}

#[test]
fn first_track_claims_and_second_shares_it() {
    let mut core = fenced(Limits::default());
    assert_eq!(
        core.handle(created("live/x", "video")),
        vec![claim_action("live/x")]
    );
    assert_eq!(core.handle(created("live/x", "audio")), vec![]);
    let acts = core.handle(claimed("live/x", RECORD, 100));
    assert_eq!(
        acts,
        vec![
            Action::Held {
                lease_id: RECORD,
                broadcast: "live/x".into(),
            },
            Action::Send(Reply::Claimed {
                claim: claim("live/x", RECORD, 100),
                adopted: false
            }),
        ]
    );
    assert_eq!(core.held().count(), 1);
}

#[test]
fn limits_refuse_a_new_broadcast_or_track_and_change_nothing_else() {
    let mut core = fenced(Limits {
        max_claims: 2,
        max_tracks_per_broadcast: 2,
        takeover: true,
    });
    core.handle(created("a", "video"));
    core.handle(claimed("a", 1, 10));
    core.handle(created("b", "video"));
    let acts = core.handle(created("c", "video"));
    assert!(
        matches!(&acts[..], [Action::Send(Reply::Refused { broadcast, reason, .. })]
            if broadcast == "c" && reason.contains("max-claims-per-node (2)")),
        "{acts:?}"
    );
    assert!(!core.is_live("c", "video"));
    core.handle(created("a", "audio"));
    let acts = core.handle(created("a", "data"));
    assert!(
        matches!(&acts[..], [Action::Send(Reply::Refused { broadcast, track, reason })]
            if broadcast == "a" && track == "data" && reason.contains("max-tracks-per-broadcast (2)")),
        "{acts:?}"
    );
    // A track already live is no new track; the claim is untouched.
    assert_eq!(core.handle(created("a", "video")), vec![]);
    assert_eq!(core.held().count(), 1);
    // Closing the refused track is a no-op; closing the real ones releases.
    assert_eq!(core.handle(closed("a", "data")), vec![]);
    core.handle(closed("a", "audio"));
    assert_eq!(
        core.handle(closed("a", "video")),
        vec![Action::Release {
            broadcast: "a".into(),
            lease_id: 1,
            fencing_token: 10,
            guard_lease: RECORD
        }]
    );
    // Room again once a broadcast is gone.
    core.handle(Event::Released {
        broadcast: "a".into(),
    });
    assert_eq!(core.handle(created("c", "video")), vec![claim_action("c")]);
}

#[test]
fn last_track_closing_revokes_then_reports_released() {
    let mut core = fenced(Limits::default());
    core.handle(created("b", "video"));
    core.handle(created("b", "audio"));
    core.handle(claimed("b", 7, 100));
    assert_eq!(core.handle(closed("b", "video")), vec![]);
    assert_eq!(
        core.handle(closed("b", "audio")),
        vec![Action::Release {
            broadcast: "b".into(),
            lease_id: 7,
            fencing_token: 100,
            guard_lease: RECORD
        }]
    );
    assert_eq!(
        core.handle(Event::Released {
            broadcast: "b".into()
        }),
        vec![
            Action::LetGoLease { lease_id: 7 },
            Action::Send(Reply::Released {
                broadcast: "b".into()
            })
        ]
    );
    assert_eq!(core.held().count(), 0);
}

#[test]
fn duplicate_created_and_unknown_closed_change_nothing() {
    let mut core = fenced(Limits::default());
    core.handle(created("b", "video"));
    core.handle(claimed("b", 7, 100));
    assert_eq!(core.handle(created("b", "video")), vec![]);
    assert_eq!(core.handle(closed("b", "audio")), vec![]);
    assert_eq!(core.handle(closed("nope", "video")), vec![]);
    assert_eq!(core.held().count(), 1);
}

#[test]
fn conflict_waits_as_standby_and_claims_when_owner_releases() {
    let mut core = fenced(Limits::default());
    core.handle(created("b", "video"));
    let owner = Claim {
        node_id: "node-b".into(),
        ..claim("b", 3, 50)
    };
    let acts = core.handle(Event::ClaimAnswered {
        broadcast: "b".into(),
        outcome: ClaimOutcome::Conflict {
            owner: owner.clone(),
            revision: 60,
        },
    });
    assert_eq!(
        sends(&acts),
        vec![&Reply::Conflict {
            broadcast: "b".into(),
            owner: owner.clone()
        }]
    );
    assert_eq!(core.standby().collect::<Vec<_>>(), vec!["b"]);
    // A deletion from before the conflict was read is old news.
    assert_eq!(
        core.handle(Event::OwnerReleased {
            broadcast: "b".into(),
            revision: 59
        }),
        vec![]
    );
    assert_eq!(
        core.handle(Event::OwnerReleased {
            broadcast: "b".into(),
            revision: 61
        }),
        vec![claim_action("b")]
    );
    // Meeting the same owner again is not news to the node.
    let again = core.handle(Event::ClaimAnswered {
        broadcast: "b".into(),
        outcome: ClaimOutcome::Conflict {
            owner,
            revision: 62,
        },
    });
    assert_eq!(sends(&again), Vec::<&Reply>::new());
    let acts = core.handle(Event::OwnerReleased {
        broadcast: "b".into(),
        revision: 63,
    });
    assert_eq!(acts.len(), 1);
    let acts = core.handle(claimed("b", 9, 63));
    assert!(matches!(
        sends(&acts)[..],
        [Reply::Claimed { claim, .. }] if claim.fencing_token == 63
    ));
}

#[test]
fn standby_that_closes_is_forgotten_silently() {
    let mut core = fenced(Limits::default());
    core.handle(created("b", "video"));
    core.handle(Event::ClaimAnswered {
        broadcast: "b".into(),
        outcome: ClaimOutcome::Conflict {
            owner: claim("b", 3, 50),
            revision: 60,
        },
    });
    assert_eq!(core.handle(closed("b", "video")), vec![]);
    assert_eq!(
        core.handle(Event::OwnerReleased {
            broadcast: "b".into(),
            revision: 70
        }),
        vec![]
    );
}

#[test]
fn close_while_claiming_revokes_the_claim_when_it_lands() {
    let mut core = fenced(Limits::default());
    core.handle(created("b", "video"));
    assert_eq!(core.handle(closed("b", "video")), vec![]);
    let acts = core.handle(claimed("b", 7, 100));
    assert_eq!(
        acts,
        vec![Action::Release {
            broadcast: "b".into(),
            lease_id: 7,
            fencing_token: 100,
            guard_lease: RECORD
        }]
    );
    // The node never heard `claimed`, so it hears no `released` either.
    assert_eq!(
        core.handle(Event::Released {
            broadcast: "b".into()
        }),
        vec![]
    );
}

#[test]
fn republish_while_revoking_ends_claimed() {
    let mut core = fenced(Limits::default());
    core.handle(created("b", "video"));
    core.handle(claimed("b", 7, 100));
    core.handle(closed("b", "video"));
    assert_eq!(core.handle(created("b", "video")), vec![]);
    let acts = core.handle(Event::Released {
        broadcast: "b".into(),
    });
    assert_eq!(
        acts,
        vec![
            Action::LetGoLease { lease_id: 7 },
            Action::Send(Reply::Released {
                broadcast: "b".into()
            }),
            claim_action("b")
        ]
    );
    core.handle(claimed("b", 8, 105));
    assert_eq!(core.held().next().map(|(_, c)| c.fencing_token), Some(105));
}

#[test]
fn goodbye_releases_everything_then_finishes() {
    let mut core = fenced(Limits::default());
    core.handle(created("a", "video"));
    core.handle(created("b", "video"));
    core.handle(created("c", "video"));
    core.handle(claimed("a", 1, 10));
    core.handle(claimed("b", 2, 11));
    // "c" is still in flight at goodbye.
    let acts = core.handle(Event::Goodbye);
    assert_eq!(
        acts,
        vec![
            Action::Release {
                broadcast: "a".into(),
                lease_id: 1,
                fencing_token: 10,
                guard_lease: RECORD
            },
            Action::Release {
                broadcast: "b".into(),
                lease_id: 2,
                fencing_token: 11,
                guard_lease: RECORD
            },
        ]
    );
    // Nothing new starts after goodbye.
    assert_eq!(core.handle(created("d", "video")), vec![]);
    core.handle(Event::Released {
        broadcast: "a".into(),
    });
    let acts = core.handle(claimed("c", 3, 12));
    assert_eq!(
        acts,
        vec![Action::Release {
            broadcast: "c".into(),
            lease_id: 3,
            fencing_token: 12,
            guard_lease: RECORD
        }]
    );
    core.handle(Event::Released {
        broadcast: "c".into(),
    });
    let acts = core.handle(Event::Released {
        broadcast: "b".into(),
    });
    assert_eq!(
        acts,
        vec![
            Action::LetGoLease { lease_id: 2 },
            Action::Send(Reply::Released {
                broadcast: "b".into()
            }),
            Action::DropRecord { lease_id: RECORD },
            Action::Finished
        ]
    );
}

#[test]
fn goodbye_with_nothing_held_finishes_at_once() {
    let mut core = fenced(Limits::default());
    assert_eq!(
        core.handle(Event::Goodbye),
        vec![Action::DropRecord { lease_id: RECORD }, Action::Finished]
    );
}

#[test]
fn detach_keeps_claims_until_grace_then_releases_silently() {
    let mut core = fenced(Limits::default());
    core.handle(created("a", "video"));
    core.handle(claimed("a", 1, 10));
    core.handle(created("s", "video"));
    core.handle(Event::ClaimAnswered {
        broadcast: "s".into(),
        outcome: ClaimOutcome::Conflict {
            owner: claim("s", 5, 5),
            revision: 6,
        },
    });
    // Whoever asks who owns what is told the node is gone.
    assert_eq!(
        core.handle(Event::Detached),
        vec![
            Action::StartGrace,
            Action::MarkDetached { lease_id: RECORD }
        ]
    );
    assert!(core.is_detached());
    assert_eq!(core.held().count(), 1);
    assert_eq!(core.standby().count(), 0);
    // A lease lost while detached is forgotten and nobody is told.
    assert_eq!(
        core.handle(Event::GraceExpired),
        vec![Action::Release {
            broadcast: "a".into(),
            lease_id: 1,
            fencing_token: 10,
            guard_lease: RECORD
        }]
    );
    assert_eq!(
        core.handle(Event::Released {
            broadcast: "a".into()
        }),
        vec![
            Action::LetGoLease { lease_id: 1 },
            Action::DropRecord { lease_id: RECORD },
            Action::Finished
        ]
    );
}

#[test]
fn lost_lease_is_reported_and_claimed_again_while_live() {
    let mut core = fenced(Limits::default());
    core.handle(created("b", "video"));
    core.handle(claimed("b", 7, 100));
    let acts = core.handle(Event::LeaseLost {
        lease_id: 7,
        reason: "lease expired".into(),
    });
    assert_eq!(
        acts,
        vec![
            Action::Forget {
                lease_id: 7,
                forced: false
            },
            Action::LetGoLease { lease_id: 7 },
            Action::Send(Reply::Lost {
                broadcast: "b".into(),
                reason: "lease expired".into()
            }),
            claim_action("b"),
        ]
    );
    // A loss of some other lease is nobody's business here.
    assert_eq!(
        core.handle(Event::LeaseLost {
            lease_id: 99,
            reason: "x".into()
        }),
        vec![]
    );
}

#[test]
fn unavailable_store_is_retried_with_backoff_and_told() {
    let mut core = fenced(Limits::default());
    core.handle(created("b", "video"));
    let acts = core.handle(Event::ClaimAnswered {
        broadcast: "b".into(),
        outcome: ClaimOutcome::Unavailable {
            reason: "etcd unreachable".into(),
        },
    });
    let Action::RetryAfter { timer, delay, .. } = acts[0].clone() else {
        panic!("expected a retry first, got {acts:?}");
    };
    assert_eq!(delay, crate::retry::backoff(1));
    assert!(matches!(sends(&acts)[..], [Reply::Retrying { .. }]));
    // A stale timer does nothing; the current one claims again.
    assert_eq!(
        core.handle(Event::RetryDue {
            broadcast: "b".into(),
            timer: timer + 1
        }),
        vec![]
    );
    assert_eq!(
        core.handle(Event::RetryDue {
            broadcast: "b".into(),
            timer
        }),
        vec![claim_action("b")]
    );
}

#[test]
fn existing_claims_not_live_are_released() {
    let mut core = fenced(Limits::default());
    core.handle(created("keep", "video"));
    let acts = core.handle(Event::Existing {
        claims: vec![
            Claim {
                revision: 7,
                ..claim("keep", 1, 5)
            },
            Claim {
                revision: 8,
                ..claim("stale", 2, 6)
            },
        ],
    });
    assert_eq!(
        acts,
        vec![Action::ReleaseStale {
            broadcast: "stale".into(),
            lease_id: 2,
            fencing_token: 6,
            guard_lease: RECORD
        }]
    );
}

#[test]
fn answer_for_an_unknown_broadcast_never_leaks_its_lease() {
    let mut core = fenced(Limits::default());
    assert_eq!(
        core.handle(claimed("ghost", 4, 1)),
        vec![Action::Release {
            broadcast: "ghost".into(),
            lease_id: 4,
            fencing_token: 1,
            guard_lease: RECORD
        }]
    );
}

#[test]
fn standbys_behind_a_node_that_is_gone_are_told_their_owner_again() {
    let mut core = fenced(Limits::default());
    core.handle(created("s", "video"));
    let owner = claim("s", 5, 5);
    core.handle(Event::ClaimAnswered {
        broadcast: "s".into(),
        outcome: ClaimOutcome::Conflict {
            owner: owner.clone(),
            revision: 6,
        },
    });
    // Another node going away changes nothing here.
    let gone = |node_id: &str| Event::OwnerGone {
        node_id: node_id.into(),
    };
    assert_eq!(core.handle(gone("elsewhere")), vec![]);
    assert_eq!(
        core.handle(gone(&owner.node_id)),
        vec![Action::Send(Reply::Conflict {
            broadcast: "s".into(),
            owner,
        })]
    );
}
