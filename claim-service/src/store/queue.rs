//! The store's job queue: one line per session, served in turn.
//!
//! A node that says hello listing 10,000 live tracks (or says goodbye to
//! as many claims) queues that many jobs at once. In one shared line,
//! another node's claim would wait behind all of them; here each session
//! has a line of its own and a worker takes up to a batch from the line
//! whose turn it is, then sends that line to the back. Another node's
//! claim waits for one batch per busy line, not for the whole hello.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use tokio::sync::Notify;

/// Which line a job stands in: one per session.
pub type Line = u64;

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
    /// Lines with jobs, in the order they are served.
    turn: VecDeque<Line>,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        Self {
            lines: Mutex::new(Lines {
                waiting: HashMap::new(),
                turn: VecDeque::new(),
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
            if queue.len() == 1 {
                lines.turn.push_back(line);
            }
        }
        self.ready.notify_one();
    }

    /// Up to `max` jobs of the line whose turn it is, waiting for one.
    pub async fn take(&self, max: usize) -> Vec<T> {
        loop {
            if let Some(jobs) = self.try_take(max) {
                return jobs;
            }
            self.ready.notified().await;
        }
    }

    fn try_take(&self, max: usize) -> Option<Vec<T>> {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        let line = lines.turn.pop_front()?;
        let queue = lines
            .waiting
            .get_mut(&line)
            .expect("a line in turn has jobs waiting");
        let jobs: Vec<T> = queue.drain(..max.min(queue.len())).collect();
        if queue.is_empty() {
            lines.waiting.remove(&line);
        } else {
            lines.turn.push_back(line);
        }
        let more = !lines.turn.is_empty();
        drop(lines);
        if more {
            // Pass the turn on, so an idle worker takes the next line.
            self.ready.notify_one();
        }
        Some(jobs)
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
        let first = queue.take(64).await;
        assert_eq!(first.len(), 64);
        assert!(first.iter().all(|(who, _)| *who == "big"));
        // The small line is served next, not after the 9,936 left.
        assert_eq!(queue.take(64).await, vec![("small", 0)]);
        assert_eq!(queue.len(), 10_000 - 64);
        let next = queue.take(64).await;
        assert_eq!(next[0], ("big", 64), "a line keeps its order");
    }

    #[tokio::test]
    async fn a_worker_waiting_wakes_for_a_job() {
        let queue = std::sync::Arc::new(FairQueue::default());
        let waiter = tokio::spawn({
            let queue = queue.clone();
            async move { queue.take(8).await }
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
