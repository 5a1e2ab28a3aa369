#!/usr/bin/env bash
# The fault-injection suite on its own, each scenario run N times with
# randomized timing (default 5; CI runs it twice as part of scripts/test.sh),
# one test at a time, then the report: per scenario, the time until the
# system was right again (median, max), RELEASED events seen and anomalies
# the checker found. Needs root for the network-namespace partitions.
#   scripts/faults.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_build_and_test_tools
export CLAIMS_FAULT_RUNS=${1:-5}
rm -f target/fault-report.md
cargo test --locked -p system-tests --test faults --test failover --test partitions -- --test-threads 1
echo
echo "| scenario | runs | time to right (median) | (max) | RELEASED seen | anomalies |"
echo "| --- | --- | --- | --- | --- | --- |"
cat target/fault-report.md
