#!/usr/bin/env bash
# Tier "modbus-interop": the Modbus server against mbpoll (libmodbus), an independent client.
# Installs Debian's mbpoll. Idempotent; run as root on Debian 12.
set -euo pipefail

if ! command -v mbpoll >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends mbpoll >/dev/null
fi
dpkg-query -W -f='mbpoll ${Version}\n' mbpoll
