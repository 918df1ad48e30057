#!/usr/bin/env bash
# Usage: ci/vhost-user-smoke.sh qsd|serve [SECONDS]   (default 60)
#
# A short run of the vhost-user front-end, one worker, against
# - qsd: qemu-storage-daemon (QSD). Installs it from Debian's packages if it is missing:
#   qemu-utils ships it from QEMU 10 on (Debian 12 has QSD 7.2 in qemu-system-common).
#   Never installs qemu-system-x86, which would replace the machine image's qemu-utils
#   10.0.2. Findings of the invariants in QSD_KNOWN (the ones docs/findings/qsd-*.md
#   explain) pass.
# - serve: the reference device served by `stopfuzz serve`, with faults. Any finding fails:
#   against the reference it is a harness bug.
#
# Also fails on a harness error (exit code other than 0 or 1), a harness panic (a no-panic
# finding that is not the back-end's), or a back-end process left behind. Output is under
# target/vhost-user-smoke/<backend>/, replaced on each run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

BACKEND=${1:?usage: ci/vhost-user-smoke.sh qsd|serve [SECONDS]}
SECONDS_RUN=${2:-60}
OUT=target/vhost-user-smoke/$BACKEND
# Invariants QSD 10.0.2 is known to break (docs/findings/qsd-*.md): its in-flight I/O at
# GET_VRING_BASE shows as most of them.
QSD_KNOWN="no-panic quiet-when-stopped notify write-confined exactly-once live data used-monotone"

cargo build --release -j"${CARGO_BUILD_JOBS:-1}" --quiet
case "$BACKEND" in
qsd)
    if ! command -v qemu-storage-daemon >/dev/null; then
        echo "qemu-storage-daemon missing: installing qemu-utils"
        apt-get update -qq
        apt-get install -y -qq qemu-utils >/dev/null
        if ! command -v qemu-storage-daemon >/dev/null; then
            apt-get install -y -qq qemu-system-common >/dev/null
        fi
    fi
    VERSION=$(qemu-storage-daemon --version | head -1)
    KNOWN=$QSD_KNOWN
    args=()
    ;;
serve)
    VERSION="stopfuzz serve $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    KNOWN=""
    args=(--backend "$PWD/target/release/stopfuzz serve --socket {socket} --image {image} --faults {faults}"
        --backend-id stopfuzz-reference)
    ;;
*)
    echo "unknown back-end $BACKEND: qsd or serve" >&2
    exit 2
    ;;
esac
echo "back-end: $VERSION"

source ci/smoke-run.sh
smoke_run "$OUT" "$SECONDS_RUN" --device vhost-user "${args[@]}"
judge "vhost-user-smoke $BACKEND ($VERSION)" "$RUN_CODE" "$OUT" "$KNOWN" "the back-end" \
    "stopfuzz-vu-$RUN_PID-"
