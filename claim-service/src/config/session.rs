//! The session rules the operator configures (lease TTL bounds, renewal,
//! the detach grace, the limits of one node), read from the flags.

use std::time::Duration;

use super::{Config, Takeover};
use crate::claims::Limits;

/// Session rules the operator configures.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub service_id: String,
    pub default_ttl: Duration,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub renew_interval: Duration,
    pub detach_grace: Duration,
    /// How long a new stream may take to send `hello`.
    pub hello_timeout: Duration,
    pub limits: Limits,
    /// Most sessions attached to this replica at once.
    pub max_sessions: usize,
    /// Lifecycle events one session may send per second (0: no limit).
    pub max_events_per_second: u32,
    /// Largest message a node may send, in bytes.
    pub max_message_size: usize,
}

impl SessionConfig {
    /// The TTL a node gets when it asks for `requested_ms` (0 = default):
    /// clamped to the bounds and rounded up to whole seconds, as etcd keeps it.
    pub fn lease_ttl(&self, requested_ms: u64) -> Duration {
        let asked = if requested_ms == 0 {
            self.default_ttl
        } else {
            Duration::from_millis(requested_ms)
        };
        let ttl = asked.clamp(self.min_ttl, self.max_ttl);
        Duration::from_secs(crate::store::ttl_seconds(ttl) as u64)
    }

    /// A lease of another TTL than the default is renewed at the same
    /// fraction of its TTL (a 60 s lease every 15 s with the defaults), and
    /// never less than four times per TTL.
    pub fn renew_for(&self, ttl: Duration) -> Duration {
        let fraction = self.renew_interval.as_secs_f64() / self.default_ttl.as_secs_f64();
        ttl.mul_f64(fraction).min(ttl / 4)
    }
}

impl Config {
    pub fn sessions(&self, service_id: String) -> SessionConfig {
        SessionConfig {
            service_id,
            default_ttl: self.lease_ttl,
            min_ttl: self.min_lease_ttl,
            max_ttl: self.max_lease_ttl,
            renew_interval: self.renew_interval(),
            detach_grace: self.detach_grace,
            hello_timeout: self.hello_timeout,
            limits: Limits {
                max_claims: self.limits.max_claims_per_node,
                max_tracks_per_broadcast: self.limits.max_tracks_per_broadcast,
                takeover: self.takeover == Takeover::Allow,
            },
            max_sessions: self.limits.max_sessions,
            max_events_per_second: self.limits.max_events_per_second,
            max_message_size: self.limits.max_message_size,
        }
    }
}
