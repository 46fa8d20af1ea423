#!/usr/bin/env bash
# Tier "opcua-interop": the OPC UA server against node-opcua, an independent client implementation.
# Needs Node.js (Debian 12: apt nodejs npm); installs the npm packages pinned by
# tools/node/package.json and package-lock.json into tools/node/node_modules. Idempotent; run as root.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if [ ! -d tools/node/node_modules/node-opcua-client ] || [ ! -d tools/node/node_modules/node-opcua-certificate-manager ]; then
    if [ -f tools/node/package-lock.json ]; then
        npm ci --prefix tools/node --no-audit --no-fund
    else
        npm install --prefix tools/node --no-audit --no-fund
    fi
fi
node --version
node -e "console.log('node-opcua-client', require('./tools/node/node_modules/node-opcua-client/package.json').version)"
