#!/usr/bin/env bash
# Tier "mqtt-interop": the MQTT plugin against Mosquitto (Debian) as the broker and Eclipse Tahu's
# JavaScript Sparkplug codec (npm sparkplug-payload) with npm mqtt as an independent primary host.
# The tests start Mosquitto themselves on a loopback port with their own config (no service is started
# here). Installs the npm packages pinned by tools/node/package.json and package-lock.json. Idempotent; root.
set -euo pipefail
cd "$(dirname "$0")/../.."

export DEBIAN_FRONTEND=noninteractive
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends mosquitto mosquitto-clients >/dev/null
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if [ ! -d tools/node/node_modules/sparkplug-payload ] || [ ! -d tools/node/node_modules/mqtt ]; then
    npm ci --prefix tools/node --no-audit --no-fund
fi
/usr/sbin/mosquitto -h 2>/dev/null | sed -n 1p || true
node -e "console.log('sparkplug-payload', require('./tools/node/node_modules/sparkplug-payload/package.json').version)"
