# canbridge: the two commands a new user runs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.canbridge-installed
VENV_LOWEST ?= .venv-lowest
export VENV VENV_LOWEST

.PHONY: all setup demo test test-python test-socketcan test-lowest lint bench deps image image-offline clean help

all: help

help:
	@echo "make demo            run the demo bridge (virtual bus, simulated ECUs, OPC UA, Modbus, REST)"
	@echo "make test            lint + every test tier whose tools are present (says what it skipped)"
	@echo "make test-socketcan  the real-kernel SocketCAN tier (in a QEMU micro-VM when the kernel has no CAN)"
	@echo "make test-lowest     the tests on the lowest allowed version of every dependency (own venv; CI runs it)"
	@echo "make bench           benchmarks, each against a baseline in the same run"
	@echo "make deps            install the tools of every test tier (root; Debian 12)"
	@echo "make image           build and smoke-test the container image"

# Set-up: a venv with the project (and its built-in plugins) installed editable.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/canbridge demo

lint: setup
	$(BIN)/ruff check canbridge plugins tests bench tools
	$(BIN)/mypy
	$(BIN)/lint-imports

test: setup lint test-python test-socketcan

test-python: setup
	$(BIN)/python -m pytest -q --ignore=tests/socketcan $(PYTEST_ARGS)

# Exit 77 from the runner means "tools missing": a skip, unless CI requires every tier.
test-socketcan: setup
	@bash tools/vm/run-in-vm.sh; rc=$$?; \
	if [ $$rc -eq 77 ]; then \
	  if [ "$$CANBRIDGE_REQUIRE_TIERS" = 1 ]; then echo "tier socketcan: tools missing (required)"; exit 1; fi; \
	  echo "tier socketcan SKIPPED: its tools are missing; install: sudo bash tools/tiers/socketcan.sh"; exit 0; \
	fi; exit $$rc

# The suite and the SocketCAN tier on the LOWEST version pyproject.toml allows of every direct dependency,
# in its own venv (tools/tiers/lowest-deps.sh builds it). Not part of `make test`: CI runs it after that.
test-lowest:
	bash tools/tiers/lowest-deps.sh
	$(VENV_LOWEST)/bin/python -m pytest tests --ignore=tests/socketcan -x -q $(PYTEST_ARGS)
	@VENV=$(VENV_LOWEST) OUT=test-results/socketcan-lowest bash tools/vm/run-in-vm.sh; rc=$$?; \
	if [ $$rc -eq 77 ]; then \
	  if [ "$$CANBRIDGE_REQUIRE_TIERS" = 1 ]; then echo "tier socketcan (lowest): tools missing (required)"; exit 1; fi; \
	  echo "tier socketcan (lowest) SKIPPED: its tools are missing; install: sudo bash tools/tiers/socketcan.sh"; exit 0; \
	fi; exit $$rc

bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# Tools of every tier (apt, npm, pip into the venv). Needs root.
deps: setup
	@for t in tools/tiers/*.sh; do echo "== $$t"; bash $$t || exit 1; done

# Container image (Docker, or podman/buildah without an engine); smoke-tested inside the image.
image:
	tools/build-image.sh

# The same from a local Debian base (no registry needed).
image-offline:
	tools/build-image.sh --local-base

clean:
	rm -rf $(VENV) $(VENV_LOWEST) .pytest_cache .mypy_cache .ruff_cache build *.egg-info tools/node/node_modules
