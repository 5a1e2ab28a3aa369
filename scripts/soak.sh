#!/usr/bin/env bash
# scripts/soak.sh [MINUTES] [SEED] — the randomized soak (tests/src/soak/):
# a 3-member etcd, 2 claim-service replicas and 3 ingest nodes, each in a
# network namespace of its own, real ffmpeg publishers and viewers coming and
# going, and overlapping faults chosen from SEED (kill -9, SIGTERM, SIGSTOP of
# replicas and nodes; an etcd member stopped; etcd's quorum lost; links cut,
# lossy, delayed, jittered and reordered; a replica's clock stepped; an etcd
# disk stalled; clients that stop reading) for MINUTES (default 60), then
# every fault heals and every claim is accounted for. Writes target/soak-SEED/
# {report.md,history.jsonl,samples.csv}; exits 1 on any anomaly (run the
# same SEED again to look at it), 2 when the stack could not run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_build_and_test_tools
# libfaketime: the soak steps a replica's wall clock with it.
need_packages "/usr/lib/$(uname -m)-linux-gnu/faketime/libfaketimeMT.so.1:libfaketime"
MINUTES=${1:-60}
SEED=${2:-1}
# The stack's binaries, the soak and the netem it runs in a host.
cargo build --release --locked -p claim-service -p ingest-node -p system-tests \
  --bin claim-service --bin ingest-node --bin soak --bin netem
export CLAIMS_TEST_PROFILE=release CLAIMS_TEST_BUILT=1
exec target/release/soak --minutes "$MINUTES" --seed "$SEED" --out "target/soak-$SEED"
