#!/usr/bin/env bash
# Tier "lowest": a venv of its own ($VENV_LOWEST, default .venv-lowest) with the LOWEST version that
# pyproject.toml allows of every direct runtime dependency (tools/constraints-lowest.txt, generated from the
# lower bounds by tools/gen_constraints_lowest.py). Their own dependencies and the test tools ([test]
# extra) resolve to the newest versions that fit. `make test-lowest` runs the test suite in it.
# Idempotent: a second run only re-checks. No root needed.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"  # the main venv: only read, for the tier packages it has
VENV_LOWEST="${VENV_LOWEST:-.venv-lowest}"
CONSTRAINTS=tools/constraints-lowest.txt

# pip's output without the warnings about this machine's empty extra indexes.
quiet() { grep -v "is ignored: it is neither" "$1" >&2 || true; }

# The committed constraints must be the lower bounds pyproject.toml declares, else this tier tests something else.
"$PYTHON" tools/gen_constraints_lowest.py --check

test -x "$VENV_LOWEST/bin/python" || "$PYTHON" -m venv "$VENV_LOWEST"
stamp="$VENV_LOWEST/.canbridge-lowest-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$CONSTRAINTS" -nt "$stamp" ]; then
    log="$(mktemp)"
    trap 'rm -f "$log"' EXIT
    "$VENV_LOWEST/bin/python" -m pip install -q --upgrade pip >"$log" 2>&1 || { quiet "$log"; exit 1; }
    # eager: a venv made for an older bound moves to the current one, and everything else to its newest fit.
    ok=1
    "$VENV_LOWEST/bin/python" -m pip install -q --upgrade --upgrade-strategy eager \
        --constraint "$CONSTRAINTS" -e ".[test]" >"$log" 2>&1 || ok=0
    quiet "$log"
    [ "$ok" = 1 ] || { echo "lowest-deps: pip could not install the lower bounds (above)" >&2; exit 1; }
    # pip installs a yanked release only when pinned to it: no resolver picks it for `>=`, so it is no bound.
    if grep -q "yanked version" "$log"; then
        echo "lowest-deps: a lower bound is a yanked release (above): raise it to the next release" >&2
        exit 1
    fi
    touch "$stamp"
fi
# The tiers' own Python packages: the same versions as in the main venv, so this venv runs every test that one
# runs (a tier whose tools are missing there is missing here too, and skipped or required alike).
for pkg in schemathesis playwright; do
    want="$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('$pkg'))" 2>/dev/null || true)"
    have="$("$VENV_LOWEST/bin/python" -c "import importlib.metadata as m; print(m.version('$pkg'))" 2>/dev/null || true)"
    if [ -n "$want" ] && [ "$want" != "$have" ]; then
        PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$VENV_LOWEST/bin/python" -m pip install -q \
            --constraint "$CONSTRAINTS" "$pkg==$want" 2>&1 | quiet - \
            || { echo "lowest-deps: $pkg $want does not install with the lower bounds" >&2; exit 1; }
    fi
done
# Proof that pip installed the bounds themselves, not something that merely satisfies them.
"$VENV_LOWEST/bin/python" tools/gen_constraints_lowest.py --installed
