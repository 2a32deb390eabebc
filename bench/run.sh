#!/usr/bin/env bash
# One command for the benchmark: builds the release binaries, installs nginx from Debian's
# packages if it is missing and we may (root with apt), and runs every measurement.
#   bench/run.sh                 # the full run (~6 minutes on 2 cores)
#   bench/run.sh --sessions 2000 --rounds 1   # a quicker look
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nginx >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing nginx (Debian package nginx-light) for the side-by-side numbers" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
  else
    echo "nginx is not installed: it is left out (apt-get install nginx-light)" >&2
  fi
fi
cargo build --release --bins
exec target/release/holdfast-bench "$@"
