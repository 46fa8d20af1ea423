#!/usr/bin/env bash
# Tier "faults": a real full disk under the audit log, on a tiny tmpfs the test mounts itself.
# Nothing to download: it needs root (to mount) and util-linux's mount/umount. Idempotent.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
    echo "faults tier: run the tests as root (mounting a tmpfs needs it); CI does" >&2
    exit 1
fi
if ! command -v mount >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends mount >/dev/null
fi
grep -qw tmpfs /proc/filesystems
echo "faults tier: root, mount and tmpfs present"
