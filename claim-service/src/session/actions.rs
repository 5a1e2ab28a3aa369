//! A session's rules' actions, carried out: etcd work started without
//! waiting (see `work.rs`), leases kept and let go, replies sent, timers
//! armed.

use std::time::Duration;

use rand::Rng;

use super::{work, Session};
use crate::claims::{Action, Event};
use crate::error::Error;
use crate::store::Release;

impl Session {
    pub(super) async fn act(&mut self, action: Action) {
        let ctx = self.ctx.clone();
        match action {
            Action::Claim {
                broadcast,
                guard_lease,
            } => {
                let adopting = self.relive.remove(&broadcast);
                work::claim(
                    &ctx.store,
                    &self.holder,
                    self.ttl,
                    broadcast,
                    guard_lease,
                    adopting,
                    &self.events_tx,
                )
            }
            Action::Held {
                lease_id,
                broadcast,
            } => {
                ctx.metrics.claims_held.inc();
                tracing::trace!(%broadcast, lease_id, "claim held");
            }
            Action::KeepLease { lease_id, ttl_ms } => {
                let ttl = Duration::from_millis(ttl_ms);
                let renew = ctx.config.renew_for(ttl);
                ctx.store
                    .keep_adopted(lease_id, ttl, renew, self.loss_tx.clone());
                tracing::debug!(lease_id, "keeping an adopted claim's lease alive");
            }
            Action::LetGoLease { lease_id } => {
                ctx.store.stop_keeping(lease_id, &self.loss_tx);
                let store = ctx.store.clone();
                let ttl = self.ttl;
                tokio::spawn(async move { store.let_go_lease(lease_id, ttl).await });
            }
            Action::Release {
                broadcast,
                lease_id,
                fencing_token,
                guard_lease,
            } => {
                ctx.metrics.claims_held.dec();
                ctx.metrics.claims_released.inc();
                let tx = self.events_tx.clone();
                let release = self.release(broadcast.clone(), lease_id, fencing_token, guard_lease);
                let outcome = self.releases.clone();
                ctx.store.submit_release(release, move |deleted| {
                    outcome.count(deleted);
                    let _ = tx.send(Event::Released { broadcast });
                });
            }
            Action::ReleaseStale {
                broadcast,
                lease_id,
                fencing_token,
                guard_lease,
            } => {
                tracing::info!(%broadcast, lease_id, "releasing a claim an earlier session of this node left and the node no longer has");
                let release = self.release(broadcast, lease_id, fencing_token, guard_lease);
                let tx = self.events_tx.clone();
                ctx.store.submit_release(release, move |_| {
                    let _ = tx.send(Event::StaleReleased { lease_id });
                });
            }
            Action::Forget { lease_id, forced } => {
                ctx.metrics.claims_held.dec();
                if forced {
                    ctx.metrics
                        .claims_lost
                        .with_label_values(&["force_released"])
                        .inc();
                }
                tracing::debug!(lease_id, forced, "a held claim is gone");
            }
            Action::Send(reply) => {
                work::log_reply(&reply, &ctx.refusal_log);
                let msg = crate::wire::reply(reply, |node| ctx.view.presence(node));
                self.send(msg).await;
            }
            Action::RetryAfter {
                broadcast,
                timer,
                delay,
            } => {
                let jitter = rand::rng().random_range(0..=delay.as_millis() as u64 / 5);
                self.timers.insert(
                    Event::RetryDue { broadcast, timer },
                    delay + Duration::from_millis(jitter),
                );
            }
            Action::FindEarlierClaims { earlier } => {
                let known = self.core.known().map(String::from).collect();
                work::find_earlier_claims(&ctx.store, &self.holder, earlier, known, &self.events_tx)
            }
            Action::WriteRecord { replaces } => work::write_record(
                &ctx.store,
                &self.holder,
                self.ttl,
                replaces,
                &self.events_tx,
            ),
            Action::KeepRecord { lease_id } => {
                let renew = ctx.config.renew_for(self.ttl);
                ctx.store
                    .keep_record(lease_id, self.ttl, renew, self.loss_tx.clone());
            }
            Action::DropRecord { lease_id } => {
                // Revoked unless claims a newer session adopted are on it.
                ctx.store.stop_keeping(lease_id, &self.loss_tx);
                ctx.store.let_go_lease(lease_id, self.ttl).await;
            }
            Action::Supersede { by } => {
                tracing::info!(%by, "superseded by a newer session of the same node");
                let _ = self
                    .out
                    .send(Err(Error::Superseded(format!(
                        "a newer session of node {:?} attached ({by}); this one is closed",
                        self.holder.node_id
                    ))
                    .into()))
                    .await;
                self.reading = false;
            }
            Action::StartGrace => {
                self.reading = false;
                ctx.metrics.sessions_attached.dec();
                let held = self.core.held().count();
                tracing::info!(held, grace = ?ctx.config.detach_grace, "node detached without goodbye; keeping its claims for the grace");
                self.timers
                    .insert(Event::GraceExpired, ctx.config.detach_grace);
            }
            Action::RequestTakeover {
                broadcast,
                fencing_token,
                guard_lease,
            } => work::request_takeover(
                &ctx.store,
                &self.holder,
                broadcast,
                fencing_token,
                guard_lease,
                &self.events_tx,
            ),
            Action::MarkDetached { lease_id } => {
                work::mark_detached(&ctx.store, &self.holder, lease_id, ctx.config.detach_grace)
            }
            Action::Finished => self.finished = true,
        }
    }

    /// A release of this session's claim, fenced by its record.
    fn release(
        &self,
        broadcast: String,
        lease_id: i64,
        fencing_token: i64,
        guard_lease: i64,
    ) -> Release {
        Release {
            session: self.holder.session_id.clone(),
            node_id: self.holder.node_id.clone(),
            broadcast,
            lease_id,
            fencing_token,
            guard_lease,
            ttl: self.ttl,
        }
    }
}
