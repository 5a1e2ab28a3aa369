#!/usr/bin/env bash
# Installs what is missing, then runs every test of the workspace: the pure
# core's unit tests and the system tests (real etcd, real binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_build_and_test_tools
need_grpcurl
need_gstreamer
need_nginx_rtmp
need_media_servers
need_chromium
# libfaketime: the soak steps a replica's wall clock with it.
need_packages "/usr/lib/$(uname -m)-linux-gnu/faketime/libfaketimeMT.so.1:libfaketime"
# The alert rules: valid, and doing what their unit tests say.
need_packages promtool:prometheus
promtool check rules docker/prometheus/alerts.yml
promtool check config docker/prometheus/prometheus.yml
promtool test rules docker/prometheus/alerts.test.yml
cargo build --workspace --all-targets --locked
# The binaries the system tests start are built: the harness need not build them again.
export CLAIMS_TEST_BUILT=1
cargo test --workspace --locked -- "$@"
