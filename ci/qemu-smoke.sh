#!/usr/bin/env bash
# Usage: ci/qemu-smoke.sh [POLICY] [SECONDS]   (default: stop, 60)
#
# A short run against QEMU's own virtio-blk-pci (`--device qemu`), one worker, with QEMU's
# werror/rerror set to POLICY and the model expecting it. Installs qemu-system-x86 10.0.2
# first if it is missing (ci/install-qemu.sh, which keeps the image's qemu-utils 10.0.2).
# QEMU's known deviations (docs/findings/qemu-*.md) are steered around or let pass by
# default (`dut::Known`), so any finding fails, as do the errors ci/smoke-run.sh lists.
# Output is under target/qemu-smoke/<policy>/, replaced on each run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

POLICY=${1:-stop}
SECONDS_RUN=${2:-60}
OUT=target/qemu-smoke/$POLICY
# Invariants QEMU is known to break with its deviations let pass: none.
QEMU_KNOWN=""

bash ci/install-qemu.sh
VERSION=$(qemu-system-x86_64 --version | head -1)
echo "qemu: $VERSION"
cargo build --release -j"${CARGO_BUILD_JOBS:-1}" --quiet
source ci/smoke-run.sh
smoke_run "$OUT" "$SECONDS_RUN" --device qemu --qemu-policy "$POLICY"
judge "qemu-smoke $POLICY ($VERSION)" "$RUN_CODE" "$OUT" "$QEMU_KNOWN" "QEMU" \
    "stopfuzz-qemu-$RUN_PID-" warn
