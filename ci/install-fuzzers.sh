#!/usr/bin/env bash
# Installs the fuzzing front ends CI uses: cargo-fuzz (libFuzzer) and cargo-afl (AFL++).
#
# Idempotent: a tool is installed only if it is missing or of another version, and AFL++'s
# runtime is built only if it is missing, so on a machine that has them this is a few
# version checks. Both are pinned (and --locked to their own lockfiles) so that a new
# release cannot change CI behind our back. Needs only what a fresh Debian machine with a
# stable Rust toolchain has: cargo, a C compiler and make (AFL++ is built from the source
# that the cargo-afl crate ships; no apt package and no network beyond crates.io).
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2
CARGO_AFL_VERSION=0.18.2

# `cargo install` puts binaries here; make sure this shell finds them even if the caller's
# PATH lacks it (CI's environment is not the interactive one).
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

# The version `cargo install` recorded for a package, or nothing.
installed_version() {
    cargo install --list | sed -n "s/^$1 v\([^:]*\):\$/\1/p"
}

ensure_installed() {
    local name=$1 version=$2
    if [ "$(installed_version "$name")" = "$version" ]; then
        echo "== $name $version is installed"
        return
    fi
    echo "== cargo install $name --version $version --locked"
    # --force replaces another installed version.
    cargo install "$name" --version "$version" --locked --force
}

ensure_installed cargo-fuzz "$CARGO_FUZZ_VERSION"
ensure_installed cargo-afl "$CARGO_AFL_VERSION"

# cargo-afl builds AFL++ while it is installed, but only warns if that build fails, and
# the runtime is per rustc version, so a toolchain update also leaves it missing; then
# every `cargo afl build` fails with "AFL LLVM runtime was not built". `cargo afl config
# --build` builds it, but fails if it is already built, hence the check. The path is
# cargo-afl's own: $XDG_DATA_HOME/afl.rs/rustc-<version>-<7-char commit>/afl.rs-<version>/.
rustc_release=$(rustc -vV | sed -n 's/^release: //p')
rustc_commit=$(rustc -vV | sed -n 's/^commit-hash: //p' | cut -c1-7)
afl_data="${XDG_DATA_HOME:-$HOME/.local/share}/afl.rs/rustc-$rustc_release${rustc_commit:+-$rustc_commit}/afl.rs-$CARGO_AFL_VERSION"
if [ -f "$afl_data/afl-llvm/afl-compiler-rt.o" ] && [ -x "$afl_data/afl/bin/afl-fuzz" ]; then
    echo "== AFL++ runtime is built ($afl_data)"
else
    echo "== cargo afl config --build (AFL++ runtime missing at $afl_data)"
    cargo afl config --build --force
fi

cargo fuzz --version
cargo afl --version
