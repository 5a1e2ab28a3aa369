//! Spreading node sessions over the replicas, and draining this one.
//!
//! Every `--spread-interval` the other replicas' loads are read from the
//! view (the node records name their replica; the replica records say
//! which replicas are live and which drain), this replica's own is the
//! sessions attached here and not asked to move (the view can lag it:
//! records are rewritten after etcd comes back), the rule of `plan.rs` says how many
//! of this replica's sessions go where, and that many of its oldest
//! sessions are asked to move ([`crate::sessions::Sessions::ask_to_move`]):
//! the node is told `move` (with the target's `--advertise` address) and
//! attaches there; its claims are adopted, tokens kept, nothing released.
//! A move counts at its target until the node's record names another
//! replica (or for a while); a session asked is never asked again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::SpreadConfig;
use crate::replica::ReplicaState;
use crate::sessions::{Context, MoveAsk};
use crate::view::ReplicaLoad;

pub mod plan;

/// How long a move asked counts at its target if the node's record does
/// not show it first.
const MOVE_COUNTS_FOR: Duration = Duration::from_secs(10);

/// A draining replica moves this many times --spread-moves per interval.
pub const DRAIN_PACE: usize = 8;

/// Whether another live replica that is not draining can take sessions.
pub fn others_can_take(loads: &[ReplicaLoad], me: &str) -> bool {
    plan_view(loads).iter().any(|r| r.takes_from(me))
}

/// The loads as the plan sees them.
fn plan_view(loads: &[ReplicaLoad]) -> Vec<plan::Replica> {
    loads
        .iter()
        .map(|l| plan::Replica {
            id: l.service_id.clone(),
            sessions: l.sessions,
            live: l.record.is_some(),
            draining: l.record.as_ref().is_some_and(|r| r.draining),
        })
        .collect()
}

/// A move asked and not yet seen in the view.
struct Pending {
    to: String,
    asked: Instant,
}

/// Runs the loop until `token` is cancelled.
pub async fn run(
    ctx: Arc<Context>,
    state: Arc<ReplicaState>,
    config: SpreadConfig,
    token: CancellationToken,
) {
    let me = state.service_id.clone();
    let mut tick = tokio::time::interval(config.spread_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut was_draining = false;
    let mut replicas_changed = ctx.view.replicas_changed();
    loop {
        // A drain starts at once, not at the next round: on SIGTERM, or
        // when the view shows this replica's draining mark set or cleared.
        // Other record changes wait for the round, which keeps the pace.
        tokio::select! {
            _ = tick.tick() => {}
            _ = state.stop_asked() => {}
            Ok(()) = replicas_changed.changed() => {
                if state.own_mark(ctx.view.replica_record(&me).as_ref()) == state.is_marked() {
                    continue;
                }
            }
            _ = token.cancelled() => return,
        }
        let Ok(loads) = ctx.view.replica_loads() else {
            continue;
        };
        show(&ctx, &loads);
        let mine = loads.iter().find(|l| l.service_id == me);
        state.set_marked(state.own_mark(mine.and_then(|l| l.record.as_ref())));
        // Sessions attached here and not asked to move are this replica's
        // own truth; the view can lag it (a record rewritten after etcd
        // came back), and shows the moved ones until their nodes attach
        // elsewhere: held until both say none.
        let staying = ctx.sessions.staying();
        state.set_held(staying.max(mine.map_or(0, |l| l.sessions)));
        let draining = state.is_draining();
        if draining != was_draining {
            match draining {
                true => tracing::info!(
                    sessions = state.held(),
                    "draining: moving every session to the other replicas"
                ),
                false => tracing::info!("no longer draining"),
            }
            was_draining = draining;
        }
        if !config.enabled() && !draining {
            continue;
        }
        pending.retain(|node, p| {
            p.asked.elapsed() < MOVE_COUNTS_FOR
                && ctx.view.node_replica(node).is_some_and(|r| r == me)
        });
        let mut replicas: Vec<plan::Replica> = plan_view(&loads)
            .into_iter()
            .filter(|r| r.id != me)
            .map(|mut r| {
                r.sessions += pending.values().filter(|p| p.to == r.id).count();
                r
            })
            .collect();
        replicas.push(plan::Replica {
            id: me.clone(),
            sessions: staying,
            live: true,
            draining,
        });
        // A drain is not paced for the targets' sake as much: they are all
        // the others.
        let batch = match draining {
            true => config.spread_moves * DRAIN_PACE,
            false => config.spread_moves,
        };
        let targets = plan::moves(&replicas, &me, config.spread_slack, batch);
        if targets.is_empty() {
            continue;
        }
        let reason = if draining { "drain" } else { "spread" };
        let asks = targets
            .iter()
            .map(|to| MoveAsk {
                to: advertised(&loads, to),
                reason: match draining {
                    true => format!("replica {me} is draining"),
                    false => {
                        format!("spreading sessions: replica {me} holds more than replica {to}")
                    }
                },
            })
            .collect();
        let min_age = if draining {
            Duration::ZERO
        } else {
            config.spread_min_age
        };
        let asked = ctx.sessions.ask_to_move(asks, min_age);
        for (node, to) in asked.into_iter().zip(targets) {
            tracing::debug!(%node, %to, reason, "node asked to move");
            ctx.metrics.session_moves.with_label_values(&[reason]).inc();
            pending.insert(
                node,
                Pending {
                    to,
                    asked: Instant::now(),
                },
            );
        }
    }
}

/// The address nodes reach replica `id` at, if it says.
fn advertised(loads: &[ReplicaLoad], id: &str) -> String {
    loads
        .iter()
        .find(|l| l.service_id == id)
        .and_then(|l| l.record.as_ref())
        .map(|r| r.advertise.clone())
        .unwrap_or_default()
}

/// The loads as metrics.
fn show(ctx: &Context, loads: &[ReplicaLoad]) {
    ctx.metrics.replica_sessions.reset();
    for l in loads {
        ctx.metrics
            .replica_sessions
            .with_label_values(&[&l.service_id])
            .set(l.sessions as i64);
    }
}
