#!/usr/bin/env bash
# loadgen vs wrk against the same nginx (one worker, 12-byte body), at each
# connection count, same thread count, interleaved rounds (A B A B ...).
# Prints requests/s and the generator's CPU-milliseconds per 1,000 requests
# (utime+stime from /proc/PID/stat, read from the exited process before it
# is reaped), per round, then medians and loadgen/wrk ratios.
#
# Usage: ci/bench-loadgen.sh [-r ROUNDS] [-d SECONDS] [-t THREADS] [-c "100 1000"] [-p PORT]
#   env LOADGEN=path/to/loadgen skips the cargo build.
#   oha joins the rounds when it is installed (`cargo install oha --locked`,
#   or env OHA=path/to/oha), with --worker-threads THREADS.
# Bar (issue 4): rps >= 1.0x wrk and CPU per request <= wrk's at every count.
set -euo pipefail

ROUNDS=3 SECS=8 THREADS=1 CONNS="100 1000" PORT=18089
while getopts "r:d:t:c:p:h" o; do
  case $o in
    r) ROUNDS=$OPTARG ;; d) SECS=$OPTARG ;; t) THREADS=$OPTARG ;;
    c) CONNS=$OPTARG ;; p) PORT=$OPTARG ;;
    *) sed -n '2,10p' "$0"; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null || { ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; }; then
  echo "installing wrk and nginx (Debian packages)..." >&2
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [ -z "${LOADGEN:-}" ]; then
  cargo build --release -p loadgen -q
  LOADGEN="${CARGO_TARGET_DIR:-target}/release/loadgen"
fi

WORK=$(mktemp -d /tmp/bench-loadgen.XXXXXX)
cat > "$WORK/nginx.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile 20000;
pid $WORK/nginx.pid;
error_log $WORK/error.log;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  client_body_temp_path $WORK/body;
  proxy_temp_path $WORK/proxy;
  fastcgi_temp_path $WORK/fastcgi;
  uwsgi_temp_path $WORK/uwsgi;
  scgi_temp_path $WORK/scgi;
  server {
    listen 127.0.0.1:$PORT backlog=4096;
    location / { default_type text/plain; return 200 "hello world\n"; }
  }
}
CONF
"$NGINX" -p "$WORK" -c "$WORK/nginx.conf"
cleanup() { kill "$(cat "$WORK/nginx.pid" 2>/dev/null)" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
for _ in $(seq 50); do [ -s "$WORK/nginx.pid" ] && break; sleep 0.1; done
URL="http://127.0.0.1:$PORT/"
OHA=${OHA:-$(command -v oha || true)}
TOOLS="loadgen wrk${OHA:+ oha}"
curl -sf "$URL" >/dev/null 2>&1 || "$LOADGEN" run "$URL" -n 10 -c 1 -q >/dev/null

# Runs "$@" as the child of a process that never reaps it, so its
# /proc/PID/stat still holds the final utime+stime after it exits.
# Prints "requests cpu_ticks".
measure() {
  local out="$WORK/out.$$" pidf="$WORK/pid.$$"
  rm -f "$pidf"
  bash -c '"$@" >"'"$out"'" 2>&1 & echo $! >"'"$pidf"'"; exec sleep 100000' _ "$@" &
  local holder=$!
  while [ ! -s "$pidf" ]; do sleep 0.05; done
  local pid; pid=$(cat "$pidf")
  local stat
  while :; do
    stat=$(cat "/proc/$pid/stat")
    [ "$(echo "${stat##*) }" | cut -d' ' -f1)" = Z ] && break
    sleep 0.05
  done
  local f; read -r -a f <<<"${stat##*) }"
  local ticks=$(( f[11] + f[12] ))   # utime + stime (fields 14, 15)
  kill "$holder"; wait "$holder" 2>/dev/null || true
  local reqs; reqs=$(grep -Eo '^ *[0-9]+ requests in' "$out" | grep -Eo '[0-9]+' | head -1)
  if [ -z "$reqs" ] && grep -q statusCodeDistribution "$out"; then
    # oha --output-format json: the responses by status code.
    reqs=$(python3 -c 'import json,sys; print(sum(json.load(open(sys.argv[1]))["statusCodeDistribution"].values()))' "$out")
  fi
  echo "${reqs:-0} $ticks"
}

HZ=$(getconf CLK_TCK)
RAW="$WORK/raw"
: >"$RAW"
printf '%-7s %-6s %-8s %12s %14s\n' round conns tool "req/s" "cpu-ms/1k req"
for r in $(seq "$ROUNDS"); do
  for c in $CONNS; do
    for tool in $TOOLS; do
      case $tool in
        loadgen) res=$(measure "$LOADGEN" run "$URL" -c "$c" -t "$THREADS" -d "${SECS}s" -q) ;;
        wrk) res=$(measure wrk -t "$THREADS" -c "$c" -d "${SECS}s" "$URL") ;;
        oha) res=$(measure "$OHA" -c "$c" -z "${SECS}s" --worker-threads "$THREADS" --no-tui --output-format json "$URL") ;;
      esac
      read -r reqs ticks <<<"$res"
      rps=$(awk -v n="$reqs" -v s="$SECS" 'BEGIN{printf "%.0f", n/s}')
      cpu=$(awk -v t="$ticks" -v hz="$HZ" -v n="$reqs" 'BEGIN{ if (n>0) printf "%.2f", t*1000/hz/(n/1000); else print "nan"}')
      printf '%-7s %-6s %-8s %12s %14s\n' "$r" "$c" "$tool" "$rps" "$cpu"
      echo "$c $tool $rps $cpu" >>"$RAW"
    done
  done
done

median() { sort -g | awk '{a[NR]=$1} END{ if (NR%2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2 }'; }
echo
echo "Medians over $ROUNDS rounds of ${SECS}s, $THREADS thread(s), nginx with 1 worker, 12-byte body:"
printf '%-6s %14s %14s %16s %16s %10s %12s\n' conns "loadgen req/s" "wrk req/s" "loadgen cpu-ms/1k" "wrk cpu-ms/1k" "rps ratio" "cpu ratio"
status=0
for c in $CONNS; do
  lr=$(awk -v c="$c" '$1==c && $2=="loadgen"{print $3}' "$RAW" | median)
  wr=$(awk -v c="$c" '$1==c && $2=="wrk"{print $3}' "$RAW" | median)
  lc=$(awk -v c="$c" '$1==c && $2=="loadgen"{print $4}' "$RAW" | median)
  wc=$(awk -v c="$c" '$1==c && $2=="wrk"{print $4}' "$RAW" | median)
  rr=$(awk -v a="$lr" -v b="$wr" 'BEGIN{printf "%.2fx", a/b}')
  cr=$(awk -v a="$lc" -v b="$wc" 'BEGIN{printf "%.2fx", a/b}')
  printf '%-6s %14s %14s %16s %16s %10s %12s\n' "$c" "$lr" "$wr" "$lc" "$wc" "$rr" "$cr"
  awk -v a="$lr" -v b="$wr" -v x="$lc" -v y="$wc" 'BEGIN{exit !(a>=b && x<=y)}' || status=1
done
if [ -n "$OHA" ]; then
  echo
  printf '%-6s %14s %14s %16s %16s %10s %12s\n' conns "loadgen req/s" "oha req/s" "loadgen cpu-ms/1k" "oha cpu-ms/1k" "rps ratio" "cpu ratio"
  for c in $CONNS; do
    lr=$(awk -v c="$c" '$1==c && $2=="loadgen"{print $3}' "$RAW" | median)
    orr=$(awk -v c="$c" '$1==c && $2=="oha"{print $3}' "$RAW" | median)
    lc=$(awk -v c="$c" '$1==c && $2=="loadgen"{print $4}' "$RAW" | median)
    oc=$(awk -v c="$c" '$1==c && $2=="oha"{print $4}' "$RAW" | median)
    printf '%-6s %14s %14s %16s %16s %10s %12s\n' "$c" "$lr" "$orr" "$lc" "$oc" \
      "$(awk -v a="$lr" -v b="$orr" 'BEGIN{printf "%.2fx", a/b}')" "$(awk -v a="$lc" -v b="$oc" 'BEGIN{printf "%.2fx", a/b}')"
  done
fi
echo
if [ $status = 0 ]; then echo "bar met: rps >= 1.0x wrk and CPU/request <= wrk at every count"; else echo "bar NOT met at some count (see ratios)"; fi
