#!/usr/bin/env bash
# Runs the stack on this machine: a single-member etcd (data under .run/,
# which git ignores), the claim-service, and two ingest nodes, built in
# release mode. Ctrl-C stops everything this script started, in order: the
# ingest nodes first (they say goodbye, so their claims are released at once),
# then the claim-service, then etcd. A service that exits (try `kill -9
# $(cat .run/ingest-a.pid)`, as in the README's fault table) is reported and
# the rest keeps running. Each service runs in a session of its own, so a
# terminal's Ctrl-C reaches only this script; pids are in .run/NAME.pid.
#
#   scripts/up.sh          plaintext
#   scripts/up.sh --nginx  also two nginx-rtmp servers (Debian's nginx +
#                          libnginx-mod-rtmp), each with its sidecar
#                          (ingest-node --media-server nginx-rtmp): the
#                          claim plane for a media server already in place
#   scripts/up.sh --tls    mutual TLS everywhere: a development CA and
#                          certificates (scripts/certs.sh, in .run/certs);
#                          etcd serves TLS and wants a client certificate;
#                          the claim-service serves TLS and takes a session
#                          only from the node its certificate names; the
#                          ingest nodes attach with their own certificates;
#                          "admin" is the admin identity.
#
# Ports (override with the environment): etcd 2379/2380, claim-service gRPC
# 50051, metrics 9464; ingest node A RTMP 1935 / HTTP 8080, node B RTMP 1936 /
# HTTP 8081; with --nginx, nginx-a RTMP 1945 (stat 8088, sidecar hooks 8090,
# HTTP 8082), nginx-b RTMP 1946 (stat 8089, hooks 8091, HTTP 8083).
set -euo pipefail
cd "$(dirname "$0")/.."
TLS=0
NGINX=0
for arg in "$@"; do
  case $arg in
    --tls) TLS=1 ;;
    --nginx) NGINX=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done
source scripts/lib.sh
need_build_and_test_tools
need_grpcurl
need_packages curl:curl
[[ $NGINX == 1 ]] && need_nginx_rtmp

ETCD_PORT=${ETCD_PORT:-2379}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-2380}
CLAIMS_PORT=${CLAIMS_PORT:-50051}
METRICS_PORT=${METRICS_PORT:-9464}
A_RTMP=${A_RTMP:-1935}
A_HTTP=${A_HTTP:-8080}
B_RTMP=${B_RTMP:-1936}
B_HTTP=${B_HTTP:-8081}
RUN=${RUN_DIR:-.run}
mkdir -p "$RUN"
if [[ $TLS == 1 ]]; then
  bash scripts/certs.sh "$RUN/certs" ingest-a ingest-b >/dev/null
  CERTS=$RUN/certs
  SCHEME=https
  ETCD_DATA=$RUN/etcd-tls
  ETCD_TLS=(--cert-file "$CERTS/etcd.pem" --key-file "$CERTS/etcd.key"
            --client-cert-auth --trusted-ca-file "$CERTS/ca.pem")
  ETCDCTL_TLS="--cacert $CERTS/ca.pem --cert $CERTS/etcd.pem --key $CERTS/etcd.key"
  GRPCURL_TLS="-cacert $CERTS/ca.pem -cert $CERTS/admin.pem -key $CERTS/admin.key"
  CLAIMCTL_TLS="--server https://127.0.0.1:$CLAIMS_PORT --tls-ca $CERTS/ca.pem --tls-cert $CERTS/admin.pem --tls-key $CERTS/admin.key"
else
  SCHEME=http
  ETCD_DATA=$RUN/etcd
  ETCD_TLS=()
  ETCDCTL_TLS=""
  GRPCURL_TLS="-plaintext"
  CLAIMCTL_TLS=""
fi

echo ">> building (release)"
cargo build --release --locked -p claim-service -p claimctl -p ingest-node

pids=()
names=()
# started NAME PID — a service this script stops, in reverse order.
started() {
  pids+=("$2")
  names+=("$1")
  echo "$2" >"$RUN/$1.pid"
}
stop() {
  trap - INT TERM EXIT
  [[ -n ${tailer:-} ]] && kill "$tailer" 2>/dev/null
  echo
  echo ">> stopping"
  # The claim-service first, gracefully; then etcd.
  for ((i=${#pids[@]}-1; i>=0; i--)); do
    kill -TERM "${pids[$i]}" 2>/dev/null || true
    wait "${pids[$i]}" 2>/dev/null || true
    rm -f "$RUN/${names[$i]}.pid"
  done
  echo ">> stopped; etcd data kept in $ETCD_DATA (delete it for a clean start)"
  exit "${1:-0}"
}
trap stop INT TERM EXIT

for p in "$ETCD_PORT" "$ETCD_PEER_PORT" "$CLAIMS_PORT" "$METRICS_PORT" "$A_RTMP" "$A_HTTP" "$B_RTMP" "$B_HTTP"; do
  port_free "$p" || { echo "port $p is in use: stop what holds it, or set ETCD_PORT / ETCD_PEER_PORT / CLAIMS_PORT / METRICS_PORT / A_RTMP / A_HTTP / B_RTMP / B_HTTP" >&2; exit 1; }
done

if [[ $NGINX == 1 ]]; then
  for p in 1945 1946 8088 8089 8090 8091 8082 8083; do
    port_free "$p" || { echo "port $p is in use (wanted by --nginx): stop what holds it" >&2; exit 1; }
  done
fi

echo ">> starting etcd on $SCHEME://127.0.0.1:$ETCD_PORT (log: $RUN/etcd.log)"
if ! ETCDCTL_FLAGS=$ETCDCTL_TLS start_etcd up "$ETCD_DATA" "$SCHEME://127.0.0.1:$ETCD_PORT" \
  "$ETCD_PEER_PORT" "$RUN/etcd.log" "${ETCD_TLS[@]}"; then
  started etcd "$ETCD_PID"
  echo "etcd did not answer a health check within 10 s; its log:" >&2
  tail -n 20 "$RUN/etcd.log" >&2
  stop 1
fi
started etcd "$ETCD_PID"

# The Admin API's bearer token (claimctl --admin-token-file .run/admin-token).
[[ -s $RUN/admin-token ]] || (umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=\n' >"$RUN/admin-token")

if [[ $TLS == 1 ]]; then
  export CLAIMS_TLS_CERT=$CERTS/claim-service.pem CLAIMS_TLS_KEY=$CERTS/claim-service.key
  export CLAIMS_CLIENT_CA=$CERTS/ca.pem CLAIMS_ADMIN_IDENTITIES=admin
  export CLAIMS_ETCD_CA=$CERTS/ca.pem CLAIMS_ETCD_CERT=$CERTS/etcd.pem CLAIMS_ETCD_KEY=$CERTS/etcd.key
fi
echo ">> starting claim-service on $SCHEME://127.0.0.1:$CLAIMS_PORT (log: $RUN/claim-service.log)"
CLAIMS_ADMIN_TOKEN_FILE="$RUN/admin-token" \
CLAIMS_LISTEN="127.0.0.1:$CLAIMS_PORT" \
CLAIMS_METRICS_LISTEN="127.0.0.1:$METRICS_PORT" \
CLAIMS_ETCD_ENDPOINTS="$SCHEME://127.0.0.1:$ETCD_PORT" \
  setsid target/release/claim-service >"$RUN/claim-service.log" 2>&1 &
started claim-service $!
ready=0
for _ in $(seq 100); do
  grep -q "etcd reachable: SERVING" "$RUN/claim-service.log" 2>/dev/null && { ready=1; break; }
  kill -0 "${pids[1]}" 2>/dev/null || break
  sleep 0.1
done
if [[ $ready == 0 ]]; then
  echo "the claim-service did not report etcd reachable within 10 s; its log:" >&2
  tail -n 20 "$RUN/claim-service.log" >&2
  stop 1
fi

start_node() { # id rtmp http
  echo ">> starting ingest node $1 on RTMP $2, HTTP $3 (log: $RUN/$1.log)"
  if [[ $TLS == 1 ]]; then
    export INGEST_TLS_CA=$CERTS/ca.pem INGEST_TLS_CERT=$CERTS/$1.pem INGEST_TLS_KEY=$CERTS/$1.key
  fi
  INGEST_NODE_ID="$1" \
  INGEST_CLAIM_SERVICE="$SCHEME://127.0.0.1:$CLAIMS_PORT" \
  INGEST_RTMP_LISTEN="127.0.0.1:$2" INGEST_HTTP_LISTEN="127.0.0.1:$3" \
  INGEST_ADVERTISE_RTMP="rtmp://127.0.0.1:$2" INGEST_ADVERTISE_HTTP="http://127.0.0.1:$3" \
    setsid target/release/ingest-node >"$RUN/$1.log" 2>&1 &
  started "$1" $!
}
start_node ingest-a "$A_RTMP" "$A_HTTP"
start_node ingest-b "$B_RTMP" "$B_HTTP"

start_nginx() { # id rtmp stat hooks http: nginx-rtmp and its sidecar
  local dir=$PWD/$RUN/$1
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;
daemon off;
master_process off;
error_log $dir/error.log info;
pid $dir/nginx.pid;
events { worker_connections 1024; }
rtmp { server { listen 127.0.0.1:$2; application live {
  live on;
  notify_method post;
  on_publish http://127.0.0.1:$4/nginx-rtmp;
  on_publish_done http://127.0.0.1:$4/nginx-rtmp;
  on_play http://127.0.0.1:$4/nginx-rtmp;
  on_update http://127.0.0.1:$4/nginx-rtmp;
  notify_update_timeout 10s;
} } }
http {
  access_log off;
  client_body_temp_path $dir/body; proxy_temp_path $dir/proxy; fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
  server { listen 127.0.0.1:$3; location /stat { rtmp_stat all; } }
}
CONF
  echo ">> starting $1: nginx-rtmp on RTMP $2, its sidecar's hooks on $4 (logs: $RUN/$1/error.log, $RUN/$1-sidecar.log)"
  setsid nginx -c "$dir/nginx.conf" -p "$dir" >"$dir/out.log" 2>&1 &
  started "$1-nginx" $!
  INGEST_NODE_ID="$1" \
  INGEST_CLAIM_SERVICE="$SCHEME://127.0.0.1:$CLAIMS_PORT" \
  INGEST_MEDIA_SERVER=nginx-rtmp INGEST_HOOKS_LISTEN="127.0.0.1:$4" \
  INGEST_MEDIA_SERVER_API="http://127.0.0.1:$3/stat" INGEST_HOOKS_UPDATE_TIMEOUT=25s \
  INGEST_HTTP_LISTEN="127.0.0.1:$5" \
  INGEST_ADVERTISE_RTMP="rtmp://127.0.0.1:$2" INGEST_ADVERTISE_HTTP="http://127.0.0.1:$5" \
    setsid target/release/ingest-node >"$RUN/$1-sidecar.log" 2>&1 &
  started "$1-sidecar" $!
}
if [[ $NGINX == 1 ]]; then
  [[ $TLS == 1 ]] && { echo "--nginx with --tls: the sidecars would need certificates; run them apart" >&2; exit 2; }
  start_nginx nginx-a 1945 8088 8090 8082
  start_nginx nginx-b 1946 8089 8091 8083
fi
attached() { curl -sf "http://127.0.0.1:$1/healthz" 2>/dev/null | grep -q '"claim_service_connected":true'; }
ready=0
for _ in $(seq 100); do
  attached "$A_HTTP" && attached "$B_HTTP" && { ready=1; break; }
  sleep 0.1
done
if [[ $ready == 0 ]]; then
  for n in "ingest-a $A_HTTP" "ingest-b $B_HTTP"; do
    set -- $n
    attached "$2" || { echo "$1 did not attach to the claim-service within 10 s; its log:" >&2; tail -n 20 "$RUN/$1.log" >&2; }
  done
  stop 1
fi

cat <<TXT

The stack is up.
  etcd            $SCHEME://127.0.0.1:$ETCD_PORT
  claim-service   127.0.0.1:$CLAIMS_PORT (gRPC, $([[ $TLS == 1 ]] && echo "mutual TLS, certificates in $CERTS" || echo plaintext))
  metrics         http://127.0.0.1:$METRICS_PORT/metrics   (/readyz, /livez)
  ownership page  http://127.0.0.1:$METRICS_PORT/ui/
  ingest-a        rtmp://127.0.0.1:$A_RTMP   http://127.0.0.1:$A_HTTP
  ingest-b        rtmp://127.0.0.1:$B_RTMP   http://127.0.0.1:$B_HTTP

$([[ $NGINX == 1 ]] && echo "  nginx-a         rtmp://127.0.0.1:1945   (sidecar hooks http://127.0.0.1:8090/nginx-rtmp)
  nginx-b         rtmp://127.0.0.1:1946   (sidecar hooks http://127.0.0.1:8091/nginx-rtmp)
  Publish to nginx-a and play from nginx-b (relayed from the owner):
    ffmpeg -re -f lavfi -i testsrc -c:v libx264 -pix_fmt yuv420p -f flv rtmp://127.0.0.1:1945/live/cam9
    ffprobe rtmp://127.0.0.1:1946/live/cam9
")
Publish a test pattern to ingest-a:
  ffmpeg -re -f lavfi -i testsrc=size=640x360:rate=25 -f lavfi -i sine=frequency=440 \\
    -c:v libx264 -pix_fmt yuv420p -preset veryfast -tune zerolatency -g 50 -c:a aac -f flv rtmp://127.0.0.1:$A_RTMP/live/cam1
Watch it (from either node: ingest-b redirects to the owner):
  ffplay http://127.0.0.1:$B_HTTP/live/cam1.flv
  curl -sI http://127.0.0.1:$B_HTTP/live/cam1.flv          # 302 to ingest-a
  curl -s http://127.0.0.1:$A_HTTP/api/broadcasts          # tracks, claim state, fencing token
A second publisher of the same name on ingest-b is refused, naming the owner:
  ffmpeg -re -f lavfi -i testsrc -c:v libx264 -pix_fmt yuv420p -f flv rtmp://127.0.0.1:$B_RTMP/live/cam1

Query the claim-service:
  grpcurl $GRPCURL_TLS 127.0.0.1:$CLAIMS_PORT list
  grpcurl $GRPCURL_TLS 127.0.0.1:$CLAIMS_PORT describe claims.v1.Ownership
  grpcurl $GRPCURL_TLS -d @ 127.0.0.1:$CLAIMS_PORT claims.v1.ClaimSessions/Attach <<'EOF2'
  {"hello":{"node_id":"$([[ $TLS == 1 ]] && echo admin || echo demo)","endpoints":{"rtmp":"rtmp://demo.example:1935","http":"http://demo.example:8080"}}}
  {"created":{"broadcast":"live/demo","track":"video"}}
  EOF2
  grpcurl $GRPCURL_TLS -d '{"broadcast":"live/cam1"}' 127.0.0.1:$CLAIMS_PORT claims.v1.Ownership/GetOwner
  grpcurl $GRPCURL_TLS 127.0.0.1:$CLAIMS_PORT claims.v1.Ownership/ListNodes
  grpcurl $GRPCURL_TLS -d '{}' 127.0.0.1:$CLAIMS_PORT claims.v1.Ownership/WatchClaims
  ETCDCTL_API=3 etcdctl $ETCDCTL_TLS --endpoints $SCHEME://127.0.0.1:$ETCD_PORT get --prefix /claims/v1/
  curl -s http://127.0.0.1:$METRICS_PORT/metrics | grep ^claims_
  target/release/claimctl $CLAIMCTL_TLS nodes
  target/release/claimctl $CLAIMCTL_TLS --admin-token-file $RUN/admin-token release live/cam1 --reason test

Try a fault: kill -9 \$(cat $RUN/ingest-a.pid) — the rest keeps running.
Ctrl-C stops everything.
TXT
tail -n 0 -f "$RUN/claim-service.log" "$RUN/ingest-a.log" "$RUN/ingest-b.log" &
tailer=$!
# Report a service that exits; the rest keeps running until Ctrl-C.
declare -A gone=()
while true; do
  for i in "${!pids[@]}"; do
    if [[ -z ${gone[$i]:-} ]] && ! kill -0 "${pids[$i]}" 2>/dev/null; then
      gone[$i]=1
      echo ">> ${names[$i]} (pid ${pids[$i]}) exited; the rest keeps running (see $RUN/${names[$i]}.log; Ctrl-C stops everything)" >&2
    fi
  done
  sleep 1 &
  wait $! || true
done
