"""Issue #9, finding 1 (REST): a malformed frame was refused in the handler and 401/403 on write routes
never reached the audit log. Variants: tests/security/test_rest.py."""

from __future__ import annotations

import json
import logging

import pytest

from tests.plugins.rest.conftest import running

TOKENS = [{"name": "viewer", "role": "read", "token": "read-token-0123456789abcdef"}]


@pytest.mark.parametrize(
    ("headers", "result"),
    [({}, "unauthenticated"), ({"Authorization": "Bearer read-token-0123456789abcdef"}, "not_allowed")],
)
async def test_refused_write_attempts_are_in_the_audit_log(
    headers: dict[str, str], result: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "canbridge.audit")
    async with running({"tokens": TOKENS}) as api:
        status, _, _ = await api.put(
            "/api/v1/signals/demo.MotorCommand.SpeedSetpoint",
            data=b'{"value": 1}',
            headers={"Content-Type": "application/json", **headers},
        )
        assert status in (401, 403)
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "canbridge.audit"]
    assert [r["target"] for r in records if r.get("result") == result] == ["demo.MotorCommand.SpeedSetpoint"]
