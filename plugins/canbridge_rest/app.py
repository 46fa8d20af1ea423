"""The aiohttp application: middlewares, routes and start-up/clean-up, assembled (make_app)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

import canbridge
from canbridge_rest import models
from canbridge_rest.config import RestConfig
from canbridge_rest.guard import AuthLimiter
from canbridge_rest.handlers import ROUTES, dashboard, static_file
from canbridge_rest.middleware import (
    auth_middleware,
    cors_middleware,
    error_middleware,
    guard_middleware,
    on_prepare,
)
from canbridge_rest.state import STATE, RestState, Route
from canbridge_rest.streams import StreamHub


def make_app(bridge: canbridge.Bridge, config: RestConfig) -> web.Application:
    """Build the application; its cleanup context owns the metrics registry and the stream hub."""
    from canbridge_rest.metrics import make_registry

    tokens = {t.digest: (t.name, t.role) for t in config.tokens}
    state = RestState(
        bridge=bridge,
        config=config,
        hub=StreamHub(config.max_stream_clients),
        statics={n: models.static_signal(i) for n, i in bridge.signals.items()},
        tokens=tokens,
        limiter=AuthLimiter(config.auth_failures_burst, config.auth_failures_per_minute),
    )
    app = web.Application(
        client_max_size=config.max_body_bytes,
        middlewares=[cors_middleware, error_middleware, guard_middleware, auth_middleware],
    )
    app[STATE] = state
    routes = list(ROUTES)
    if config.dashboard:
        routes += [
            Route("GET", "/", dashboard, None, "dashboard"),
            Route("GET", "/static/{file}", static_file, None, "static"),
        ]
    for r in routes:
        state.routes[app.router.add_route(r.method, r.path, r.handler, name=r.name)] = r
        if r.method == "GET":  # monitoring tools probe with HEAD: every GET route answers it
            state.routes[app.router.add_route("HEAD", r.path, r.handler)] = r
    app.on_response_prepare.append(on_prepare)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        # runs only when start-up finished, so the registry and streams always exist here
        st = app[STATE]
        st.registry = make_registry(st)
        st.started = True
        yield
        st.started = False
        st.hub.close_all()

    async def on_shutdown(app: web.Application) -> None:
        # before aiohttp waits for handlers: end the long-lived streams so stop() is quick
        app[STATE].hub.close_all()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(on_shutdown)
    return app
