#!/usr/bin/env bash
# An input found by either engine reproduces in the other and in `stopfuzz replay`, shown
# on a real finding: a planted bug (default kicks-lost-while-stopped). libFuzzer and AFL++
# each fuzz it from nothing; each one's crash must crash the other's binary and be reported
# by replay with the invariant it broke.
#
# Usage: ci/cross-engine.sh [SECONDS]   (budget per engine, default 120)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-120}
target=blk_conforming
export STOPFUZZ_MUTANT=${STOPFUZZ_MUTANT:-kicks-lost-while-stopped}
work=target/cross-engine
rm -rf "$work"
mkdir -p "$work/lf-corpus" "$work/lf-art" "$work/afl-in"

# Mutant builds go to their own target dirs, so they never replace the reference builds.
echo "== building $target with planted bugs for libFuzzer, AFL++ and replay"
cargo fuzz build --sanitizer none --no-trace-compares --features mutants --target-dir target/fuzz-mutants "$target"
libfuzzer=target/fuzz-mutants/x86_64-unknown-linux-gnu/release/$target
(cd fuzz/afl && cargo afl build --release --features mutants --target-dir ../../target/afl-mutants --bin "$target")
afl=target/afl-mutants/release/$target
cargo build --release --features mutants --target-dir target/cli-mutants
stopfuzz=target/cli-mutants/release/stopfuzz

fail() {
    echo "cross-engine: $*" >&2
    exit 1
}

# Replays $2 (found by $1) in the other engines; each must see the finding.
reproduce() {
    local found_by=$1 input=$2
    echo "== $found_by found $(basename "$input"); replaying it everywhere"
    if "$libfuzzer" "$input" >"$work/replay-lf.log" 2>&1; then
        fail "the libFuzzer binary passes an input $found_by found"
    fi
    grep -q "stopfuzz finding" "$work/replay-lf.log" || fail "libFuzzer crashed, but not on a finding"
    # afl.rs aborts on a panic; bash then prints an "Aborted" notice, which is expected.
    if "$afl" <"$input" >"$work/replay-afl.log" 2>&1; then
        fail "the AFL++ binary passes an input $found_by found"
    fi
    local status=0
    "$stopfuzz" replay --target "$target" "$input" >"$work/replay-cli.log" || status=$?
    [ "$status" -eq 1 ] || fail "stopfuzz replay exited $status, not 1"
    grep -q "FINDING" "$work/replay-cli.log" || fail "stopfuzz replay reported no finding"
    cat "$work/replay-cli.log"
}

echo "== libFuzzer hunting $STOPFUZZ_MUTANT for up to ${seconds}s"
"$libfuzzer" -seed=1 -max_total_time="$seconds" -artifact_prefix="$work/lf-art/" \
    "$work/lf-corpus" >"$work/libfuzzer.log" 2>&1 || true
lf_crash=$(find "$work/lf-art" -name 'crash-*' | head -n 1)
[ -n "$lf_crash" ] || fail "libFuzzer found nothing in ${seconds}s (log: $work/libfuzzer.log)"
reproduce libFuzzer "$lf_crash"

echo "== AFL++ hunting $STOPFUZZ_MUTANT for up to ${seconds}s"
# A one-byte program: a passing seed, as AFL++ refuses seeds that crash.
printf '\001' >"$work/afl-in/empty"
AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_BENCH_UNTIL_CRASH=1 \
    cargo afl fuzz -i "$work/afl-in" -o "$work/afl-out" -V "$seconds" "$afl" >"$work/afl.log" 2>&1 || true
afl_crash=$(find "$work/afl-out" -path '*/crashes/id:*' | head -n 1)
[ -n "$afl_crash" ] || fail "AFL++ found nothing in ${seconds}s (log: $work/afl.log)"
reproduce AFL++ "$afl_crash"

echo "cross-engine: both engines' findings reproduce everywhere"
