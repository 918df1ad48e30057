#!/usr/bin/env bash
# Builds every fuzz target for both engines, so a wrapper that no longer compiles fails CI
# even though the root crate's `cargo test` never builds fuzz/ (it is its own workspace).
# Run ci/install-fuzzers.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

# libFuzzer: every [[bin]] of fuzz/Cargo.toml. cargo-fuzz finds fuzz/ from the repo root by
# itself (no --fuzz-dir needed). --sanitizer none keeps it on stable Rust: ASan needs
# nightly. --no-trace-compares: comparison tracing halves the executions per second and,
# for inputs whose every byte is folded into range by a modulo, reached no more coverage in
# the same time (README, "Throughput"). Binaries land in fuzz/target/<host triple>/release/.
echo "== cargo fuzz build --sanitizer none --no-trace-compares"
cargo fuzz build --sanitizer none --no-trace-compares

# AFL++: every src/bin/* of fuzz/afl, instrumented by cargo-afl. Binaries land in
# fuzz/afl/target/release/.
echo "== cargo afl build --release (fuzz/afl)"
(cd fuzz/afl && cargo afl build --release)
