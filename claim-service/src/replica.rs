//! This replica as the cluster sees it: the layout version etcd holds
//! (checked before anything is written), its own record under `replicas/`
//! (kept alive on a lease of its own while it runs), and whether it is
//! draining.
//!
//! A replica that finds a layout it does not know writes nothing: no
//! record, no session, no admin write; it says why in its log and its
//! readiness, and looks again every few seconds. When the key is absent,
//! the first replica that writes it does, unless the view shows a node
//! record an older layout wrote (a replica of that layout is attached):
//! then it serves without writing the key, and writes it once that is gone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::store::layout::{KNOWN_LAYOUTS, LAYOUT_VERSION};
use crate::store::{unix_ms, LayoutFound, ReplicaRecord, Store};
use crate::view::View;

/// How often an unknown or unwritten layout is looked at again.
const LAYOUT_RECHECK: Duration = Duration::from_secs(5);

/// What this replica knows of itself, shared by the sessions, the health
/// check, the admin API and the spreading loop.
pub struct ReplicaState {
    pub service_id: String,
    /// When this run started: its record says so, which tells it from a
    /// record an earlier run of the same service id left behind.
    pub started_at_unix_ms: i64,
    /// SIGTERM: moving every session away before stopping.
    stopping: AtomicBool,
    /// Its record says draining (`drain-replica`).
    marked: AtomicBool,
    /// Told when SIGTERM starts a drain, so that it starts at once.
    stop_asked: Notify,
    /// Attached sessions the view says it holds (the spreading loop reads
    /// them each round).
    held: watch::Sender<usize>,
    /// Why it cannot serve the layout etcd holds, while that lasts.
    layout_problem: Mutex<Option<String>>,
    /// Whether the layout was checked (and is one this build serves) and
    /// this replica's record written.
    layout_checked: AtomicBool,
}

impl ReplicaState {
    pub fn new(service_id: String) -> Self {
        Self {
            service_id,
            started_at_unix_ms: unix_ms(),
            stopping: AtomicBool::new(false),
            marked: AtomicBool::new(false),
            stop_asked: Notify::new(),
            held: watch::Sender::new(0),
            layout_problem: Mutex::new(None),
            layout_checked: AtomicBool::new(false),
        }
    }

    pub fn is_draining(&self) -> bool {
        self.stopping.load(Ordering::Relaxed) || self.marked.load(Ordering::Relaxed)
    }

    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.stop_asked.notify_one();
    }

    /// Once SIGTERM has started a drain.
    pub async fn stop_asked(&self) {
        self.stop_asked.notified().await
    }

    pub fn set_marked(&self, draining: bool) {
        self.marked.store(draining, Ordering::Relaxed);
    }

    pub fn is_marked(&self) -> bool {
        self.marked.load(Ordering::Relaxed)
    }

    /// The draining mark `record` (this service id's, as the view shows
    /// it) sets on this run: only a record this run wrote counts. A record
    /// an earlier run left (its lease not yet expired when this one reads
    /// it) says nothing of this run, which a restart clears of any mark;
    /// taken for its own, it would be written back and hold this run
    /// draining for good.
    pub fn own_mark(&self, record: Option<&ReplicaRecord>) -> bool {
        record.is_some_and(|r| r.started_at_unix_ms == self.started_at_unix_ms && r.draining)
    }

    /// This run's record as it starts.
    pub fn record(&self, advertise: &str) -> ReplicaRecord {
        ReplicaRecord {
            version: claims_proto::VERSION.to_string(),
            layout: LAYOUT_VERSION,
            advertise: advertise.to_string(),
            draining: false,
            started_at_unix_ms: self.started_at_unix_ms,
        }
    }

    pub fn held(&self) -> usize {
        *self.held.borrow()
    }

    pub fn set_held(&self, sessions: usize) {
        self.held
            .send_if_modified(|held| std::mem::replace(held, sessions) != sessions);
    }

    /// Once the view shows no session held here.
    pub async fn drained(&self) {
        let _ = self.held.subscribe().wait_for(|held| *held == 0).await;
    }

    /// Why the layout in etcd cannot be served, if it cannot.
    pub fn layout_problem(&self) -> Option<String> {
        self.layout_problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether writing is allowed yet: the layout was checked and known.
    pub fn may_write(&self) -> bool {
        self.layout_checked.load(Ordering::Relaxed)
    }

    /// Why a write (a session, an admin change) is refused here, if it is.
    pub fn write_refusal(&self) -> Option<Error> {
        if let Some(problem) = self.layout_problem() {
            return Some(Error::FailedPrecondition(problem));
        }
        if !self.may_write() {
            return Some(Error::Unavailable(
                "this replica has not checked the layout etcd holds yet; retry shortly".into(),
            ));
        }
        None
    }

    /// Why a new session is refused here, if it is.
    pub fn attach_refusal(&self) -> Option<Error> {
        if let Some(refusal) = self.write_refusal() {
            return Some(refusal);
        }
        self.is_draining().then(|| {
            Error::Unavailable(format!(
                "claim-service replica {} is draining; attach to another replica",
                self.service_id
            ))
        })
    }
}

/// Checks the layout until it is one this build serves (writing it when
/// absent), then keeps this replica's record in etcd until `token` is
/// cancelled, and takes it out then.
pub async fn run(
    store: Store,
    view: Arc<View>,
    state: Arc<ReplicaState>,
    record: ReplicaRecord,
    ttl: Duration,
    renew: Duration,
    token: CancellationToken,
) {
    while !view.synced() {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = token.cancelled() => return,
        }
    }
    if !check_layout(&store, &view, &state, &token).await {
        return;
    }
    let (loss_tx, mut loss_rx) = mpsc::unbounded_channel();
    let mut failures = 0;
    loop {
        let mut record = record.clone();
        record.draining = state.is_draining();
        let lease = match store
            .register_replica(&state.service_id, &record, ttl)
            .await
        {
            Ok(lease) => lease,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "cannot write this replica's record; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(crate::retry::backoff(failures)) => continue,
                    _ = token.cancelled() => return,
                }
            }
        };
        failures = 0;
        // Ready (and open to sessions) once the others can see it: a
        // replica stopping moves its sessions only to replicas with a
        // record.
        state.layout_checked.store(true, Ordering::Relaxed);
        tracing::info!(lease_id = lease, version = %record.version, layout = record.layout, "replica record written");
        store.keep_record(lease, ttl, renew, loss_tx.clone());
        tokio::select! {
            Some(loss) = loss_rx.recv() => {
                tracing::warn!(reason = %loss.reason, "replica record's lease lost; writing it again");
            }
            _ = token.cancelled() => {
                store.stop_keeping(lease, &loss_tx);
                if let Err(e) = store.revoke(lease).await {
                    tracing::warn!(error = %e, "could not take this replica's record out; it expires with its lease");
                }
                return;
            }
        }
    }
}

/// Whether the layout etcd holds can be served (false: stopping).
async fn check_layout(
    store: &Store,
    view: &Arc<View>,
    state: &ReplicaState,
    token: &CancellationToken,
) -> bool {
    let mut said = None;
    loop {
        let found = match store.read_layout().await {
            Ok(LayoutFound::Absent) => match view.older_layout_writer() {
                Some(node_id) => {
                    tracing::info!(%node_id, "etcd holds no layout version and a replica of layout 1 holds this node: serving without writing it until that one is gone");
                    state.layout_checked.store(true, Ordering::Relaxed);
                    tokio::spawn(write_layout_later(
                        store.clone(),
                        view.clone(),
                        token.clone(),
                    ));
                    return true;
                }
                None => match store.write_layout().await {
                    Ok(found) => Some(found),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot write the layout version; retrying");
                        None
                    }
                },
            },
            Ok(found) => Some(found),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the layout version; retrying");
                None
            }
        };
        match found {
            Some(LayoutFound::Known(n)) => {
                *state
                    .layout_problem
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
                tracing::info!(
                    layout = n,
                    writes = LAYOUT_VERSION,
                    "layout version checked"
                );
                return true;
            }
            Some(LayoutFound::Unknown(v)) => {
                let problem = format!(
                    "etcd holds layout version {v:?}, which this build ({}) does not know (it serves layouts {KNOWN_LAYOUTS:?}): it writes nothing; run a build that knows it (docs/UPGRADING.md)",
                    claims_proto::VERSION
                );
                if said.as_deref() != Some(v.as_str()) {
                    tracing::error!("{problem}");
                    said = Some(v);
                }
                *state
                    .layout_problem
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(problem);
            }
            Some(LayoutFound::Absent) | None => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(LAYOUT_RECHECK) => {}
            _ = token.cancelled() => return false,
        }
    }
}

/// Writes the layout version once no replica of an older layout holds a
/// node any more.
async fn write_layout_later(store: Store, view: Arc<View>, token: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(LAYOUT_RECHECK) => {}
            _ = token.cancelled() => return,
        }
        if view.older_layout_writer().is_some() {
            continue;
        }
        match store.write_layout().await {
            Ok(found) => {
                tracing::info!(
                    ?found,
                    "no replica of layout 1 holds a node any more: layout version written"
                );
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot write the layout version; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_record_this_run_wrote_marks_it_draining() {
        let state = ReplicaState::new("replica-a".into());
        let mut mine = state.record("http://replica-a:50051");
        assert!(!state.own_mark(Some(&mine)));
        mine.draining = true;
        assert!(state.own_mark(Some(&mine)));
        // Left by the run before this one (its lease not yet expired).
        let earlier = ReplicaRecord {
            started_at_unix_ms: state.started_at_unix_ms - 5_000,
            ..mine.clone()
        };
        assert!(!state.own_mark(Some(&earlier)));
        assert!(!state.own_mark(None));
    }
}
