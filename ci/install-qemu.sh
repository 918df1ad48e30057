#!/usr/bin/env bash
# Installs qemu-system-x86 10.0.2 (for tests/qemu_machine.rs and the QEMU device) if
# qemu-system-x86_64 is missing, then prints its version.
#
# Debian 12's own qemu-system-x86 is 7.2, and installing it would remove qemu-utils 10.0.2
# (which ships qemu-storage-daemon, needed by the vhost-user tests). 10.0.2 is in
# bookworm-backports, where qemu-utils came from. The suite is added by copying this
# machine's own Debian source entry with the suite changed (no mirror address is written
# here), and everything comes from it with -t, so that qemu-system-common and seabios match.
# Facts: /work/shared/references/qemu-qtest-notes.md, "Installing".
set -euo pipefail

if command -v qemu-system-x86_64 >/dev/null 2>&1; then
    qemu-system-x86_64 --version | head -n 1
    exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    SUDO=(sudo)
fi

# shellcheck disable=SC1091 # the machine's own file
. /etc/os-release
codename=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
suite="$codename-backports"
list=/etc/apt/sources.list.d/stopfuzz-backports.sources

if grep -rqs -- "$suite" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "== $suite is already an apt source"
elif [ -f /etc/apt/sources.list.d/debian.sources ]; then
    # deb822: the first stanza that lists "$codename" itself (not -security, -updates).
    echo "== adding $suite from debian.sources"
    awk -v codename="$codename" -v suite="$suite" '
        BEGIN { RS = ""; ORS = "\n\n" }
        !done && $0 ~ ("Suites:[^\n]*[ \t]" codename "([ \t\n]|$)") {
            gsub(/Suites:[^\n]*/, "Suites: " suite)
            print
            done = 1
        }
    ' /etc/apt/sources.list.d/debian.sources | "${SUDO[@]}" tee "$list" >/dev/null
elif [ -f /etc/apt/sources.list ]; then
    # One-line format: the first "deb URI $codename ..." line, with the suite changed.
    echo "== adding $suite from sources.list"
    awk -v codename="$codename" -v suite="$suite" '
        !done && $1 == "deb" {
            for (i = 2; i <= NF; i++) {
                if ($i == codename) { $i = suite; print; done = 1; break }
            }
        }
    ' /etc/apt/sources.list | "${SUDO[@]}" tee "${list%.sources}.list" >/dev/null
    list=${list%.sources}.list
else
    echo "no Debian apt source to copy" >&2
    exit 1
fi
if [ -f "$list" ] && [ ! -s "$list" ]; then
    echo "found no Debian $codename source entry to copy" >&2
    "${SUDO[@]}" rm -f "$list"
    exit 1
fi

utils_before=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
"${SUDO[@]}" apt-get update
"${SUDO[@]}" apt-get install -y -t "$suite" qemu-system-x86
utils_after=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
if [ "$utils_before" != "$utils_after" ]; then
    echo "qemu-utils changed from '$utils_before' to '$utils_after'" >&2
    exit 1
fi
qemu-system-x86_64 --version | head -n 1
