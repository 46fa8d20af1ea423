"""Registration records that plugins hand to the ``register_*`` hooks, and the contracts
behind them: a northbound :class:`Service` and a southbound :class:`BusDriver`."""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import pluggy
from pydantic import BaseModel

from canbridge._model import Frame, RawFrame

if TYPE_CHECKING:
    import cantools.database.can

    from canbridge._bridge import Bridge
    from canbridge.config import BusConfig

hookimpl = pluggy.HookimplMarker("canbridge")
"""Decorator for a plugin's hook implementations."""


@runtime_checkable
class Service(Protocol):
    """A running northbound plugin instance. ``start`` returns once it serves; ``stop`` is bounded."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def endpoints(self) -> list[str]:
        """Where clients connect (URLs), printed by ``canbridge demo`` and ``canbridge run``."""
        ...


@dataclass(frozen=True)
class NorthboundPlugin:
    """A northbound plugin: a protocol server fed by the bridge.

    It is enabled by a ``plugins: {<name>: {...}}`` entry in the configuration, validated with
    ``config_model`` (unknown keys are errors). ``factory(bridge, config)`` builds the service.
    """

    name: str
    config_model: type[BaseModel]
    factory: Callable[[Bridge, Any], Service]
    description: str = ""
    order: int = 100  # start order: lower first; stopped in reverse
    demo_config: dict[str, Any] | None = None  # what ``canbridge demo`` enables it with (loopback only)
    # Asked by ``canbridge demo`` before it enables the plugin: None enables it, a string is why it stays off
    # (printed with the other endpoints). For a plugin that needs something the demo cannot bring (a broker).
    demo_requires: Callable[[], str | None] | None = None

    def listen_endpoints(self, config: Any) -> list[tuple[str, str, int]]:
        """Where the plugin will listen with this (validated) configuration: ``(key, host, port)`` per
        socket, ``key`` being the configuration key that sets it (``"port"``, ``"listen"``).

        ``canbridge check`` uses it to report two plugins on one port and a port already in use before
        ``run`` fails on them. A plugin opts in by giving its config model a ``listen_endpoints()``
        method returning that list; without one the plugin is not checked (the default: ``[]``).
        Port 0 (any free port) is never a conflict.
        """
        method = getattr(config, "listen_endpoints", None)
        return list(method()) if callable(method) else []


class PeriodicHandle(ABC):
    """A cyclic transmission owned by a bus driver (the kernel's broadcast manager on SocketCAN)."""

    @abstractmethod
    def modify(self, frame: Frame) -> None:
        """Replace the data sent from the next period on, atomically."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the transmission."""


class BusDriver(ABC):
    """The southbound contract, as small as python-can's ``BusABC``.

    The core calls :meth:`open`, then :meth:`start_reading` with a callback that takes *batches* of
    :data:`RawFrame` tuples; a driver hands over everything that is waiting at once, never one await per
    frame. Errors that end reception (interface down, socket gone) go to ``on_error``; the core then
    closes the driver and opens it again with backoff.
    """

    @abstractmethod
    async def open(self) -> None:
        """Open the interface; raise :class:`BusUnavailable` (with a hint) when it is missing or down."""

    @abstractmethod
    def start_reading(
        self, on_frames: Callable[[list[RawFrame]], None], on_error: Callable[[BaseException], None]
    ) -> None:
        """Begin delivering received frames (in the event loop's thread) to ``on_frames``."""

    @abstractmethod
    def send(self, frame: Frame) -> None:
        """Send one frame now; raise :class:`BusError` when it cannot be sent."""

    @abstractmethod
    async def close(self) -> None:
        """Stop reading and release the interface; stops this driver's periodic transmissions."""

    def send_periodic(self, frame: Frame, period_s: float) -> PeriodicHandle:
        """Start sending ``frame`` every ``period_s`` seconds. Drivers without support raise BusError."""
        from canbridge._errors import BusError

        raise BusError(f"{type(self).__name__} cannot send periodically")

    def set_filters(self, ids: Sequence[tuple[int, bool]] | None) -> None:  # noqa: B027
        """Receive only these ``(can_id, extended)`` ids (None: all). Drivers may ignore it."""

    def kernel_status(self) -> dict[str, Any]:
        """Diagnostics the interface itself reports (state, error counters, drops); may be empty."""
        return {}


@dataclass(frozen=True)
class BusKind:
    """A southbound bus kind: ``interface: <name>`` in a bus's configuration opens it."""

    name: str
    open: Callable[[BusConfig], BusDriver]  # called with the bus's validated configuration
    description: str = ""
    # validates the bus's ``options:`` (``canbridge check`` and start-up report its problems with key paths)
    options_model: type[BaseModel] | None = None


@dataclass(frozen=True)
class MappingFormat:
    """A mapping file format: a loader that turns a file into cantools messages."""

    name: str
    suffixes: tuple[str, ...]
    load: Callable[[Path, bool], Sequence[cantools.database.can.Message]]  # (path, strict)
    description: str = ""


@dataclass(frozen=True)
class Command:
    """An extra ``canbridge`` subcommand."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    aliases: Sequence[str] = field(default_factory=tuple)
