"""Shared fixtures and the tier mechanism (see tests/tiers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiers import TIERS, require_all

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
DEMO_DBC = ROOT / "mappings" / "demo" / "demo.dbc"

_missing: dict[str, str] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for mark in item.iter_markers("tier"):
            name = mark.args[0]
            tier = TIERS.get(name)
            if tier is None:
                raise pytest.UsageError(f"{item.nodeid}: unknown tier {name!r}; add it to tests/tiers.py")
            why = tier.missing()
            if why is None:
                continue
            _missing[name] = why
            if require_all():
                item.user_properties.append(("tier_missing", f"{name}: {why}"))
            else:
                item.add_marker(pytest.mark.skip(reason=f"tier {name}: {why}; install: {tier.install}"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    for key, value in item.user_properties:
        if key == "tier_missing":
            pytest.fail(f"required tier missing (CANBRIDGE_REQUIRE_TIERS=1): {value}", pytrace=False)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _missing:
        return
    terminalreporter.section("tiers not run")
    for name, why in sorted(_missing.items()):
        terminalreporter.write_line(f"{name}: {why}")
        terminalreporter.write_line(f"    {TIERS[name].what}; install: {TIERS[name].install}")


@pytest.fixture
def demo_dbc() -> Path:
    return DEMO_DBC
