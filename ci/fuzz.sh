#!/usr/bin/env bash
# Runs every libFuzzer target in fuzz/ for a bounded time and prints, per
# target, the executions, the corpus size and the crashes found.
#   ci/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (make fuzz SECONDS=60)
# Needs cargo-fuzz (`cargo install cargo-fuzz`); runs on the stable
# toolchain through RUSTC_BOOTSTRAP=1 (cargo-fuzz passes -Z flags). The
# seeds in fuzz/seeds/ are read only; what libFuzzer learns goes to
# fuzz/corpus/ (not committed), crashes to fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
per_target=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(request chunked response config admin_patch differential)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
    exit 2
fi
export RUSTC_BOOTSTRAP=1
cargo fuzz build >/dev/null
failed=0
rows=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    mkdir -p logs; log="logs/$t.log"
    before=$(find "artifacts/$t" -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' | wc -l)
    status=ok
    if ! cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$per_target" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        >"$log" 2>&1; then
        status=FAILED
        failed=1
    fi
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    after=$(find "artifacts/$t" -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' | wc -l)
    corpus=$(find "corpus/$t" -type f | wc -l)
    rows+=("$(printf '%-13s %8s s %12s %10s %8s  %s' "$t" "$per_target" "${execs:-?}" "$corpus" "$((after - before))" "$status")")
    if [ "$status" != ok ]; then
        echo "--- $t: the last lines of $log" >&2
        tail -n 30 "$log" >&2
    fi
done
printf '%-13s %10s %12s %10s %8s  %s\n' target time executions corpus crashes verdict
printf '%s\n' "${rows[@]}"
exit $failed
