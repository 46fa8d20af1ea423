#!/usr/bin/env bash
# The real-kernel SocketCAN tier: runs tests/socketcan against a real SocketCAN stack (vcan, can-raw,
# can-bcm) and returns pytest's exit code. JUnit XML goes to $OUT (default test-results/socketcan).
#
# Where the host kernel has CAN and vcan interfaces can be created (root), the tests run directly.
# Otherwise Debian's kernel boots in a QEMU micro-VM (virtme-ng, TCG, 9p root: the guest sees this
# file system read-only and writes only to $OUT). Install its tools first:
#   sudo bash tools/tiers/socketcan.sh
#
# Usage: tools/vm/run-in-vm.sh [pytest args...]      (e.g. -k filters -x)
# Exit code: pytest's, 124 when the VM timed out, 77 when the tier's tools are missing (a "skip").
# Environment: VENV (default .venv), OUT, VM_TIMEOUT (seconds, default 600), VM_MEMORY (default 1G),
#   VM_CPUS (default 2), CANBRIDGE_VM_CACHE (default /var/lib/canbridge-vm), VNG_VENV (tools/vm/.venv),
#   CANBRIDGE_VM=1 forces the VM even where the host has CAN.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
OUT="${OUT:-$ROOT/test-results/socketcan}"
case "$OUT" in /*) ;; *) OUT="$ROOT/$OUT" ;; esac
CACHE="${CANBRIDGE_VM_CACHE:-/var/lib/canbridge-vm}"
VNG_VENV="${VNG_VENV:-$ROOT/tools/vm/.venv}"
TIMEOUT="${VM_TIMEOUT:-600}"

say() { printf '[socketcan tier] %s\n' "$*" >&2; }
mkdir -p "$OUT"
[ -x "$VENV/bin/python" ] || { say "no Python venv at $VENV (python -m venv .venv && .venv/bin/pip install -e '.[test]')"; exit 77; }

host_has_can() {
    [ "$(id -u)" -eq 0 ] || return 1
    "$VENV/bin/python" -c 'import socket; socket.socket(29, socket.SOCK_RAW, 1).close()' 2>/dev/null || return 1
    modprobe vcan 2>/dev/null || true
    ip link add dev cbprobe0 type vcan 2>/dev/null || return 1
    ip link del dev cbprobe0
}

# Precompile on the host: the guest's view is read-only, and compiling there is 20x slower.
"$VENV/bin/python" -m compileall -q "$ROOT/canbridge" "$ROOT/tests" >/dev/null || true

t0=$(date +%s.%N)
if [ -z "${CANBRIDGE_VM:-}" ] && host_has_can; then
    say "host kernel has CAN: running directly"
    bash "$ROOT/tools/vm/guest.sh" "$ROOT" "$VENV" "$OUT" "$@"
    rc=$?
else
    KDIR="$(readlink -f "$CACHE/current" 2>/dev/null || true)"
    KVER="$(basename "${KDIR:-none}")"
    KIMG="$KDIR/boot/vmlinuz-$KVER"
    if [ ! -f "$KIMG" ] || [ ! -x "$VNG_VENV/bin/vng" ]; then
        say "the VM tools are missing (kernel at $CACHE/current, vng in $VNG_VENV)"
        say "install them: sudo bash tools/tiers/socketcan.sh"
        exit 77
    fi
    command -v qemu-system-x86_64 >/dev/null || { say "qemu-system-x86_64 missing: sudo bash tools/tiers/socketcan.sh"; exit 77; }
    say "host kernel has no CAN: booting $KVER in a QEMU micro-VM (TCG)"
    # vng runs virtme-run from PATH. --disable-kvm: /dev/kvm here is a paravirtual KVM that hangs
    # ordinary guests; --force-9p: no virtiofsd. QEMU reopens stdout/stderr by path, so give it pipes
    # (never regular files) and no stdin. timeout: a hung guest hangs vng.
    PATH="$VNG_VENV/bin:$PATH" timeout -k 10 "$TIMEOUT" \
        vng --disable-kvm --force-9p --cpus "${VM_CPUS:-2}" --memory "${VM_MEMORY:-1G}" \
            --rwdir "$OUT" -r "$KIMG" -- \
            "CANBRIDGE_IN_VM=1 CANBRIDGE_VCAN='${CANBRIDGE_VCAN:-vcan0 vcan1}' bash $(printf '%q ' "$ROOT/tools/vm/guest.sh" "$ROOT" "$VENV" "$OUT" "$@")" \
        </dev/null 2>&1 | cat
    rc=${PIPESTATUS[0]}
    case $rc in
        124) say "the VM did not finish within ${TIMEOUT}s (VM_TIMEOUT)";;
        255) say "the guest kernel panicked or vng failed (rc 255)";;
    esac
fi
say "tier finished in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s with exit code $rc; JUnit XML in $OUT"
exit "$rc"
