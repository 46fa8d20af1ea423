"""The core's own plugin: bus kinds and mapping formats, registered through the same hooks that
third-party plugins use."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import ConfigDict, Field

from canbridge._plugin import BusDriver, BusKind, MappingFormat, hookimpl
from canbridge.config import BusConfig, Strict


class SocketcanOptions(Strict):
    """``options:`` of a socketcan bus. Keys besides these go to python-can's socketcan bus, which the
    driver uses for sending (python-can defines them; it reports unknown ones)."""

    model_config = ConfigDict(extra="allow")

    max_drain: int = Field(1024, ge=1, le=65536, description="frames read per readable event at most")
    recvmmsg: bool = Field(True, description="one recvmmsg system call per batch (false: recvmsg per frame)")


def _socketcan(cfg: BusConfig) -> BusDriver:
    from canbridge.core.can.socketcan import SocketcanDriver

    return SocketcanDriver(cfg)


def _python_can(cfg: BusConfig) -> BusDriver:
    from canbridge.core.can.pycan import PythonCanDriver

    return PythonCanDriver(cfg)


def _replay(cfg: BusConfig) -> BusDriver:
    from canbridge.core.can.replay import ReplayDriver

    return ReplayDriver(cfg)


@hookimpl
def register_bus_kinds(register: Callable[[BusKind], None]) -> None:
    register(BusKind("socketcan", _socketcan, "Linux SocketCAN: raw socket reader with kernel filters, "
                     "timestamps and error frames; cyclic frames through the broadcast manager",
                     options_model=SocketcanOptions))
    register(BusKind("virtual", _python_can, "python-can's in-process virtual bus (tests, demo)"))
    register(BusKind("python-can", _python_can, "any other python-can interface (pcan, kvaser, ...)"))
    register(BusKind("replay", _replay, "plays a candump/ASC/BLF log through the mapping"))


@hookimpl
def register_mapping_formats(register: Callable[[MappingFormat], None]) -> None:
    from canbridge.core.mapping.formats import FORMATS

    for fmt in FORMATS:
        register(fmt)
