#!/usr/bin/env bash
# The OSS-Fuzz build, checked locally with no Docker and no network: runs
# ci/oss-fuzz/build.sh the way OSS-Fuzz's `compile` runs it, then repeats on $OUT the checks
# OSS-Fuzz makes of a build (base-runner's test_all.py, bad_build_check, the seed-corpus
# check):
#   * names: each fuzz/fuzz_targets/<name>.rs has a fuzzer in $OUT (an executable ELF for
#     the build's ARCHITECTURE with LLVMFuzzerTestOneInput in it) and nothing else is one;
#     a name is letters, digits, _ and - only (so no extension); every other file is
#     <fuzzer>.options, <fuzzer>.dict or <fuzzer>_seed_corpus.zip, and each fuzzer has its
#     .options (parsed as the runner parses it, with a max_len) and its seed corpus;
#   * startup: each fuzzer runs -runs=4 and reports how many edges it instruments (>= 100);
#   * sanitizer: an ASan build calls ASan (>= 1000 calls, OSS-Fuzz's threshold), a build
#     without a sanitizer never does, a coverage build has its profile counters;
#   * seeds: each seed corpus unpacks, fits in max_len, and replays clean with the runner's
#     default limits, -rss_limit_mb=2560 -timeout=25;
#   * moved $OUT: with $OUT moved elsewhere, every fuzzer still runs (no absolute paths into
#     the build directory, such as an rpath).
#
# Which build (the environment OSS-Fuzz's base-builder-rust and `compile` set, minus what
# only exists in the image: CUSTOM_LIBFUZZER_PATH to its libFuzzer, clang as the linker):
#   default                        SANITIZER=address with a nightly toolchain if rustup has
#                                  one (RUSTUP_TOOLCHAIN, as in the image), else none
#   STOPFUZZ_NO_NIGHTLY=1          SANITIZER=none even where nightly exists: what a machine
#                                  with only stable Rust runs
#   STOPFUZZ_OSS_FUZZ_SANITIZER=   address, none or coverage. coverage runs build.sh through
#                                  a stand-in for the image's cargo wrapper, which turns
#                                  `cargo fuzz build` into `cargo build --bins` in fuzz/
#   STOPFUZZ_NIGHTLY=<toolchain>   the nightly for ASan (default: nightly)
#
# Everything goes under target/oss-fuzz/<sanitizer>/: cargo/ is the cargo target directory,
# kept so that a second run is incremental; src/, out/, work/ and check/ are made afresh.
# Ends with "oss-fuzz check: N passed, M failed" and exits 1 if any check failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
started=$SECONDS

nightly=${STOPFUZZ_NIGHTLY:-nightly}
if [ -n "${STOPFUZZ_OSS_FUZZ_SANITIZER:-}" ]; then
    sanitizer=$STOPFUZZ_OSS_FUZZ_SANITIZER
elif [ "${STOPFUZZ_NO_NIGHTLY:-0}" = 1 ]; then
    sanitizer=none
elif command -v rustup >/dev/null && rustup run "$nightly" rustc --version >/dev/null 2>&1; then
    sanitizer=address
else
    sanitizer=none
fi

# RUSTFLAGS as `compile` sets them for a Rust project, for each sanitizer.
rustflags="--cfg fuzzing -Cdebuginfo=1 -Cforce-frame-pointers"
case $sanitizer in
    address)
        rustflags="--cfg fuzzing -Zsanitizer=address -Cdebuginfo=1 -Cforce-frame-pointers"
        export RUSTUP_TOOLCHAIN=$nightly
        ;;
    none) ;;
    coverage)
        # `compile` also links libc++ here, for OSS-Fuzz's own libFuzzer; the one that
        # libfuzzer-sys builds locally uses the system's C++ library instead.
        rustflags="$rustflags -Cinstrument-coverage"
        ;;
    *)
        echo "STOPFUZZ_OSS_FUZZ_SANITIZER must be address, none or coverage, not $sanitizer" >&2
        exit 2
        ;;
esac

base=$root/target/oss-fuzz/$sanitizer
SRC=$base/src
OUT=$base/out
WORK=$base/work
check=$base/check
rm -rf "$SRC" "$OUT" "$WORK" "$check"
mkdir -p "$SRC" "$OUT" "$WORK" "$check" "$base/cargo"
# $SRC/stopfuzz is the checkout, as in the image; a link, so the build reads this worktree.
ln -s "$root" "$SRC/stopfuzz"

# Tools the checks need beyond Rust: python3 (the runner's options parser), unzip or
# python3's zipfile, objdump (counting sanitizer calls) and objcopy (coverage maps).
tools=(python3 objdump)
if [ "$sanitizer" = coverage ]; then tools+=(objcopy); fi
for tool in "${tools[@]}"; do
    if ! command -v "$tool" >/dev/null; then
        echo "ci/oss-fuzz/check.sh needs $tool" >&2
        exit 2
    fi
done

host=$(rustc -vV | sed -n 's/^host: //p')
architecture=${host%%-*}

passed=0
failures=()
pass() {
    passed=$((passed + 1))
    echo "ok    $*"
}
fail() {
    failures+=("$*")
    echo "FAIL  $*" >&2
}
finish() {
    echo
    for f in "${failures[@]}"; do echo "FAILED: $f"; done
    echo "(target/oss-fuzz/$sanitizer, $((SECONDS - started)) s)"
    echo "oss-fuzz check: $passed passed, ${#failures[@]} failed"
    if [ "${#failures[@]}" -eq 0 ]; then exit 0; else exit 1; fi
}

# ---------------------------------------------------------------------------------------
echo "== build.sh with SANITIZER=$sanitizer${RUSTUP_TOOLCHAIN:+, RUSTUP_TOOLCHAIN=$RUSTUP_TOOLCHAIN}"
echo "   RUSTFLAGS=$rustflags"
build_path=$PATH
if [ "$sanitizer" = coverage ]; then
    # A stand-in for base-builder's cargo wrapper, as it behaves for a coverage build: for
    # `cargo fuzz build ...` (whatever follows), a debug `cargo build --bins` in fuzz/ with
    # the fuzz sources' paths made absolute and debug assertions off, then the binaries
    # copied to <target dir>/<host>/release/, where cargo-fuzz would have put them. Any
    # other cargo command goes to cargo unchanged.
    real_cargo=$(command -v cargo)
    mkdir -p "$base/wrapper"
    cat >"$base/wrapper/cargo" <<EOF
#!/usr/bin/env bash
set -euo pipefail
if [ "\${SANITIZER:-}" = coverage ] && [ "\${1:-}" = fuzz ] && [ "\${2:-}" = build ]; then
    cd fuzz 2>/dev/null || true
    export RUSTFLAGS="\$RUSTFLAGS --remap-path-prefix fuzz_targets=\$PWD/fuzz_targets -C debug-assertions=no"
    "$real_cargo" build --bins
    dir=\${CARGO_TARGET_DIR:-\$PWD/target}
    mkdir -p "\$dir/$host/release"
    find "\$dir/debug" -maxdepth 1 -type f -perm -u+x -exec cp {} "\$dir/$host/release/" \;
    exit 0
fi
exec "$real_cargo" "\$@"
EOF
    chmod +x "$base/wrapper/cargo"
    build_path=$base/wrapper:$PATH
fi

# `compile` runs `bash -eux $SRC/build.sh` from the Dockerfile's WORKDIR. CARGO_BUILD_TARGET
# stays unset, as in the image: cargo-fuzz passes --target itself, and the coverage
# wrapper looks for the binaries in target/debug/. In a coverage build the proc macros are
# instrumented too, and rustc, which loads them, would leave default_*.profraw files in
# the worktree; LLVM_PROFILE_FILE sends them to $WORK.
build_status=0
(
    cd "$SRC/stopfuzz"
    env -u CARGO_BUILD_TARGET PATH="$build_path" SRC="$SRC" OUT="$OUT" WORK="$WORK" \
        LLVM_PROFILE_FILE="$WORK/build-%m-%p.profraw" \
        SANITIZER="$sanitizer" FUZZING_ENGINE=libfuzzer FUZZING_LANGUAGE=rust \
        ARCHITECTURE="$architecture" RUSTFLAGS="$rustflags" CARGO_TARGET_DIR="$base/cargo" \
        bash -eux "$SRC/stopfuzz/ci/oss-fuzz/build.sh"
) || build_status=$?
if [ "$build_status" -ne 0 ]; then
    fail "build: ci/oss-fuzz/build.sh exited $build_status (its output is above)"
    finish
fi
pass "build: ci/oss-fuzz/build.sh, SANITIZER=$sanitizer ($((SECONDS - started)) s)"

# ---------------------------------------------------------------------------------------
echo "== project files"
problems=()
for f in ci/oss-fuzz/project.yaml ci/oss-fuzz/Dockerfile ci/oss-fuzz/build.sh \
    .clusterfuzzlite/project.yaml .clusterfuzzlite/Dockerfile .clusterfuzzlite/build.sh; do
    [ -f "$f" ] || problems+=("$f is missing")
done
for f in ci/oss-fuzz/project.yaml .clusterfuzzlite/project.yaml; do
    grep -qx 'language: rust' "$f" 2>/dev/null || problems+=("$f lacks 'language: rust'")
done
# For Rust, OSS-Fuzz builds libFuzzer with ASan only.
list() { sed -n "/^$1:/,/^[^ ]/{s/^ *- *//p}" ci/oss-fuzz/project.yaml | tr '\n' ' '; }
[ "$(list sanitizers)" = "address " ] || problems+=("project.yaml sanitizers: $(list sanitizers)")
[ "$(list fuzzing_engines)" = "libfuzzer " ] ||
    problems+=("project.yaml fuzzing_engines: $(list fuzzing_engines)")
filters() { sed -n '/^coverage_extra_args:/,/^[^ ]/{/^ /p}' "$1" 2>/dev/null; }
[ "$(filters ci/oss-fuzz/project.yaml)" = "$(filters .clusterfuzzlite/project.yaml)" ] ||
    problems+=("the two project.yaml files filter the coverage report differently")
grep -q 'ci/oss-fuzz/build.sh' .clusterfuzzlite/build.sh 2>/dev/null ||
    problems+=(".clusterfuzzlite/build.sh does not hand over to ci/oss-fuzz/build.sh")
for f in ci/oss-fuzz/Dockerfile .clusterfuzzlite/Dockerfile; do
    grep -q '^FROM gcr.io/oss-fuzz-base/base-builder-rust' "$f" 2>/dev/null ||
        problems+=("$f is not FROM base-builder-rust")
done
if [ "${#problems[@]}" -eq 0 ]; then
    pass "project files: OSS-Fuzz and ClusterFuzzLite, language rust, libfuzzer + address"
else
    fail "project files: ${problems[*]}"
fi

# ---------------------------------------------------------------------------------------
echo "== names in \$OUT"
# A fuzzer, as test_all.py finds them: an executable ELF file that holds
# LLVMFuzzerTestOneInput (test_all.py also takes scripts; build.sh writes none).
is_elf() { [ "$(head -c 4 "$1" | od -An -c | tr -d ' ')" = '177ELF' ]; }
is_fuzzer() { [ -f "$1" ] && [ -x "$1" ] && is_elf "$1" && grep -q LLVMFuzzerTestOneInput "$1"; }
# e_machine, bytes 18-19 of the ELF header: 62 is x86-64, 183 aarch64, 3 i386.
elf_machine() { od -An -tu2 -j 18 -N 2 "$1" | tr -d ' '; }
case $architecture in
    x86_64) machine=62 ;;
    aarch64) machine=183 ;;
    i386 | i686) machine=3 ;;
    *) machine=unknown ;;
esac

expected=()
for src in fuzz/fuzz_targets/*.rs; do
    [ -f "$src" ] && expected+=("$(basename "$src" .rs)")
done
fuzzers=()
for f in "$OUT"/*; do
    is_fuzzer "$f" && fuzzers+=("$(basename "$f")")
done
[ "${#expected[@]}" -gt 0 ] || fail "names: no fuzz/fuzz_targets/*.rs"
for name in "${fuzzers[@]}"; do
    if ! printf '%s\n' "${expected[@]}" | grep -qx -- "$name"; then
        fail "names: $OUT/$name is a fuzzer with no fuzz/fuzz_targets/$name.rs"
    fi
done
# Every file is a fuzzer or one of a fuzzer's side files.
for f in "$OUT"/* "$OUT"/.[!.]*; do
    [ -e "$f" ] || continue
    file=$(basename "$f")
    owner=
    for name in "${fuzzers[@]}"; do
        case $file in
            "$name" | "$name.options" | "$name.dict" | "${name}_seed_corpus.zip") owner=$name ;;
        esac
    done
    [ -n "$owner" ] || fail "names: \$OUT/$file is neither a fuzzer nor a fuzzer's side file"
done

declare -A max_len opts
ready=()
for name in "${expected[@]}"; do
    bin=$OUT/$name
    problems=()
    if ! is_fuzzer "$bin"; then
        fail "$name: no fuzzer \$OUT/$name (an executable ELF with LLVMFuzzerTestOneInput)"
        continue
    fi
    [[ $name =~ ^[A-Za-z0-9_-]+$ ]] || problems+=("the name has characters other than A-Z a-z 0-9 _ -")
    [ "$(elf_machine "$bin")" = "$machine" ] ||
        problems+=("ELF machine $(elf_machine "$bin") is not $architecture's ($machine)")
    [ -f "$OUT/${name}_seed_corpus.zip" ] || problems+=("no ${name}_seed_corpus.zip")
    # The runner reads the options with Python's configparser and turns each key = value
    # of [libfuzzer] into -key=value (base-runner's parse_options.py).
    parsed=
    if [ ! -f "$OUT/$name.options" ]; then
        problems+=("no $name.options")
    elif ! parsed=$(python3 - "$OUT/$name.options" <<'EOF'
import configparser, sys
p = configparser.ConfigParser()
p.read(sys.argv[1])
lf = p["libfuzzer"] if p.has_section("libfuzzer") else {}
print(int(lf["max_len"]) if "max_len" in lf else "")
print(" ".join("-%s=%s" % kv for kv in lf.items()))
EOF
    ); then
        problems+=("$name.options does not parse")
    else
        max_len[$name]=$(sed -n 1p <<<"$parsed")
        opts[$name]=$(sed -n 2p <<<"$parsed")
        [ -n "${max_len[$name]}" ] || problems+=("$name.options has no [libfuzzer] max_len")
    fi
    if [ "${#problems[@]}" -eq 0 ]; then
        ready+=("$name")
        pass "$name: named right, $architecture ELF, ${name}_seed_corpus.zip, $name.options (${opts[$name]})"
    else
        fail "$name: ${problems[*]}"
    fi
done
# Only the targets that passed these checks go on to be run.

# ---------------------------------------------------------------------------------------
# The runner's default arguments and, for ASan, the sanitizer options that matter here from
# its defaults (leak detection, use-after-return, abort handling).
fuzzer_args=(-rss_limit_mb=2560 -timeout=25)
if [ "$sanitizer" = address ]; then
    export ASAN_OPTIONS="detect_leaks=1:detect_stack_use_after_return=1:detect_odr_violation=0:allocator_may_return_null=1:handle_abort=1:handle_segv=1:fast_unwind_on_fatal=0:dedup_token_length=3"
fi
# A coverage build writes a profile at exit; keep it out of $OUT.
mkdir -p "$check/profraw"
export LLVM_PROFILE_FILE=$check/profraw/%m-%p.profraw

# Runs fuzzer $2 in directory $1 (the runner's cwd is $OUT) with the rest as arguments; the
# output goes to $check/$3.log. No input can crash into $OUT: artifacts go to $check.
run_in() {
    local dir=$1 name=$2 log=$3
    shift 3
    (cd "$dir" && timeout 600 "./$name" "${fuzzer_args[@]}" -artifact_prefix="$check/$name-" \
        "$@" ${opts[$name]}) >"$check/$log.log" 2>&1
}

echo "== startup: -runs=4"
for name in "${ready[@]}"; do
    status=0
    run_in "$OUT" "$name" "$name.startup" -seed=1337 -runs=4 || status=$?
    log=$check/$name.startup.log
    edges=$(sed -n 's/^INFO: Loaded [0-9]* modules\{0,1\} *([0-9]* [a-z0-9 -]*\(counters\|guards\)): *\([0-9]*\).*/\2/p' "$log" | head -n 1)
    if [ "$status" -ne 0 ] || ! grep -q '^Done 4 runs' "$log"; then
        tail -n 20 "$log" >&2
        fail "$name: -runs=4 exited $status without 'Done 4 runs' (log: $log)"
    elif [ "$sanitizer" = coverage ]; then
        pass "$name: -runs=4 done (coverage build: no edge counters, by design)"
    elif [ -z "$edges" ] || [ "$edges" -lt 100 ]; then
        fail "$name: ${edges:-no} instrumented edges (OSS-Fuzz wants at least 100; log: $log)"
    else
        pass "$name: -runs=4 done, $edges edges"
    fi
done

echo "== sanitizer: $sanitizer"
for name in "${ready[@]}"; do
    bin=$OUT/$name
    if [ "$sanitizer" = coverage ]; then
        if ! LC_ALL=C grep -q -a -F __llvm_prf_cnts "$bin"; then
            fail "$name: no __llvm_prf_cnts: not built with -Cinstrument-coverage"
            continue
        fi
        # The report covers the files named in the coverage map, less those matching an
        # -ignore-filename-regex: the coverage script's own (libFuzzer) and project.yaml's.
        # What is left must be this repository's sources, and some of them.
        if ! objcopy --dump-section __llvm_covmap="$check/$name.covmap" "$bin" "$check/$name.o"; then
            fail "$name: cannot read the coverage map (__llvm_covmap)"
            continue
        fi
        regexes=$(sed -n '/^coverage_extra_args:/,/^[^ ]/{s/.*-ignore-filename-regex=\([^ ]*\).*/\1/p}' \
            ci/oss-fuzz/project.yaml)
        if summary=$(python3 - "$check/$name.covmap" "$root" '.*src/libfuzzer/.*' $regexes <<'EOF'
import re, struct, sys, zlib

covmap, root, regexes = open(sys.argv[1], "rb").read(), sys.argv[2], sys.argv[3:]

def leb128(b, i):
    value = shift = 0
    while True:
        byte = b[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i

# Records of a 16-byte header (the second word: the size of the filenames), then the
# filenames: count, uncompressed and compressed sizes, then (zlib) length-prefixed names,
# the first being the compilation directory. Records are 8-byte aligned.
files, at = set(), 0
while at + 16 <= len(covmap):
    size = struct.unpack_from("<4I", covmap, at)[1]
    body = covmap[at + 16 : at + 16 + size]
    _, i = leb128(body, 0)
    raw, i = leb128(body, i)
    packed, i = leb128(body, i)
    blob = zlib.decompress(body[i : i + packed]) if packed else body[i : i + raw]
    names, j = [], 0
    while j < len(blob):
        n, j = leb128(blob, j)
        names.append(blob[j : j + n].decode())
        j += n
    files.update(f if f.startswith("/") else names[0].rstrip("/") + "/" + f for f in names[1:])
    at = (at + 16 + size + 7) & ~7
kept = sorted(f for f in files if not any(re.search(r, f) for r in regexes))
foreign = [f for f in kept if not f.startswith((root + "/src/", root + "/fuzz/"))]
print(f"{len(kept)} of {len(files)} source files, all in src/ or fuzz/")
if foreign or not kept:
    print(f"kept files outside src/ and fuzz/: {foreign or 'none kept at all'}")
    sys.exit(1)
EOF
        ); then
            pass "$name: coverage build with profile counters; project.yaml's filters keep $summary"
        else
            fail "$name: project.yaml's coverage filters: $summary"
        fi
        continue
    fi
    asan=$(objdump -d --no-show-raw-insn "$bin" | grep -cE 'call[a-z]*[[:space:]]+[0-9a-f]+ <__asan' || true)
    if [ "$sanitizer" = address ] && [ "$asan" -lt 1000 ]; then
        fail "$name: $asan calls to ASan: not an ASan build (OSS-Fuzz wants at least 1000)"
    elif [ "$sanitizer" = none ] && [ "$asan" -ne 0 ]; then
        fail "$name: $asan calls to ASan in a build without a sanitizer"
    else
        pass "$name: $asan calls to ASan, as a SANITIZER=$sanitizer build should"
    fi
done

echo "== seeds: replay with ${fuzzer_args[*]}"
for name in "${ready[@]}"; do
    seeds=$check/$name.seeds
    mkdir -p "$seeds"
    zip=$OUT/${name}_seed_corpus.zip
    if command -v unzip >/dev/null; then
        unzip -q -o "$zip" -d "$seeds" || { fail "$name: ${name}_seed_corpus.zip does not unpack"; continue; }
    else
        python3 -m zipfile -e "$zip" "$seeds" || { fail "$name: ${name}_seed_corpus.zip does not unpack"; continue; }
    fi
    count=$(find "$seeds" -type f | wc -l)
    largest=$(find "$seeds" -type f -printf '%s\n' | sort -n | tail -n 1)
    if [ "$count" -eq 0 ]; then
        fail "$name: ${name}_seed_corpus.zip is empty"
        continue
    fi
    if [ "$largest" -gt "${max_len[$name]}" ]; then
        fail "$name: a seed of $largest bytes is longer than max_len ${max_len[$name]}: fuzzing would cut it"
    fi
    rm -f "$check/profraw"/*
    status=0
    run_in "$OUT" "$name" "$name.replay" -runs=0 "$seeds" || status=$?
    log=$check/$name.replay.log
    inited=$(grep -o 'INITED.*' "$log" | head -n 1 || true)
    if [ "$status" -ne 0 ]; then
        grep -E 'stopfuzz finding|ERROR|panicked|Test unit written' "$log" | head -n 10 >&2 || true
        fail "$name: the seed corpus does not replay clean: exit $status (log: $log)"
    elif ! grep -q "seed corpus: files: $count " "$log"; then
        fail "$name: libFuzzer did not read all $count seeds (log: $log)"
    elif [ "$sanitizer" = coverage ] && ! find "$check/profraw" -name '*.profraw' -size +0 | grep -q .; then
        fail "$name: the coverage build wrote no profile (LLVM_PROFILE_FILE=$LLVM_PROFILE_FILE)"
    else
        pass "$name: $count seeds (largest $largest of max_len ${max_len[$name]} bytes) replay clean${inited:+: $inited}"
    fi
done

echo "== moved \$OUT"
# test_all.py runs its checks from another directory than the build's $OUT; moving it
# (not copying) leaves nothing at the old path for a stray absolute path to find.
moved_parent=$(mktemp -d)
moved=$moved_parent/out
mv "$OUT" "$moved"
trap 'if [ -d "$moved" ]; then mv "$moved" "$OUT"; fi; rm -rf "$moved_parent"' EXIT
for name in "${ready[@]}"; do
    status=0
    run_in "$moved" "$name" "$name.moved" -seed=1337 -runs=4 || status=$?
    if [ "$status" -eq 0 ] && grep -q '^Done 4 runs' "$check/$name.moved.log"; then
        pass "$name: runs from a moved \$OUT ($moved)"
    else
        tail -n 20 "$check/$name.moved.log" >&2
        fail "$name: does not run from a moved \$OUT: exit $status (log: $check/$name.moved.log)"
    fi
done
mv "$moved" "$OUT"
rm -rf "$moved_parent"
trap - EXIT

finish
