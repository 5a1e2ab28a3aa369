#!/usr/bin/env bash
# Benchmarks the claim-service side by side with raw etcd-client against the
# same etcd, in the same run; prints a Markdown report (medians, p99, ratios).
# Arguments go to the benchmark, e.g. scripts/bench.sh --claims 1000 --held 10000
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_build_and_test_tools
# Many keep-alive streams and sockets: lift the open-file limit if allowed.
ulimit -n 65536 2>/dev/null || true
export CLAIMS_TEST_PROFILE=release
cargo build --release --locked -p claim-service -p system-tests
exec target/release/claims-bench "$@"
