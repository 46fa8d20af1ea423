"""What the REST service shares between its modules: the per-application state, the route table's
entry, who made a request, and the typed aiohttp keys that carry them (one module, so that the app,
the OpenAPI document and the metrics import it and not each other)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

import canbridge
from canbridge_rest.config import RestConfig, Role
from canbridge_rest.guard import AuthLimiter
from canbridge_rest.streams import StreamHub

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Identity:
    """Who made a request: a configured token's name, or anonymous (name None)."""

    name: str | None
    role: Role | None


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    role: Role | None  # None: public
    name: str
    token_in_query: bool = False  # EventSource cannot send headers: streams also take ?access_token=


@dataclass
class RestState:
    bridge: canbridge.Bridge
    config: RestConfig
    hub: StreamHub
    statics: dict[str, dict[str, Any]]
    tokens: dict[str, tuple[str, Role]]
    routes: dict[object, Route] = field(default_factory=dict)  # aiohttp route -> our route
    registry: CollectorRegistry | None = None
    openapi: dict[str, Any] | None = None
    requests: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    started: bool = False
    limiter: AuthLimiter = field(default_factory=lambda: AuthLimiter(10, 6.0))
    refusals_unaudited: int = 0  # refusals the bridge could not record (logged)


STATE = web.AppKey("canbridge_rest.state", RestState)
IDENTITY = web.RequestKey("canbridge_rest.identity", Identity)
VALUE = web.RequestKey("canbridge_rest.value", object)  # what a write attempt asked for, for the audit log
