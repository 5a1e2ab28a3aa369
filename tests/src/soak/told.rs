//! What each ingest node was told it holds, from its own log (JSON lines:
//! its `claimed` line names the broadcast, the fencing token and whether
//! the claim was adopted), read when a node is replaced and at the end.
//!
//! Two rules hold for what a node acts on, whatever else happens: every
//! claim a node was told it holds is one etcd had (the watch saw that node
//! claim or adopt that broadcast with that very token), and the tokens one
//! node is told for one broadcast never go back. (Whether two nodes
//! *believe* at once is not judged: a paused or cut-off node's belief is
//! stale by design until it hears otherwise; the fencing token is what
//! makes that harmless, and the watch history shows one holder at a time.)

use std::collections::{BTreeMap, BTreeSet};

use super::record::Watched;
use crate::v1::claim_event::Kind;

/// One `claimed` a node logged.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Told {
    pub(super) node: String,
    pub(super) broadcast: String,
    pub(super) token: i64,
}

/// The `claimed` lines of `node`'s JSON log, in order.
pub(super) fn told_in(node: &str, log: &str) -> Vec<Told> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v["fields"]["message"] == "claimed")
        .filter_map(|v| {
            Some(Told {
                node: node.to_string(),
                broadcast: v["fields"]["broadcast"].as_str()?.to_string(),
                token: v["fields"]["fencing_token"].as_i64()?,
            })
        })
        .collect()
}

/// The anomalies in what the nodes were told; `told` is in each node's
/// order. Where the watch lost history (compaction), claims it did not see
/// are not judged.
pub(super) fn check(told: &[Told], watched: &Watched) -> Vec<String> {
    let mut anomalies = Vec::new();
    let in_etcd: BTreeSet<(&str, &str, i64)> = watched
        .events
        .iter()
        .filter(|(_, e)| e.kind == Kind::Claimed as i32 || e.kind == Kind::Adopted as i32)
        .filter_map(|(_, e)| e.claim.as_ref())
        .map(|c| (c.broadcast.as_str(), c.node_id.as_str(), c.fencing_token))
        .collect();
    let mut last: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for t in told {
        if watched.gaps.is_empty()
            && !in_etcd.contains(&(t.broadcast.as_str(), t.node.as_str(), t.token))
        {
            anomalies.push(format!(
                "{} was told it holds {} with token {}, which the watch never showed it claim",
                t.node, t.broadcast, t.token
            ));
        }
        let before = last.insert((&t.node, &t.broadcast), t.token);
        if before.is_some_and(|b| t.token < b) {
            anomalies.push(format!(
                "{} was told token {} for {} after token {}",
                t.node,
                t.token,
                t.broadcast,
                before.unwrap_or_default()
            ));
        }
    }
    anomalies
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1;
    use std::time::Instant;

    fn claimed(broadcast: &str, node: &str, token: i64) -> (Instant, v1::ClaimEvent) {
        (
            Instant::now(),
            v1::ClaimEvent {
                kind: Kind::Claimed as i32,
                claim: Some(v1::Claim {
                    broadcast: broadcast.into(),
                    node_id: node.into(),
                    fencing_token: token,
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
    }

    #[test]
    fn a_nodes_claimed_lines_are_read_from_its_json_log() {
        let log = r#"{"timestamp":"2026-11-29T14:00:00Z","level":"INFO","fields":{"message":"claim session attached","live":0}}
not json at all
{"timestamp":"2026-11-29T14:00:01Z","level":"INFO","fields":{"message":"claimed","broadcast":"soak/b01","fencing_token":42,"adopted":false}}"#;
        assert_eq!(
            told_in("soak-a", log),
            vec![Told {
                node: "soak-a".into(),
                broadcast: "soak/b01".into(),
                token: 42
            }]
        );
    }

    #[test]
    fn a_claim_etcd_never_had_or_a_token_going_back_is_an_anomaly() {
        let watched = Watched {
            events: vec![claimed("b", "soak-a", 7), claimed("b", "soak-a", 9)],
            ..Default::default()
        };
        let told = |token| Told {
            node: "soak-a".into(),
            broadcast: "b".into(),
            token,
        };
        assert!(check(&[told(7), told(9), told(9)], &watched).is_empty());
        let made_up = check(&[told(8)], &watched);
        assert!(made_up[0].contains("never showed"), "{made_up:?}");
        let back = check(&[told(9), told(7)], &watched);
        assert_eq!(back.len(), 1);
        assert!(back[0].contains("token 7 for b after token 9"), "{back:?}");
        // Another node with that token is not this node's claim.
        let other = Told {
            node: "soak-b".into(),
            ..told(7)
        };
        assert_eq!(check(&[other], &watched).len(), 1);
    }
}
