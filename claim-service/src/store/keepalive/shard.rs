//! One shard of the keep-alive: its leases, the one stream it renews
//! them on, the timers that make them due, and the losses it reports.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, LeaseKeeper};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::time::{delay_queue, DelayQueue};

use super::deadlines::{Answers, Backlog, LeaseClock, STUCK_AFTER};
use super::{Cmd, LeaseLoss, LossKind};
use crate::log_budget::{Say, Trouble};
use crate::metrics::Metrics;

const ANCHOR_TTL: Duration = Duration::from_secs(60);
const OPEN_TIMEOUT: Duration = Duration::from_secs(3);
/// A keep-alive failure that repeats is summed up at most this often.
const TROUBLE_EVERY: Duration = Duration::from_secs(10);
/// Renewals the stream cannot take right now (its queue is full: etcd is
/// busy) wait in the backlog, tried again this much later, instead of
/// waiting or giving up.
const BACKPRESSURE_RETRY: Duration = Duration::from_millis(20);
const DEADLINE_SCAN: Duration = Duration::from_millis(50);

struct Lease {
    clock: LeaseClock,
    /// `None` for the shard's own anchor lease.
    notify: Option<mpsc::UnboundedSender<LeaseLoss>>,
    /// The next renewal's timer; `None` while the renewal is due and waits
    /// in the backlog.
    timer: Option<delay_queue::Key>,
}

/// Opens a keep-alive stream on the shard's anchor lease, granting one when
/// there is none (or it is gone).
async fn open_stream(
    mut client: Client,
    anchor: Option<i64>,
) -> Result<(LeaseKeeper, etcd_client::LeaseKeepAliveStream, i64, bool), etcd_client::Error> {
    let (anchor, granted) = match anchor {
        Some(id) => (id, false),
        None => (
            client
                .lease_grant(ANCHOR_TTL.as_secs() as i64, None)
                .await?
                .id(),
            true,
        ),
    };
    let (keeper, stream) = client.lease_keep_alive(anchor).await?;
    Ok((keeper, stream, anchor, granted))
}

enum StreamMsg {
    /// A stream was opened on `anchor` (granted anew when `granted`).
    Opened {
        keeper: LeaseKeeper,
        /// Boxed: the stream is large and the other messages are small.
        stream: Box<etcd_client::LeaseKeepAliveStream>,
        anchor: i64,
        granted: bool,
    },
    OpenFailed {
        error: String,
    },
    Renewed {
        generation: u64,
        lease_id: i64,
        ttl: i64,
    },
    Closed {
        generation: u64,
        error: String,
    },
}

pub(super) struct Shard {
    client: Client,
    metrics: Arc<Metrics>,
    leases: HashMap<i64, Lease>,
    renewals: DelayQueue<i64>,
    backlog: Backlog,
    /// When to try the backlog again after the stream refused a renewal.
    retry_at: Option<Instant>,
    /// What the current stream owes (etcd answers each renewal, in order).
    answers: Answers,
    /// Whether this shard counts in [`KeepAlive::behind`]: its backlog
    /// was not empty after the last send.
    behind: bool,
    behind_tx: watch::Sender<usize>,
    keeper: Option<LeaseKeeper>,
    generation: u64,
    anchor: Option<i64>,
    /// An open is in flight (in its own task: the shard never waits on
    /// the network, so deadlines are checked on time even when etcd hangs).
    opening: bool,
    failures: u32,
    /// What of the failures to open or keep a stream is logged.
    trouble: Trouble,
    reopen_at: Instant,
    events_tx: mpsc::UnboundedSender<StreamMsg>,
    events_rx: mpsc::UnboundedReceiver<StreamMsg>,
}

impl Shard {
    pub(super) fn new(
        client: Client,
        metrics: Arc<Metrics>,
        behind_tx: watch::Sender<usize>,
    ) -> Self {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        Self {
            client,
            metrics,
            leases: HashMap::new(),
            renewals: DelayQueue::new(),
            backlog: Backlog::default(),
            retry_at: None,
            answers: Answers::default(),
            behind: false,
            behind_tx,
            keeper: None,
            generation: 0,
            anchor: None,
            opening: false,
            failures: 0,
            trouble: Trouble::new(TROUBLE_EVERY),
            reopen_at: Instant::now(),
            events_tx,
            events_rx,
        }
    }

    fn wants_stream(&self) -> bool {
        self.leases.keys().any(|id| Some(*id) != self.anchor)
    }

    pub(super) async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
        let mut scan = tokio::time::interval(DEADLINE_SCAN);
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let reopen = self.keeper.is_none() && !self.opening && self.wants_stream();
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(Cmd::Keep { lease_id, ttl, renew, notify, valid_from }) => {
                        self.insert(lease_id, ttl, renew, Some(notify), valid_from);
                    }
                    Some(Cmd::Forget { lease_id, owner, reply }) => {
                        let owned = self.leases.get(&lease_id).is_some_and(|l| {
                            l.notify.as_ref().is_some_and(|n| n.same_channel(&owner))
                        });
                        if owned {
                            if let (Some(lease), Some(reply)) = (self.remove(lease_id), reply) {
                                let _ = reply.send(lease.clock.valid_from());
                            }
                        }
                    }
                    None => break,
                },
                Some(expired) = self.renewals.next(), if !self.renewals.is_empty() => {
                    let lease_id = expired.into_inner();
                    self.due(lease_id);
                }
                _ = tokio::time::sleep_until(self.retry_at.unwrap_or_else(Instant::now)), if self.retry_at.is_some() => {
                    self.retry_at = None;
                    self.send_backlog();
                }
                Some(msg) = self.events_rx.recv() => self.on_stream(msg),
                _ = tokio::time::sleep_until(self.reopen_at), if reopen => self.open(),
                _ = scan.tick() => self.check_deadlines(),
            }
        }
        if self.keeper.is_some() {
            self.metrics.keepalive_streams.dec();
        }
    }

    fn insert(
        &mut self,
        lease_id: i64,
        ttl: Duration,
        renew: Duration,
        notify: Option<mpsc::UnboundedSender<LeaseLoss>>,
        valid_from: Instant,
    ) {
        self.remove(lease_id);
        let clock = LeaseClock::new(ttl, renew, valid_from);
        let first = clock.first_renewal(Instant::now());
        let timer = Some(self.renewals.insert(lease_id, first));
        self.leases.insert(
            lease_id,
            Lease {
                clock,
                notify,
                timer,
            },
        );
    }

    fn remove(&mut self, lease_id: i64) -> Option<Lease> {
        let lease = self.leases.remove(&lease_id)?;
        if let Some(timer) = &lease.timer {
            self.renewals.try_remove(timer);
        }
        Some(lease)
    }

    fn lose(&mut self, lease_id: i64, kind: LossKind, reason: String) {
        let Some(lease) = self.remove(lease_id) else {
            return;
        };
        if Some(lease_id) == self.anchor {
            self.anchor = None;
            return;
        }
        tracing::warn!(lease_id, reason = %reason, "lease lost");
        if let Some(notify) = lease.notify {
            let _ = notify.send(LeaseLoss {
                lease_id,
                kind,
                reason,
            });
        }
    }

    /// A lease's renewal is due: it joins the backlog, which is sent in
    /// deadline order as far as the stream takes it.
    fn due(&mut self, lease_id: i64) {
        let Some(lease) = self.leases.get_mut(&lease_id) else {
            return;
        };
        lease.timer = None;
        self.backlog.push(lease.clock.deadline(), lease_id);
        self.send_backlog();
    }

    /// Sends due renewals, earliest deadline first, until the stream's
    /// queue is full (then tries again shortly) or there is no stream (then
    /// they wait for it to reopen, and are sent first thing). Never waits:
    /// a send that cannot go now is dropped unsent (cancel-safe).
    fn send_backlog(&mut self) {
        self.send_due();
        let behind = !self.backlog.is_empty();
        if behind != self.behind {
            self.behind = behind;
            self.behind_tx
                .send_modify(|n| if behind { *n += 1 } else { *n -= 1 });
        }
    }

    fn send_due(&mut self) {
        use futures::FutureExt;
        let now = Instant::now();
        while let Some(lease_id) = self.backlog.next() {
            let Some(keeper) = self.keeper.as_mut() else {
                return;
            };
            if !self.answers.may_send() {
                // Each answer sends the next.
                return;
            }
            let Some(lease) = self.leases.get_mut(&lease_id) else {
                // Forgotten or lost while it waited.
                self.backlog.pop();
                continue;
            };
            if lease.timer.is_some() {
                // Kept anew while it waited: its new timer stands.
                self.backlog.pop();
                continue;
            }
            keeper.id = lease_id;
            match keeper.keep_alive().now_or_never() {
                None => {
                    self.retry_at = Some(now + BACKPRESSURE_RETRY);
                    return;
                }
                Some(Ok(())) => {
                    self.backlog.pop();
                    self.answers.sent(now);
                    lease.timer = Some(self.renewals.insert(lease_id, lease.clock.renew));
                    lease.clock.sent(now);
                    self.metrics.keepalive_renewals.inc();
                }
                Some(Err(e)) => {
                    self.stream_broke(format!("sending a renewal failed: {e}"));
                    return;
                }
            }
        }
    }

    fn on_stream(&mut self, msg: StreamMsg) {
        match msg {
            StreamMsg::Opened {
                keeper,
                stream,
                anchor,
                granted,
            } => self.opened(keeper, *stream, anchor, granted),
            StreamMsg::OpenFailed { error } => {
                self.opening = false;
                self.open_failed(error);
            }
            StreamMsg::Renewed {
                generation,
                lease_id,
                ttl,
            } => {
                if generation != self.generation {
                    return;
                }
                self.answers.answered();
                if ttl <= 0 {
                    self.lose(
                        lease_id,
                        LossKind::Expired,
                        "lease expired: etcd reports it gone (TTL 0)".to_string(),
                    );
                } else if let Some(lease) = self.leases.get_mut(&lease_id) {
                    lease.clock.confirmed();
                }
                self.send_backlog();
            }
            StreamMsg::Closed { generation, error } => {
                if generation == self.generation {
                    self.stream_broke(error);
                }
            }
        }
    }

    fn stream_broke(&mut self, error: String) {
        if self.keeper.take().is_some() {
            self.metrics.keepalive_streams.dec();
        }
        self.answers.reset();
        self.generation += 1;
        self.failed(&error, "keep-alive stream broke; reopening");
    }

    /// Opening or keeping the stream failed (`what`, with `error`): count
    /// it, say it unless it is the same trouble again, and reopen after a
    /// backoff.
    fn failed(&mut self, error: &str, what: &str) {
        self.failures += 1;
        self.metrics.keepalive_failures.inc();
        let delay = crate::retry::backoff(self.failures).min(Duration::from_secs(1));
        match self.trouble.failed(error, Instant::now().into_std()) {
            Say::New => tracing::warn!(%error, retry_in = ?delay, "{what}"),
            Say::Still { since, times } => {
                tracing::warn!(
                    ?since,
                    times,
                    "keep-alive streams still failing the same way; retrying"
                )
            }
            Say::Quiet => {}
        }
        self.reopen_at = Instant::now() + delay;
    }

    fn check_deadlines(&mut self) {
        // Answers that have arrived count first: a shard that fell behind
        // must not call a lease lost whose renewal etcd already confirmed.
        while let Ok(msg) = self.events_rx.try_recv() {
            self.on_stream(msg);
        }
        let now = Instant::now();
        if self.answers.stuck(now) {
            self.stream_broke(format!(
                "renewals sent and no answer for {STUCK_AFTER:?}: the stream is stuck"
            ));
        }
        let overdue: Vec<(i64, Duration)> = self
            .leases
            .iter()
            .filter(|(_, l)| l.clock.overdue(now))
            .map(|(id, l)| (*id, l.clock.ttl))
            .collect();
        for (lease_id, ttl) in overdue {
            self.lose(
                lease_id,
                LossKind::Unrenewed,
                format!("no renewal confirmed by etcd for a whole TTL ({ttl:?})"),
            );
        }
    }

    fn open(&mut self) {
        self.opening = true;
        let client = self.client.clone();
        let anchor = self.anchor;
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            let msg = match tokio::time::timeout(OPEN_TIMEOUT, open_stream(client, anchor)).await {
                Ok(Ok((keeper, stream, anchor, granted))) => StreamMsg::Opened {
                    keeper,
                    stream: Box::new(stream),
                    anchor,
                    granted,
                },
                Ok(Err(e)) => StreamMsg::OpenFailed {
                    error: e.to_string(),
                },
                Err(_) => StreamMsg::OpenFailed {
                    error: format!("no answer within {OPEN_TIMEOUT:?}"),
                },
            };
            let _ = events.send(msg);
        });
    }

    fn open_failed(&mut self, error: String) {
        // The anchor may be what is wrong: grant a fresh one next time.
        if error.contains("not found") {
            if let Some(anchor) = self.anchor.take() {
                self.remove(anchor);
            }
        }
        self.failed(&error, "cannot open a keep-alive stream");
    }

    fn opened(
        &mut self,
        keeper: LeaseKeeper,
        mut stream: etcd_client::LeaseKeepAliveStream,
        anchor: i64,
        granted: bool,
    ) {
        self.opening = false;
        self.failures = 0;
        if let Some((after, times)) = self.trouble.recovered(Instant::now().into_std()) {
            tracing::info!(?after, failures = times, "keep-alive stream open again");
        }
        self.metrics.keepalive_streams.inc();
        if granted {
            self.anchor = Some(anchor);
            self.insert(anchor, ANCHOR_TTL, ANCHOR_TTL / 4, None, Instant::now());
        }
        self.generation += 1;
        self.answers.reset();
        let generation = self.generation;
        self.keeper = Some(keeper);
        self.send_backlog();
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            // Always drain responses, so etcd never blocks on a full window
            // while we block on sending renewals.
            let error = loop {
                match stream.next().await {
                    Some(Ok(resp)) => {
                        let msg = StreamMsg::Renewed {
                            generation,
                            lease_id: resp.id(),
                            ttl: resp.ttl(),
                        };
                        if events.send(msg).is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) => break e.to_string(),
                    None => break "stream ended".to_string(),
                }
            };
            let _ = events.send(StreamMsg::Closed { generation, error });
        });
    }
}
