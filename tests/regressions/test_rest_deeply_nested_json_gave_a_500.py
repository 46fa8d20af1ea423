"""Issue #9, finding 10: a JSON body nested 1,000 deep raised RecursionError: a 500 and a traceback in
the log. Now it is a 400 that says why, and nothing is logged as an error."""

from __future__ import annotations

import logging

import pytest

from tests.plugins.rest.conftest import OPEN, running


@pytest.mark.parametrize("depth", [1000, 20000])
async def test_deep_json_is_a_400(depth: int, caplog: pytest.LogCaptureFixture) -> None:
    async with running({**OPEN, "max_body_bytes": 1024 * 1024}) as api:
        body = b'{"value": ' + b"[" * depth + b"]" * depth + b"}"
        status, got, _ = await api.put(
            "/api/v1/signals/demo.MotorCommand.SpeedSetpoint", data=body, headers={"Content-Type": "application/json"}
        )
        assert status == 400 and "nests" in got["detail"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
