//! What a soak writes down: the history (every fault, heal, publisher and
//! watch event, for replaying a seed), the watch events for the checker,
//! samples of each process's memory and open files, and the leak check.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::lock;
use super::stack::Stack;

/// A watch that could not be opened is tried at the next replica after
/// this; samples are taken this often.
const RECONNECT_AFTER: Duration = Duration::from_millis(200);
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
use crate::*;

/// Every fault, heal, publisher and watch event, one JSON line each, with
/// seconds since the start: what a failure is replayed and read from.
pub(super) struct History {
    pub(super) file: StdMutex<std::io::BufWriter<std::fs::File>>,
    pub(super) start: Instant,
}

impl History {
    pub(super) fn log(&self, what: &str, detail: serde_json::Value) {
        let line = json!({"t": self.start.elapsed().as_secs_f64(), "what": what, "detail": detail});
        let mut f = lock(&self.file);
        let _ = writeln!(f, "{line}");
    }

    pub(super) fn flush(&self) {
        let _ = lock(&self.file).flush();
    }
}

/// What the follower saw: every event with when it arrived, when it was
/// not following (its events then arrive late), and where etcd's history
/// was compacted past it (events before and after such a gap do not
/// connect).
#[derive(Default)]
pub(super) struct Watched {
    pub(super) events: Vec<(Instant, v1::ClaimEvent)>,
    pub(super) outages: Vec<(Instant, Instant)>,
    /// Indexes into `events` where a segment after a gap starts.
    pub(super) gaps: Vec<usize>,
}

impl Watched {
    /// The events in segments that each connect.
    pub(super) fn segments(&self) -> Vec<Vec<v1::ClaimEvent>> {
        let mut cuts = vec![0];
        cuts.extend(&self.gaps);
        cuts.push(self.events.len());
        cuts.windows(2)
            .map(|w| {
                self.events[w[0]..w[1]]
                    .iter()
                    .map(|(_, e)| e.clone())
                    .collect()
            })
            .collect()
    }
}

/// Follows `WatchClaims` from whichever replica answers, resuming from the
/// revision after the last event seen (or from now, where etcd compacted
/// it away), until `stop`.
pub(super) async fn follow(
    addrs: Vec<String>,
    watched: Arc<StdMutex<Watched>>,
    history: Arc<History>,
    stop: CancellationToken,
) {
    let mut next = 0usize;
    let mut from = 0i64;
    let mut down_since: Option<Instant> = None;
    while !stop.is_cancelled() {
        let addr = addrs[next % addrs.len()].clone();
        next += 1;
        let stream = async {
            let channel = tonic::transport::Endpoint::from_shared(addr)?
                .connect_timeout(Duration::from_secs(2))
                .http2_keep_alive_interval(Duration::from_secs(1))
                .keep_alive_timeout(Duration::from_secs(2))
                .connect()
                .await?;
            let mut client = v1::ownership_client::OwnershipClient::new(channel);
            Ok::<_, anyhow::Error>(
                client
                    .watch_claims(v1::WatchClaimsRequest {
                        prefix: String::new(),
                        start_revision: from,
                    })
                    .await?
                    .into_inner(),
            )
        };
        let mut stream = match tokio::time::timeout(Duration::from_secs(3), stream).await {
            Ok(Ok(s)) => s,
            _ => {
                down_since.get_or_insert_with(Instant::now);
                tokio::time::sleep(RECONNECT_AFTER).await;
                continue;
            }
        };
        if let Some(since) = down_since.take() {
            lock(&watched).outages.push((since, Instant::now()));
        }
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = stop.cancelled() => return,
            };
            match msg {
                Ok(Some(e)) => {
                    from = e.revision + 1;
                    let c = e.claim.clone().unwrap_or_default();
                    history.log(
                        "watched",
                        json!({"kind": e.kind, "broadcast": c.broadcast, "node": c.node_id, "token": c.fencing_token, "revision": e.revision}),
                    );
                    lock(&watched).events.push((Instant::now(), e));
                }
                Err(s) if s.code() == tonic::Code::OutOfRange => {
                    history.log(
                        "watch-history-lost",
                        json!({"from": from, "said": s.message()}),
                    );
                    let mut w = lock(&watched);
                    let at = w.events.len();
                    w.gaps.push(at);
                    from = 0;
                    down_since = Some(Instant::now());
                    break;
                }
                Ok(None) | Err(_) => {
                    down_since = Some(Instant::now());
                    history.log("watch-resumes", json!({"from": from}));
                    break;
                }
            }
        }
    }
}

pub(super) type Samples = Vec<(String, u64, usize)>;

/// Every 5 s, each process's RSS (bytes) and open fds, until `stop`.
pub(super) async fn sample(stack: Arc<Stack>, path: PathBuf, stop: CancellationToken) -> Samples {
    let mut out = Vec::new();
    let mut csv = std::fs::File::create(&path).ok();
    if let Some(f) = csv.as_mut() {
        let _ = writeln!(f, "seconds,process,rss_bytes,fds");
    }
    let start = Instant::now();
    while !stop.is_cancelled() {
        for (name, pid) in stack.pids().await {
            let (Ok(rss), Ok(fds)) = (rss(pid), open_files(pid)) else {
                continue;
            };
            if let Some(f) = csv.as_mut() {
                let _ = writeln!(f, "{:.0},{name},{rss},{fds}", start.elapsed().as_secs_f64());
            }
            out.push((name, rss, fds));
        }
        tokio::select! {
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            _ = stop.cancelled() => {}
        }
    }
    out
}

/// Per process: RSS and fds first, after warm-up (a quarter in) and last.
pub(super) fn summarize(samples: &Samples) -> BTreeMap<String, (String, String)> {
    let mut by: BTreeMap<String, Vec<(u64, usize)>> = BTreeMap::new();
    for (name, rss, fds) in samples {
        by.entry(name.clone()).or_default().push((*rss, *fds));
    }
    by.into_iter()
        .map(|(name, s)| {
            let pick = |i: usize| s[i.min(s.len() - 1)];
            let (a, b, c) = (pick(0), pick(s.len() / 4), pick(s.len() - 1));
            (
                name,
                (
                    format!("{} / {} / {}", a.0 >> 20, b.0 >> 20, c.0 >> 20),
                    format!("{} / {} / {}", a.1, b.1, c.1),
                ),
            )
        })
        .collect()
}

/// A process whose RSS or fds grew past warm-up by more than a bound:
/// RSS by half and 64 MiB, fds by 50 (a restarted process starts over,
/// so only a long enough series is judged).
pub(super) fn leak_check(samples: &Samples) -> Vec<String> {
    let mut by: BTreeMap<&str, Vec<(u64, usize)>> = BTreeMap::new();
    for (name, rss, fds) in samples {
        by.entry(name).or_default().push((*rss, *fds));
    }
    let mut found = Vec::new();
    for (name, s) in by {
        if s.len() < 12 {
            continue;
        }
        let warm = &s[s.len() / 4..s.len() / 2];
        let late = &s[s.len() * 3 / 4..];
        let median = |v: &[(u64, usize)], f: fn(&(u64, usize)) -> u64| {
            let mut x: Vec<u64> = v.iter().map(f).collect();
            x.sort();
            x[x.len() / 2]
        };
        let (rss_warm, rss_late) = (median(warm, |s| s.0), median(late, |s| s.0));
        let (fds_warm, fds_late) = (median(warm, |s| s.1 as u64), median(late, |s| s.1 as u64));
        if rss_late > rss_warm + rss_warm / 2 && rss_late > rss_warm + (64 << 20) {
            found.push(format!(
                "{name}: RSS grew from {} MiB to {} MiB after warm-up",
                rss_warm >> 20,
                rss_late >> 20
            ));
        }
        if fds_late > fds_warm + 50 {
            found.push(format!(
                "{name}: open fds grew from {fds_warm} to {fds_late} after warm-up"
            ));
        }
    }
    found
}
