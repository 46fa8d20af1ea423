#!/usr/bin/env bash
# Tier "packaging": the systemd unit (packaging/canbridge.service) checked by systemd-analyze, and the
# container image built from a local Debian base and smoke-tested (make image-offline, run by .ci/run).
# Installs Debian's systemd (systemd-analyze), buildah and mmdebstrap. Idempotent; root on Debian 12.
set -euo pipefail

missing=()
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "packaging tier: run as root to install ${missing[*]} (sudo bash tools/tiers/packaging.sh)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
systemd-analyze --version | sed -n 1p
buildah --version
