#!/usr/bin/env bash
# Counts the instructions the claim-service spends on one GetOwner, from the
# cache and `consistent`, under callgrind: a figure that does not move with
# the machine's load, unlike the reads per second of scripts/bench.sh. Use it
# to tell whether a change to the read path made it cheaper.
#
# It starts its own etcd (temporary data dir), writes one claim record
# straight into it, runs the release claim-service under
# `valgrind --tool=callgrind`, warms it up with h2load, then counts the
# service's instructions over READS requests (default 20000) at IN_FLIGHT
# (default 64) and prints instructions per request for each mode. Only the
# claim-service is counted; etcd's own work on a `consistent` read is not.
#
# Usage: scripts/read-cost.sh            (READS=... IN_FLIGHT=... to change)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_build_and_test_tools
need_packages h2load:nghttp2-client valgrind:valgrind callgrind_control:valgrind
READS=${READS:-20000}
IN_FLIGHT=${IN_FLIGHT:-64}
cargo build --release --locked -p claim-service

work=$(mktemp -d /tmp/claims-read-cost.XXXXXX)
etcd_port=$(free_port)
peer_port=$(free_port)
grpc_port=$(free_port)
metrics_port=$(free_port)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do { kill -9 "$pid" && wait "$pid"; } 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

start_etcd read-cost "$work/etcd" "http://127.0.0.1:$etcd_port" "$peer_port" "$work/etcd.log"
pids+=("$ETCD_PID")
# One claim, as a claim-service would write it (no lease: nothing expires it
# while the reads run).
ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$etcd_port" put /claims/v1/broadcasts/read/cost \
  '{"node_id":"node-a","endpoints":{"rtmp":"rtmp://node-a:1935"},"session_id":"s","service_id":"read-cost","claimed_at_unix_ms":1790000000000,"lease_ttl_ms":10000}' >/dev/null

valgrind --tool=callgrind --dump-instr=no --callgrind-out-file="$work/callgrind.%p.%n" \
  target/release/claim-service --listen "127.0.0.1:$grpc_port" \
  --metrics-listen "127.0.0.1:$metrics_port" \
  --etcd-endpoints "http://127.0.0.1:$etcd_port" >"$work/service.log" 2>&1 &
service=$!
pids+=("$service")

# GetOwnerRequest{broadcast: "read/cost", consistent} in a gRPC frame.
printf '\x00\x00\x00\x00\x0b\x0a\x09read/cost' >"$work/cache.bin"
printf '\x00\x00\x00\x00\x0d\x0a\x09read/cost\x10\x01' >"$work/consistent.bin"
reads() { # MODE COUNT: prints how many succeeded
  h2load -n "$2" -c 1 -m "$IN_FLIGHT" -H 'content-type: application/grpc' -H 'te: trailers' \
    -d "$work/$1.bin" "http://127.0.0.1:$grpc_port/claims.v1.Ownership/GetOwner" |
    sed -n 's/.* \([0-9]*\) succeeded.*/\1/p'
}
# Up (slowly, under valgrind) and serving the claim from its cache.
for _ in $(seq 600); do
  [[ $(reads cache 1 2>/dev/null) == 1 ]] && break
  kill -0 "$service" 2>/dev/null || { cat "$work/service.log" >&2; exit 1; }
  sleep 0.2
done
[[ $(reads cache 1) == 1 ]] || { echo "claim-service never answered GetOwner" >&2; exit 1; }

echo "| GetOwner ($IN_FLIGHT in flight, $READS reads) | claim-service instructions per read |"
echo "| --- | --- |"
for mode in cache consistent; do
  reads "$mode" 2000 >/dev/null
  callgrind_control --zero "$service" >/dev/null 2>&1
  done_reads=$(reads "$mode" "$READS")
  [[ $done_reads == "$READS" ]] || { echo "$mode: only ${done_reads:-0} of $READS reads succeeded" >&2; exit 1; }
  rm -f "$work"/callgrind.*
  callgrind_control --dump "$service" >/dev/null 2>&1
  for _ in $(seq 50); do compgen -G "$work/callgrind.*" >/dev/null && break; sleep 0.1; done
  sleep 0.5
  total=$(awk '/^(summary|totals):/ {print $2; exit}' "$work"/callgrind.* 2>/dev/null || true)
  [[ -n $total ]] || { echo "$mode: callgrind wrote no counts" >&2; exit 1; }
  echo "| $mode | $((total / READS)) |"
done
