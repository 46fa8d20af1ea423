"""Plugin registration (hooks only): the ``modbus`` northbound service and the ``canbridge modbus-map``
command (commands.py)."""

from __future__ import annotations

from collections.abc import Callable

import canbridge
from canbridge import Command, NorthboundPlugin
from canbridge_modbus import commands
from canbridge_modbus.config import ModbusConfig
from canbridge_modbus.service import ModbusService


def _factory(bridge: canbridge.Bridge, config: ModbusConfig) -> ModbusService:
    return ModbusService(bridge, config)


@canbridge.hookimpl
def register_northbound(register: Callable[[NorthboundPlugin], None]) -> None:
    """The Modbus TCP/RTU server."""
    register(
        NorthboundPlugin(
            name="modbus",
            config_model=ModbusConfig,
            factory=_factory,
            description="Modbus TCP (and RTU) server: registers from the mapping table, pinned in a map file",
            order=100,
            demo_config={"host": "127.0.0.1", "port": 5020},
        )
    )


@canbridge.hookimpl
def register_commands(register: Callable[[Command], None]) -> None:
    """``canbridge modbus-map CONFIG``: print the register map."""
    register(
        Command(
            name="modbus-map",
            help="print the Modbus register map of a configuration (CSV or Markdown)",
            configure=commands.configure,
            run=commands.run,
        )
    )
