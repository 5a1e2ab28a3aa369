//! The report a soak writes (`report.md`): what it injected, how long the
//! stack took to be right again, releases, memory and file descriptors, and
//! every anomaly.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use super::faults::Fault;
use super::record::{summarize, Samples, Watched};
use super::releases::Releases;
use super::{Plan, RELEASED_WITHIN, RIGHT_WITHIN};
use crate::v1::claim_event::Kind;

/// Everything a run found, for its report.
pub(super) struct Findings<'a> {
    pub(super) plan: &'a Plan,
    pub(super) anomalies: &'a [String],
    pub(super) leaks: &'a [String],
    pub(super) watched: &'a Watched,
    /// How many `claimed` the nodes logged (each checked against etcd's).
    pub(super) told: usize,
    /// From the last publishers leaving until etcd held no claim.
    pub(super) all_released: Duration,
    pub(super) viewed: usize,
    pub(super) watched_to_end: usize,
    pub(super) counts: &'a BTreeMap<Fault, usize>,
    /// Per fault healed, how long until right again (`None`: not within
    /// the bound).
    pub(super) right_times: &'a [(Fault, Option<Duration>)],
    pub(super) final_right: &'a [Duration],
    pub(super) releases: &'a Releases,
    pub(super) samples: &'a Samples,
}

/// "p50 / p90 / max" of some times, in seconds.
fn spread(times: &[Duration]) -> String {
    let mut t = times.to_vec();
    t.sort();
    let at = |q: usize| t.get((t.len() * q / 100).min(t.len().saturating_sub(1)));
    let secs =
        |d: Option<&Duration>| d.map_or("-".to_string(), |d| format!("{:.1} s", d.as_secs_f64()));
    format!("{} / {} / {}", secs(at(50)), secs(at(90)), secs(t.last()))
}

pub(super) fn render(f: &Findings) -> String {
    let mut r = String::new();
    let claimed = f
        .watched
        .events
        .iter()
        .filter(|(_, e)| e.kind == Kind::Claimed as i32)
        .count();
    let _ = write!(
        r,
        "# Soak: seed {}, {:.0} min\n\n{} anomalies; {} watch events ({claimed} claims); last release {:.1} s after the last publisher left\n\n",
        f.plan.seed,
        f.plan.duration.as_secs_f64() / 60.0,
        f.anomalies.len(),
        f.watched.events.len(),
        f.all_released.as_secs_f64()
    );
    let _ = writeln!(
        r,
        "The nodes were told {} times that they hold a claim; each was checked against the watch history (that node, that broadcast, that token) and for tokens going back\n",
        f.told
    );
    let _ = writeln!(
        r,
        "{} HTTP-FLV viewers started at random nodes (redirected to the owner), {} decoded their 4 s to the end (a viewer of a broadcast that moved or ended meanwhile does not)\n",
        f.viewed, f.watched_to_end
    );
    // Time to right per fault kind: from its heal until every publisher
    // connected since before it owned its broadcast again (or another live
    // publisher of it did); faults overlap, so a later one can lengthen it.
    r.push_str("| fault | injected | time to right after heal: p50 / p90 / max | not right within the bound |\n| --- | --- | --- | --- |\n");
    for (fault, n) in f.counts {
        let of_kind = f.right_times.iter().filter(|(k, _)| k == fault);
        let done: Vec<Duration> = of_kind.clone().filter_map(|(_, t)| *t).collect();
        let missed = of_kind.filter(|(_, t)| t.is_none()).count();
        let _ = writeln!(r, "| {fault:?} | {n} | {} | {missed} |", spread(&done));
    }
    if !f.final_right.is_empty() {
        let _ = writeln!(
            r,
            "\nAfter the last heal, {} connected publishers owned their broadcasts again: p50 / p90 / max {} (bound {RIGHT_WITHIN:?})",
            f.final_right.len(),
            spread(f.final_right),
        );
    }
    let rel = f.releases;
    let _ = writeln!(
        r,
        "\nReleases after the last publisher of a broadcast left: {} judged against {RELEASED_WITHIN:?} (p50 / p90 / max {}); {} under an etcd fault, a cut or a follower outage, not judged ({}); {} of these publishers ended by themselves (the soak did not stop them); {} not timed (not owned by the leaving node then, or published again first). The follower's history was compacted away {} times.",
        rel.judged.len(),
        spread(&rel.judged),
        rel.excused.len(),
        spread(&rel.excused),
        rel.by_itself,
        rel.unjudged,
        f.watched.gaps.len(),
    );
    r.push_str("\n## Memory and file descriptors (first / after warm-up / last)\n\n| process | RSS MiB | fds |\n| --- | --- | --- |\n");
    for (name, (rss, fds)) in summarize(f.samples) {
        let _ = writeln!(r, "| {name} | {rss} | {fds} |");
    }
    r.push_str("\n## Anomalies\n\n");
    for a in f.anomalies.iter().chain(f.leaks) {
        let _ = writeln!(r, "- {a}");
    }
    r
}
