"""The REST plugin's registration (hooks only; the service is in service.py)."""

from __future__ import annotations

from collections.abc import Callable

import canbridge
from canbridge_rest.config import RestConfig
from canbridge_rest.service import RestService


def _factory(bridge: canbridge.Bridge, config: RestConfig) -> RestService:
    return RestService(bridge, config)


@canbridge.hookimpl
def register_northbound(register: Callable[[canbridge.NorthboundPlugin], None]) -> None:
    register(
        canbridge.NorthboundPlugin(
            name="rest",
            config_model=RestConfig,
            factory=_factory,
            description="REST API (OpenAPI), SSE/WebSocket streams, Prometheus metrics and a web dashboard",
            order=300,
            # the demo runs on loopback only, where opening writes and raw frames is allowed
            demo_config={
                "host": "127.0.0.1",
                "port": 8080,
                "anonymous_read": True,
                "anonymous_write": True,
                "anonymous_admin": True,
            },
        )
    )
