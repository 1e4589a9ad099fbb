#!/usr/bin/env bash
# Load under live reconfiguration (issue 3, item 8): `loadgen run` drives
# C connections for D seconds through speedmimi while, every second, the
# admin API switches the balancer (round_robin, weight, least_conn, p2c,
# ip_hash in turn) and adds or removes a third backend (POST, then DELETE
# the next second). Prints the non-2xx answers and socket errors the load
# generator saw (goal: 0), its requests/s, the admin changes made and
# refused, and the proxy's own error counters.
#
# Usage: ci/bench-reconfig.sh [-c CONNECTIONS] [-d SECONDS] [-t LOADGEN_THREADS] [-w PROXY_LOOPS] [-p PROCESSES]
#   env SPEEDMIMI=... LOADGEN=... skip the cargo build.
# Exit status: 0 when no request failed, 1 otherwise.
set -euo pipefail

CONNS=1000 SECS=30 THREADS=2 LOOPS=2 PROCS=1
while getopts "c:d:t:w:p:h" o; do
  case $o in
    c) CONNS=$OPTARG ;; d) SECS=$OPTARG ;; t) THREADS=$OPTARG ;;
    w) LOOPS=$OPTARG ;; p) PROCS=$OPTARG ;;
    *) sed -n '2,12p' "$0"; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
# Clients, proxy and backends each hold about CONNECTIONS sockets.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
TARGET="${CARGO_TARGET_DIR:-target}"
if [ -z "${SPEEDMIMI:-}" ] || [ -z "${LOADGEN:-}" ]; then
  cargo build --release -p speedmimi -p loadgen -q
  SPEEDMIMI="$TARGET/release/speedmimi" LOADGEN="$TARGET/release/loadgen"
fi

WORK=$(mktemp -d /tmp/bench-reconfig.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# Waits (at most 10 s) for a line starting with $2 in file $1 and prints
# the address that follows the prefix.
address_in() {
  local file=$1 prefix=$2
  for _ in $(seq 100); do
    local line
    line=$(grep -m1 "^$prefix" "$file" 2>/dev/null || true)
    if [ -n "$line" ]; then
      line=${line#"$prefix"}
      echo "${line%% *}"
      return
    fi
    sleep 0.1
  done
  echo "no '$prefix' line in $file:" >&2
  cat "$file" >&2
  exit 1
}

# Three loadgen backends: a and b configured, c added and removed live.
BACKENDS=()
for name in a b c; do
  "$LOADGEN" backend --listen 127.0.0.1:0 --workers 1 >"$WORK/backend-$name.out" 2>&1 &
  PIDS+=($!)
  BACKENDS+=("$(address_in "$WORK/backend-$name.out" "listening on ")")
done
A=${BACKENDS[0]} B=${BACKENDS[1]} C=${BACKENDS[2]}

LISTEN="127.0.0.1:0"
if [ "$PROCS" -gt 1 ]; then
  # Worker processes need a fixed port (they all bind it).
  LISTEN="127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
fi
cat >"$WORK/proxy.yaml" <<YAML
server:
  listen: "$LISTEN"
  workers: $LOOPS
  processes: $PROCS
  max_conn: 100000
admin:
  listen: "127.0.0.1:0"
upstreams:
  app:
    backends:
      - { addr: "$A", weight: 5 }
      - { addr: "$B", weight: 1 }
routing:
  default: { upstream: app, load_balancer: round_robin }
YAML
RUST_LOG=warn "$SPEEDMIMI" --config "$WORK/proxy.yaml" >"$WORK/proxy.out" 2>"$WORK/proxy.err" &
PROXY_PID=$!
PIDS+=("$PROXY_PID")
PROXY=$(address_in "$WORK/proxy.out" "listening on ")
ADMIN=$(address_in "$WORK/proxy.out" "admin on ")
curl -sf "http://$PROXY/" >/dev/null

# One change a second until the load ends: the next balancer, then c in or out.
reconfigure() {
  local balancers=(weight least_conn p2c ip_hash round_robin) i=0 code
  while :; do
    sleep 1
    code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT "http://$ADMIN/api/v1/config" \
      -H 'Content-Type: application/json' \
      -d "{\"routing\":{\"default\":{\"load_balancer\":\"${balancers[i % 5]}\"}}}")
    echo "put-balancer $code"
    if ((i % 2 == 0)); then
      code=$(curl -s -o /dev/null -w '%{http_code}' -X POST \
        "http://$ADMIN/api/v1/upstreams/app/backends" \
        -H 'Content-Type: application/json' -d "{\"addr\":\"$C\"}")
      echo "post-backend $code"
    else
      code=$(curl -s -o /dev/null -w '%{http_code}' -X DELETE \
        "http://$ADMIN/api/v1/upstreams/app/backends/$C")
      echo "delete-backend $code"
    fi
    i=$((i + 1))
  done
}
reconfigure >"$WORK/changes.log" 2>&1 &
CHANGER=$!
PIDS+=("$CHANGER")

"$LOADGEN" run "http://$PROXY/" -c "$CONNS" -t "$THREADS" -d "${SECS}s" --json -q >"$WORK/result.json"
kill "$CHANGER" 2>/dev/null || true
curl -sf "http://$ADMIN/api/v1/stats/server" >"$WORK/stats.json"
curl -sf "http://$ADMIN/api/v1/backends?upstream=app" >"$WORK/backends.json"
if ! kill -0 "$PROXY_PID" 2>/dev/null; then
  echo "speedmimi exited during the run:" >&2
  cat "$WORK/proxy.err" >&2
  exit 1
fi

python3 - "$WORK" "$CONNS" "$SECS" "$LOOPS" "$PROCS" <<'PY'
import json, sys, collections
work, conns, secs, loops, procs = sys.argv[1:]
r = json.load(open(f"{work}/result.json"))
stats = json.load(open(f"{work}/stats.json"))
backends = json.load(open(f"{work}/backends.json"))
e = r["errors"]
non2xx = e["status_4xx"] + e["status_5xx"]
sockets = e["connect"] + e["read"] + e["write"] + e["timeout"] + e["parse"]
changes = collections.Counter()
refused = collections.Counter()
for line in open(f"{work}/changes.log"):
    kind, code = line.split()
    changes[kind] += 1
    if not code.startswith("2"):
        refused[f"{kind} {code}"] += 1
proxy_errors = {k: v["count"] for k, v in stats["errors"].items() if v["count"]}
rows = [
    ("connections", f"{conns}", ""),
    ("duration", f"{r['duration_s']:.1f}", "s"),
    ("proxy", f"{loops} loops x {procs} process(es)", ""),
    ("requests", f"{r['requests']}", ""),
    ("requests/s", f"{r['rps']:.0f}", "req/s"),
    ("p99 latency", f"{r['latency_us']['p99'] / 1000:.2f}", "ms"),
    ("non-2xx answers", f"{non2xx}", "(goal 0)"),
    ("socket errors", f"{sockets}", "(goal 0: connect/read/write/timeout/parse "
     f"{e['connect']}/{e['read']}/{e['write']}/{e['timeout']}/{e['parse']})"),
    ("reconnects", f"{r['connections']['reconnects']}", ""),
    ("config changes", f"{sum(changes.values())}",
     " ".join(f"{k}={v}" for k, v in sorted(changes.items()))),
    ("changes refused", f"{sum(refused.values())}",
     " ".join(f"{k}:{v}" for k, v in sorted(refused.items()))),
    ("proxy errors", f"{sum(proxy_errors.values())}",
     " ".join(f"{k}={v}" for k, v in proxy_errors.items())),
    ("proxy requests", f"{stats['requests']}", ""),
]
width = max(len(k) for k, _, _ in rows)
vwidth = max(len(v) for _, v, _ in rows)
for k, v, unit in rows:
    print(f"{k:<{width}}  {v:>{vwidth}}  {unit}".rstrip())
print(json.dumps({
    "connections": int(conns), "duration_s": r["duration_s"], "requests": r["requests"],
    "rps": r["rps"], "non_2xx": non2xx, "socket_errors": sockets, "errors": e,
    "config_changes": dict(changes), "changes_refused": dict(refused),
    "proxy_errors": proxy_errors, "backends_after": backends["backends"],
}))
sys.exit(0 if non2xx + sockets == 0 else 1)
PY
