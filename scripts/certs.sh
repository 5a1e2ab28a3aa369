#!/usr/bin/env bash
# Makes a development CA and the certificates a TLS stack needs, with openssl.
#
#   scripts/certs.sh DIR [NODE_ID ...]
#
# DIR gets (keys are mode 600):
#   ca.pem, ca.key                 the CA every party trusts
#   claim-service.pem/.key         server certificate (SANs: localhost,
#                                  claim-service, 127.0.0.1 and $CERT_HOSTS)
#   etcd.pem/.key                  etcd's server certificate (same SANs + etcd)
#   NODE_ID.pem/.key               one client certificate per ingest node: the
#                                  identity (DNS SAN and CN) is the node id, so
#                                  the node can attach only as itself
#   admin.pem/.key                 client certificate with identity "admin"
#                                  (claim-service --admin-identity admin)
# Default nodes: ingest-a ingest-b. Existing files are kept, so the CA stays
# the same across runs; delete DIR to start over. For development only: a
# production CA keeps its key offline.
set -euo pipefail
dir=${1:?usage: scripts/certs.sh DIR [NODE_ID ...]}
shift
nodes=("$@")
[[ ${#nodes[@]} -gt 0 ]] || nodes=(ingest-a ingest-b)
command -v openssl >/dev/null || { source "$(dirname "$0")/lib.sh"; need_packages openssl:openssl; }
mkdir -p "$dir"
umask 077
days=${CERT_DAYS:-825}

if [[ ! -s $dir/ca.pem ]]; then
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 3650 -subj "/CN=Broadcast Claims dev CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

# leaf NAME USAGE SANS...
leaf() {
  local name=$1 usage=$2; shift 2
  [[ -s $dir/$name.pem ]] && return 0
  local sans ext
  sans=$(IFS=,; echo "$*")
  ext=$(mktemp)
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\nsubjectAltName=%s\n' \
    "$usage" "$sans" >"$ext"
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$dir/$name.key" -out "$dir/$name.csr" -subj "/CN=$name" 2>/dev/null
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -days "$days" -extfile "$ext" -out "$dir/$name.pem" 2>/dev/null
  rm -f "$dir/$name.csr" "$ext"
}

hosts=(DNS:localhost DNS:claim-service IP:127.0.0.1)
for h in ${CERT_HOSTS:-}; do
  if [[ $h =~ ^[0-9.]+$ ]]; then hosts+=("IP:$h"); else hosts+=("DNS:$h"); fi
done
leaf claim-service serverAuth "${hosts[@]}"
leaf etcd serverAuth,clientAuth "${hosts[@]}" DNS:etcd
for node in "${nodes[@]}"; do
  leaf "$node" clientAuth "DNS:$node"
done
leaf admin clientAuth DNS:admin
chmod 644 "$dir"/*.pem
echo "certificates in $dir: CA, claim-service, etcd, admin, nodes: ${nodes[*]}"
