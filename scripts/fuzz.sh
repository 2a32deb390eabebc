#!/usr/bin/env bash
# Bounded fuzzing of holdfast's input parsers with cargo-fuzz (libFuzzer):
#   config          any text as proxy.toml: never a panic; a config or named problems
#   close_pipeline  any upstream close + rewrite rule + policy strings: only sendable codes,
#                   reasons <= 123 bytes, 1008 context always valid JSON within the limit
#   codec           any wire bytes (or a frame script), split anywhere, to the WebSocket
#                   codec and to tungstenite: the same messages, replies and verdict
#   scripts/fuzz.sh [seconds per target, default 60]
# This machine has only the stable toolchain: RUSTC_BOOTSTRAP lets cargo-fuzz pass its
# flags, and no sanitizer is used (`-s none`): the targets check invariants themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
for target in config close_pipeline codec; do
  echo "== fuzz $target for ${seconds}s"
  # libFuzzer grows the first corpus directory (not committed); committed seeds are read.
  seeds=()
  [ -d "fuzz/seeds/$target" ] && seeds=("fuzz/seeds/$target")
  mkdir -p "fuzz/corpus/$target"
  RUSTC_BOOTSTRAP=1 cargo fuzz run -s none "$target" "fuzz/corpus/$target" "${seeds[@]}" \
    -- -max_total_time="$seconds" 2>&1 \
    | grep -E "^Done|DONE|ERROR|panicked" || true
  [ -z "$(ls -A "fuzz/artifacts/$target" 2>/dev/null)" ] || { echo "crash inputs in fuzz/artifacts/$target" >&2; exit 1; }
done
