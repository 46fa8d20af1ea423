"""The running Modbus service: register map, batch updates from the bridge, TCP and RTU servers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from canbridge import Bridge, PluginError, StartupCache
from canbridge_modbus.config import ModbusConfig
from canbridge_modbus.engine import ModbusEngine
from canbridge_modbus.mapfile import default_map_path, save_map
from canbridge_modbus.plancache import cached_plan, remember
from canbridge_modbus.registers import RegisterMap
from canbridge_modbus.rtu import ModbusRtuServer
from canbridge_modbus.tcp import ModbusTcpServer

log = logging.getLogger("canbridge.modbus")


def prepare_map(bridge: Bridge, config: ModbusConfig) -> tuple[RegisterMap, Path]:
    """Reconcile the mapping table with the map file and write the file when it changed."""
    path = default_map_path(config, bridge.config_path, bridge.state_dir)
    cache = StartupCache(bridge.state_dir / "cache")
    rmap, cached = cached_plan(bridge.signals, bridge.buses, config, path, cache)
    for w in rmap.warnings:
        log.warning("modbus: %s", w)
    if rmap.changed:
        try:
            save_map(path, rmap)
        except OSError as e:
            raise PluginError(
                f"modbus: cannot write the register map {path}: {e.strerror or e} "
                "(set plugins.modbus.map_file to a writable place)"
            ) from e
        log.info("modbus: register map written to %s", path)
    if not cached:
        remember(bridge.signals, bridge.buses, config, path, cache, rmap)
    return rmap, path


class ModbusService:
    """Modbus TCP (and RTU) server of the mapping table."""

    def __init__(self, bridge: Bridge, config: ModbusConfig) -> None:
        self.bridge = bridge
        self.config = config
        self.engine: ModbusEngine | None = None
        self.rmap: RegisterMap | None = None
        self.map_path: Path | None = None
        self.tcp: ModbusTcpServer | None = None
        self.rtu: ModbusRtuServer | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        cfg = self.config
        self.rmap, self.map_path = prepare_map(self.bridge, cfg)
        engine = ModbusEngine(
            self.bridge,
            self.rmap,
            refuse_bad=cfg.bad_quality == "exception",
            read_only=cfg.read_only,
            write_timeout_s=cfg.write_timeout_s,
        )
        self.engine = engine
        names = list(self.rmap.placements)
        engine.apply(self.bridge.read_many(names))
        self._refresh_diagnostics()
        # subscribe before serving so no change between the snapshot and the first batch is lost
        sub = self.bridge.subscribe(names, interval=cfg.update_interval)
        self._tasks.append(asyncio.create_task(self._feed(sub), name="modbus-feed"))
        self._tasks.append(asyncio.create_task(self._diagnostics(), name="modbus-diagnostics"))
        try:
            if cfg.tcp:
                self.tcp = ModbusTcpServer(
                    engine,
                    cfg.host,
                    cfg.port,
                    allow=cfg.allow,
                    max_connections=cfg.max_connections,
                    idle_timeout_s=cfg.idle_timeout_s,
                    frame_timeout_s=cfg.frame_timeout_s,
                    max_connections_per_address=cfg.max_connections_per_address,
                    evict_idle_s=cfg.evict_idle_s,
                    output_buffer_bytes=cfg.output_buffer_bytes,
                    output_timeout_s=cfg.output_timeout_s,
                )
                await self.tcp.start()
            if cfg.rtu is not None:
                self.rtu = ModbusRtuServer(engine, cfg.rtu)
                await self.rtu.start()
        except BaseException:
            await self.stop()
            raise
        log.info("modbus: serving %d signals on %s", len(names), ", ".join(self.endpoints()))

    async def _feed(self, sub: object) -> None:
        from canbridge import Subscription

        assert isinstance(sub, Subscription) and self.engine is not None
        engine = self.engine
        async with sub:
            async for batch in sub:
                try:
                    engine.apply(batch)
                except Exception:  # a bad value must not freeze every register from now on
                    log.exception("modbus: applying an update batch failed")
        log.info("modbus: the bridge closed the subscription; registers keep their last values")

    def _refresh_diagnostics(self) -> None:
        assert self.engine is not None and self.rmap is not None
        tcp = self.tcp
        self.engine.apply_bridge_stats(
            self.bridge.stats(),
            connections=len(tcp.connections) if tcp is not None else 0,
            evicted=tcp.evicted_connections if tcp is not None else 0,
            refused=tcp.refused_connections if tcp is not None else 0,
        )
        now = time.time_ns()
        for bus in self.rmap.diagnostics:
            try:
                status = self.bridge.bus_status(bus)
            except KeyError:
                continue
            self.engine.apply_bus_status(status, now)
        for bus in self.rmap.dtc:
            try:
                status = self.bridge.bus_status(bus)
            except KeyError:  # a bus gone from the configuration keeps its block, waiting
                continue
            self.engine.apply_dm1(status, now, self.config.dtc.stale_after_s)

    async def _diagnostics(self) -> None:
        while True:
            await asyncio.sleep(self.config.diagnostics_interval)
            try:
                self._refresh_diagnostics()
            except Exception:
                log.exception("modbus: refreshing the diagnostics registers failed")

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self.tcp is not None:
            await self.tcp.stop()
        if self.rtu is not None:
            await self.rtu.stop()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
            for t in self._tasks:
                if t.done() and not t.cancelled():
                    with contextlib.suppress(BaseException):
                        t.result()
        self._tasks.clear()

    def endpoints(self) -> list[str]:
        out: list[str] = []
        if self.tcp is not None:
            for host, port in self.tcp.addresses():
                out.append(f"modbus-tcp://[{host}]:{port}" if ":" in host else f"modbus-tcp://{host}:{port}")
        if self.rtu is not None:
            out.append(self.rtu.endpoint)
        return out
