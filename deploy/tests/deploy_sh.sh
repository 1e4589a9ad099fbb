#!/usr/bin/env bash
# deploy/deploy.sh against a temporary root (DESTDIR) and inside fresh network
# namespaces, never this machine's /etc or its own sysctls:
#   1. --dry-run prints every step and writes nothing;
#   2. a staged install in a netns: binaries, unit, config and the persisted
#      profile under DESTDIR, `tuner apply --profile container` changing the
#      namespace's sysctls (not the host's), the staged proxy started and its
#      health answered, requests through it, then a second run upgrades it;
#   3. a profile the kernel refuses half-way: deploy.sh rolls back, exits 1,
#      persists nothing and starts nothing.
# Needs root (ip netns); skipped with a message otherwise.
# BIN_DIR: directory holding speedmimi, loadgen and tuner (default target/release).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
bin=${BIN_DIR:-$repo/target/release}
# Absolute: a unit's ExecStart must be, and make passes target/release.
bin=$(cd "$bin" 2>/dev/null && pwd || echo "$bin")
deploy=$repo/deploy/deploy.sh

if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null; then
    echo "SKIPPED: the deploy.sh test needs root and ip(8) for network namespaces"
    exit 0
fi
for b in speedmimi loadgen tuner; do
    [ -x "$bin/$b" ] || { echo "FAIL: $bin/$b missing (make build, or set BIN_DIR)"; exit 1; }
done

tmp=$(mktemp -d)
namespaces=()
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    for n in "${namespaces[@]}"; do ip netns del "$n" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; [ ! -f "$tmp/out" ] || { echo "--- deploy.sh said:"; cat "$tmp/out"; }; exit 1; }
# Sets $ns to a new namespace with loopback up (not in a subshell: cleanup
# must see it in $namespaces).
new_netns() {
    ns=smdeploy-$$-$1
    ip netns add "$ns"
    namespaces+=("$ns")
    ip netns exec "$ns" ip link set lo up
}
host_sysctls() { cat /proc/sys/net/core/somaxconn /proc/sys/net/ipv4/ip_local_port_range /proc/sys/net/ipv4/tcp_fin_timeout; }
host_before=$(host_sysctls)

# 1. --dry-run: every step printed, nothing written.
DESTDIR=$tmp/dry "$deploy" --production --tune-system --optimized --dry-run >"$tmp/out" 2>&1 \
    || fail "dry run exited $?"
[ ! -e "$tmp/dry" ] || fail "the dry run wrote $(find "$tmp/dry" | head -5)"
for want in 'make -C .* build-prod' 'speedmimi --check --config' 'install -m 0755 .*/speedmimi .*/dry/usr/local/bin/speedmimi' \
            'install -m 0644 .*/dry/etc/systemd/system/speedmimi.service' 'install -m 0644 .*speedmimi.yaml .*/dry/etc/speedmimi/speedmimi.yaml' \
            'tuner apply --profile production' 'tuner persist --profile production --root .*/dry' \
            'DESTDIR is set: not touching the running system' 'dry run done: nothing was changed'; do
    grep -q -- "$want" "$tmp/out" || fail "the dry run does not print: $want"
done
# Without DESTDIR a dry run shows the systemd steps (and still runs nothing).
"$deploy" --production --bin-dir "$bin" --start systemd --dry-run >"$tmp/out" 2>&1 || fail "dry run (systemd) exited $?"
for want in 'systemctl daemon-reload' 'systemctl enable speedmimi.service' 'systemctl start speedmimi.service' \
            'curl -fsS http://127.0.0.1:9091/api/v1/health'; do
    grep -q -- "$want" "$tmp/out" || fail "the systemd dry run does not print: $want"
done
echo "ok: --dry-run prints build-prod, check, install, tuner apply/persist, start, health; writes nothing"

# 2. A staged install inside a network namespace.
new_netns ok
ip netns exec "$ns" "$bin/loadgen" backend --listen 127.0.0.1:9000 --workers 1 >"$tmp/backend.log" 2>&1 &
pids+=($!)
ns_before=$(ip netns exec "$ns" cat /proc/sys/net/core/somaxconn)
root=$tmp/root
ip netns exec "$ns" env DESTDIR="$root" "$deploy" --production --tune-system --bin-dir "$bin" \
    --profile container --tuner-state "$tmp/state" --start direct >"$tmp/out" 2>&1 || fail "staged deploy exited $?"
proxy_pid=$(cat "$root/var/run/speedmimi.pid")
pids+=("$proxy_pid")
for f in usr/local/bin/speedmimi usr/local/bin/loadgen usr/local/bin/tuner etc/speedmimi/speedmimi.yaml \
         etc/systemd/system/speedmimi.service etc/sysctl.d/60-speedmimi-container.conf \
         etc/systemd/system/speedmimi.service.d/60-speedmimi-limits.conf; do
    [ -e "$root/$f" ] || fail "not installed: $f"
done
grep -q '^ExecStart=/usr/local/bin/speedmimi --config /etc/speedmimi/speedmimi.yaml$' "$root/etc/systemd/system/speedmimi.service" \
    || fail "the installed unit does not run /usr/local/bin/speedmimi"
grep -q '"status"' "$tmp/out" || fail "no health answer in the output"
ns_after=$(ip netns exec "$ns" cat /proc/sys/net/core/somaxconn)
[ "$ns_after" = 65535 ] || fail "somaxconn in the namespace is $ns_after after apply (was $ns_before)"
[ "$(host_sysctls)" = "$host_before" ] || fail "the host's sysctls changed"
code=$(ip netns exec "$ns" curl -s -o /dev/null -w '%{http_code}' --max-time 5 http://127.0.0.1:8080/) || true
[ "$code" = 200 ] || fail "GET through the staged proxy: ${code:-nothing}"
echo "ok: staged install in a netns: 3 binaries, unit, config, sysctl.d + drop-in under DESTDIR; somaxconn $ns_before -> $ns_after in the netns, host unchanged; health answered; GET / 200"
# The staged unit with its drop-in passes systemd-analyze verify too.
if command -v systemd-analyze >/dev/null; then
    mkdir -p "$tmp/units/speedmimi.service.d"
    sed "s#/usr/local/bin/speedmimi#$root/usr/local/bin/speedmimi#g" "$root/etc/systemd/system/speedmimi.service" >"$tmp/units/speedmimi.service"
    cp "$root/etc/systemd/system/speedmimi.service.d/"*.conf "$tmp/units/speedmimi.service.d/"
    out=$(systemd-analyze verify --man=no "$tmp/units/speedmimi.service" 2>&1) || fail "verify: $out"
    [ -z "$out" ] || fail "systemd-analyze verify on the staged unit: $out"
    echo "ok: the staged unit and its drop-in pass systemd-analyze verify"
fi

# A second run finds the proxy running and upgrades it (SIGUSR2): the new
# process serves, the old one drains and exits, the installed config is kept.
ip netns exec "$ns" env DESTDIR="$root" "$deploy" --production --bin-dir "$bin" --start direct >"$tmp/out" 2>&1 \
    || fail "second deploy exited $?: $(cat "$tmp/out")"
grep -q "kill -USR2 $proxy_pid" "$tmp/out" || fail "the second run did not upgrade pid $proxy_pid"
grep -q 'keeping the installed' "$tmp/out" || fail "the second run overwrote the installed config"
new_pid=$(cat "$root/var/run/speedmimi.pid")
pids+=("$new_pid")
[ "$new_pid" != "$proxy_pid" ] || fail "the pid file still names pid $proxy_pid"
kill -0 "$new_pid" || fail "the new process $new_pid is not running"
for _ in $(seq 1 100); do kill -0 "$proxy_pid" 2>/dev/null || break; sleep 0.1; done
! kill -0 "$proxy_pid" 2>/dev/null || fail "the old process $proxy_pid did not drain and exit"
code=$(ip netns exec "$ns" curl -s -o /dev/null -w '%{http_code}' --max-time 5 http://127.0.0.1:8080/) || true
[ "$code" = 200 ] || fail "GET through the upgraded proxy: ${code:-nothing}"
echo "ok: a second run upgrades the running proxy (SIGUSR2: pid $proxy_pid -> $new_pid), keeps the installed config, GET / 200"
kill "$new_pid"
ip netns exec "$ns" "$bin/tuner" --state "$tmp/state" rollback >/dev/null || fail "rollback after the test"
[ "$(ip netns exec "$ns" cat /proc/sys/net/core/somaxconn)" = "$ns_before" ] || fail "rollback did not restore somaxconn"

# 3. A profile that fails half-way: somaxconn is written, then the kernel
# refuses the port range; deploy.sh rolls back and stops.
mkdir -p "$tmp/profiles"
cat >"$tmp/profiles/broken.yaml" <<'EOF'
description: test profile whose second key the kernel refuses
keys:
  net.core.somaxconn:
    value: ">= 60000"
    reason: "written first"
  net.ipv4.ip_local_port_range:
    value: "70000 80000"
    reason: "out of range: EINVAL"
EOF
new_netns fail
ns_before=$(ip netns exec "$ns" cat /proc/sys/net/core/somaxconn)
set +e
ip netns exec "$ns" env DESTDIR="$tmp/root2" "$deploy" --production --tune-system --bin-dir "$bin" \
    --profile broken --tuner-profiles "$tmp/profiles" --tuner-state "$tmp/state2" --start direct >"$tmp/out" 2>&1
rc=$?
set -e
[ "$rc" = 1 ] || fail "deploy.sh with a failing profile exited $rc, not 1"
grep -q 'rolling back' "$tmp/out" || fail "no rollback announced"
grep -q 'invalid_value\|invalid-value\|invalid value' "$tmp/out" || fail "the tuner's failure class is not shown"
[ "$(ip netns exec "$ns" cat /proc/sys/net/core/somaxconn)" = "$ns_before" ] || fail "somaxconn not rolled back"
[ ! -e "$tmp/root2/etc/sysctl.d/60-speedmimi-broken.conf" ] || fail "a failed apply was persisted"
[ ! -e "$tmp/root2/var/run/speedmimi.pid" ] || fail "the proxy was started after a failed apply"
[ ! -e "$tmp/state2/state.json" ] || fail "the state file is left after a full rollback"
[ "$(host_sysctls)" = "$host_before" ] || fail "the host's sysctls changed"
echo "ok: a profile failing half-way: rolled back (somaxconn $ns_before again), exit 1, nothing persisted or started; host unchanged"
echo "ok: deploy.sh"
