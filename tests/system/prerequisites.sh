#!/usr/bin/env bash
# Installs what the test suite needs from Debian, for `make test` (and so for .ci/run).
# Safe to run again: it installs only what is missing and prints only what goes wrong.
set -euo pipefail
cd "$(dirname "$0")/../.."

sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)

# python3-venv carries ensurepip, which Debian leaves out of python3 itself. netcat-openbsd
# plays the old prototype's sender in tests/integration/test_legacy.py; pipx runs the README's
# sender install steps in tests/integration/test_readme_install.py; strace records the
# receiver's system calls for tests/integration/test_syscall_order.py. The rest serve
# tests/system: building the .deb, lintian, booting Debian containers (systemd-nspawn,
# debootstrap) and running arm64 ones under emulation (qemu-user-static, binfmt-support).
# prometheus carries promtool, which checks docs/monitoring's alert rules
# (tests/unit/test_monitoring_docs.py); chromium loads the receiver's status page headless
# (tests/integration/test_status_page.py); fuse3 and strace run the power-cut file system of
# tests/crash, strace also the syscall-order check.
packages=(make python3-venv netcat-openbsd pipx dpkg-dev lintian systemd-container debootstrap
    qemu-user-static binfmt-support prometheus chromium fuse3 strace)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" \
        || missing+=("$package")
done
apt_log=$(mktemp)
trap 'rm -f "$apt_log"' EXIT
apt_quietly() {
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive "$@" >"$apt_log" 2>&1 \
        || { cat "$apt_log"; echo "prerequisites.sh: '$*' failed" >&2; exit 1; }
}
if ((${#missing[@]})) || ! dpkg-checkbuilddeps >/dev/null 2>&1; then
    apt_quietly apt-get update -q
fi
if ((${#missing[@]})); then
    apt_quietly apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# The package's build dependencies (debhelper, dh-python, ...), read from debian/control.
dpkg-checkbuilddeps >/dev/null 2>&1 \
    || apt_quietly apt-get build-dep -y -q --no-install-recommends ./

# Let the kernel run arm64 binaries through qemu, for the arm64 container.
mountpoint -q /proc/sys/fs/binfmt_misc \
    || "${sudo[@]}" mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
[[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] \
    || "${sudo[@]}" update-binfmts --enable qemu-aarch64
