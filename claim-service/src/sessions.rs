//! What every session of this replica shares ([`Context`]): the store, the
//! view, the configuration, and the registry of attached sessions
//! ([`Sessions`], one per node id: a newer one supersedes the older).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::access::Access;
use crate::config::SessionConfig;
use crate::error::{code_label, Error};
use crate::log_budget::LogBudget;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::view::View;

/// The sessions attached to this replica, one per node id.
#[derive(Default)]
pub struct Sessions {
    by_node: Mutex<HashMap<String, (String, Arc<Notify>)>>,
}

impl Sessions {
    /// Registers a session, superseding an older one of the same node; a
    /// new node is let in only while fewer than `max` are attached.
    pub fn attach(
        &self,
        node_id: &str,
        session_id: &str,
        max: usize,
    ) -> Result<Arc<Notify>, Error> {
        let notify = Arc::new(Notify::new());
        let mut map = self.by_node.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= max && !map.contains_key(node_id) {
            return Err(Error::ResourceExhausted(format!(
                "limit max-sessions ({max}) reached: this replica has {} sessions; attach to another replica",
                map.len()
            )));
        }
        let older = map.insert(
            node_id.to_string(),
            (session_id.to_string(), notify.clone()),
        );
        if let Some((_, older)) = older {
            older.notify_one();
        }
        Ok(notify)
    }

    /// Removes the session, unless a newer one of its node replaced it.
    pub fn detach(&self, node_id: &str, session_id: &str) {
        let mut map = self.by_node.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(node_id).is_some_and(|(s, _)| s == session_id) {
            map.remove(node_id);
        }
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
