//! The publish gate: the one place that decides whether a publisher may
//! start, and what it is told. Every front end (our RTMP listener, each
//! media server's hooks, any added later) hands it the broadcast a client
//! wants to publish and gets back an [`Admission`] — the track that keeps
//! the broadcast live here, claimed (or let in without a claim where the
//! policy says so) — or a [`Refusal`]: why, in words for the client and the
//! operator, and as a metric label. The front ends only speak their
//! protocol: RTMP turns a refusal into an `onStatus`, a hook into the
//! server's answer.
//!
//! The rules, in order: a bad name is refused; a draining node takes no new
//! publishers; a broadcast already live here is busy; otherwise the claim
//! is asked for and waited on as the duplicate-publisher policy and a gone
//! owner's grace say ([`Hold`]); claimed → admitted; owned elsewhere →
//! refused naming the owner and where to publish; no claim service →
//! [`UnavailablePolicy`]. Every refusal is counted and logged here, once.

use std::sync::Arc;

use claims_proto::names;

use crate::bridge::{Bridge, Decision, Hold};
use crate::metrics::Metrics;
use crate::registry::{Registry, TrackGuard};

/// What to do with a publish when no claim service can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UnavailablePolicy {
    /// Accept it; the broadcast is claimed as soon as a service is back.
    Allow,
    /// Refuse it.
    Refuse,
}

/// Why a publisher is turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The broadcast name breaks the rules (or the claim service refused
    /// it).
    BadName,
    /// An operator asked this node to take no new publishers.
    Draining,
    /// The broadcast is already live (or being admitted) here.
    Busy,
    /// Another node owns it.
    OwnedElsewhere,
    /// No claim service could answer, and the policy refuses.
    Unavailable,
}

impl Refused {
    /// The `reason` label of `ingest_publishes_refused_total`.
    pub fn label(self) -> &'static str {
        match self {
            Refused::BadName => "bad_name",
            Refused::Draining => "draining",
            Refused::Busy => "busy",
            Refused::OwnedElsewhere => "owned_elsewhere",
            Refused::Unavailable => "unavailable",
        }
    }
}

/// A publisher turned away: why, and what it (and the log) is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub why: Refused,
    pub reason: String,
}

impl Refusal {
    pub fn new(why: Refused, reason: impl Into<String>) -> Self {
        Self {
            why,
            reason: reason.into(),
        }
    }
}

/// A publisher let in: the track that keeps its broadcast live here (drop
/// it and the broadcast closes), the claim's fencing token (`None`: let in
/// without a claim, under [`UnavailablePolicy::Allow`]), and its place in
/// the `publishers` gauge.
#[derive(Debug)]
pub struct Admission {
    pub track: TrackGuard,
    pub fencing_token: Option<i64>,
    pub counted: Counted,
}

/// One publisher in the `publishers` gauge, for as long as this exists.
#[derive(Debug)]
pub struct Counted(prometheus::IntGauge);

impl Counted {
    pub fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Whether `broadcast` may be asked for at all (pure): its name, and
/// whether the node is draining.
pub fn check(broadcast: &str, draining: bool) -> Result<(), Refusal> {
    names::check_broadcast(broadcast).map_err(|reason| Refusal::new(Refused::BadName, reason))?;
    if draining {
        return Err(Refusal::new(
            Refused::Draining,
            "this node is draining and takes no new publishers; publish to another node",
        ));
    }
    Ok(())
}

/// What a publisher of `broadcast` whose claim was answered `decision` is
/// told (pure): admitted with the fencing token (`None` without a claim),
/// or refused.
pub fn verdict(
    broadcast: &str,
    decision: &Decision,
    on_unavailable: UnavailablePolicy,
) -> Result<Option<i64>, Refusal> {
    match decision {
        Decision::Claimed { fencing_token } => Ok(Some(*fencing_token)),
        Decision::Unavailable { .. } if on_unavailable == UnavailablePolicy::Allow => Ok(None),
        Decision::Unavailable { reason } => Err(Refusal::new(
            Refused::Unavailable,
            format!("{broadcast} cannot be claimed now ({reason}); this node refuses publishes it cannot claim"),
        )),
        Decision::OwnedElsewhere {
            owner_node,
            owner_detached: true,
            ..
        } => Err(Refusal::new(
            Refused::OwnedElsewhere,
            format!("{broadcast} is still claimed by node {owner_node}: its node went away and its claim did not move here within its grace (it may have come back); publish again shortly"),
        )),
        Decision::OwnedElsewhere {
            owner_node,
            owner_rtmp,
            ..
        } => {
            let target = owner_rtmp
                .as_ref()
                .map(|url| format!("{}/{broadcast}", url.trim_end_matches('/')))
                .unwrap_or_else(|| "its RTMP endpoint is unknown".into());
            Err(Refusal::new(
                Refused::OwnedElsewhere,
                format!("{broadcast} is owned by node {owner_node}; publish to {target}"),
            ))
        }
        Decision::Rejected { reason } => Err(Refusal::new(Refused::BadName, reason.clone())),
    }
}

/// The gate itself: the registry a publish opens its track in, the bridge
/// that claims, and the policies.
pub struct PublishGate {
    pub registry: Registry,
    pub bridge: Arc<Bridge>,
    pub metrics: Arc<Metrics>,
    /// How long a publish waits for its claim answer, and behind whom.
    pub hold: Hold,
    pub on_unavailable: UnavailablePolicy,
}

impl PublishGate {
    /// A client wants to publish `broadcast`: admitted once claimed (or as
    /// the policy says), else refused.
    pub async fn publish(&self, broadcast: &str) -> Result<Admission, Refusal> {
        check(broadcast, self.bridge.view().draining).map_err(|r| self.refused(broadcast, r))?;
        let Some(track) = self.registry.open(broadcast, "publish") else {
            return Err(self.refused(
                broadcast,
                Refusal::new(
                    Refused::Busy,
                    format!("{broadcast} is already live on this node"),
                ),
            ));
        };
        let decision = self.bridge.decide(broadcast, track.seq, self.hold).await;
        match verdict(broadcast, &decision, self.on_unavailable) {
            Ok(fencing_token) => {
                match fencing_token {
                    Some(token) => {
                        tracing::info!(%broadcast, fencing_token = token, "publish admitted: claimed")
                    }
                    None => {
                        tracing::warn!(%broadcast, ?decision, "publish admitted without a claim (--on-claim-unavailable allow); it is claimed once a claim service answers")
                    }
                }
                Ok(Admission {
                    track,
                    fencing_token,
                    counted: Counted::new(&self.metrics.publishers),
                })
            }
            Err(refusal) => Err(self.refused(broadcast, refusal)),
        }
    }

    /// Counts and logs `refusal` of a publisher of `broadcast` (also for
    /// the refusals a front end makes by itself: a connection that already
    /// publishes, another client of the media server).
    pub fn refused(&self, broadcast: &str, refusal: Refusal) -> Refusal {
        self.metrics
            .publishes_refused
            .with_label_values(&[refusal.why.label()])
            .inc();
        tracing::info!(broadcast = %names::quote(broadcast), reason = %refusal.reason, "publish refused");
        refusal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned_by(node: &str, detached: bool) -> Decision {
        Decision::OwnedElsewhere {
            owner_node: node.into(),
            owner_rtmp: Some("rtmp://b:1935/".into()),
            owner_detached: detached,
            grace_ends_unix_ms: 0,
        }
    }

    #[test]
    fn a_bad_name_or_a_draining_node_is_refused_before_any_claim() {
        assert_eq!(check("live/a", false), Ok(()));
        let bad = check("live//a", false).unwrap_err();
        assert_eq!(bad.why, Refused::BadName);
        assert!(bad.reason.contains("empty segment"), "{}", bad.reason);
        assert_eq!(check("..", false).unwrap_err().why, Refused::BadName);
        let draining = check("live/a", true).unwrap_err();
        assert_eq!(draining.why, Refused::Draining);
        assert!(draining.reason.contains("publish to another node"));
    }

    #[test]
    fn claimed_is_admitted_with_its_fencing_token() {
        for policy in [UnavailablePolicy::Allow, UnavailablePolicy::Refuse] {
            assert_eq!(
                verdict("live/a", &Decision::Claimed { fencing_token: 7 }, policy),
                Ok(Some(7))
            );
        }
    }

    #[test]
    fn owned_elsewhere_is_refused_naming_the_owner_and_where_to_publish() {
        let refusal = verdict(
            "live/a",
            &owned_by("node-b", false),
            UnavailablePolicy::Allow,
        )
        .unwrap_err();
        assert_eq!(
            refusal,
            Refusal::new(
                Refused::OwnedElsewhere,
                "live/a is owned by node node-b; publish to rtmp://b:1935/live/a"
            )
        );
        let unknown = Decision::OwnedElsewhere {
            owner_node: "node-b".into(),
            owner_rtmp: None,
            owner_detached: false,
            grace_ends_unix_ms: 0,
        };
        let refusal = verdict("live/a", &unknown, UnavailablePolicy::Allow).unwrap_err();
        assert!(refusal.reason.ends_with("its RTMP endpoint is unknown"));
    }

    #[test]
    fn a_gone_owner_that_kept_its_claim_past_the_hold_is_never_pointed_at() {
        let refusal = verdict(
            "live/a",
            &owned_by("node-b", true),
            UnavailablePolicy::Allow,
        )
        .unwrap_err();
        assert_eq!(refusal.why, Refused::OwnedElsewhere);
        assert!(refusal.reason.contains("went away"), "{}", refusal.reason);
        assert!(!refusal.reason.contains("rtmp://"), "{}", refusal.reason);
    }

    #[test]
    fn no_claim_service_is_up_to_the_policy() {
        let down = Decision::Unavailable {
            reason: "no claim service reachable".into(),
        };
        assert_eq!(verdict("live/a", &down, UnavailablePolicy::Allow), Ok(None));
        let refusal = verdict("live/a", &down, UnavailablePolicy::Refuse).unwrap_err();
        assert_eq!(refusal.why, Refused::Unavailable);
        assert!(refusal.reason.contains("cannot be claimed now"));
    }

    #[test]
    fn a_name_the_claim_service_rejects_is_a_bad_name() {
        let rejected = Decision::Rejected {
            reason: "too many tracks".into(),
        };
        assert_eq!(
            verdict("live/a", &rejected, UnavailablePolicy::Allow),
            Err(Refusal::new(Refused::BadName, "too many tracks"))
        );
    }

    #[test]
    fn standby_and_takeover_end_as_claimed_or_owned_elsewhere() {
        // Under standby and takeover the hold waits ([`Hold`]); what it
        // ends with is told like any other answer.
        for duplicates in [
            crate::bridge::DuplicatePolicy::Standby,
            crate::bridge::DuplicatePolicy::Takeover,
        ] {
            let hold = Hold {
                duplicates,
                claim_wait: std::time::Duration::from_secs(5),
            };
            assert!(hold.holds(&owned_by("node-b", false)));
            assert_eq!(
                verdict(
                    "live/a",
                    &owned_by("node-b", false),
                    UnavailablePolicy::Allow
                )
                .unwrap_err()
                .why,
                Refused::OwnedElsewhere
            );
        }
        let refuse = Hold {
            duplicates: crate::bridge::DuplicatePolicy::Refuse,
            claim_wait: std::time::Duration::from_secs(5),
        };
        assert!(!refuse.holds(&owned_by("node-b", false)));
        assert!(refuse.holds(&owned_by("node-b", true)));
    }
}
