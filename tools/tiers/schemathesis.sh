#!/usr/bin/env bash
# Tier "schemathesis": the REST plugin's OpenAPI document checked against the real responses.
# Installs schemathesis into the project's venv ($VENV, default .venv). Idempotent.
# 4.32.5 runs on Python 3.11, keeps the venv's hypothesis and pydantic 2 as they are, and reads OpenAPI 3.1.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${VENV:-.venv}"
SCHEMATHESIS_VERSION="4.32.5"

have="$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('schemathesis'))" 2>/dev/null || true)"
if [ "$have" != "$SCHEMATHESIS_VERSION" ]; then
    "$VENV/bin/pip" install -q "schemathesis==${SCHEMATHESIS_VERSION}"
fi
"$VENV/bin/python" -c "import importlib.metadata as m; print('schemathesis', m.version('schemathesis'))"
