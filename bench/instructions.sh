#!/usr/bin/env bash
# Instructions holdfast executes per relayed 64 B echo, counted by valgrind's callgrind: a
# repeatable figure (±1 %) where CPU time on a shared 2-core machine varies by ±10 %.
# It covers user space only (the kernel's TCP work is not counted) and runs the same
# closed-loop load as bench/run.sh, with holdfast under callgrind as the measured proxy.
#   bench/instructions.sh                      # the current build
#   bench/instructions.sh /tmp/old-holdfast    # another build, for a before/after
# Two runs of different length; the difference in instructions over the difference in
# echoes leaves out start-up and connection set-up.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v valgrind >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing valgrind (Debian package) for callgrind" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
  else
    echo "valgrind is not installed (apt-get install valgrind)" >&2
    exit 1
  fi
fi
cargo build --release --bins
binary=$(realpath "${1:-target/release/holdfast}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The bench starts its "baseline" proxy from a path: this one runs holdfast under callgrind.
cat >"$work/holdfast-under-callgrind" <<WRAP
#!/bin/sh
exec valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.\$\$" "$binary" "\$@"
WRAP
chmod +x "$work/holdfast-under-callgrind"
measure() { # seconds -> "echoes instructions"
  rm -f "$work"/callgrind.*
  local rate
  rate=$(target/release/holdfast-bench --sizes 64 --throughput-only --rounds 1 --no-nginx \
    --seconds "$1" --baseline "$work/holdfast-under-callgrind" 2>&1 |
    awk '$5 == "baseline" { print $6 }')
  echo "$(awk -v r="$rate" -v s="$1" 'BEGIN { printf "%d", r * s }') $(awk '/^summary:/ { print $2 }' "$work"/callgrind.*)"
}
read -r short_echoes short_ir < <(measure 6)
read -r long_echoes long_ir < <(measure 18)
awk -v e1="$short_echoes" -v i1="$short_ir" -v e2="$long_echoes" -v i2="$long_ir" -v b="$binary" 'BEGIN {
  printf "%s: %.0f instructions per 64 B echo (%d echoes in 6 s, %d in 18 s, under callgrind)\n", b, (i2 - i1) / (e2 - e1), e1, e2
}'
