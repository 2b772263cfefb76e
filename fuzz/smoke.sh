#!/usr/bin/env bash
# CI smoke run of every fuzz target: build, then run each for N seconds (default 20) on a
# temporary copy of its checked-in seed corpus (the seeds in fuzz/corpus stay untouched).
# Exits non-zero on the first finding (crash, panic, timeout, OOM) or build failure.
#
#   fuzz/smoke.sh [SECONDS] [TARGET...]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`); on a stable toolchain RUSTC_BOOTSTRAP=1 lets
# cargo-fuzz use the nightly-only sanitizer flags (set here if not already set).
set -euo pipefail

FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SECONDS_PER_TARGET="${1:-20}"
shift || true
export RUSTC_BOOTSTRAP="${RUSTC_BOOTSTRAP:-1}"

cd "$FUZZ_DIR/.."
if [[ $# -gt 0 ]]; then
    TARGETS=("$@")
else
    mapfile -t TARGETS < <(cargo fuzz list)
fi

cargo fuzz build

WORK="$(mktemp -d -t certgate-fuzz.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

status=0
for t in "${TARGETS[@]}"; do
    mkdir -p "$WORK/corpus/$t" "$WORK/artifacts/$t"
    if [[ -d "$FUZZ_DIR/corpus/$t" ]]; then
        cp -r "$FUZZ_DIR/corpus/$t/." "$WORK/corpus/$t/"
    fi
    # Known regression inputs are replayed too, so a fixed bug stays fixed.
    if [[ -d "$FUZZ_DIR/regressions/$t" ]]; then
        cp -r "$FUZZ_DIR/regressions/$t/." "$WORK/corpus/$t/"
    fi
    echo "== fuzz $t for ${SECONDS_PER_TARGET}s"
    if cargo fuzz run "$t" "$WORK/corpus/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$WORK/artifacts/$t/" -print_final_stats=1 >"$WORK/$t.log" 2>&1; then
        grep -E '^stat::number_of_executed_units|^Done [0-9]+ runs' "$WORK/$t.log" | tail -n 1 || true
    else
        status=1
        echo "!! $t: finding (or failure); last output:"
        tail -n 60 "$WORK/$t.log"
        for f in "$WORK/artifacts/$t"/*; do
            [[ -f "$f" ]] || continue
            echo "!! $t artifact $(basename "$f"):"
            python3 -c 'import sys; print(repr(open(sys.argv[1], "rb").read()))' "$f" 2>/dev/null || od -c "$f" | head -n 40
        done
    fi
done
exit "$status"
