#!/usr/bin/env bash
# How many planted bugs each capability set still finds: the reference device, then the
# reference with one capability hidden at a time, then with all of them hidden (what a
# device in another process offers). Then the crash-only contrast on the same workload.
# Usage: ci/bench-capabilities.sh [SECONDS] [SEEDS]   (defaults 10 and 3; one core)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
seeds=${2:-3}
cargo build --release --features mutants --target-dir target/mutants -q
bin=target/mutants/release/stopfuzz
bench() { "$bin" bench --seconds "$seconds" --seeds "$seeds" --jobs 1 "$@" 2>&1; }
for set in reference introspection exact-writes disk-control snapshot-inspection all; do
    if [ "$set" = reference ]; then
        out=$(bench)
    else
        out=$(bench --device reduced --hide "$set")
    fi
    echo "== hidden: $set"
    echo "$out" | grep -E '^\|'
    echo "$out" | grep '^summary:'
done
echo "== reference, crash-only oracle"
bench --oracle crash-only | grep -E '^\||^summary:'
