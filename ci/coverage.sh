#!/usr/bin/env bash
# Usage: ci/coverage.sh [--fuzz-corpus DIR] [--name NAME] [TARGET...]
#
# Source coverage of the fuzz targets (default: every fuzz/fuzz_targets/*.rs) from the
# committed corpus/<target>/ and, with --fuzz-corpus DIR, also from DIR/<target>/ (a
# libFuzzer output corpus; each target named must have one). It builds the libFuzzer
# binaries with -Cinstrument-coverage on stable Rust, runs every input through them once,
# and writes to target/coverage/NAME/ (NAME: "corpus", or "fuzzed" with --fuzz-corpus):
#   html/index.html        the annotated sources of src/ (llvm-cov show)
#   summary.txt            per-file line/region/function coverage of src/device/ and of
#                          the harness (the rest of src/), all targets together
#   summary-<target>.txt   the same for each target alone
#   uncovered-device.txt   the src/device/ lines no input reaches, as file: line ranges
#   <target>.profdata, all.profdata   the merged profiles, for llvm-cov by hand
#
# Needs llvm-profdata and llvm-cov that read rustc's profiles: LLVM 19 or newer (the oldest
# verified with rustc 1.95, whose LLVM is 22), or the llvm-tools rustup component. Set
# LLVM_PROFDATA and LLVM_COV to choose them; otherwise the script looks for them and, as
# root on Debian, installs llvm-19 with apt-get. It fails if an input crashes, or if the
# run covers no line of src/device/ (a broken pipeline); never on a coverage percentage.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

usage() { sed -n '2p' "$0" | sed 's/^# //' >&2; }
die() {
    echo "coverage.sh: error: $*" >&2
    exit 1
}

fuzz_corpus=
name=
targets=()
while [ $# -gt 0 ]; do
    case $1 in
        --fuzz-corpus) [ $# -ge 2 ] || die "--fuzz-corpus needs a directory"; fuzz_corpus=$2; shift 2 ;;
        --fuzz-corpus=*) fuzz_corpus=${1#*=}; shift ;;
        --name) [ $# -ge 2 ] || die "--name needs a value"; name=$2; shift 2 ;;
        --name=*) name=${1#*=}; shift ;;
        -h | --help) usage; exit 0 ;;
        -*) usage; die "unknown option $1" ;;
        *) targets+=("$1"); shift ;;
    esac
done

all_targets=()
for src in fuzz/fuzz_targets/*.rs; do
    if [ -f "$src" ]; then all_targets+=("$(basename "$src" .rs)"); fi
done
[ "${#all_targets[@]}" -gt 0 ] || die "no fuzz/fuzz_targets/*.rs in $root"
if [ "${#targets[@]}" -eq 0 ]; then
    targets=("${all_targets[@]}")
fi
for t in "${targets[@]}"; do
    [ -f "fuzz/fuzz_targets/$t.rs" ] || die "unknown target '$t' (targets: ${all_targets[*]})"
    [ -n "$(ls -A "corpus/$t" 2>/dev/null)" ] || die "corpus/$t/ is missing or empty"
done

if [ -n "$fuzz_corpus" ]; then
    [ -d "$fuzz_corpus" ] || die "--fuzz-corpus $fuzz_corpus is not a directory"
    fuzz_corpus=$(cd "$fuzz_corpus" && pwd)
    for t in "${targets[@]}"; do
        [ -d "$fuzz_corpus/$t" ] || die "$fuzz_corpus/$t/ does not exist (--fuzz-corpus DIR must hold DIR/<target>/ for each target)"
    done
fi
if [ -z "$name" ]; then
    if [ -n "$fuzz_corpus" ]; then name=fuzzed; else name=corpus; fi
fi
case $name in
    */* | . | .. | build) die "--name '$name' must be a plain directory name other than 'build'" ;;
esac

# ---- llvm-profdata and llvm-cov ---------------------------------------------------------

# The oldest LLVM whose tools were checked to read rustc 1.95's (LLVM 22) profiles. A newer
# rustc may need newer tools; the merge step says so if they cannot read the profiles.
MIN_LLVM=19
host=$(rustc -vV | sed -n 's/^host: //p')
rustc_llvm=$(rustc -vV | sed -n 's/^LLVM version: //p')

llvm_major() { "$1" --version 2>/dev/null | sed -n 's/.*LLVM version \([0-9][0-9]*\).*/\1/p' | head -n 1; }

# Sets LLVM_PROFDATA and LLVM_COV to the first usable pair, or returns 1.
find_tools() {
    local sysroot_bin v dir
    sysroot_bin=$(rustc --print sysroot)/lib/rustlib/$host/bin
    # rustup's llvm-tools component: the same LLVM as rustc, so always readable.
    if [ -x "$sysroot_bin/llvm-profdata" ] && [ -x "$sysroot_bin/llvm-cov" ]; then
        LLVM_PROFDATA=$sysroot_bin/llvm-profdata LLVM_COV=$sysroot_bin/llvm-cov
        return 0
    fi
    # Versioned tools, newest first (Debian's llvm-N puts them in /usr/lib/llvm-N/bin),
    # then unversioned ones, which on Debian are often an older LLVM.
    for v in $(seq 40 -1 "$MIN_LLVM"); do
        for dir in "/usr/lib/llvm-$v/bin" ""; do
            local pd cov
            if [ -n "$dir" ]; then
                pd=$dir/llvm-profdata cov=$dir/llvm-cov
            else
                pd=$(command -v "llvm-profdata-$v" || true) cov=$(command -v "llvm-cov-$v" || true)
            fi
            if [ -n "$pd" ] && [ -x "$pd" ] && [ -n "$cov" ] && [ -x "$cov" ]; then
                LLVM_PROFDATA=$pd LLVM_COV=$cov
                return 0
            fi
        done
    done
    if command -v llvm-profdata >/dev/null && command -v llvm-cov >/dev/null; then
        v=$(llvm_major "$(command -v llvm-cov)")
        if [ -n "$v" ] && [ "$v" -ge "$MIN_LLVM" ]; then
            LLVM_PROFDATA=$(command -v llvm-profdata) LLVM_COV=$(command -v llvm-cov)
            return 0
        fi
    fi
    return 1
}

if [ -n "${LLVM_PROFDATA:-}" ] || [ -n "${LLVM_COV:-}" ]; then
    # Chosen by hand: both, and no version check (the merge below still tests them).
    [ -n "${LLVM_PROFDATA:-}" ] && [ -n "${LLVM_COV:-}" ] || die "set both LLVM_PROFDATA and LLVM_COV, or neither"
    for tool in "$LLVM_PROFDATA" "$LLVM_COV"; do
        command -v "$tool" >/dev/null || die "$tool (from LLVM_PROFDATA/LLVM_COV) is not an executable"
    done
elif ! find_tools; then
    # CI runs as root on Debian bookworm, whose main archive has llvm-19.
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        echo "== installing llvm-19 (llvm-profdata and llvm-cov) with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends llvm-19 >/dev/null 2>&1 ||
            { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends llvm-19 >/dev/null; } ||
            die "apt-get could not install llvm-19"
    fi
    find_tools || die "no llvm-profdata/llvm-cov of LLVM >= $MIN_LLVM found (rustc's LLVM is $rustc_llvm).
  Install one (Debian bookworm: apt-get install llvm-19; rustup: rustup component add
  llvm-tools), or point LLVM_PROFDATA and LLVM_COV at them."
fi
echo "== llvm-profdata: $LLVM_PROFDATA; llvm-cov: $LLVM_COV (LLVM $(llvm_major "$LLVM_COV"); rustc's LLVM $rustc_llvm)"

# ---- build ------------------------------------------------------------------------------

# A target dir of its own, so these flags never invalidate the fuzzing builds in
# fuzz/target. --target keeps RUSTFLAGS off build scripts, which would otherwise be
# instrumented and leave .profraw files wherever they run. The profile matches `cargo fuzz
# run`'s default (release with debug assertions and overflow checks, --cfg fuzzing), so
# the same code paths run as under fuzzing; libFuzzer's own coverage flags are left out,
# as only -Cinstrument-coverage counts here.
build_dir=$root/target/coverage/build
out=$root/target/coverage/$name
bin_dir=$build_dir/$host/release
echo "== building ${targets[*]} with -Cinstrument-coverage in $build_dir"
bin_args=()
for t in "${targets[@]}"; do bin_args+=(--bin "$t"); done
(
    cd fuzz
    RUSTFLAGS="${RUSTFLAGS:-} -Cinstrument-coverage --cfg fuzzing" \
        CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true \
        cargo build --release --target "$host" --target-dir "$build_dir" "${bin_args[@]}"
)

# ---- run --------------------------------------------------------------------------------

rm -rf "$out"
mkdir -p "$out/profraw" "$out/artifacts" "$out/logs"
for t in "${targets[@]}"; do
    dirs=("corpus/$t")
    if [ -n "$fuzz_corpus" ]; then dirs+=("$fuzz_corpus/$t"); fi
    n=$(find "${dirs[@]}" -type f | wc -l)
    echo "== running $n inputs through $t (${dirs[*]})"
    # libFuzzer given only files runs each once and exits. xargs splits long lists over
    # several processes; %p keeps their profiles apart, %m tells binaries apart.
    if ! find "${dirs[@]}" -type f -print0 | sort -z |
        LLVM_PROFILE_FILE="$out/profraw/$t-%p-%m.profraw" xargs -0 -r \
            "$bin_dir/$t" -timeout=30 -artifact_prefix="$out/artifacts/" \
            >"$out/logs/$t.log" 2>&1; then
        tail -n 20 "$out/logs/$t.log" >&2
        last=$(grep -a '^Running: ' "$out/logs/$t.log" | tail -n 1 | sed 's/^Running: //')
        die "$t failed on an input (last started: ${last:-none}); log: $out/logs/$t.log"
    fi
    profiles=("$out/profraw/$t"-*.profraw)
    [ -f "${profiles[0]}" ] || die "$t wrote no profile into $out/profraw/"
    if ! "$LLVM_PROFDATA" merge -sparse "${profiles[@]}" -o "$out/$t.profdata" 2>"$out/logs/merge-$t.log"; then
        cat "$out/logs/merge-$t.log" >&2
        die "$LLVM_PROFDATA cannot read rustc's profiles (rustc's LLVM is $rustc_llvm); use a newer
  LLVM (LLVM_PROFDATA, LLVM_COV) or rustup's llvm-tools component"
    fi
done
profdata=()
for t in "${targets[@]}"; do profdata+=("$out/$t.profdata"); done
"$LLVM_PROFDATA" merge -sparse "${profdata[@]}" -o "$out/all.profdata"

# ---- report -----------------------------------------------------------------------------

# One llvm-cov object list for all targets: the same source lines, counts added up.
objects=()
for t in "${targets[@]}"; do
    if [ "${#objects[@]}" -gt 0 ]; then objects+=(-object); fi
    objects+=("$bin_dir/$t")
done
table_flags=(-show-branch-summary=false -show-instantiation-summary=false)

# summary FILE PROFDATA OBJECT...: device and harness tables.
summary() {
    local file=$1 profile=$2
    shift 2
    {
        echo "## src/device/ (the device)"
        "$LLVM_COV" report "${table_flags[@]}" -instr-profile "$profile" "$@" "$root/src/device"
        echo
        echo "## src/ other than src/device/ (the harness)"
        "$LLVM_COV" report "${table_flags[@]}" -instr-profile "$profile" \
            -ignore-filename-regex='/src/device/' "$@" "$root/src"
    } >"$file"
}
summary "$out/summary.txt" "$out/all.profdata" "${objects[@]}"
for t in "${targets[@]}"; do
    summary "$out/summary-$t.txt" "$out/$t.profdata" "$bin_dir/$t"
done

# Only src/: not the fuzz/ wrappers (one line each), the standard library or crates.
"$LLVM_COV" show -format=html -output-dir="$out/html" -show-line-counts-or-regions \
    -show-instantiations=false -project-title="stopfuzz coverage: $name (${targets[*]})" \
    -instr-profile "$out/all.profdata" "${objects[@]}" "$root/src"

# Unreached device lines from the lcov export (DA:<line>,<count>), as ranges per file.
"$LLVM_COV" export -format=lcov -instr-profile "$out/all.profdata" "${objects[@]}" \
    "$root/src/device" >"$out/device.lcov"
awk -v root="$root/" '
    function flush() { if (start) { r = r sep (start == prev ? start : start "-" prev); sep = ", " } start = 0 }
    /^SF:/ { file = substr($0, 4); sub("^" root, "", file); r = ""; sep = ""; start = 0 }
    /^DA:/ {
        split(substr($0, 4), f, ","); line = f[1] + 0
        if (f[2] + 0 > 0) next
        if (start && line == prev + 1) { prev = line; next }
        flush(); start = prev = line
    }
    /^end_of_record/ { flush(); if (r != "") print file ": " r }
' "$out/device.lcov" >"$out/uncovered-device.txt"

# LH:<n> is a file's count of lines hit.
covered=$(awk -F: '/^LH:/ { n += $2 } END { print n + 0 }' "$out/device.lcov")
[ "${covered:-0}" -gt 0 ] || die "no line of src/device/ was covered: the pipeline is broken"

echo
cat "$out/summary.txt"
echo
echo "== unreached lines of src/device/ ($out/uncovered-device.txt):"
if [ -s "$out/uncovered-device.txt" ]; then cat "$out/uncovered-device.txt"; else echo "(none)"; fi
echo
echo "coverage.sh: HTML report $out/html/index.html"
echo "coverage.sh: summaries $out/summary.txt and $out/summary-<target>.txt"
