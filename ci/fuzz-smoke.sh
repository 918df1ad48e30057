#!/usr/bin/env bash
# Usage: ci/fuzz-smoke.sh [SECONDS]   (default 60)
#
# A short fuzzing run of every target under both engines, from the committed corpus: first
# libFuzzer for SECONDS, then AFL++ for about SECONDS/3. It proves the wrappers run, that
# the seeds and regression inputs still pass, and gives each engine a little time to find
# something shallow. Any crash or hang in either engine fails the script, after all targets
# have run, with the failing inputs' paths. Run ci/fuzz-build.sh first.
#
# Nothing is written into corpus/: libFuzzer adds new inputs to the FIRST corpus directory
# it is given, so a scratch directory goes first and corpus/<target> second; AFL++ only
# reads its -i directory. All output is under target/fuzz-smoke/ (git-ignored), replaced on
# each run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

SECONDS_LIBFUZZER=${1:-60}
SECONDS_AFL=$(( SECONDS_LIBFUZZER / 3 > 5 ? SECONDS_LIBFUZZER / 3 : 5 ))
TARGETS=(blk_conforming blk_hostile snapshot)
OUT=target/fuzz-smoke
# One input running this long is a hang, and a finding, in both engines. A run of the
# slowest seed takes a few milliseconds, so 10 s leaves room for a loaded CI machine.
TIMEOUT_SECONDS=10

# AFL++ without a terminal: no UI, don't insist on the CPU governor or on core_pattern
# (we cannot change either as CI), and don't pin to a core, which fails when another
# process already holds one. AFL++ only warns about, and skips, a seed that crashes or
# hangs; AFL_EXIT_ON_SEED_ISSUES makes that fatal, so a broken regression input fails.
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1
export AFL_EXIT_ON_SEED_ISSUES=1

rm -rf "$OUT"
mkdir -p "$OUT"
failures=()
passed=0

for t in "${TARGETS[@]}"; do
    seeds=corpus/$t
    if [ -z "$(ls -A "$seeds" 2>/dev/null)" ]; then
        echo "!! $seeds is missing or empty" >&2
        failures+=("$t: no corpus")
        continue
    fi
    work=$OUT/$t
    mkdir -p "$work/libfuzzer-corpus" "$work/libfuzzer-artifacts"

    # A dictionary fuzz/<target>.dict, where one exists, goes to both engines. None is
    # committed now: candidates for all three targets raised neither libFuzzer's cov nor
    # ft beyond seed-to-seed noise (libFuzzer already learns the op bytes and the
    # snapshot magic from comparisons, and the seeds hold every op kind).
    lf_flags=(-max_total_time="$SECONDS_LIBFUZZER" -timeout="$TIMEOUT_SECONDS"
              -artifact_prefix="$work/libfuzzer-artifacts/" -print_final_stats=1)
    afl_flags=()
    if [ -f "fuzz/$t.dict" ]; then
        lf_flags+=(-dict="fuzz/$t.dict")
        afl_flags+=(-x "fuzz/$t.dict")
    fi
    # fuzz/<target>.options holds the libFuzzer options OSS-Fuzz runs the target with
    # (max_len); each `key = value` of its [libfuzzer] section becomes -key=value, as
    # OSS-Fuzz's runner turns them.
    if [ -f "fuzz/$t.options" ]; then
        while IFS= read -r flag; do lf_flags+=("$flag"); done < <(sed -n \
            '/^\[libfuzzer\]/,/^\[/s/^\([A-Za-z_]*\)[[:space:]]*=[[:space:]]*\([^[:space:]]*\).*/-\1=\2/p' \
            "fuzz/$t.options")
    fi

    echo "== libFuzzer: $t for ${SECONDS_LIBFUZZER}s (${lf_flags[*]})"
    # The later -artifact_prefix overrides cargo-fuzz's fuzz/artifacts/<target>/.
    if cargo fuzz run "$t" "$work/libfuzzer-corpus" "$seeds" --sanitizer none --no-trace-compares -- \
        "${lf_flags[@]}" > "$work/libfuzzer.log" 2>&1; then
        grep -E '^#[0-9]+[[:space:]]+DONE|^stat::number_of_executed_units|^stat::average_exec_per_sec' \
            "$work/libfuzzer.log" || true
        passed=$((passed + 1))
    else
        tail -n 40 "$work/libfuzzer.log"
        found=$(find "$work/libfuzzer-artifacts" -type f | sort)
        echo "!! libFuzzer failed on $t; log: $work/libfuzzer.log" >&2
        for f in $found; do echo "!! failing input: $f" >&2; done
        failures+=("$t (libFuzzer): ${found:-no artifact, see $work/libfuzzer.log}")
    fi

    echo "== AFL++: $t for ${SECONDS_AFL}s ${afl_flags[*]}"
    # -t is in milliseconds; afl-fuzz exits 0 even when it saved crashes, so look for them.
    if cargo afl fuzz -i "$seeds" -o "$work/afl" -V "$SECONDS_AFL" \
        -t "$((TIMEOUT_SECONDS * 1000))" "${afl_flags[@]}" \
        "fuzz/afl/target/release/$t" > "$work/afl.log" 2>&1; then
        grep -E '^(execs_done|execs_per_sec|corpus_count|saved_crashes|saved_hangs) ' \
            "$work/afl/default/fuzzer_stats" || true
        found=$(find "$work/afl" -path '*/crashes/id:*' -o -path '*/hangs/id:*' | sort)
        if [ -z "$found" ]; then
            passed=$((passed + 1))
        else
            echo "!! AFL++ found crashes or hangs in $t; log: $work/afl.log" >&2
            for f in $found; do echo "!! failing input: $f" >&2; done
            failures+=("$t (AFL++): $found")
        fi
    else
        # afl-fuzz stops early when a seed crashes or hangs during its dry run; the seed is
        # named in the log as a copy in its queue, "...,orig:<seed file name>".
        tail -n 40 "$work/afl.log"
        echo "!! afl-fuzz failed to run $t; log: $work/afl.log" >&2
        grep -a -o "Test case '[^']*' results in a [a-z]*" "$work/afl.log" | sed 's/^/!! /' >&2 || true
        failures+=("$t (AFL++): afl-fuzz exited non-zero, see $work/afl.log")
    fi
done

echo
for f in "${failures[@]}"; do echo "FAILED: $f"; done
# One closing line in the plain 'N passed, N failed' form: 2 engine runs per target.
echo "fuzz-smoke: $passed passed, ${#failures[@]} failed"
[ "${#failures[@]}" -eq 0 ]
