#!/usr/bin/env bash
# systemd-analyze verify on deploy/systemd/speedmimi.service together with the
# drop-in `tuner persist` writes for it. Fails on any line verify prints (it
# exits 0 on unknown keys, so the exit code alone proves little). Nothing is
# installed: the unit is verified from a temporary directory, with its binary
# path pointed at the built binary (verify checks that ExecStart exists).
# BIN_DIR: directory holding speedmimi and tuner (default target/release).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
bin=${BIN_DIR:-$here/target/release}
# Absolute: a unit's ExecStart must be, and make passes target/release.
bin=$(cd "$bin" 2>/dev/null && pwd || echo "$bin")
unit=$here/deploy/systemd/speedmimi.service

if ! command -v systemd-analyze >/dev/null; then
    echo "SKIPPED: systemd-analyze not installed (apt-get install systemd)"
    exit 0
fi
for b in speedmimi tuner; do
    [ -x "$bin/$b" ] || { echo "FAIL: $bin/$b missing (make build, or set BIN_DIR)"; exit 1; }
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The persisted profile, staged under a temporary root (never /etc).
"$bin/tuner" persist --profile production --root "$tmp/root" >"$tmp/persist.out"
dropin=$tmp/root/etc/systemd/system/speedmimi.service.d/60-speedmimi-limits.conf
grep -q '^LimitNOFILE=' "$dropin" || { echo "FAIL: no LimitNOFILE in $dropin"; cat "$tmp/persist.out"; exit 1; }
grep -q '^\[Service\]' "$dropin" || { echo "FAIL: no [Service] in $dropin"; exit 1; }

dir=$tmp/units
mkdir -p "$dir/speedmimi.service.d"
sed "s#/usr/local/bin/speedmimi#$bin/speedmimi#g" "$unit" >"$dir/speedmimi.service"
cp "$dropin" "$dir/speedmimi.service.d/"

# The unit must carry what docs/operations.md promises.
for want in '^LimitNOFILE=' '^Type=notify$' '^NotifyAccess=all$' '^ExecReload=/bin/kill -HUP \$MAINPID$' '^Restart=on-failure$' \
            '^NoNewPrivileges=yes$' '^ProtectSystem=strict$' '^ProtectHome=yes$' \
            '^PrivateTmp=yes$' '^CapabilityBoundingSet=$' '^AmbientCapabilities=$' \
            '60-speedmimi-limits.conf' '60-speedmimi-production.conf'; do
    grep -q -- "$want" "$unit" || { echo "FAIL: $unit lacks $want"; exit 1; }
done

out=$(systemd-analyze verify --man=no "$dir/speedmimi.service" 2>&1) && rc=0 || rc=$?
if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
    echo "FAIL: systemd-analyze verify (exit $rc) printed:"
    echo "$out"
    exit 1
fi
echo "ok: systemd-analyze verify speedmimi.service + tuner persist drop-in: no warnings"

# Exposure score of the sandboxing, for the record (lower is stricter).
if score=$(systemd-analyze security --offline=yes "$dir/speedmimi.service" 2>/dev/null | grep -o 'exposure level for speedmimi.service: [0-9.]* [A-Z]*'); then
    echo "ok: $score"
fi
