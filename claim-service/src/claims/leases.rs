//! The leases a session's claims are on, and how many each carries.
//!
//! A session's own claims are on its node record's lease, which the record
//! keeps alive. Claims it adopted are on the lease an earlier session of the
//! node put them on: kept alive while this session holds any claim there,
//! let go (revoked once etcd shows no claim on it) when it holds none and no
//! release of a claim there is still in flight. The rules count here and
//! say so as actions ([`super::Action::KeepLease`],
//! [`super::Action::LetGoLease`]); the store acts.

use std::collections::{HashMap, HashSet};

use super::{Action, Claim};

#[derive(Debug, Default)]
pub(super) struct Leases {
    /// Claims held on each lease, the record's included.
    held: HashMap<i64, usize>,
    /// Releases of claims an earlier session left, in flight, per lease.
    stale: HashMap<i64, usize>,
    /// The node record's lease (kept alive by the record, never let go
    /// here).
    record: Option<i64>,
    /// Leases whose keys were looked at for claims an earlier session left.
    looked_at: HashSet<i64>,
    /// Held claims being released, by broadcast (one release in flight per
    /// broadcast): their lease counts them until the release is done.
    releasing: HashMap<String, i64>,
}

/// What to do about a lease after a claim on it came or went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    Nothing,
    /// The first claim on a lease other than the record's: keep it alive.
    Keep,
    /// No claim of this session is on it any more: stop keeping it alive
    /// and let it go.
    LetGo,
}

/// Counts one off `lease`; whether that was its last.
fn count_down(counts: &mut HashMap<i64, usize>, lease: i64) -> bool {
    match counts.get_mut(&lease) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        Some(_) => {
            counts.remove(&lease);
            true
        }
        None => false,
    }
}

impl Leases {
    pub(super) fn set_record(&mut self, lease: Option<i64>) {
        self.record = lease;
    }

    /// Claims held on `lease`.
    pub(super) fn on(&self, lease: i64) -> usize {
        self.held.get(&lease).copied().unwrap_or(0)
    }

    /// A claim on `lease` is held.
    pub(super) fn hold(&mut self, lease: i64) -> Next {
        let held = self.held.entry(lease).or_default();
        *held += 1;
        if *held == 1 && self.record != Some(lease) {
            Next::Keep
        } else {
            Next::Nothing
        }
    }

    /// A held claim on `lease` is released or gone.
    pub(super) fn drop_held(&mut self, lease: i64) -> Next {
        match count_down(&mut self.held, lease) {
            true => self.unused(lease),
            false => Next::Nothing,
        }
    }

    /// A claim an earlier session left on `lease` is being released.
    pub(super) fn release_stale(&mut self, lease: i64) {
        *self.stale.entry(lease).or_default() += 1;
    }

    /// That release is over.
    pub(super) fn stale_released(&mut self, lease: i64) -> Next {
        match count_down(&mut self.stale, lease) {
            true => self.unused(lease),
            false => Next::Nothing,
        }
    }

    /// Whether `lease`'s keys are to be looked at for claims an earlier
    /// session left (the first time it is met).
    pub(super) fn first_met(&mut self, lease: i64) -> bool {
        self.record != Some(lease) && self.looked_at.insert(lease)
    }

    /// Whether a release of a claim an earlier session left is in flight.
    pub(super) fn stale_in_flight(&self) -> bool {
        !self.stale.is_empty()
    }

    /// The held `claim` of `broadcast` is to be released: the release,
    /// whose lease counts it until [`Leases::release_done`].
    pub(super) fn release_held(&mut self, broadcast: &str, claim: &Claim) -> Action {
        self.releasing.insert(broadcast.to_string(), claim.lease_id);
        Action::release(broadcast.to_string(), claim)
    }

    /// The release of `broadcast` is done: if it was of a held claim, its
    /// lease no longer carries it.
    pub(super) fn release_done(&mut self, broadcast: &str) -> Option<(i64, Next)> {
        let lease = self.releasing.remove(broadcast)?;
        Some((lease, self.drop_held(lease)))
    }

    fn unused(&self, lease: i64) -> Next {
        let idle = !self.held.contains_key(&lease) && !self.stale.contains_key(&lease);
        if idle && self.record != Some(lease) {
            Next::LetGo
        } else {
            Next::Nothing
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_on_the_record_lease_need_no_keep_alive_of_their_own() {
        let mut l = Leases::default();
        l.set_record(Some(1));
        assert_eq!(l.hold(1), Next::Nothing);
        assert_eq!(l.hold(1), Next::Nothing);
        assert_eq!(l.drop_held(1), Next::Nothing);
        assert_eq!(l.drop_held(1), Next::Nothing);
        assert_eq!(l.on(1), 0);
    }

    #[test]
    fn an_adopted_lease_is_kept_while_held_and_let_go_after_its_last_claim() {
        let mut l = Leases::default();
        l.set_record(Some(1));
        assert_eq!(l.hold(7), Next::Keep);
        assert_eq!(l.hold(7), Next::Nothing);
        assert_eq!(l.on(7), 2);
        assert_eq!(l.drop_held(7), Next::Nothing);
        assert_eq!(l.drop_held(7), Next::LetGo);
        assert_eq!(l.drop_held(7), Next::Nothing, "once");
    }

    #[test]
    fn a_lease_is_let_go_only_when_no_stale_release_is_in_flight_on_it() {
        let mut l = Leases::default();
        l.set_record(Some(1));
        l.release_stale(7);
        l.release_stale(7);
        assert_eq!(l.hold(7), Next::Keep);
        assert_eq!(l.drop_held(7), Next::Nothing, "a release still in flight");
        assert_eq!(l.stale_released(7), Next::Nothing);
        assert_eq!(l.stale_released(7), Next::LetGo);
    }

    #[test]
    fn a_held_claims_release_counts_on_its_lease_until_it_is_done() {
        let mut l = Leases::default();
        l.set_record(Some(1));
        let claim = Claim {
            broadcast: "live/a".into(),
            lease_id: 7,
            fencing_token: 3,
            ..Claim::default()
        };
        assert_eq!(l.hold(7), Next::Keep);
        assert!(matches!(
            l.release_held("live/a", &claim),
            Action::Release {
                lease_id: 7,
                fencing_token: 3,
                ..
            }
        ));
        assert_eq!(l.on(7), 1, "counted while the release is in flight");
        assert_eq!(l.release_done("live/a"), Some((7, Next::LetGo)));
        assert_eq!(l.release_done("live/a"), None, "once");
        assert_eq!(l.release_done("live/b"), None, "a release of no held claim");
    }

    #[test]
    fn the_record_lease_is_never_let_go_here_and_each_lease_is_looked_at_once() {
        let mut l = Leases::default();
        l.set_record(Some(1));
        l.release_stale(1);
        assert_eq!(l.stale_released(1), Next::Nothing);
        assert!(!l.first_met(1));
        assert!(l.first_met(7));
        assert!(!l.first_met(7));
    }
}
