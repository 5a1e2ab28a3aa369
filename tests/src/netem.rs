//! Delay, jitter and reordering in userspace: the kernel here has no
//! `sch_netem`, so a host's outgoing packets are queued to a process of its
//! own (an iptables `NFQUEUE` rule, [`Lab::shape`](crate::netns::Lab::shape))
//! that lets each go after a delay ± jitter, and a share at once, overtaking
//! the ones held (reordering, as netem's `reorder`). Jitter wider than the
//! gap between packets reorders them too, as netem's does.
//!
//! It runs inside the host (the `netem` binary) for a bounded time, then
//! lets every held packet go and exits; the rule's `--queue-bypass` lets
//! packets pass untouched whenever no such process listens (before it
//! starts, after it ends, if it is killed).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::soak::Rng;

/// How a link misbehaves.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub delay: Duration,
    /// Each packet's delay is `delay` ± up to this, uniformly.
    pub jitter: Duration,
    /// This share of packets (percent) goes at once.
    pub reorder_percent: u64,
}

impl Shape {
    /// When a packet that arrived at `now` goes, from one random draw.
    pub fn release(&self, now: Instant, roll: u64) -> Instant {
        if roll % 100 < self.reorder_percent {
            return now;
        }
        let jitter = self.jitter.as_micros() as u64;
        let spread = (roll >> 8) % (2 * jitter + 1);
        let delay = self.delay.as_micros() as u64 + spread;
        now + Duration::from_micros(delay.saturating_sub(jitter))
    }
}

/// What one run did.
#[derive(Debug, Default)]
pub struct Stats {
    pub held: u64,
    pub passed_at_once: u64,
    pub most_held_at_once: usize,
}

/// How often the queue is read and due packets let go when nothing
/// arrives (the delays' resolution).
const TICK: Duration = Duration::from_millis(1);

/// Shapes the packets the host queues to `queue` for `length`, then lets
/// every held packet go. Needs CAP_NET_ADMIN in the host's namespace.
pub fn run(queue: u16, shape: Shape, seed: u64, length: Duration) -> Result<Stats> {
    let mut q = nfq::Queue::open().context("cannot open a netfilter queue socket")?;
    q.bind(queue)
        .with_context(|| format!("cannot bind netfilter queue {queue}"))?;
    // Only the verdict matters: the kernel keeps the packets.
    q.set_copy_range(queue, 0)?;
    q.set_recv_gso(queue, true)?;
    q.set_queue_max_len(queue, 65_535)?;
    // A queue that overflows passes packets rather than dropping them:
    // loss is a fault of its own.
    q.set_fail_open(queue, true)?;
    q.set_nonblocking(true);
    let mut rng = Rng::new(seed);
    let mut held: BTreeMap<(Instant, u64), nfq::Message> = BTreeMap::new();
    let mut stats = Stats::default();
    let ends = Instant::now() + length;
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        loop {
            match q.recv() {
                Ok(mut msg) => {
                    msg.set_verdict(nfq::Verdict::Accept);
                    let at = shape.release(now, rng.next_u64());
                    if at <= now {
                        stats.passed_at_once += 1;
                        q.verdict(msg)?;
                    } else {
                        stats.held += 1;
                        held.insert((at, seq), msg);
                        seq += 1;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("reading the netfilter queue"),
            }
        }
        stats.most_held_at_once = stats.most_held_at_once.max(held.len());
        while let Some(due) = held.first_entry() {
            if due.key().0 > now {
                break;
            }
            q.verdict(due.remove())?;
        }
        if now >= ends {
            break;
        }
        std::thread::sleep(TICK);
    }
    for msg in held.into_values() {
        q.verdict(msg)?;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_goes_within_delay_and_jitter_or_at_once() {
        let shape = Shape {
            delay: Duration::from_millis(100),
            jitter: Duration::from_millis(30),
            reorder_percent: 20,
        };
        let now = Instant::now();
        let mut rng = Rng::new(7);
        let (mut at_once, mut early, mut late) = (0, false, false);
        for _ in 0..10_000 {
            let after = shape.release(now, rng.next_u64()) - now;
            if after.is_zero() {
                at_once += 1;
                continue;
            }
            assert!(after >= Duration::from_millis(70) && after <= Duration::from_millis(130));
            early |= after < Duration::from_millis(80);
            late |= after > Duration::from_millis(120);
        }
        assert!((1_500..2_500).contains(&at_once), "{at_once} at once");
        assert!(early && late, "the jitter spreads both ways");
    }

    #[test]
    fn a_delay_shorter_than_its_jitter_never_goes_back_in_time() {
        let shape = Shape {
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(50),
            reorder_percent: 0,
        };
        let now = Instant::now();
        let mut rng = Rng::new(1);
        for _ in 0..1_000 {
            assert!(shape.release(now, rng.next_u64()) >= now);
        }
    }
}
