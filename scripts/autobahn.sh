#!/usr/bin/env bash
# Autobahn|Testsuite (the standard WebSocket conformance suite) through holdfast.
#
# fuzzingclient (wstest, Python 2.7) runs every case against "direct", a conformant echo
# upstream (tokio-tungstenite, holdfast-bench's echo), and "holdfast", the same upstream
# behind holdfast. The compression cases (12.*, 13.*) need a peer with permessage-deflate:
# their baseline is "direct-deflate", Node's `ws` (scripts/ws-peer.mjs), and they run as
# "holdfast-deflate": holdfast compressing on both hops in front of that `ws` echo.
# fuzzingserver does the same the other way round: holdfast as the client of Autobahn's
# server, offering permessage-deflate upstream, against `ws` as a client. holdfast must be
# no worse than its baseline on every case. Loopback only.
#
#   scripts/autobahn.sh                # cases 1.* to 10.*, and 60 of the 216 compression
#                                      # cases: every parameter set (13.*) and payload (12.*)
#                                      # with messages of 16 B to 1 KiB and fragmented 8 KiB
#                                      # ones (wstest is slow at compression: ~8 minutes)
#   scripts/autobahn.sh --compression  # all 216 compression cases too (over an hour)
#   scripts/autobahn.sh --quick        # 1.* to 7.* and 10.* (the protocol cases, ~1 minute)
#   scripts/autobahn.sh --cases '["12.1.*", "13.1.*"]'   # just these (wstest's patterns)
#
# Prints the verdict table (cases per behaviour, per agent) and exits 1 if holdfast is worse
# than its baseline on any case. Reports land in target/autobahn/.
set -euo pipefail
cd "$(dirname "$0")/.."

protocol='"1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*"'
case "${1:-}" in
  --quick) cases='["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"]' ;;
  --compression) cases="[$protocol, \"12.*\", \"13.*\"]" ;;
  --cases) cases="$2" ;;
  # (wstest matches a pattern at the start of a case id: "$" ends it.)
  *) cases="[$protocol, \"12.*.1$\", \"12.*.2$\", \"12.*.3$\", \"12.*.4$\", \"12.*.11$\", \"13.*.1$\", \"13.*.2$\", \"13.*.3$\", \"13.*.4$\", \"13.*.11$\"]" ;;
esac
# The agents that run only the compression cases, and the ones that skip them.
not_compression='["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*"]'
compression='["12.*", "13.*"]'
# Node's ws for the compression baseline (clients/js's dependency).
if [ ! -d clients/js/node_modules/ws ]; then
  (cd clients/js && npm ci --no-audit --no-fund --silent)
fi

# wstest needs Python 2.7: the image's pyenv has 2.7.18.
pybase="${XDG_CACHE_HOME:-$HOME/.cache}/holdfast-autobahn"
wstest="$pybase/bin/wstest"
if [ ! -x "$wstest" ]; then
  py27="$(pyenv root 2>/dev/null)/versions/2.7.18/bin/pip"
  [ -x "$py27" ] || { echo "autobahn: Python 2.7.18 (pyenv) is needed for wstest" >&2; exit 2; }
  PYTHONUSERBASE="$pybase" "$py27" install --quiet --user --no-warn-script-location \
    autobahntestsuite==25.10.1 2>&1 | grep -v DEPRECATION || true
fi

cargo build --release --bins --quiet
out="$PWD/target/autobahn"
rm -rf "$out" && mkdir -p "$out"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Waits (up to 10 s each) until something listens on each loopback port given.
wait_listening() {
  for port in "$@"; do
    for _ in $(seq 1 100); do
      python3 -c "import socket; socket.create_connection(('127.0.0.1', $port))" 2>/dev/null && break
      sleep 0.1
    done
  done
}
echo_port=$(free_port)
proxy_port=$(free_port)
deflate_echo_port=$(free_port)
deflate_proxy_port=$(free_port)

target/release/holdfast-bench echo --listen "127.0.0.1:$echo_port" > "$out/echo.log" &
echo_pid=$!
node scripts/ws-peer.mjs echo "$deflate_echo_port" > "$out/ws-echo.log" 2>&1 &
deflate_echo_pid=$!
cat > "$out/proxy.toml" <<TOML
[listen]
address = "127.0.0.1:$proxy_port"
[admin]
address = ""
[upstream]
endpoints = ["ws://127.0.0.1:$echo_port"]
[websocket]
# Autobahn's 9.* cases send messages and frames of up to 16 MiB.
max_message_size = "64MiB"
max_frame_size = "64MiB"
ping_interval = "0s"
[restart]
# Autobahn's server closes with 1001 in its close-code cases (7.7.2) and checks that the
# client sees it; with the default codes ([1012, 1001]) holdfast would hold that session,
# which is its job in production but not what a conformance case measures.
codes = [1012]
TOML
# The protocol cases run on the workers' io_uring path (opt-in; epoll is the default): its
# reads see Autobahn's frames chopped into single bytes. Everything else runs on epoll.
target/release/holdfast --config "$out/proxy.toml" --log-level warn --io io-uring 2> "$out/holdfast.log" &
proxy_pid=$!
# holdfast compressing on both hops, in front of ws's echo (which compresses too).
sed -e "s/$proxy_port/$deflate_proxy_port/" -e "s/$echo_port/$deflate_echo_port/" "$out/proxy.toml" > "$out/proxy-deflate.toml"
printf '[websocket.compression]\nupstream = true\n' >> "$out/proxy-deflate.toml"
target/release/holdfast --config "$out/proxy-deflate.toml" --log-level warn 2> "$out/holdfast-deflate.log" &
deflate_proxy_pid=$!
trap 'kill $echo_pid $proxy_pid $deflate_echo_pid $deflate_proxy_pid 2>/dev/null || true' EXIT
wait_listening "$echo_port" "$proxy_port" "$deflate_echo_port" "$deflate_proxy_port"

cat > "$out/fuzzingclient.json" <<JSON
{
  "outdir": "$out/reports",
  "servers": [
    {"agent": "direct", "url": "ws://127.0.0.1:$echo_port"},
    {"agent": "holdfast", "url": "ws://127.0.0.1:$proxy_port"},
    {"agent": "direct-deflate", "url": "ws://127.0.0.1:$deflate_echo_port"},
    {"agent": "holdfast-deflate", "url": "ws://127.0.0.1:$deflate_proxy_port"}
  ],
  "cases": $cases,
  "exclude-cases": [],
  "exclude-agent-cases": {
    "direct": $compression,
    "holdfast": $compression,
    "direct-deflate": $not_compression,
    "holdfast-deflate": $not_compression
  }
}
JSON
(cd "$out" && PYTHONUSERBASE="$pybase" "$wstest" -m fuzzingclient -s fuzzingclient.json > wstest.log 2>&1) || true

# The other side: Autobahn's fuzzingserver as holdfast's upstream, a conformant client
# (holdfast-bench autobahn-client, tokio-tungstenite) driving it directly ("direct") and
# through holdfast ("holdfast"). Here holdfast is the server's client. (wstest binds
# 0.0.0.0 in server mode; everything here connects to it over 127.0.0.1.)
server_port=$(free_port)
proxy2_port=$(free_port)
cat > "$out/fuzzingserver.json" <<JSON
{
  "url": "ws://127.0.0.1:$server_port",
  "outdir": "$out/server-reports",
  "cases": $cases,
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
JSON
(cd "$out" && PYTHONUSERBASE="$pybase" exec "$wstest" -m fuzzingserver -s fuzzingserver.json > wstest-server.log 2>&1) &
server_pid=$!
sed -e "s/$proxy_port/$proxy2_port/" -e "s/$echo_port/$server_port/" "$out/proxy.toml" > "$out/proxy2.toml"
# holdfast offers permessage-deflate to Autobahn's server (its client hop stays plain).
printf '[websocket.compression]\nupstream = true\n' >> "$out/proxy2.toml"
target/release/holdfast --config "$out/proxy2.toml" --log-level warn 2> "$out/holdfast2.log" &
proxy2_pid=$!
# One trap for everything started (a second `trap … EXIT` replaces the first): the
# compressing pair above would otherwise outlive the script.
trap 'kill $echo_pid $proxy_pid $deflate_echo_pid $deflate_proxy_pid $server_pid $proxy2_pid 2>/dev/null || true' EXIT
wait_listening "$server_port" "$proxy2_port"
target/release/holdfast-bench autobahn-client --server "ws://127.0.0.1:$server_port" --agent direct
target/release/holdfast-bench autobahn-client --server "ws://127.0.0.1:$proxy2_port" --agent holdfast
node scripts/ws-peer.mjs client "ws://127.0.0.1:$server_port" direct-deflate "12.,13."

# wstest always exits 0: read the verdicts from index.json.
status=0
for side in "fuzzingclient (holdfast in front of an echo upstream):reports" \
            "fuzzingserver (holdfast in front of Autobahn's server):server-reports"; do
  title=${side%%:*}
  dir=${side##*:}
  echo
  echo "== $title"
  python3 - "$out/$dir/index.json" <<'PY' || status=1
import json, sys
from collections import Counter
index = json.load(open(sys.argv[1]))
rank = {"OK": 0, "NON-STRICT": 1, "INFORMATIONAL": 2, "UNIMPLEMENTED": 3, "FAILED": 4}
agents = [a for a in ["direct", "holdfast", "direct-deflate", "holdfast-deflate"] if a in index]
counts = {a: Counter() for a in agents}
worse = []
for agent in agents:
    for case, r in index[agent].items():
        counts[agent][r["behavior"]] += 1
def compression(case):
    return case.startswith("12.") or case.startswith("13.")
# Each holdfast agent against its baseline: compression cases against ws's, the rest
# against tokio-tungstenite's.
for agent in [a for a in agents if a.startswith("holdfast")]:
    for case, h in index[agent].items():
        base = "direct-deflate" if compression(case) else "direct"
        d = index.get(base, {}).get(case)
        if d is None:
            worse.append((case, f"no {base} result", agent))
            continue
        for key in ("behavior", "behaviorClose"):
            if rank.get(h[key], 9) > rank.get(d[key], 9):
                worse.append((case, f"{base} {key} {d[key]}", f"{agent} {h[key]}"))
    for case, d in index.get("direct", {}).items():
        if agent == "holdfast" and case not in index[agent]:
            worse.append((case, d["behavior"], "missing"))
behaviors = sorted({b for a in agents for b in counts[a]}, key=lambda b: rank.get(b, 9))
print("| verdict | " + " | ".join(agents) + " |")
print("|---|" + "---|" * len(agents))
for b in behaviors:
    print(f"| {b} | " + " | ".join(str(counts[a][b]) for a in agents) + " |")
print(f"| total | " + " | ".join(str(sum(counts[a].values())) for a in agents) + " |")
if worse:
    print(f"\nholdfast is worse than its baseline on {len(worse)} case(s):")
    for case, baseline, holdfast in sorted(worse):
        print(f"  {case}: {baseline}, {holdfast}")
    sys.exit(1)
print("\nholdfast is no worse than its baseline on every case (direct; direct-deflate for 12.*, 13.*).")
PY
done
exit $status
