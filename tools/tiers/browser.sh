#!/usr/bin/env bash
# Tier "browser": the web dashboard in headless Chromium, driven by Playwright.
# Installs Debian's chromium (never a browser downloaded by Playwright: no internet here) and the
# Python playwright package into the project's venv ($VENV, default .venv). Idempotent; run as root.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${VENV:-.venv}"
PLAYWRIGHT_VERSION="1.65.2"

if ! command -v chromium >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
# Playwright must only drive /usr/bin/chromium; stop pip-installed hooks from fetching browsers.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
if ! "$VENV/bin/python" -c "import playwright" >/dev/null 2>&1; then
    "$VENV/bin/pip" install -q "playwright==${PLAYWRIGHT_VERSION}"
fi
chromium --version
"$VENV/bin/python" -c "import importlib.metadata as m; print('playwright', m.version('playwright'))"
