//! Where a replica's sessions should go: the rule of spreading, pure.
//!
//! A replica moves one of its sessions to the least loaded live replica
//! only while it holds more than `slack` sessions beyond that one (`slack`
//! is at least 1). Each such move narrows the gap between the two by two,
//! so the sum of the squares of the loads falls with every move: moves
//! end, and no node is sent back and forth (after a move the receiver
//! holds at most as many as the sender, never `slack` more). Views that
//! lag can still overshoot by a move or two; a session attached more
//! recently than the minimum age is never moved to spread, which stops a
//! node that just arrived from moving on before the views agree.
//!
//! A draining replica moves every session, to the least loaded replica
//! each time. A replica is a target only if it is live (has a record) and
//! is not draining. A draining replica whose only peers write no record
//! (an older build, mid-upgrade) still moves its sessions, to no replica in
//! particular (an empty target: the node attaches to the next address it
//! knows).

/// One replica as the plan sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub id: String,
    pub sessions: usize,
    /// Has a record: it runs, and can take sessions.
    pub live: bool,
    pub draining: bool,
}

impl Replica {
    /// Whether it can take sessions from replica `me`.
    pub fn takes_from(&self, me: &str) -> bool {
        self.id != me && self.live && !self.draining
    }
}

/// The replicas `me`'s sessions should move to now, one entry per session
/// (at most `batch`), given every replica's load.
pub fn moves(replicas: &[Replica], me: &str, slack: usize, batch: usize) -> Vec<String> {
    let slack = slack.max(1);
    let Some(mine) = replicas.iter().find(|r| r.id == me) else {
        return Vec::new();
    };
    let draining = mine.draining;
    let mut held = mine.sessions;
    let mut targets: Vec<(usize, &str)> = replicas
        .iter()
        .filter(|r| r.takes_from(me))
        .map(|r| (r.sessions, r.id.as_str()))
        .collect();
    let mut out = Vec::new();
    if draining && targets.is_empty() && replicas.iter().any(|r| r.id != me && !r.live) {
        out.resize(batch.min(held), String::new());
        return out;
    }
    while out.len() < batch && held > 0 {
        let Some(least) = targets.iter_mut().min() else {
            break;
        };
        if !draining && held <= least.0 + slack {
            break;
        }
        least.0 += 1;
        held -= 1;
        out.push(least.1.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(id: &str, sessions: usize) -> Replica {
        Replica {
            id: id.into(),
            sessions,
            live: true,
            draining: false,
        }
    }

    #[test]
    fn a_replica_back_from_a_restart_gets_sessions_from_the_loaded_ones() {
        let loads = [r("a", 15), r("b", 15), r("c", 0)];
        assert_eq!(moves(&loads, "a", 2, 2), ["c", "c"]);
        assert_eq!(moves(&loads, "c", 2, 2), Vec::<String>::new());
    }

    #[test]
    fn within_the_slack_nothing_moves() {
        let loads = [r("a", 12), r("b", 10), r("c", 10)];
        assert!(moves(&loads, "a", 2, 5).is_empty());
        assert_eq!(moves(&loads, "a", 1, 5), ["b"]);
    }

    #[test]
    fn a_draining_replica_moves_everything_and_is_no_target() {
        let mut a = r("a", 3);
        a.draining = true;
        let loads = [a, r("b", 10), r("c", 9)];
        assert_eq!(moves(&loads, "a", 2, 5), ["c", "b", "c"]);
        assert!(moves(&loads, "b", 2, 5).is_empty(), "a is no target");
    }

    #[test]
    fn a_draining_replica_among_older_builds_sends_its_nodes_to_any() {
        let mut a = r("a", 3);
        a.draining = true;
        let mut old = r("old", 4);
        old.live = false;
        assert_eq!(moves(&[a.clone(), old], "a", 2, 2), ["", ""]);
        assert!(moves(&[a], "a", 2, 2).is_empty(), "alone: nowhere to go");
    }

    #[test]
    fn a_replica_without_a_record_is_no_target_and_alone_nothing_moves() {
        let mut old = r("old", 0);
        old.live = false;
        assert!(moves(&[r("a", 20), old], "a", 2, 5).is_empty());
        assert!(moves(&[r("a", 20)], "a", 2, 5).is_empty());
    }

    fn loads() -> impl Strategy<Value = Vec<Replica>> {
        proptest::collection::vec((0..40usize, any::<bool>(), 0..8u8), 1..6).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (sessions, live, d))| Replica {
                    id: format!("r{i}"),
                    sessions,
                    live: live || i == 0,
                    // Only a replica with a record can say it drains.
                    draining: d == 0 && (live || i == 0),
                })
                .collect()
        })
    }

    proptest! {
        /// Every replica planning in turn on the loads the others left:
        /// each move lowers the sum of squares (so no cycle), moves end,
        /// and then the live replicas are within the slack of each other
        /// and a draining one holds nothing while anyone can take its
        /// sessions.
        #[test]
        fn moves_end_spread_within_the_slack_and_never_cycle(
            mut replicas in loads(),
            slack in 1..4usize,
            batch in 1..4usize,
        ) {
            let square = |rs: &[Replica]| rs.iter().map(|r| r.sessions * r.sessions).sum::<usize>();
            let mut rounds = 0;
            loop {
                let mut moved = false;
                for i in 0..replicas.len() {
                    if !replicas[i].live {
                        // An older build: it never moves a session.
                        continue;
                    }
                    let me = replicas[i].id.clone();
                    for to in moves(&replicas, &me, slack, batch) {
                        let before = square(&replicas);
                        let draining = replicas[i].draining;
                        replicas[i].sessions -= 1;
                        if to.is_empty() {
                            // No live target: the node attaches to an older
                            // replica it knows.
                            prop_assert!(draining);
                            let t = replicas.iter_mut().find(|r| r.id != me && !r.live).unwrap();
                            t.sessions += 1;
                            moved = true;
                            continue;
                        }
                        let t = replicas.iter_mut().find(|r| r.id == to).unwrap();
                        prop_assert!(t.takes_from(&me));
                        t.sessions += 1;
                        if !draining {
                            prop_assert!(square(&replicas) < before, "a move that does not narrow a gap");
                        }
                        moved = true;
                    }
                }
                rounds += 1;
                prop_assert!(rounds < 1000, "moves never end");
                if !moved { break; }
            }
            let takers: Vec<&Replica> = replicas.iter().filter(|r| r.live && !r.draining).collect();
            for r in &replicas {
                if r.draining && takers.iter().any(|t| t.id != r.id) {
                    prop_assert_eq!(r.sessions, 0, "a draining replica kept sessions");
                }
            }
            if let (Some(max), Some(min)) = (
                takers.iter().map(|r| r.sessions).max(),
                takers.iter().map(|r| r.sessions).min(),
            ) {
                prop_assert!(max - min <= slack, "left unspread: {:?}", replicas);
            }
        }
    }
}
