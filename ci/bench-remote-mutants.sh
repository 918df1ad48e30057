#!/usr/bin/env bash
# Usage: ci/bench-remote-mutants.sh [SECONDS]   (default 15)
#
# Every planted bug through the vhost-user front-end against `stopfuzz serve` (which
# inherits STOPFUZZ_MUTANT), SECONDS each, one worker: what fuzzing through the socket finds
# of bugs the in-process explorer finds (README, "Serving the reference device").
# Prints one line per mutant: its name, the run's summary and its first findings.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
SECONDS_RUN=${1:-15}
OUT=target/bench-remote-mutants
cargo build --release --features mutants -j"${CARGO_BUILD_JOBS:-1}" --quiet
rm -rf "$OUT"
mkdir -p "$OUT"
bin=$PWD/target/release/stopfuzz
found=0
names=$(sed -n 's/^ *[A-Za-z]* = "\([a-z-]*\)",$/\1/p' src/mutants.rs)
for m in $names; do
    out=$(STOPFUZZ_MUTANT=$m "$bin" run --device vhost-user \
        --backend "$bin serve --socket {socket} --image {image} --faults {faults}" \
        --backend-id stopfuzz-reference --seconds "$SECONDS_RUN" --jobs 1 --seed 5 \
        --out "$OUT/$m" 2>&1 || true)
    summary=$(grep '^summary:' <<<"$out" || echo "summary: none")
    findings=$(grep '^finding:' <<<"$out" | cut -c1-120 | tr '\n' ' ' || true)
    [ -n "$findings" ] && found=$((found + 1))
    echo "$m $summary $findings"
done
echo "remote-mutants: found=$found of $(wc -w <<<"$names")"
