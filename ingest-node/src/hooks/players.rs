//! Players at this media server: allowed where the broadcast is claimed
//! here; elsewhere the owner's stream is brought here where the server can
//! take it (relayed in, or pulled by OME), else the player is sent to the
//! owner (nginx-rtmp relays from there) or refused naming it.

use claims_proto::v1 as pb;

use super::model::Answer;
use super::{pull, Kind, Sidecar};
use crate::bridge::ClaimState;
use crate::lookup::Freshness;

impl Sidecar {
    /// A player: allowed where the broadcast is claimed, sent to the owner
    /// elsewhere.
    pub(super) async fn play(&self, broadcast: String) -> Answer {
        if let Err(reason) = claims_proto::names::check_broadcast(&broadcast) {
            return Answer::Bad { reason };
        }
        if matches!(
            self.gate.bridge.state(&broadcast),
            Some(ClaimState::Claimed { .. })
        ) {
            return Answer::Allow;
        }
        match self.lookup.owner(&broadcast, Freshness::Linearizable).await {
            Ok(None) => Answer::NotFound {
                reason: format!("{broadcast} is not live anywhere"),
            },
            Ok(Some(owner)) if owner.detached => Answer::NotFound {
                reason: format!(
                    "{broadcast} is owned by node {}, which is gone; retry shortly",
                    owner.node_id
                ),
            },
            Ok(Some(owner)) => match owner.endpoints.get("rtmp") {
                Some(rtmp) if owner.node_id != self.gate.bridge.node_id() => {
                    let location = format!("{}/{broadcast}", rtmp.trim_end_matches('/'));
                    if let Some(answer) = self.relay(&broadcast, &owner, rtmp).await {
                        return answer;
                    }
                    if self.kind.relays_players() {
                        self.gate.metrics.redirects.inc();
                    } else {
                        tracing::info!(%broadcast, owner = %owner.node_id, %location, "player refused: the broadcast is owned by another node, and this media server cannot relay it from there; play it at the owner");
                    }
                    Answer::Redirect { location }
                }
                _ => Answer::NotFound {
                    reason: format!(
                        "{broadcast} is not live here and its claim points nowhere else"
                    ),
                },
            },
            Err(e) => Answer::Refuse {
                reason: format!("cannot ask who owns {broadcast}: {e}"),
            },
        }
    }

    /// A player of `broadcast`, which `owner` owns (its RTMP endpoint
    /// `rtmp`), at this server: the owner's stream brought here where the
    /// server can take it — relayed in (SRS, MediaMTX) or pulled by the
    /// server over OVT (OME, from an owner that advertises `ovt`) — and the
    /// player let in; `None` where it cannot be.
    async fn relay(&self, broadcast: &str, owner: &pb::Claim, rtmp: &str) -> Option<Answer> {
        let relays = self.relays.as_ref()?;
        if self.kind != Kind::Ome {
            relays.ensure(broadcast, rtmp, &self.local_rtmp);
            return Some(Answer::Allow);
        }
        let (Some(api), Some(ovt)) = (&self.api, owner.endpoints.get("ovt")) else {
            return None;
        };
        relays.note_pulled(broadcast);
        match pull::pull(api, broadcast, ovt).await {
            Ok(()) => {
                tracing::info!(%broadcast, owner = %owner.node_id, %ovt, "OME pulls the owner's stream for its players");
                Some(Answer::Allow)
            }
            Err(e) => {
                tracing::warn!(%broadcast, owner = %owner.node_id, %ovt, error = %e, "OME could not pull the owner's stream");
                None
            }
        }
    }
}
