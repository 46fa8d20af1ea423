#!/usr/bin/env bash
# Runs inside the micro-VM (or directly on a host whose kernel has CAN): sets up vcan interfaces and
# runs the real-kernel tests. Usage: guest.sh ROOT VENV OUTDIR [pytest args...]
# Exits with pytest's exit code.
set -uo pipefail

ROOT="$1" VENV="$2" OUT="$3"
shift 3

# vng's init looks for /dev/virtio-ports/virtme.* links that udev would make; without them the output
# goes to the kernel console and the exit code is lost. Make them (only when missing: a second open of
# a port fails with EBUSY) and send our output through them.
if [ -n "${CANBRIDGE_IN_VM:-}" ] && [ ! -e /dev/virtio-ports/virtme.stdout ] && [ -d /sys/class/virtio-ports ]; then
    mkdir -p /dev/virtio-ports
    for p in /sys/class/virtio-ports/*; do
        name="$(cat "$p/name" 2>/dev/null || true)"
        [ -n "$name" ] && ln -sf "../$(basename "$p")" "/dev/virtio-ports/$name"
    done
    exec >/dev/virtio-ports/virtme.stdout 2>/dev/virtio-ports/virtme.stderr
fi

say() { printf '[socketcan tier] %s\n' "$*"; }
if [ -n "${CANBRIDGE_IN_VM:-}" ]; then
    say "guest up after $(cut -d' ' -f1 /proc/uptime) s, kernel $(uname -r)"
fi

for m in can can-raw can-bcm can-j1939 vcan; do
    modprobe "$m" 2>/dev/null || true  # built in, or already loaded, on some kernels
done
for dev in ${CANBRIDGE_VCAN:-vcan0 vcan1}; do
    ip link show "$dev" >/dev/null 2>&1 || ip link add dev "$dev" type vcan || { say "cannot create $dev"; exit 3; }
    ip link set up "$dev"
done
# A big receive buffer needs rmem_max unless SO_RCVBUFFORCE (root) is used; raise it anyway.
sysctl -qw net.core.rmem_max=8388608 2>/dev/null || true

cd "$ROOT" || exit 3
export PYTHONDONTWRITEBYTECODE=1 CANBRIDGE_SOCKETCAN_REQUIRED=1 PYTHONUNBUFFERED=1
export PATH="$VENV/bin:$PATH"
mkdir -p "$OUT"
say "running pytest tests/socketcan"
start=$(date +%s.%N)
# Only the plugin the tests use: autoloading hypothesis/schemathesis/anyio costs a minute in the guest.
PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 "$VENV/bin/python" -m pytest -p pytest_asyncio.plugin -p no:cacheprovider --junitxml="$OUT/junit-socketcan.xml" \
    -o junit_suite_name=socketcan --durations=8 tests/socketcan "$@"
rc=$?
say "pytest exit $rc after $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"
exit $rc
