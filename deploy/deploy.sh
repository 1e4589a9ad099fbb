#!/usr/bin/env bash
# One-shot install of SpeedMimi on a Linux host (docs/operations.md):
#
#   sudo deploy/deploy.sh --production --tune-system --optimized
#
# Steps, each printed before it runs (--dry-run prints them and runs none):
#   1. build        make build-prod (--optimized) or make build; skipped with --bin-dir
#   2. validate     speedmimi --check --config CONFIG
#   3. install      binaries to DESTDIR/PREFIX/bin, the unit to
#                   DESTDIR/etc/systemd/system, the config to DESTDIR/etc/speedmimi
#                   (an existing config is kept unless --replace-config)
#   4. tune         (--tune-system) tuner apply, then tuner persist under DESTDIR;
#                   on any failure tuner rollback, and stop
#   5. start        (--production) systemctl daemon-reload + enable + start, or
#                   an upgrade (SIGUSR2: the new binaries, no connection
#                   dropped) when it runs; with DESTDIR set the running system is
#                   left alone unless --start direct is asked for
#   6. check        GET /api/v1/health on the admin address until it answers
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
prefix=/usr/local
destdir=${DESTDIR:-}
config=""
production=0
tune=0
optimized=0
dry=0
bin_dir=""
profile=""
profiles_dir=""
tuner_state=""
tune_only=()
start=auto
replace_config=0
health_timeout=15

usage() {
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
    cat <<'EOF'
Options:
  --production         production profile, and start (or upgrade, SIGUSR2) the service
  --tune-system        apply and persist the tuner profile (rolled back on failure)
  --optimized          build with LTO (make build-prod) instead of make build
  --dry-run            print every step, change nothing
  --prefix DIR         install prefix (default /usr/local)
  --destdir DIR        staging root (or DESTDIR=DIR); nothing outside it is written
  --config FILE        configuration to install (default deploy/speedmimi.yaml)
  --replace-config     overwrite an installed configuration (the old one is kept as .bak)
  --bin-dir DIR        use these binaries instead of building
  --profile NAME       tuner profile (default production)
  --tuner-profiles DIR extra tuner profiles (tuner --profiles DIR)
  --tuner-state DIR    where apply keeps the originals (default /run/speedmimi-tuner)
  --tune-only PREFIX   apply only keys starting with PREFIX (repeatable; e.g. net.)
  --start MODE         auto | systemd | direct | none (default auto)
EOF
}

while [ $# -gt 0 ]; do
    case $1 in
        --production) production=1 ;;
        --tune-system) tune=1 ;;
        --optimized) optimized=1 ;;
        --dry-run) dry=1 ;;
        --prefix) prefix=${2:?}; shift ;;
        --destdir) destdir=${2:?}; shift ;;
        --config) config=${2:?}; shift ;;
        --replace-config) replace_config=1 ;;
        --bin-dir) bin_dir=${2:?}; shift ;;
        --profile) profile=${2:?}; shift ;;
        --tuner-profiles) profiles_dir=${2:?}; shift ;;
        --tuner-state) tuner_state=${2:?}; shift ;;
        --tune-only) tune_only+=("--only" "${2:?}"); shift ;;
        --start) start=${2:?}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "deploy.sh: unknown option $1 (--help)" >&2; exit 2 ;;
    esac
    shift
done
case $start in auto|systemd|direct|none) ;; *) echo "deploy.sh: --start auto|systemd|direct|none" >&2; exit 2 ;; esac
[ -n "$config" ] || config=$repo/deploy/speedmimi.yaml
[ -n "$profile" ] || profile=production
destdir=${destdir%/}

step=0
say() { step=$((step + 1)); echo "==> [$step] $*"; }
# Prints a command, then runs it unless --dry-run.
run() {
    printf '+'; printf ' %q' "$@"; printf '\n'
    [ "$dry" = 1 ] || "$@"
}
die() { echo "deploy.sh: $*" >&2; exit 1; }

# 1. build
if [ -n "$bin_dir" ]; then
    say "build: skipped, using binaries in $bin_dir"
else
    target=${CARGO_TARGET_DIR:-$repo/target}
    if [ "$optimized" = 1 ]; then
        say "build: prod profile (LTO, one codegen unit)"
        run make -C "$repo" build-prod
        bin_dir=$target/prod
    else
        say "build: release profile"
        run make -C "$repo" build
        bin_dir=$target/release
    fi
fi

# 2. validate
say "validate $config"
run "$bin_dir/speedmimi" --check --config "$config"

# 3. install
root=$destdir
bin_to=$root$prefix/bin
etc=$root/etc
say "install into ${destdir:-/} (prefix $prefix)"
run install -d -m 0755 "$bin_to" "$etc/speedmimi" "$etc/systemd/system"
for b in speedmimi loadgen tuner; do
    run install -m 0755 "$bin_dir/$b" "$bin_to/$b"
done
unit_tmp=$(mktemp)
trap 'rm -f "$unit_tmp"' EXIT
# The unit names the binary by its installed path (PREFIX, not DESTDIR).
sed "s#/usr/local/bin/#$prefix/bin/#g" "$repo/deploy/systemd/speedmimi.service" >"$unit_tmp"
run install -m 0644 "$unit_tmp" "$etc/systemd/system/speedmimi.service"
installed_config=$etc/speedmimi/speedmimi.yaml
if [ -e "$installed_config" ] && [ "$replace_config" = 0 ]; then
    echo "    keeping the installed $installed_config (--replace-config to overwrite)"
else
    if [ -e "$installed_config" ]; then
        run cp -p "$installed_config" "$installed_config.bak-$(date +%Y%m%dT%H%M%S)"
    fi
    # 0644: the service's DynamicUser reads it.
    run install -m 0644 "$config" "$installed_config"
fi

# 4. tune
tuner=("$bin_dir/tuner")
[ -z "$profiles_dir" ] || tuner+=(--profiles "$profiles_dir")
[ -z "$tuner_state" ] || tuner+=(--state "$tuner_state")
if [ "$tune" = 1 ]; then
    say "tune: apply profile $profile to this kernel (originals saved for rollback)"
    if ! run "${tuner[@]}" apply --profile "$profile" --pid $$ ${tune_only[@]+"${tune_only[@]}"}; then
        echo "deploy.sh: tuner apply failed: rolling back every key it changed" >&2
        run "${tuner[@]}" rollback || echo "deploy.sh: rollback failed too; run: ${tuner[*]} rollback" >&2
        exit 1
    fi
    say "tune: persist profile $profile under $destdir/etc (sysctl.d, the unit's drop-in, limits.d)"
    if ! run "${tuner[@]}" persist --profile "$profile" --root "${destdir:-/}"; then
        echo "deploy.sh: tuner persist failed: rolling back the applied profile" >&2
        run "${tuner[@]}" rollback || echo "deploy.sh: rollback failed too; run: ${tuner[*]} rollback" >&2
        exit 1
    fi
fi

# 5. start
# admin.listen of the installed file (the given one in a dry run).
admin_field() { sed -n "/^admin:/,/^[a-z]/s/^ *$1: *\"\{0,1\}\([^\" #]*\)\"\{0,1\}.*/\1/p" "$2" 2>/dev/null | head -1 || true; }
admin_config=$installed_config
[ -e "$admin_config" ] || admin_config=$config
admin=$(admin_field listen "$admin_config")
[ -n "$admin" ] || admin=127.0.0.1:9091
# A wildcard admin address is reached on loopback.
admin=${admin/0.0.0.0/127.0.0.1}
if [ "$start" = auto ]; then
    if [ "$production" = 0 ]; then
        start=none
    elif [ -n "$destdir" ]; then
        start=none
        echo "    DESTDIR is set: not touching the running system (--start direct runs the staged binary)"
    elif command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        start=systemd
    else
        start=none
        echo "    no running systemd: start it by hand: $prefix/bin/speedmimi --config /etc/speedmimi/speedmimi.yaml"
    fi
fi
case $start in
    systemd)
        [ -z "$destdir" ] || die "--start systemd with DESTDIR set would start the real service"
        say "start: systemd"
        run systemctl daemon-reload
        run systemctl enable speedmimi.service
        if [ "$dry" = 0 ] && systemctl is-active --quiet speedmimi.service; then
            # The binaries may be new: an upgrade (SIGUSR2) runs them and
            # reads the configuration without dropping a connection; if the
            # new process fails, the old one goes on serving.
            run systemctl kill -s USR2 --kill-whom=main speedmimi.service
        else
            run systemctl start speedmimi.service
        fi
        ;;
    direct)
        say "start: the staged binary, in the background (log and pid under ${destdir:-/}var)"
        pidfile=$root/var/run/speedmimi.pid
        log=$root/var/log/speedmimi.log
        run install -d "$root/var/run" "$root/var/log"
        if [ "$dry" = 0 ] && [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            # Running: upgrade it (SIGUSR2), as above; the new process says
            # `upgraded: pid NEW ...` in the same log.
            old_pid=$(cat "$pidfile")
            seen=$(grep -c '^upgraded: pid ' "$log" 2>/dev/null || true)
            failed_before=$(grep -c 'upgrade failed' "$log" 2>/dev/null || true)
            run kill -USR2 "$old_pid"
            new_pid=
            for _ in $(seq 1 350); do
                # awk, not grep | sed: under pipefail a grep that finds
                # nothing yet would end the script (set -e).
                new_pid=$(awk -v n=$((seen + 1)) '/^upgraded: pid /{if (++c == n) {print $3; exit}}' "$log" 2>/dev/null || true)
                [ -z "$new_pid" ] || break
                [ "$(grep -c 'upgrade failed' "$log" 2>/dev/null || true)" -gt "${failed_before:-0}" ] && break
                sleep 0.1
            done
            [ -n "$new_pid" ] || die "upgrade of pid $old_pid failed; it goes on serving (see $log)"
            echo "$new_pid" >"$pidfile"
            echo "    pid $new_pid serves in place of pid $old_pid, which drains and exits"
        else
            echo "+ $bin_to/speedmimi --config $installed_config >$log 2>&1 &"
            if [ "$dry" = 0 ]; then
                "$bin_to/speedmimi" --config "$installed_config" >"$log" 2>&1 </dev/null &
                echo $! >"$pidfile"
                echo "    pid $(cat "$pidfile"); stop with: kill \$(cat $pidfile)"
            fi
        fi
        ;;
    none)
        say "start: skipped"
        ;;
esac

# 6. check
if [ "$start" != none ]; then
    url=http://$admin/api/v1/health
    say "check: GET $url answers (within ${health_timeout}s)"
    if [ "$dry" = 1 ]; then
        echo "+ curl -fsS $url"
    else
        token=$(admin_field token "$admin_config")
        header=()
        [ -z "$token" ] || header=(-H "Authorization: Bearer $token")
        deadline=$((SECONDS + health_timeout))
        get() {
            if command -v curl >/dev/null; then
                curl -fsS --max-time 2 ${header[@]+"${header[@]}"} "$url"
            else # loadgen is installed beside the proxy; errors=0 means a 2xx
                "$bin_to/loadgen" run "$url" -c 1 -t 1 -n 1 -q --timeout 2s --threshold errors=0 \
                    ${token:+-H "Authorization: Bearer $token"} >/dev/null && echo '{"status":"ok"}'
            fi
        }
        until answer=$(get 2>&1); do
            [ "$SECONDS" -lt "$deadline" ] || die "no health answer from $url: $answer"
            sleep 0.2
        done
        echo "    $(echo "$answer" | tr -d ' \n')"
    fi
fi
if [ "$dry" = 1 ]; then
    echo "deploy.sh: dry run done: nothing was changed"
else
    echo "deploy.sh: done"
fi
