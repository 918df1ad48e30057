#!/usr/bin/env bash
# The checks CI runs: formatting, lints, the README's test command, and the planted-bug tests.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
cargo clippy --all-targets --features mutants -- -D warnings

echo "== cargo test (the README's test command)"
cargo test

echo "== planted bugs: every mutant found by the general invariants"
cargo test --release --features mutants --test mutants --test minimize
