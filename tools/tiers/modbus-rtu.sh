#!/usr/bin/env bash
# Tier "modbus-rtu": Modbus RTU over a pseudo-terminal pair made by socat.
# Installs Debian's socat (and mbpoll, which the RTU test also drives when the modbus-interop tier
# is present). Idempotent; run as root on Debian 12.
set -euo pipefail

missing=()
command -v socat >/dev/null 2>&1 || missing+=(socat)
command -v mbpoll >/dev/null 2>&1 || missing+=(mbpoll)
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
socat -V | sed -n 2p
