#!/usr/bin/env bash
# The main job until the scenario runner lands: the proxy in front of
# `loadgen backend`, driven by `loadgen run` at 100, 1,000 and 10,000
# connections. Prints a table and writes results/quick-<time>/.
# Bounded: 3 steps of DURATION seconds (default 10). Stops what it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
DURATION=${DURATION:-10}
STEPS=${STEPS:-"100 1000 10000"}
OUT=results/quick-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

# Reads "listening on IP:PORT" from a starting server's stdout.
wait_addr() {
    local file=$1
    for _ in $(seq 100); do
        if grep -q "listening on" "$file" 2>/dev/null; then
            grep -o "listening on [0-9.:]*" "$file" | head -1 | cut -d' ' -f3
            return
        fi
        sleep 0.1
    done
    echo "server did not start: $(cat "$file")" >&2
    exit 1
}

"$BIN/loadgen" backend --listen 127.0.0.1:0 --workers 1 >"$OUT/backend.out" 2>&1 &
pids+=($!)
backend=$(wait_addr "$OUT/backend.out")

cat >"$OUT/proxy.yaml" <<YAML
server:
  listen: "127.0.0.1:0"
  workers: 1
  max_conn: 100000
upstreams:
  default:
    backends:
      - { addr: "$backend", weight: 1 }
    keepalive: 1024
routing:
  default: { upstream: default, load_balancer: round_robin }
YAML
"$BIN/speedmimi" --config "$OUT/proxy.yaml" >"$OUT/proxy.out" 2>"$OUT/proxy.err" &
proxy_pid=$!
pids+=($proxy_pid)
proxy=$(wait_addr "$OUT/proxy.out")

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
tick=$(getconf CLK_TCK)

printf '%-8s %12s %10s %10s %10s %16s %12s %8s\n' conns "req/s" "p50 ms" "p99 ms" "p99.9 ms" "proxy CPU us/req" "proxy RSS MB" errors | tee "$OUT/summary.txt"
for c in $STEPS; do
    before=$(cpu_ticks $proxy_pid)
    "$BIN/loadgen" run "http://$proxy/" -c "$c" -t 1 -d "${DURATION}s" --json >"$OUT/step-$c.json"
    after=$(cpu_ticks $proxy_pid)
    rss=$(rss_kb $proxy_pid)
    python3 - "$OUT/step-$c.json" "$c" "$before" "$after" "$tick" "$rss" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
r = json.load(open(sys.argv[1]))
c, before, after, tick, rss = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
cpu_us = (after - before) / tick * 1e6 / max(r["requests"], 1)
lat = r["latency_us"]
errors = sum(r["errors"].values())
print(f"{c:<8} {r['rps']:>12.0f} {lat['p50']/1000:>10.2f} {lat['p99']/1000:>10.2f} {lat['p999']/1000:>10.2f} {cpu_us:>16.1f} {rss/1024:>12.1f} {errors:>8}")
PY
done
echo "figures: $OUT/summary.txt"
