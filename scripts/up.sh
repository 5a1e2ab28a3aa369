#!/usr/bin/env bash
# Runs the stack on this machine: a single-member etcd (data under .run/,
# which git ignores) and the claim-service, built in release mode.
# Ctrl-C stops everything this script started.
#
# Ports (override with the environment): etcd 2379/2380, claim-service gRPC
# 50051, metrics 9464.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_build_and_test_tools
need_grpcurl

ETCD_PORT=${ETCD_PORT:-2379}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-2380}
CLAIMS_PORT=${CLAIMS_PORT:-50051}
METRICS_PORT=${METRICS_PORT:-9464}
RUN=.run
mkdir -p "$RUN"

echo ">> building (release)"
cargo build --release --locked -p claim-service

pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo ">> stopping"
  # The claim-service first, gracefully; then etcd.
  for ((i=${#pids[@]}-1; i>=0; i--)); do
    kill -TERM "${pids[$i]}" 2>/dev/null || true
    wait "${pids[$i]}" 2>/dev/null || true
  done
  echo ">> stopped; etcd data kept in $RUN/etcd (delete it for a clean start)"
  exit "${1:-0}"
}
trap stop INT TERM EXIT

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$ETCD_PORT" "$ETCD_PEER_PORT" "$CLAIMS_PORT" "$METRICS_PORT"; do
  port_free "$p" || { echo "port $p is in use: stop what holds it, or set ETCD_PORT / ETCD_PEER_PORT / CLAIMS_PORT / METRICS_PORT" >&2; exit 1; }
done

echo ">> starting etcd on 127.0.0.1:$ETCD_PORT (log: $RUN/etcd.log)"
etcd --name up --data-dir "$RUN/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "up=http://127.0.0.1:$ETCD_PEER_PORT" >"$RUN/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:$ETCD_PORT" endpoint health >/dev/null 2>&1 && break
  sleep 0.1
done

echo ">> starting claim-service on 127.0.0.1:$CLAIMS_PORT (log: $RUN/claim-service.log)"
CLAIMS_LISTEN="127.0.0.1:$CLAIMS_PORT" \
CLAIMS_METRICS_LISTEN="127.0.0.1:$METRICS_PORT" \
CLAIMS_ETCD_ENDPOINTS="http://127.0.0.1:$ETCD_PORT" \
  target/release/claim-service >"$RUN/claim-service.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  grep -q "etcd reachable: SERVING" "$RUN/claim-service.log" 2>/dev/null && break
  kill -0 "${pids[1]}" 2>/dev/null || { cat "$RUN/claim-service.log"; exit 1; }
  sleep 0.1
done

cat <<TXT

The stack is up.
  etcd            http://127.0.0.1:$ETCD_PORT
  claim-service   127.0.0.1:$CLAIMS_PORT (gRPC, plaintext)
  metrics         http://127.0.0.1:$METRICS_PORT/metrics

Try, from another terminal:
  grpcurl -plaintext 127.0.0.1:$CLAIMS_PORT list
  grpcurl -plaintext 127.0.0.1:$CLAIMS_PORT describe claims.v1.Ownership
  grpcurl -plaintext -d @ 127.0.0.1:$CLAIMS_PORT claims.v1.ClaimSessions/Attach <<'EOF2'
  {"hello":{"node_id":"node-a","endpoints":{"rtmp":"rtmp://127.0.0.1:1935","http":"http://127.0.0.1:8080"}}}
  {"created":{"broadcast":"live/cam1","track":"video"}}
  EOF2
  grpcurl -plaintext -d '{"broadcast":"live/cam1"}' 127.0.0.1:$CLAIMS_PORT claims.v1.Ownership/GetOwner
  grpcurl -plaintext -d '{}' 127.0.0.1:$CLAIMS_PORT claims.v1.Ownership/WatchClaims
  ETCDCTL_API=3 etcdctl --endpoints http://127.0.0.1:$ETCD_PORT get --prefix /claims/v1/
  curl -s http://127.0.0.1:$METRICS_PORT/metrics | grep ^claims_

Ctrl-C stops everything.
TXT
tail -n 0 -f "$RUN/claim-service.log" &
pids=("${pids[@]:0:2}" "$!")
# Stop when Ctrl-C comes, or when either service dies.
while kill -0 "${pids[0]}" 2>/dev/null && kill -0 "${pids[1]}" 2>/dev/null; do
  sleep 1
done
echo ">> a service exited; see $RUN/*.log" >&2
stop 1
