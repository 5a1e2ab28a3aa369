#!/usr/bin/env bash
# Builds every image the stack needs without a registry:
#   claims-base:bookworm          Debian bookworm (debootstrap --variant=minbase, docker import)
#   claims/etcd:offline           etcd from Debian's etcd-server
#   claims/claim-service:offline  claim-service + claimctl built on this host
#   claims/ingest-node:offline    ingest-node built on this host
#   claims/prometheus:offline     Prometheus from Debian's prometheus (compose profile `monitoring`)
# Then: docker compose -f docker-compose.yml -f docker-compose.offline.yml up
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_build_and_test_tools
need_packages debootstrap:debootstrap docker:docker.io prometheus:prometheus
docker info >/dev/null 2>&1 || { echo "no Docker engine answers (docker info failed)" >&2; exit 1; }

RUN=.run
MIRROR=${DEBIAN_MIRROR:-$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

if ! docker image inspect claims-base:bookworm >/dev/null 2>&1; then
  echo ">> making the base image with debootstrap ($MIRROR)"
  rm -rf "$RUN/rootfs"
  mkdir -p "$RUN"
  debootstrap --variant=minbase bookworm "$RUN/rootfs" "$MIRROR" >"$RUN/debootstrap.log" 2>&1 ||
    { tail -20 "$RUN/debootstrap.log" >&2; exit 1; }
  # Nothing at run time needs these.
  rm -rf "$RUN"/rootfs/usr/share/{doc,man,info,locale} "$RUN"/rootfs/var/cache/apt/archives/*.deb \
    "$RUN"/rootfs/var/lib/apt/lists/*
  tar -C "$RUN/rootfs" -c . | docker import - claims-base:bookworm >/dev/null
  rm -rf "$RUN/rootfs"
fi

# What the images are labelled with: the workspace's version, this commit.
VERSION=$(awk -F'"' '/^\[workspace.package\]/ {w=1} w && /^version/ {print $2; exit}' Cargo.toml)
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
SOURCE=$(git config --get remote.origin.url 2>/dev/null || echo unknown)
echo ">> building the binaries (release, $VERSION at $REVISION)"
cargo build --release --locked -p claim-service -p claimctl -p ingest-node
stage="$RUN/images"
rm -rf "$stage"
mkdir -p "$stage"
cp target/release/claim-service target/release/claimctl target/release/ingest-node "$stage/"
cp "$(command -v etcd)" "$(command -v etcdctl)" "$(command -v prometheus)" "$stage/"
cp docker/offline.Dockerfile "$stage/Dockerfile"

for target in etcd claim-service ingest-node prometheus; do
  echo ">> image claims/$target:offline"
  docker build -q --target "$target" -t "claims/$target:offline" \
    --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" \
    --build-arg SOURCE="$SOURCE" "$stage" >/dev/null
done
docker images --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E '^claims' || true
