#!/usr/bin/env bash
# Benchmarks the claim-service side by side with raw etcd-client against the
# same etcd, in the same run; prints a Markdown report (medians, p99, ratios).
# Four parts: the claim plane (claims-bench), the ingest node
# (ingest-bench), what hostile or careless neighbours cost a node's claims
# (neighbours-bench), and the media-server hooks front end beside a bare
# nginx-rtmp (hooks-bench). Set CLAIMS_BENCH_ARGS / INGEST_BENCH_ARGS /
# NEIGHBOURS_BENCH_ARGS / HOOKS_BENCH_ARGS to change their sizes, e.g.
# CLAIMS_BENCH_ARGS="--claims 1000 --held 100000" (failover of 100,000), or
# CLAIMS_BENCH_ARGS="--held 1000000 --hold-seconds 300 --held-only" (a
# million claims at the default lease for 5 minutes: about 8 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_build_and_test_tools
# h2load: a load generator in C for the read figures (part 4).
need_packages h2load:nghttp2-client
need_nginx_rtmp
# Many keep-alive streams and sockets: lift the open-file limit if allowed.
ulimit -n 65536 2>/dev/null || true
export CLAIMS_TEST_PROFILE=release
cargo build --release --locked -p claim-service -p ingest-node -p claimctl -p system-tests
export CLAIMS_TEST_BUILT=1
# shellcheck disable=SC2086
target/release/claims-bench ${CLAIMS_BENCH_ARGS:-}
echo
# shellcheck disable=SC2086
target/release/ingest-bench ${INGEST_BENCH_ARGS:-}
echo
# shellcheck disable=SC2086
target/release/neighbours-bench ${NEIGHBOURS_BENCH_ARGS:-}
echo
# shellcheck disable=SC2086
target/release/hooks-bench ${HOOKS_BENCH_ARGS:-}
