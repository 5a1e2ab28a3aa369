//! The fuzz targets of `system_tests::fuzz`, bounded for every test run:
//! random inputs under proptest (`CLAIMS_FUZZ_CASES` scales them), then
//! every input kept in `fuzz/corpus/` (seeds, and whatever libFuzzer found
//! worth keeping in `scripts/fuzz.sh` runs).

use std::path::PathBuf;

use proptest::prelude::*;
use system_tests::fuzz;

/// `default` cases (times `CLAIMS_FUZZ_CASES` when set); failures are
/// reported, not persisted (the corpus is where inputs are kept).
fn bounded(default: u32) -> ProptestConfig {
    let cases = std::env::var("CLAIMS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .map(|scale| default.saturating_mul(scale).max(1))
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut inputs: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .map(|p| {
            let data = std::fs::read(&p).expect("corpus file readable");
            (p, data)
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no corpus in {}", dir.display());
    inputs
}

fn replay(target: &str, run: fn(&[u8])) {
    for (path, data) in corpus(target) {
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{target} fails on {}", path.display());
    }
}

#[test]
fn session_corpus() {
    replay("session", fuzz::session);
}

#[test]
fn names_corpus() {
    replay("names", fuzz::names);
}

#[test]
fn rtmp_corpus() {
    replay("rtmp", fuzz::rtmp);
}

proptest! {
    #![proptest_config(bounded(3000))]
    #[test]
    fn session_under_random_programs(data in proptest::collection::vec(any::<u8>(), 0..800)) {
        fuzz::session(&data);
    }
}

proptest! {
    #![proptest_config(bounded(500))]
    /// Random programs seldom build an owner, a standby and a takeover
    /// with the right token: these start from the seed that does, with a
    /// few bytes changed and random steps after it.
    #[test]
    fn session_under_mutated_takeovers(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        tail in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut data = session_seed("seed-takeover");
        for (at, byte) in flips {
            let i = at.index(data.len());
            data[i] = byte;
        }
        data.extend(tail);
        fuzz::session(&data);
    }
}

fn session_seed(name: &str) -> Vec<u8> {
    corpus("session")
        .into_iter()
        .find(|(p, _)| p.ends_with(name))
        .map(|(_, d)| d)
        .unwrap_or_else(|| panic!("fuzz/corpus/session/{name}"))
}

proptest! {
    #![proptest_config(bounded(2000))]
    #[test]
    fn hooks_under_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        fuzz::hooks(&data);
    }

    /// Near-valid bodies: JSON and form fields the parsers look for, with
    /// hostile values.
    #[test]
    fn hooks_under_near_valid_bodies(
        action in "(on_publish|on_unpublish|on_play|publish|read|unpublish|incoming|outgoing|opening|closing|update_publish|publish_done|play|x)",
        name in "[a-z0-9./~_ %&=\\\\\"-]{0,40}",
    ) {
        let form = format!("call={action}&app=live&name={name}&clientid=1&addr=a%2Fb&tcurl=");
        let srs = format!(r#"{{"action":"{action}","client_id":"1","app":"live","stream":"{name}"}}"#);
        let mtx = format!(r#"{{"action":"{action}","path":"{name}"}}"#);
        let ome = format!(r#"{{"client":{{"address":"a","port":1}},"request":{{"direction":"{action}","status":"opening","url":"rtmp://h/{name}"}}}}"#);
        for body in [form, srs, mtx, ome] {
            fuzz::hooks(body.as_bytes());
        }
    }
}

proptest! {
    #![proptest_config(bounded(5000))]
    #[test]
    fn names_under_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        fuzz::names(&data);
    }

    #[test]
    fn names_under_near_valid_text(text in "[a-z0-9./~_ -]{0,40}(/[A-Za-z.]{0,5}){0,4}") {
        fuzz::names(text.as_bytes());
    }
}

proptest! {
    #![proptest_config(bounded(300))]
    #[test]
    fn rtmp_under_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
        fuzz::rtmp(&data);
    }

    #[test]
    fn rtmp_under_mutated_publishes(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
        let mut data = seed();
        for (at, byte) in flips {
            let i = at.index(data.len());
            data[i] = byte;
        }
        data.truncate(cut.index(data.len() + 1));
        fuzz::rtmp(&data);
    }
}

/// The recorded publish (the rtmp corpus's seed).
fn seed() -> Vec<u8> {
    corpus("rtmp")
        .into_iter()
        .find(|(p, _)| p.ends_with("seed-publish"))
        .map(|(_, d)| d)
        .expect("fuzz/corpus/rtmp/seed-publish")
}

/// Writes the seeds: `cargo test -p system-tests --test fuzz -- --ignored`.
#[test]
#[ignore]
fn write_seeds() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for t in ["session", "names", "rtmp"] {
        std::fs::create_dir_all(root.join(t)).unwrap();
    }
    std::fs::write(root.join("rtmp/seed-publish"), fuzz::rtmp_seed()).unwrap();
    // Node a: created live/a video, etcd answers, closed; node b created
    // live/a (conflict), a goodbye, b claims after the release.
    let program: &[u8] = &[
        0, 0, 0, 6, 0, 1, 128, 0, 0, 6, 0, 1, 2, 0, 0, 6, 0, 1, 6, 0, 1,
    ];
    std::fs::write(root.join("session/seed-claim-conflict-release"), program).unwrap();
    std::fs::write(
        root.join("session/seed-detach-grace"),
        [0, 0, 1, 6, 0, 1, 11, 12, 6, 0, 1],
    )
    .unwrap();
    std::fs::write(
        root.join("session/seed-lost-retry"),
        [0, 1, 0, 6, 0, 1, 10, 0, 6, 0, 0, 13, 0, 6, 0, 1],
    )
    .unwrap();
    // a claims live/a, b stands by, b asks for a takeover with a's token,
    // a lets go, b claims it.
    std::fs::write(
        root.join("session/seed-takeover"),
        [
            0, 0, 0, 6, 0, 1, 6, 0, 1, 6, 0, 1, 128, 0, 0, 6, 0, 1, 132, 0, 0, 3, 0, 6, 0, 1, 6, 0,
            1, 6, 0, 1,
        ],
    )
    .unwrap();
    for (name, text) in [
        ("seed-broadcast", "live/cam1"),
        ("seed-dotdot", "live/../etc"),
        ("seed-node", "ingest-a"),
        ("seed-endpoints", "rtmp\0rtmp://a:1935\0http\0http://a:8080"),
    ] {
        std::fs::write(root.join("names").join(name), text).unwrap();
    }
}
