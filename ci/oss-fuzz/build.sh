#!/bin/bash -eu
# Builds stopfuzz's libFuzzer targets for OSS-Fuzz and ClusterFuzzLite.
#
# Runs inside gcr.io/oss-fuzz-base/base-builder-rust, started by the image's `compile`,
# which sets SRC (the checkout is $SRC/stopfuzz), OUT, WORK, SANITIZER, FUZZING_ENGINE,
# ARCHITECTURE and RUSTFLAGS. It lives in the repository so that it is versioned with the
# code (as rust-regex's fuzz/oss-fuzz-build.sh is): OSS-Fuzz's Dockerfile links
# $SRC/build.sh to it, .clusterfuzzlite/build.sh execs it, and ci/oss-fuzz/check.sh runs it
# locally, without Docker, the way `compile` does.
#
# For every fuzz/fuzz_targets/<name>.rs it writes to $OUT:
#   <name>                    the libFuzzer binary, without an extension
#   <name>.options            fuzz/<name>.options: [libfuzzer] max_len and friends
#   <name>.dict               fuzz/<name>.dict, if one exists (none does yet)
#   <name>_seed_corpus.zip    the files of corpus/<name>/ (seeds and regression inputs)
# A new target is picked up from its .rs file; nothing here lists the targets.
set -euo pipefail

cd "$SRC/stopfuzz"

# Where cargo puts the build: CARGO_TARGET_DIR if set (check.sh sets one, to build
# incrementally), else the fuzz crate's own target/ (fuzz/ is a workspace of its own). The
# coverage path below runs cargo from fuzz/, so a relative directory would move under it.
if [ -n "${CARGO_TARGET_DIR:-}" ] && [ "${CARGO_TARGET_DIR#/}" = "$CARGO_TARGET_DIR" ]; then
    export CARGO_TARGET_DIR="$PWD/$CARGO_TARGET_DIR"
fi
target_dir=${CARGO_TARGET_DIR:-$PWD/fuzz/target}

# The sanitizer comes from RUSTFLAGS and never from cargo-fuzz. `compile` puts
# `-Zsanitizer=address` in RUSTFLAGS for an ASan build and no sanitizer for coverage (or
# SANITIZER=none), and cargo-fuzz appends RUSTFLAGS to the flags it adds itself. Left to
# its default, `--sanitizer address`, it would add a second -Zsanitizer and ask a stable
# toolchain for a nightly-only flag; `--sanitizer none` leaves the choice to RUSTFLAGS (as
# OSS-Fuzz's wasmtime build does).
#
# It must be called as exactly `cargo fuzz build`: in a coverage build (SANITIZER=coverage)
# the image's cargo wrapper recognises those words, runs a plain `cargo build --bins` in
# fuzz/ instead (unoptimised, -Cinstrument-coverage from RUSTFLAGS, debug assertions off)
# and copies the binaries to where cargo-fuzz puts them. `cargo +nightly fuzz build` would
# slip past it; the toolchain comes from RUSTUP_TOOLCHAIN (the image pins a nightly).
#
# -O, so no debug assertions: the binaries behave as `stopfuzz replay` (a release build)
# does, and a crash OSS-Fuzz reports replays the same way there. --no-trace-compares, as in
# ci/fuzz-build.sh: comparison tracing halves the executions per second and, for these
# inputs, reaches no more coverage in the same time (README, "Throughput").
cargo fuzz build -O --sanitizer none --no-trace-compares

host=$(rustc -vV | sed -n 's/^host: //p')
bin_dir=$target_dir/$host/release

# zip where the image has it (it does), else Python's zipfile; -j/basename: flat archives.
make_zip() {
    local archive=$1
    shift
    if command -v zip >/dev/null; then
        zip -q -j -X "$archive" "$@"
    else
        python3 -m zipfile -c "$archive" "$@"
    fi
}

built=0
for src in fuzz/fuzz_targets/*.rs; do
    [ -f "$src" ] || continue
    name=$(basename "$src" .rs)
    cp "$bin_dir/$name" "$OUT/$name"

    for side in options dict; do
        if [ -f "fuzz/$name.$side" ]; then
            cp "fuzz/$name.$side" "$OUT/$name.$side"
        fi
    done

    # Rebuilt from scratch: zip adds to an existing archive, which would keep deleted seeds.
    rm -f "$OUT/${name}_seed_corpus.zip"
    seeds=()
    if [ -d "corpus/$name" ]; then
        while IFS= read -r -d '' f; do seeds+=("$f"); done \
            < <(find "corpus/$name" -maxdepth 1 -type f -print0 | sort -z)
    fi
    if [ "${#seeds[@]}" -gt 0 ]; then
        make_zip "$OUT/${name}_seed_corpus.zip" "${seeds[@]}"
    else
        echo "warning: corpus/$name/ has no seeds; $name gets no seed corpus" >&2
    fi
    built=$((built + 1))
done

if [ "$built" -eq 0 ]; then
    echo "error: no fuzz/fuzz_targets/*.rs in $PWD" >&2
    exit 1
fi
echo "build.sh: $built fuzz targets in $OUT (SANITIZER=${SANITIZER:-unset})"
