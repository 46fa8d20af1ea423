"""The REST service: an aiohttp AppRunner on one TCP site, started and stopped by the bridge."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

import canbridge
from canbridge_rest.app import make_app
from canbridge_rest.config import RestConfig
from canbridge_rest.state import STATE

log = logging.getLogger("canbridge.rest")


class RestService:
    """Serves the REST API, streams, metrics and dashboard until stopped."""

    def __init__(self, bridge: canbridge.Bridge, config: RestConfig) -> None:
        self.bridge = bridge
        self.config = config
        self.app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self._endpoints: list[str] = []

    async def start(self) -> None:
        cfg = self.config
        app = make_app(self.bridge, cfg)
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=cfg.shutdown_timeout_s,
            # a stream whose client left ends at once (not at its next write); writes are shielded
            handler_cancellation=True,
        )
        await runner.setup()
        site = web.TCPSite(
            runner, cfg.host, cfg.port, ssl_context=cfg.tls.context() if cfg.tls else None, reuse_address=True
        )
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise canbridge.ListenError(
                "rest", f"{cfg.host}:{cfg.port}", e.strerror or str(e), "plugins.rest.host/port"
            ) from e
        self.app, self._runner = app, runner
        scheme = "https" if cfg.tls else "http"
        self._endpoints = []
        for addr in runner.addresses:
            host, port = addr[0], addr[1]
            host = f"[{host}]" if ":" in host else host
            self._endpoints.append(f"{scheme}://{host}:{port}/")
        log.info("REST API and dashboard on %s", ", ".join(self._endpoints))

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        if self.app is not None:
            self.app[STATE].hub.close_all()
        try:
            # aiohttp waits up to shutdown_timeout for requests, then cancels them; bound the rest too
            async with asyncio.timeout(self.config.shutdown_timeout_s + 2.0):
                await runner.cleanup()
        except TimeoutError:
            log.warning("REST service did not stop within %.1f s", self.config.shutdown_timeout_s + 2.0)

    def endpoints(self) -> list[str]:
        return list(self._endpoints)
