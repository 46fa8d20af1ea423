"""Regression: a bus task that ended with an exception was noticed by nobody: the bridge kept serving
values that no longer changed, with quality "good". Fixed: ``Runtime.run`` serves inside a TaskGroup
that also watches the bridge's own tasks; one that ends stops the bridge cleanly and ``run`` raises."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from canbridge import BusState, PluginError
from canbridge.testing import until
from tests.core.test_busrunner import fake_runtime


async def test_run_stops_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                caplog: pytest.LogCaptureFixture) -> None:
    never = asyncio.Event()
    async with fake_runtime(tmp_path, start=False, gc_freeze=False) as (rt, link):
        task = asyncio.create_task(rt.run(never.wait))
        await until(lambda: rt.ready)
        runner = rt.runners["demo"]

        def broken() -> None:
            raise RuntimeError("driver state corrupt")

        monkeypatch.setattr(runner, "_restart_cyclic", broken)
        with caplog.at_level(logging.CRITICAL, logger="canbridge"):
            link.fail(OSError(100, "Network is down"))  # the reconnect path meets the broken step
            with pytest.raises(PluginError, match="driver state corrupt"):
                await asyncio.wait_for(task, 10)
        assert any("bus-demo ended" in r.getMessage() for r in caplog.records)
        assert rt.bus_status("demo").state is BusState.STOPPED and not rt.ready
