"""The core's own plugin: bus kinds and mapping formats, registered through the same hooks that
third-party plugins use."""

from __future__ import annotations

from collections.abc import Callable

from canbridge._plugin import BusDriver, BusKind, MappingFormat, hookimpl
from canbridge.config import BusConfig


def _socketcan(cfg: BusConfig) -> BusDriver:
    from canbridge.core.socketcan import SocketcanDriver

    return SocketcanDriver(cfg)


def _python_can(cfg: BusConfig) -> BusDriver:
    from canbridge.core.pycan import PythonCanDriver

    return PythonCanDriver(cfg)


def _replay(cfg: BusConfig) -> BusDriver:
    from canbridge.core.replay import ReplayDriver

    return ReplayDriver(cfg)


@hookimpl
def register_bus_kinds(register: Callable[[BusKind], None]) -> None:
    register(BusKind("socketcan", _socketcan, "Linux SocketCAN: raw socket reader with kernel filters, "
                     "timestamps and error frames; cyclic frames through the broadcast manager"))
    register(BusKind("virtual", _python_can, "python-can's in-process virtual bus (tests, demo)"))
    register(BusKind("python-can", _python_can, "any other python-can interface (pcan, kvaser, ...)"))
    register(BusKind("replay", _replay, "plays a candump/ASC/BLF log through the mapping"))


@hookimpl
def register_mapping_formats(register: Callable[[MappingFormat], None]) -> None:
    from canbridge.core.formats import FORMATS

    for fmt in FORMATS:
        register(fmt)
