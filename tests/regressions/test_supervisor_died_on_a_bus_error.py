"""Regression: the supervisor (staleness, writer timeouts, bus polling) was one loop without a guard. A
``BusError`` from the writer-timeout path (putting a cyclic frame back to its initial values while the
broadcast manager refused it) ended the task, silently: from then on no signal ever went stale. Fixed
in Runtime._supervise: each duty runs on its own, a failure is logged and counted, the loop goes on."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from canbridge import BusError, Caller, Quality
from canbridge.testing import until
from tests.core.test_busrunner import SPEED, FakePeriodic, fake_runtime, motor_status

SET = "demo.MotorCommand.SpeedSetpoint"
TRANSMIT = {"writable": ["MotorCommand.*"],
            "transmit": {"MotorCommand": {"period_ms": 100, "writer_timeout_ms": 50, "on_writer_timeout": "initial"}}}


async def test_staleness_goes_on_after_the_writer_timeout_path_raised(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    async with fake_runtime(tmp_path, mapping=TRANSMIT) as (rt, link):
        await rt.write(SET, 1500, Caller("test"))

        def refuse(self: FakePeriodic, frame: object) -> None:
            raise BusError("bcm: No buffer space available")

        monkeypatch.setattr(FakePeriodic, "modify", refuse)
        await until(lambda: rt.read(SET).value == 0)  # the timeout applied the initial values anyway
        link.deliver(motor_status(10))
        assert rt.read(SPEED).quality is Quality.GOOD
        await until(lambda: rt.read(SPEED).quality is Quality.STALE)  # the supervisor still runs


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyError("gone"), OSError(5, "I/O error")])
async def test_any_failing_duty_is_logged_once_and_the_others_go_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture,
                                                                    exc: Exception) -> None:
    async with fake_runtime(tmp_path) as (rt, link):
        runner = rt.runners["demo"]

        def poll() -> None:
            raise exc

        monkeypatch.setattr(runner, "poll", poll)
        with caplog.at_level(logging.ERROR, logger="canbridge"):
            await until(lambda: rt.supervisor_errors >= 2, timeout=5)
            link.deliver(motor_status(10))
            await until(lambda: rt.read(SPEED).quality is Quality.STALE)
        said = [r for r in caplog.records if "bus polling failed" in r.getMessage()]
        assert len(said) == 1  # once a minute at most, not once a second
