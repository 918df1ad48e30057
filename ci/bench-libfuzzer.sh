#!/usr/bin/env bash
# Usage: ci/bench-libfuzzer.sh [SECONDS] [SEEDS] [TARGET...]
#        (defaults: 60 s, 1 seed, all three targets)
#
# Program ops per second on the paths a user has, side by side in one run, one core each,
# from the committed corpus:
#   explorer         `stopfuzz run --jobs 1`: uninstrumented, in process;
#   cargo-fuzz       the libFuzzer binary as ci/fuzz-build.sh and the README build it
#                    (release with debug assertions, --no-trace-compares);
#   oss-fuzz         as ci/oss-fuzz/build.sh builds it (-O, --no-trace-compares), without
#                    the sanitizer OSS-Fuzz adds;
#   +trace-compares  cargo-fuzz's defaults (debug assertions and comparison tracing), the
#                    build the flag replaced.
# libFuzzer grows inputs towards max_len, so the paths run programs of different lengths
# and the comparison is per op: the fuzz entry points count ops when STOPFUZZ_STATS is set.
# The libFuzzer rows also give cov and ft at the end, the coverage each build reached in
# the same time. Figures are medians over the seeds. Run ci/install-fuzzers.sh first.
# Everything is written under target/bench-libfuzzer/.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

SECS=${1:-60}
SEEDS=${2:-1}
shift $(( $# > 2 ? 2 : $# ))
TARGETS=(blk_conforming blk_hostile snapshot)
[ $# -eq 0 ] || TARGETS=("$@")
case "$SECS$SEEDS" in *[!0-9]*) echo "usage: $0 [SECONDS] [SEEDS] [TARGET...]" >&2; exit 2 ;; esac
for t in "${TARGETS[@]}"; do
    if [ ! -f "fuzz/fuzz_targets/$t.rs" ]; then
        echo "unknown target $t: no fuzz/fuzz_targets/$t.rs" >&2
        exit 2
    fi
done

OUT=$PWD/target/bench-libfuzzer
rm -rf "$OUT"
mkdir -p "$OUT"
host=$(rustc -vV | sed -n 's/^host: //p')

cargo build --release --quiet
cargo fuzz build --sanitizer none --no-trace-compares
CARGO_TARGET_DIR=$OUT/oss-fuzz-build cargo fuzz build -O --sanitizer none --no-trace-compares
CARGO_TARGET_DIR=$OUT/trace-compares-build cargo fuzz build --sanitizer none
PATHS=(cargo-fuzz oss-fuzz +trace-compares)
declare -A BIN=(
    [cargo-fuzz]=fuzz/target/$host/release
    [oss-fuzz]=$OUT/oss-fuzz-build/$host/release
    [+trace-compares]=$OUT/trace-compares-build/$host/release
)

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# One libFuzzer run: prints "execs_per_s ops_per_exec cov ft".
libfuzzer_run() {
    local bin=$1 t=$2 seed=$3 dir=$4
    mkdir -p "$dir/corpus"
    local max_len
    max_len=$(sed -n 's/^max_len *= *//p' "fuzz/$t.options")
    STOPFUZZ_STATS=1 "$bin/$t" -seed="$seed" -max_total_time="$SECS" -max_len="$max_len" \
        -print_final_stats=1 -artifact_prefix="$dir/" "$dir/corpus" "corpus/$t" \
        >"$dir/log" 2>&1 || { echo "!! $bin/$t failed; see $dir/log" >&2; exit 1; }
    local execs ops
    read -r execs ops < <(sed -n 's/^stopfuzz-stats: execs=\([0-9]*\) ops=\([0-9]*\)$/\1 \2/p' "$dir/log" | tail -1)
    [ -n "${execs:-}" ] || { echo "!! no stopfuzz-stats line in $dir/log: too few executions" >&2; exit 1; }
    local rate done
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$dir/log")
    done=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$dir/log" | tail -1)
    echo "$rate $(awk -v o="$ops" -v e="$execs" 'BEGIN { printf "%.1f", o / e }') \
        $(sed -n 's/.* cov: \([0-9]*\) .*/\1/p' <<<"$done") $(sed -n 's/.* ft: \([0-9]*\) .*/\1/p' <<<"$done")"
}

printf '| target | path | execs/s | ops/exec | ops/s | explorer ÷ path, per op | cov | ft |\n'
printf '|---|---|---|---|---|---|---|---|\n'
for t in "${TARGETS[@]}"; do
    declare -A RATE=() OPE=() COV=() FT=()
    for seed in $(seq 1 "$SEEDS"); do
        line=$(./target/release/stopfuzz run --target "$t" --seconds "$SECS" --seed "$seed" \
            --jobs 1 --out "$OUT/findings" 2>"$OUT/explorer.log" | grep '^summary:')
        execs_s=$(sed -n 's/.* execs_per_s=\([0-9]*\) .*/\1/p' <<<"$line")
        ops_s=$(sed -n 's/.* ops_per_s=\([0-9]*\) .*/\1/p' <<<"$line")
        RATE[explorer]+="$execs_s "
        OPE[explorer]+="$(awk -v o="$ops_s" -v e="$execs_s" 'BEGIN { printf "%.1f", o / e }') "
        for path in "${PATHS[@]}"; do
            read -r rate ope cov ft < <(libfuzzer_run "${BIN[$path]}" "$t" "$seed" "$OUT/$t-$path-$seed")
            RATE[$path]+="$rate "
            OPE[$path]+="$ope "
            COV[$path]+="$cov "
            FT[$path]+="$ft "
        done
    done
    explorer_ops=
    for path in explorer "${PATHS[@]}"; do
        rate=$(tr ' ' '\n' <<<"${RATE[$path]}" | grep . | median)
        ope=$(tr ' ' '\n' <<<"${OPE[$path]}" | grep . | median)
        ops=$(awk -v r="$rate" -v o="$ope" 'BEGIN { printf "%.0f", r * o }')
        [ -n "$explorer_ops" ] || explorer_ops=$ops
        ratio=$(awk -v a="$explorer_ops" -v b="$ops" 'BEGIN { printf "%.2f", a / b }')
        cov=-; ft=-
        if [ "$path" != explorer ]; then
            cov=$(tr ' ' '\n' <<<"${COV[$path]}" | grep . | median)
            ft=$(tr ' ' '\n' <<<"${FT[$path]}" | grep . | median)
        fi
        printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$t" "$path" "$rate" "$ope" "$ops" "$ratio" "$cov" "$ft"
    done
    unset RATE OPE COV FT
done
