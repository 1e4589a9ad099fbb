#!/usr/bin/env bash
# `make profile`: a CPU profile of the proxy under load, as a flame graph SVG.
# speedmimi (one event loop) in front of `loadgen backend`, driven by
# `loadgen run -c CONNS` for DURATION+4 s; `perf record --call-graph dwarf`
# samples the proxy for DURATION s; inferno folds and draws the stacks.
# Prints the path of results/profile-TIME/flamegraph.svg. Stops what it starts.
# Env: BIN (binaries, default target/release), CONNS (100), DURATION (8), FREQ (499).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
CONNS=${CONNS:-100}
DURATION=${DURATION:-8}
FREQ=${FREQ:-499}
OUT=results/profile-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"

command -v perf >/dev/null || { echo "perf not found: apt-get install linux-perf" >&2; exit 2; }
if ! command -v inferno-flamegraph >/dev/null; then
    echo "installing inferno (cargo install inferno --locked) ..." >&2
    cargo install inferno --locked >&2
fi

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -- "-$p" 2>/dev/null || kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# Reads "listening on IP:PORT" from a starting server's stdout file.
wait_addr() {
    for _ in $(seq 100); do
        if grep -q "listening on" "$1" 2>/dev/null; then
            grep -o "listening on [0-9.:]*" "$1" | head -1 | cut -d' ' -f3
            return
        fi
        sleep 0.1
    done
    echo "server did not start: $(cat "$1")" >&2
    exit 1
}

setsid "$BIN/loadgen" backend --listen 127.0.0.1:0 --workers 1 >"$OUT/backend.out" 2>&1 &
pids+=($!)
backend=$(wait_addr "$OUT/backend.out")
cat >"$OUT/proxy.yaml" <<YAML
server: { listen: "127.0.0.1:0", workers: 1, processes: 1, max_conn: 19000, graceful_timeout: 1s }
admin: { listen: "127.0.0.1:0" }
upstreams: { default: { backends: [ { addr: "$backend" } ], keepalive: 1024 } }
routing: { default: { upstream: default, load_balancer: round_robin } }
YAML
setsid "$BIN/speedmimi" --config "$OUT/proxy.yaml" >"$OUT/proxy.out" 2>"$OUT/proxy.err" &
proxy_pid=$!
pids+=($proxy_pid)
proxy=$(wait_addr "$OUT/proxy.out")

setsid "$BIN/loadgen" run "http://$proxy/" -c "$CONNS" -t 1 -d "$((DURATION + 4))s" --json -q >"$OUT/load.json" &
pids+=($!)
sleep 2
perf record -F "$FREQ" --call-graph dwarf,16384 -p "$proxy_pid" -o "$OUT/perf.data" -- sleep "$DURATION" 2>"$OUT/perf-record.log"
perf script -i "$OUT/perf.data" --no-inline 2>/dev/null | inferno-collapse-perf >"$OUT/stacks.folded"
inferno-flamegraph --title "speedmimi under loadgen -c $CONNS ($DURATION s, $FREQ Hz)" \
    --countname "events (perf period)" <"$OUT/stacks.folded" >"$OUT/flamegraph.svg"
rm -f "$OUT/perf.data"
echo "$(wc -l <"$OUT/stacks.folded") distinct stacks" >&2
echo "$OUT/flamegraph.svg"
