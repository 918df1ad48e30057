# Sourced by the smoke scripts that fuzz a device in other processes (ci/vhost-user-smoke.sh,
# ci/qemu-smoke.sh): runs one `stopfuzz run`, then judges it and exits with its verdict.
#
#   smoke_run OUT SECONDS ARGS...
#
# runs `stopfuzz run ARGS... --seconds SECONDS --jobs 1 --seed 1` into OUT (replaced), and
# sets RUN_PID (whose scratch directories name this run's processes) and RUN_CODE.
#
#   judge LABEL CODE OUT KNOWN PANIC_MARK LEFTOVER_PATTERN [UNREPRODUCED]
#
# CODE is the run's exit code and OUT its directory (stdout, stderr, findings/). It fails on
# a harness error (exit code other than 0 or 1), a harness panic (a no-panic finding whose
# report does not name PANIC_MARK, the device's side), a finding of an invariant not in
# KNOWN (with UNREPRODUCED=warn, one that reproduced 0 times is only a warning: a third-party
# device's timing), or a process matching LEFTOVER_PATTERN still alive.
smoke_run() {
    local out=$1 seconds=$2
    shift 2
    rm -rf "$out"
    mkdir -p "$out"
    set +e
    target/release/stopfuzz run "$@" --seconds "$seconds" --jobs 1 --seed 1 \
        --out "$out/findings" >"$out/stdout" 2>"$out/stderr" &
    RUN_PID=$!
    wait "$RUN_PID"
    RUN_CODE=$?
    set -e
}

judge() {
    local label=$1 code=$2 out=$3 known=$4 panic_mark=$5 leftover=$6 unreproduced=${7:-fail}
    local fail=() report invariant left=""
    grep -E '^(finding|skipped|scenarios):' "$out/stderr" || true
    cat "$out/stdout"
    if [ "$code" -ne 0 ] && [ "$code" -ne 1 ]; then
        fail+=("stopfuzz exited $code: $(tail -3 "$out/stderr")")
    fi
    for report in "$out"/findings/*.txt; do
        [ -e "$report" ] || continue
        invariant=$(sed -n 's/^invariant: //p' "$report")
        if [ "$invariant" = no-panic ] && ! grep -q "$panic_mark" "$report"; then
            fail+=("harness panic: $report")
        elif [[ " $known " == *" $invariant "* ]]; then
            :
        elif [ "$unreproduced" = warn ] && grep -q '^reproduced: 0/' "$report"; then
            # Timing on a loaded machine, or a rare race: shown, not failed on.
            echo "$label: warning: finding $invariant did not reproduce: $report"
        else
            fail+=("unknown finding $invariant: $report")
        fi
    done
    # Give the run's processes a moment to exit.
    for _ in 1 2 3 4 5; do
        left=$(pgrep -a -f "$leftover" || true)
        [ -z "$left" ] && break
        sleep 0.2
    done
    if [ -n "$left" ]; then
        fail+=("processes left behind: $left")
    fi
    echo "$label: $(grep '^summary:' "$out/stdout" || echo "summary: none")"
    if [ "${#fail[@]}" -gt 0 ]; then
        printf '%s FAILED: %s\n' "$label" "${fail[@]}"
        exit 1
    fi
    echo "$label: passed${known:+ (known third-party findings do not fail it: $known)}"
}
