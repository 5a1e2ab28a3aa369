#!/usr/bin/env bash
# scripts/compat.sh OLD_REF: runs mixed fleets of OLD_REF (a commit or tag)
# and this tree against one real etcd, and prints the matrix:
#   old node <-> new replicas    new node <-> old replicas
#   one old and one new replica, sessions moving between them
# each checked over the WatchClaims history (tokens never go back, one
# holder at a time, nothing released while published) and over what every
# node says it holds at the end.
#
# OLD_REF is built beside this tree: exported (git archive) into
# target/compat/COMMIT/src, built with its own target directory
# (target/compat/COMMIT/target), once; later runs reuse that build. CI does
# not run this (a cold build of an old ref takes longer than its budget).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_build_and_test_tools

old=${1:-}
[[ -n $old ]] || { echo "usage: scripts/compat.sh OLD_REF (a commit or tag)" >&2; exit 2; }
rev=$(git rev-parse --verify -q "$old^{commit}") || { echo "compat: $old is not a commit here" >&2; exit 2; }
dir=target/compat/${rev:0:12}
if [[ ! -x $dir/target/debug/claim-service || ! -x $dir/target/debug/ingest-node ]]; then
  echo ">> building $old (${rev:0:12}) in $dir"
  rm -rf "$dir/src"
  mkdir -p "$dir/src"
  git archive "$rev" | tar -x -C "$dir/src"
  (cd "$dir/src" && CLAIMS_GIT_COMMIT=$rev CARGO_TARGET_DIR="$PWD/../target" \
    cargo build --locked --bins >"$PWD/../build.log" 2>&1) ||
    { tail -30 "$dir/build.log" >&2; exit 1; }
fi
echo ">> building this tree"
cargo build --locked --bins
cargo build --locked -p system-tests --tests
echo ">> mixed fleets: $old (${rev:0:12}) and $(git rev-parse --short HEAD)"
CLAIMS_COMPAT_OLD="$PWD/$dir/target/debug" CLAIMS_COMPAT_OLD_NAME="$old" CLAIMS_TEST_BUILT=1 \
  cargo test --locked -p system-tests --test compat -- --ignored --nocapture --test-threads 1 2>&1 |
  tee target/compat/last.log || true
echo ">> the matrix ($old against $(git rev-parse --short HEAD))"
echo "| cell | result |"
echo "| --- | --- |"
grep -o 'compat |.*|' target/compat/last.log | sed 's/^compat //' || true
grep -q '^test result: ok' target/compat/last.log
