//! The store's job queue: one line per session, served in turn.
//!
//! A node that says hello listing 10,000 live tracks (or says goodbye to
//! as many claims) queues that many jobs at once. In one shared line,
//! another node's claim would wait behind all of them; here each session
//! has a line of its own and a worker takes up to a batch from the line
//! whose turn it is, then sends that line to the back. A line has at most
//! [`PER_LINE`] batches in flight, so one session cannot fill etcd's queue
//! either: another node's claim waits for a free worker and an etcd that
//! is not saturated by somebody else's burst. Many sessions still keep
//! every worker busy.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use tokio::sync::Notify;

/// Which line a job stands in: one per session.
pub type Line = u64;

/// Batches of one line in flight at once: few enough that one session's
/// burst leaves etcd's queue short for everybody else, enough that the
/// burst itself is not slower (its batches are up to 64 claims, one
/// transaction each). The trade, measured against one, four and no cap,
/// is in docs/PERFORMANCE.md.
pub const PER_LINE: usize = 2;

/// The line of the session `session_id`.
pub fn line_of(session_id: &str) -> Line {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    session_id.hash(&mut h);
    h.finish()
}

pub struct FairQueue<T> {
    lines: Mutex<Lines<T>>,
    ready: Notify,
}

struct Lines<T> {
    waiting: HashMap<Line, VecDeque<T>>,
    /// Lines with jobs and fewer than [`PER_LINE`] batches in flight, in
    /// the order they are served.
    turn: VecDeque<Line>,
    /// Batches in flight, by line.
    busy: HashMap<Line, usize>,
}

/// A batch taken from a line; the line gets its place back when dropped
/// (the batch is done).
pub struct Turn<'a, T> {
    queue: &'a FairQueue<T>,
    line: Line,
}

impl<T> Drop for Turn<'_, T> {
    fn drop(&mut self) {
        let mut lines = self.queue.lines.lock().unwrap_or_else(|p| p.into_inner());
        let busy = lines
            .busy
            .get_mut(&self.line)
            .expect("a line taken from is busy");
        *busy -= 1;
        let was_full = *busy + 1 == PER_LINE;
        if *busy == 0 {
            lines.busy.remove(&self.line);
        }
        let waiting = lines.waiting.contains_key(&self.line);
        if was_full && waiting {
            lines.turn.push_back(self.line);
            drop(lines);
            self.queue.ready.notify_one();
        }
    }
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        Self {
            lines: Mutex::new(Lines {
                waiting: HashMap::new(),
                turn: VecDeque::new(),
                busy: HashMap::new(),
            }),
            ready: Notify::new(),
        }
    }
}

impl<T> FairQueue<T> {
    pub fn push(&self, line: Line, job: T) {
        {
            let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
            let queue = lines.waiting.entry(line).or_default();
            queue.push_back(job);
            let first = queue.len() == 1;
            let full = lines.busy.get(&line).is_some_and(|b| *b >= PER_LINE);
            if first && !full {
                lines.turn.push_back(line);
            }
        }
        self.ready.notify_one();
    }

    /// Up to `max` jobs of the line whose turn it is, waiting for one; the
    /// line's place comes back when the [`Turn`] is dropped.
    pub async fn take(&self, max: usize) -> (Vec<T>, Turn<'_, T>) {
        loop {
            if let Some(taken) = self.try_take(max) {
                return taken;
            }
            self.ready.notified().await;
        }
    }

    fn try_take(&self, max: usize) -> Option<(Vec<T>, Turn<'_, T>)> {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        let line = lines.turn.pop_front()?;
        let queue = lines
            .waiting
            .get_mut(&line)
            .expect("a line in turn has jobs waiting");
        let jobs: Vec<T> = queue.drain(..max.min(queue.len())).collect();
        let empty = queue.is_empty();
        if empty {
            lines.waiting.remove(&line);
        }
        let busy = lines.busy.entry(line).or_default();
        *busy += 1;
        if !empty && *busy < PER_LINE {
            lines.turn.push_back(line);
        }
        let more = !lines.turn.is_empty();
        drop(lines);
        if more {
            // Pass the turn on, so an idle worker takes the next line.
            self.ready.notify_one();
        }
        Some((jobs, Turn { queue: self, line }))
    }

    /// Jobs waiting, in every line.
    #[cfg(test)]
    fn len(&self) -> usize {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.waiting.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_long_line_does_not_hold_up_another() {
        let queue = FairQueue::default();
        for i in 0..10_000 {
            queue.push(1, ("big", i));
        }
        queue.push(2, ("small", 0));
        let (first, turn) = queue.take(64).await;
        assert_eq!(first.len(), 64);
        assert!(first.iter().all(|(who, _)| *who == "big"));
        // The small line is served next, not after the 9,936 left.
        assert_eq!(queue.take(64).await.0, vec![("small", 0)]);
        assert_eq!(queue.len(), 10_000 - 64);
        drop(turn);
        let (next, _turn) = queue.take(64).await;
        assert_eq!(next[0], ("big", 64), "a line keeps its order");
    }

    #[tokio::test]
    async fn a_line_has_at_most_its_share_in_flight() {
        let queue = FairQueue::default();
        for i in 0..1_000 {
            queue.push(1, i);
        }
        let mut turns = Vec::new();
        for _ in 0..PER_LINE {
            turns.push(queue.take(64).await);
        }
        assert!(queue.try_take(64).is_none(), "a fifth batch of one line");
        // Another line is served meanwhile.
        queue.push(2, 7);
        assert_eq!(queue.try_take(64).map(|(jobs, _)| jobs), Some(vec![7]));
        // One batch done: the line is back in turn.
        turns.pop();
        let (jobs, _turn) = queue.try_take(64).expect("the line is back");
        assert_eq!(jobs[0], 64 * PER_LINE as i32);
    }

    #[tokio::test]
    async fn a_worker_waiting_wakes_for_a_job() {
        let queue = std::sync::Arc::new(FairQueue::default());
        let waiter = tokio::spawn({
            let queue = queue.clone();
            async move { queue.take(8).await.0 }
        });
        tokio::task::yield_now().await;
        queue.push(7, "job");
        let taken = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiting worker woke")
            .unwrap();
        assert_eq!(taken, vec!["job"]);
    }
}
