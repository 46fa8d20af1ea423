"""Regression: a failure inside ``Runtime.start()`` before the plugins (a cyclic frame the driver refused,
an audit log that cannot be opened) left the bus tasks running: the socket stayed open and a retry in
the same process found the bus busy. Fixed: start() stops whatever it started before it raises."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from canbridge import BusState
from tests.core.test_busrunner import FakeDriver, fake_runtime


def bus_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("bus-") and not t.done()]


async def test_a_refused_cyclic_frame_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: FakeDriver, frame: object, period_s: float) -> None:
        raise RuntimeError("bcm: Operation not permitted")

    monkeypatch.setattr(FakeDriver, "send_periodic", refuse)
    mapping = {"writable": ["MotorCommand.*"], "transmit": {"MotorCommand": {"period_ms": 100}}}
    async with fake_runtime(tmp_path, mapping=mapping, start=False) as (rt, link):
        with pytest.raises(RuntimeError, match="Operation not permitted"):
            await rt.start()
        assert bus_tasks() == []
        assert rt.bus_status("demo").state is BusState.STOPPED
        assert link.driver.closed


async def test_an_audit_log_that_cannot_be_opened(tmp_path: Path) -> None:
    (tmp_path / "audit-is-a-dir").mkdir()
    async with fake_runtime(tmp_path, start=False, audit={"file": str(tmp_path / "audit-is-a-dir")}) as (rt, _):
        with pytest.raises(IsADirectoryError):
            await rt.start()
        assert bus_tasks() == []
