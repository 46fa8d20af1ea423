"""Fixtures for the REST plugin: a bridge on a virtual bus (the harness) serving the REST API."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from canbridge.testing import BridgeHarness
from tests.conftest import DEMO_DBC

OPEN = {"port": 0, "anonymous_read": True, "anonymous_write": True, "anonymous_admin": True}


def bridge_config(
    *, cyclic: bool = False, write_rate: float | None = 50.0, seed: str = "initial", simulate: bool = False
) -> dict[str, Any]:
    """The demo mapping on a fresh virtual channel. Non-cyclic by default: a refused write sends
    nothing at all, so ``next_sent`` timing out proves it."""
    import uuid

    channel = f"rest-{uuid.uuid4().hex[:8]}"
    transmit: dict[str, Any] = {}
    if cyclic or seed != "initial":
        transmit["MotorCommand"] = {"seed": seed, **({"period_ms": 100} if cyclic else {})}
    data: dict[str, Any] = {
        "buses": [{"name": "demo", "interface": "virtual", "channel": channel}],
        "mappings": [
            {
                "bus": "demo",
                "dbc": str(DEMO_DBC),
                "writable": ["MotorCommand.*"],
                "transmit": transmit,
                "write_rate": write_rate,
            }
        ],
    }
    if simulate:
        data["simulators"] = [
            {
                "bus": "demo",
                "follow": {
                    "MotorStatus.SetpointEcho": "MotorCommand.SpeedSetpoint",
                    "MotorStatus.MotorEnabled": "MotorCommand.Enable",
                },
                "ramp": {"MotorStatus.MotorSpeed": "MotorCommand.SpeedSetpoint"},
            }
        ]
    return data


@dataclass
class Api:
    h: BridgeHarness
    url: str  # base URL ending in '/'
    session: aiohttp.ClientSession

    def u(self, path: str) -> str:
        return self.url + path.lstrip("/")

    async def get(self, path: str, **kw: Any) -> tuple[int, Any, aiohttp.ClientResponse]:
        async with self.session.get(self.u(path), **kw) as r:
            return r.status, await _body(r), r

    async def put(self, path: str, **kw: Any) -> tuple[int, Any, aiohttp.ClientResponse]:
        async with self.session.put(self.u(path), **kw) as r:
            return r.status, await _body(r), r

    async def post(self, path: str, **kw: Any) -> tuple[int, Any, aiohttp.ClientResponse]:
        async with self.session.post(self.u(path), **kw) as r:
            return r.status, await _body(r), r


async def _body(r: aiohttp.ClientResponse) -> Any:
    if r.content_type == "application/json":
        return await r.json()
    return await r.text()


@contextlib.asynccontextmanager
async def running(
    rest: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    simulate: bool = False,
    **session_kw: Any,
) -> AsyncIterator[Api]:
    rest_cfg = dict(OPEN if rest is None else rest)
    rest_cfg.setdefault("port", 0)
    async with BridgeHarness(
        config=config if config is not None else bridge_config(),
        plugins={"rest": rest_cfg},
        simulate=simulate,
    ) as h:
        url = h.service("rest").endpoints()[0]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10), **session_kw) as s:
            yield Api(h, url, s)


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async with running() as a:
        yield a
