//! When a kept lease's renewal is due, until when etcd has it, when it
//! must be called lost, and when a keep-alive stream is stuck: bookkeeping
//! only, with the time passed in, so every rule is tested without a clock
//! or a stream.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use tokio::time::Instant;

/// Renewals sent, and no answer at all for this long: the stream is stuck
/// (its connection blackholed); treat it as broken and reopen it.
pub(super) const STUCK_AFTER: Duration = Duration::from_secs(2);
/// Renewals sent on a stream and not answered yet, at most. Beyond this
/// they wait in the backlog, where the one whose lease runs out first goes
/// first; without a bound, while etcd is slow, thousands queue in the
/// connection in the order sent, out of the backlog's reach.
const MAX_IN_FLIGHT: usize = 512;
/// Losses are reported this much before the TTL runs out (at most), so the
/// holder hears it before etcd expires the lease and someone else is told
/// `claimed`.
const LOSS_MARGIN: Duration = Duration::from_millis(500);

/// One kept lease's times.
#[derive(Debug, Clone)]
pub(super) struct LeaseClock {
    pub(super) ttl: Duration,
    pub(super) renew: Duration,
    /// The lease is good until at least `valid_from + ttl`.
    valid_from: Instant,
    /// When the oldest renewal etcd has not confirmed yet was sent.
    sent_at: Option<Instant>,
}

impl LeaseClock {
    pub(super) fn new(ttl: Duration, renew: Duration, valid_from: Instant) -> Self {
        Self {
            ttl,
            renew,
            valid_from,
            sent_at: None,
        }
    }

    /// Since when etcd is known to have had the lease.
    pub(super) fn valid_from(&self) -> Instant {
        self.valid_from
    }

    /// How long until the first renewal: the usual interval, or sooner for
    /// a lease that waited (in the pool) before it was kept.
    pub(super) fn first_renewal(&self, now: Instant) -> Duration {
        self.renew
            .min((self.valid_from + self.ttl / 4).saturating_duration_since(now))
    }

    /// When the lease runs out unless a renewal is confirmed first.
    pub(super) fn deadline(&self) -> Instant {
        self.valid_from + self.ttl
    }

    /// A renewal was sent at `now`. The deadline counts from the oldest
    /// unconfirmed send: etcd cannot have renewed the lease later than that.
    pub(super) fn sent(&mut self, now: Instant) {
        self.sent_at.get_or_insert(now);
    }

    /// etcd confirmed a renewal.
    pub(super) fn confirmed(&mut self) {
        if let Some(sent_at) = self.sent_at.take() {
            self.valid_from = sent_at;
        }
    }

    /// Whether the lease must be called lost at `now`: close enough to its
    /// deadline that etcd may expire it before the holder hears otherwise.
    pub(super) fn overdue(&self, now: Instant) -> bool {
        now + LOSS_MARGIN.min(self.ttl / 10) >= self.deadline()
    }
}

/// What a keep-alive stream owes: renewals sent and not answered yet.
#[derive(Debug, Default)]
pub(super) struct Answers {
    in_flight: usize,
    /// When the oldest renewal still without any answer on this stream was
    /// sent; `None` while every send has been followed by an answer.
    unanswered_since: Option<Instant>,
}

impl Answers {
    /// Whether another renewal may be sent now (or waits for an answer).
    pub(super) fn may_send(&self) -> bool {
        self.in_flight < MAX_IN_FLIGHT
    }

    pub(super) fn sent(&mut self, now: Instant) {
        self.in_flight += 1;
        self.unanswered_since.get_or_insert(now);
    }

    pub(super) fn answered(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.unanswered_since = None;
    }

    /// A new stream owes nothing.
    pub(super) fn reset(&mut self) {
        *self = Self::default();
    }

    /// Whether the stream took renewals and answered nothing for
    /// [`STUCK_AFTER`].
    pub(super) fn stuck(&self, now: Instant) -> bool {
        self.unanswered_since
            .is_some_and(|since| now.duration_since(since) >= STUCK_AFTER)
    }
}

/// Renewals that are due and not yet sent, the one whose lease runs out
/// first on top: when etcd pushes back, a 10 s lease due now goes before a
/// 60 s lease that was due earlier.
#[derive(Debug, Default)]
pub(super) struct Backlog(BinaryHeap<Reverse<(Instant, i64)>>);

impl Backlog {
    pub(super) fn push(&mut self, deadline: Instant, lease_id: i64) {
        self.0.push(Reverse((deadline, lease_id)));
    }

    /// The lease to renew next.
    pub(super) fn next(&self) -> Option<i64> {
        self.0.peek().map(|Reverse((_, id))| *id)
    }

    pub(super) fn pop(&mut self) {
        self.0.pop();
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_lease_is_good_for_a_ttl_from_the_oldest_confirmed_send() {
        let t0 = Instant::now();
        let mut c = LeaseClock::new(10 * S, 3 * S, t0);
        assert_eq!(c.deadline(), t0 + 10 * S);
        c.sent(t0 + 3 * S);
        c.sent(t0 + 6 * S);
        assert_eq!(c.deadline(), t0 + 10 * S, "nothing confirmed yet");
        c.confirmed();
        assert_eq!(
            c.deadline(),
            t0 + 13 * S,
            "from the first send, not the last"
        );
        c.confirmed();
        assert_eq!(c.deadline(), t0 + 13 * S, "a second answer moves nothing");
    }

    #[test]
    fn a_lease_is_lost_before_etcd_can_expire_it() {
        let t0 = Instant::now();
        let c = LeaseClock::new(10 * S, 3 * S, t0);
        assert!(!c.overdue(t0 + 9 * S));
        assert!(c.overdue(t0 + 9 * S + Duration::from_millis(500)));
        // A short lease keeps a tenth of its TTL as the margin.
        let short = LeaseClock::new(2 * S, S / 2, t0);
        assert!(!short.overdue(t0 + Duration::from_millis(1700)));
        assert!(short.overdue(t0 + Duration::from_millis(1800)));
    }

    #[test]
    fn a_lease_that_waited_is_renewed_sooner() {
        let t0 = Instant::now();
        let fresh = LeaseClock::new(10 * S, 3 * S, t0);
        assert_eq!(fresh.first_renewal(t0), 5 * S / 2);
        let waited = LeaseClock::new(10 * S, 3 * S, t0);
        assert_eq!(waited.first_renewal(t0 + 2 * S), S / 2);
        assert_eq!(waited.first_renewal(t0 + 5 * S), Duration::ZERO);
        let long = LeaseClock::new(60 * S, 3 * S, t0);
        assert_eq!(long.first_renewal(t0), 3 * S);
    }

    #[test]
    fn a_stream_that_answers_nothing_is_stuck_and_one_that_answers_is_not() {
        let t0 = Instant::now();
        let mut a = Answers::default();
        assert!(!a.stuck(t0 + 10 * S), "nothing sent");
        a.sent(t0);
        a.sent(t0 + S);
        assert!(!a.stuck(t0 + S));
        assert!(a.stuck(t0 + STUCK_AFTER), "counted from the oldest send");
        a.answered();
        assert!(!a.stuck(t0 + 10 * S));
        a.reset();
        assert!(a.may_send());
    }

    #[test]
    fn at_most_so_many_renewals_wait_for_an_answer() {
        let t0 = Instant::now();
        let mut a = Answers::default();
        for _ in 0..MAX_IN_FLIGHT {
            assert!(a.may_send());
            a.sent(t0);
        }
        assert!(!a.may_send());
        a.answered();
        assert!(a.may_send());
    }

    #[test]
    fn the_backlog_renews_the_lease_that_runs_out_first() {
        let t0 = Instant::now();
        let mut b = Backlog::default();
        b.push(t0 + 60 * S, 1);
        b.push(t0 + 10 * S, 2);
        b.push(t0 + 30 * S, 3);
        let mut order = Vec::new();
        while let Some(id) = b.next() {
            order.push(id);
            b.pop();
        }
        assert_eq!(order, [2, 3, 1]);
        assert!(b.is_empty());
    }
}
