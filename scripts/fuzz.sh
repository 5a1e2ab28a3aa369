#!/usr/bin/env bash
# Runs the fuzz targets under libFuzzer (cargo fuzz), each for SECONDS, and
# prints executions and findings per target.
#
#   scripts/fuzz.sh [SECONDS] [TARGET ...]      default: 60 s, session names rtmp
#   KEEP=1 scripts/fuzz.sh 600                  also merge new coverage into fuzz/corpus/
#
# The same targets run bounded in every test run (tests/tests/fuzz.rs, under
# proptest and over fuzz/corpus/). cargo fuzz needs nightly flags; this
# script sets RUSTC_BOOTSTRAP=1 on the one stable toolchain. A crash leaves
# its input in fuzz/artifacts/TARGET/; copy it into fuzz/corpus/TARGET/ once
# fixed, so that every test run replays it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_build_and_test_tools
seconds=${1:-60}
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(session names rtmp hooks)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1

report=()
for t in "${targets[@]}"; do
  work=$(mktemp -d)
  log=$(mktemp)
  echo ">> fuzzing $t for ${seconds}s (corpus fuzz/corpus/$t)"
  status=0
  (cd fuzz && cargo fuzz run --sanitizer address "$t" "$work" "corpus/$t" -- \
    -max_total_time="$seconds" -print_final_stats=1 -timeout=20 -rss_limit_mb=4096) >"$log" 2>&1 || status=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || true)
  if [[ $status -eq 0 ]]; then verdict="no crash"; else verdict="FAILED (exit $status): see fuzz/artifacts/$t/"; tail -40 "$log"; fi
  report+=("| $t | ${seconds} s | ${execs:-?} | ${cov:-?} | $verdict |")
  if [[ ${KEEP:-0} == 1 && $status -eq 0 ]]; then
    # Adds only inputs that reach new coverage; the seeds stay as they are.
    before=$(ls "fuzz/corpus/$t" | wc -l)
    (cd fuzz && cargo fuzz run "$t" "corpus/$t" "$work" -- -merge=1 >/dev/null 2>&1 || true)
    echo "   kept $(( $(ls "fuzz/corpus/$t" | wc -l) - before )) new inputs in fuzz/corpus/$t"
  fi
  rm -rf "$work" "$log"
done
echo
echo "| target | time | executions | coverage (edges) | result |"
echo "| --- | --- | --- | --- | --- |"
printf '%s\n' "${report[@]}"
