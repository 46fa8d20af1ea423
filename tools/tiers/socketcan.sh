#!/usr/bin/env bash
# Installs the real-kernel SocketCAN tier (idempotent; root on Debian 12):
#   - apt: QEMU, kmod, busybox, can-utils, iproute2
#   - Debian's amd64 kernel (not cloud-amd64: that one has no CAN and no 9p), unpacked into a cache
#     directory with `dpkg -x` (installing linux-image-amd64 would pull in udev/initramfs-tools)
#   - virtme-ng in its own venv (tools/vm/.venv)
# If the host kernel itself has CAN, tools/vm/run-in-vm.sh runs the tests directly and only
# can-utils/iproute2 are used; the kernel and virtme-ng are installed anyway so CI is uniform.
#
# Environment: CANBRIDGE_VM_CACHE (default /var/lib/canbridge-vm), VNG_VENV (default tools/vm/.venv),
# VNG_VERSION (default: a version known to work).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${CANBRIDGE_VM_CACHE:-/var/lib/canbridge-vm}"  # not /var/cache: virtme-ng hides it behind a tmpfs in the guest
VNG_VENV="${VNG_VENV:-$ROOT/tools/vm/.venv}"
VNG_VERSION="${VNG_VERSION:-1.42}"
APT_PKGS=(qemu-system-x86 kmod busybox-static can-utils iproute2)

log() { printf 'socketcan tier: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "run as root (sudo bash tools/tiers/socketcan.sh)"
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive

missing=()
for p in "${APT_PKGS[@]}"; do
    [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || missing+=("$p")
done
apt_updated=0
if [ "${#missing[@]}" -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    apt_updated=1
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- the kernel ----------------------------------------------------------------------------------
kernel_pkg() { apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | sed -n 1p; }
PKG="$(kernel_pkg || true)"
if [ -z "$PKG" ] && [ "$apt_updated" -eq 0 ]; then
    apt-get update -qq
    apt_updated=1
    PKG="$(kernel_pkg || true)"
fi
if [ -z "$PKG" ]; then
    log "cannot find the versioned package behind linux-image-amd64 (apt-cache depends linux-image-amd64)"
    exit 1
fi
VERSION="${PKG#linux-image-}"
DEST="$CACHE/$VERSION"
if [ -f "$DEST/boot/vmlinuz-$VERSION" ] && [ -f "$DEST/lib/modules/$VERSION/modules.dep" ] \
    && [ -f "$DEST/lib/modules/$VERSION/kernel/drivers/net/can/vcan.ko" ]; then
    log "kernel $VERSION already in $DEST"
else
    log "fetching $PKG into $DEST"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    if ! (cd "$tmp" && apt-get download -qq "$PKG" >/dev/null 2>&1); then
        [ "$apt_updated" -eq 0 ] && apt-get update -qq
        (cd "$tmp" && apt-get download -qq "$PKG")
    fi
    # _apt downloads into a root-owned temp dir with a warning only; the .deb lands in $tmp
    rm -rf "$DEST.partial"
    mkdir -p "$DEST.partial"
    dpkg -x "$tmp"/*.deb "$DEST.partial"
    depmod -b "$DEST.partial" "$VERSION"
    rm -rf "$DEST"
    mv "$DEST.partial" "$DEST"
fi
ln -sfn "$VERSION" "$CACHE/current"
chmod -R a+rX "$CACHE"

# --- virtme-ng -----------------------------------------------------------------------------------
if [ -x "$VNG_VENV/bin/vng" ] && "$VNG_VENV/bin/vng" --version >/dev/null 2>&1; then
    log "virtme-ng already in $VNG_VENV ($("$VNG_VENV/bin/vng" --version 2>&1 | sed -n 1p))"
else
    PY="${PYTHON:-python3}"
    if ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        log "apt-get install python3-venv (for the virtme-ng venv)"
        apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
        PY=/usr/bin/python3
    fi
    log "installing virtme-ng $VNG_VERSION into $VNG_VENV"
    rm -rf "$VNG_VENV"
    "$PY" -m venv "$VNG_VENV"
    "$VNG_VENV/bin/pip" install -q --disable-pip-version-check "virtme-ng==$VNG_VERSION"
fi
log "ready: kernel $CACHE/current/boot/vmlinuz-$VERSION, vng $VNG_VENV/bin/vng"
