//! What every session of this replica shares ([`Context`]): the store, the
//! view, the configuration, and the registry of attached sessions
//! ([`Sessions`], one per node id: a newer one supersedes the older).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::access::Access;
use crate::config::SessionConfig;
use crate::error::{code_label, Error};
use crate::log_budget::LogBudget;
use crate::metrics::Metrics;
use crate::replica::ReplicaState;
use crate::store::Store;
use crate::view::View;

/// A question to a session: the broadcasts it stands by for (at most
/// [`STANDBY_LISTED`] of them).
pub type StandbyAsk = oneshot::Sender<Vec<String>>;

/// Broadcasts a session lists when asked what it stands by for.
pub const STANDBY_LISTED: usize = 100;
/// How long an answer to [`Sessions::standby`] is waited for.
const STANDBY_WAIT: Duration = Duration::from_secs(1);

/// A request that a session's node attach to another replica.
#[derive(Debug, Clone, PartialEq)]
pub struct MoveAsk {
    /// The replica to attach to (its `--advertise` address), or empty.
    pub to: String,
    pub reason: String,
}

struct Entry {
    session_id: String,
    superseded: Arc<Notify>,
    asks: mpsc::Sender<StandbyAsk>,
    moves: mpsc::Sender<MoveAsk>,
    attached_at: Instant,
    /// Asked to move: it stays here (its claims kept for the grace) until
    /// it ends, and is not asked again.
    moving: bool,
}

/// What a session gets from the registry when it is let in.
pub struct Attached {
    /// Notified when a newer session of the node attaches here.
    pub superseded: Arc<Notify>,
    /// Questions about the session (the ownership page asks them).
    pub asks: mpsc::Receiver<StandbyAsk>,
    /// Asked to send its node to another replica.
    pub moves: mpsc::Receiver<MoveAsk>,
}

/// The sessions attached to this replica, one per node id.
#[derive(Default)]
pub struct Sessions {
    by_node: Mutex<HashMap<String, Entry>>,
}

impl Sessions {
    /// Registers a session, superseding an older one of the same node; a
    /// new node is let in only while fewer than `max` are attached.
    pub fn attach(&self, node_id: &str, session_id: &str, max: usize) -> Result<Attached, Error> {
        let superseded = Arc::new(Notify::new());
        let (asks_tx, asks) = mpsc::channel(1);
        let (moves_tx, moves) = mpsc::channel(1);
        let mut map = self.by_node.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= max && !map.contains_key(node_id) {
            return Err(Error::ResourceExhausted(format!(
                "limit max-sessions ({max}) reached: this replica has {} sessions; attach to another replica",
                map.len()
            )));
        }
        let entry = Entry {
            session_id: session_id.to_string(),
            superseded: superseded.clone(),
            asks: asks_tx,
            moves: moves_tx,
            attached_at: Instant::now(),
            moving: false,
        };
        if let Some(older) = map.insert(node_id.to_string(), entry) {
            older.superseded.notify_one();
        }
        Ok(Attached {
            superseded,
            asks,
            moves,
        })
    }

    /// Removes the session, unless a newer one of its node replaced it.
    pub fn detach(&self, node_id: &str, session_id: &str) {
        let mut map = self.by_node.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(node_id).is_some_and(|e| e.session_id == session_id) {
            map.remove(node_id);
        }
    }

    /// Sessions here not asked to move.
    pub fn staying(&self) -> usize {
        let map = self.by_node.lock().unwrap_or_else(|p| p.into_inner());
        map.values().filter(|e| !e.moving).count()
    }

    /// Asks up to `asks.len()` sessions attached for at least `min_age`
    /// (oldest first; none asked before) to move their node, one ask each;
    /// the node ids asked.
    pub fn ask_to_move(&self, asks: Vec<MoveAsk>, min_age: Duration) -> Vec<String> {
        let mut map = self.by_node.lock().unwrap_or_else(|p| p.into_inner());
        let mut old: Vec<(&String, &mut Entry)> = map
            .iter_mut()
            .filter(|(_, e)| !e.moving && e.attached_at.elapsed() >= min_age)
            .collect();
        old.sort_by_key(|(node, e)| (e.attached_at, (*node).clone()));
        let mut asked = Vec::new();
        let mut asks = asks.into_iter().peekable();
        for (node, entry) in old {
            let Some(ask) = asks.peek() else { break };
            // A session busy with an earlier ask is skipped.
            if entry.moves.try_send(ask.clone()).is_ok() {
                entry.moving = true;
                asked.push(node.clone());
                asks.next();
            }
        }
        asked
    }

    /// What each session of this replica stands by for (only those that
    /// stand by for something and answered within a second), by node id.
    pub async fn standby(&self) -> Vec<(String, Vec<String>)> {
        let asks: Vec<(String, mpsc::Sender<StandbyAsk>)> = {
            let map = self.by_node.lock().unwrap_or_else(|p| p.into_inner());
            map.iter()
                .map(|(node, e)| (node.clone(), e.asks.clone()))
                .collect()
        };
        let answers = asks.into_iter().map(|(node, asks)| async move {
            let (tx, rx) = oneshot::channel();
            // A session busy with an earlier question is skipped.
            asks.try_send(tx).ok()?;
            let broadcasts = tokio::time::timeout(STANDBY_WAIT, rx).await.ok()?.ok()?;
            (!broadcasts.is_empty()).then_some((node, broadcasts))
        });
        let mut found: Vec<_> = futures::future::join_all(answers)
            .await
            .into_iter()
            .flatten()
            .collect();
        found.sort();
        found
    }
}

/// Everything a session needs from the replica.
pub struct Context {
    pub store: Store,
    pub view: Arc<View>,
    pub metrics: Arc<Metrics>,
    pub config: SessionConfig,
    pub access: Access,
    pub sessions: Sessions,
    /// This replica: its layout check and draining mark.
    pub replica: Arc<ReplicaState>,
    /// Log lines that nodes' bad input causes, bounded.
    pub refusal_log: LogBudget,
    /// Cancelled when the replica shuts down: sessions end at once and leave
    /// their claims in etcd for another replica to adopt.
    pub shutdown: CancellationToken,
}

impl Context {
    /// Counts a refused message or session by its code.
    pub fn count_refusal(&self, code: tonic::Code) {
        self.metrics
            .rejected_messages
            .with_label_values(&[code_label(code)])
            .inc();
    }

    /// Counts `refusal` as a refusal and answers it.
    pub fn refuse(&self, refusal: Error) -> Status {
        self.count_refusal(refusal.code());
        refusal.into()
    }
}
