"""The one exception tree of canbridge.

Every error that canbridge raises on purpose derives from :class:`CanbridgeError`, so an
integrator can catch the whole family in one place, as python-can does with ``CanError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class CanbridgeError(Exception):
    """Base class of every error canbridge raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration or mapping file, with where it is."""

    message: str
    file: str | None = None
    line: int | None = None
    path: str | None = None  # key path such as ``buses[0].channel``

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(self.file if self.line is None else f"{self.file}:{self.line}")
        if self.path:
            where.append(self.path)
        prefix = " ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


class ConfigError(CanbridgeError):
    """The configuration (or a mapping file it names) cannot be used; lists every problem."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class MappingError(CanbridgeError):
    """A mapping file (DBC, KCD, SYM, ARXML or YAML signals) cannot be loaded."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None) -> None:
        self.file = file
        self.line = line
        self.detail = message
        super().__init__(str(Problem(message, file=file, line=line)))


class FrameFormatError(CanbridgeError, ValueError):
    """A raw frame (cansend string or frame object) is malformed; the message says what is wrong."""


class BusError(CanbridgeError):
    """A bus cannot be opened or used."""


class BusUnavailable(BusError):
    """The interface is missing or down; ``hint`` says how to fix it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.hint = hint
        super().__init__(message if not hint else f"{message} ({hint})")


class PluginError(CanbridgeError):
    """A plugin failed to load, configure, start or stop."""


class ListenError(PluginError):
    """A plugin cannot listen on its address (in use, not this machine's, not permitted); every
    northbound plugin raises this one type, naming itself, the address and the configuration key."""

    def __init__(self, plugin: str, address: str, why: str, key: str | None = None) -> None:
        self.plugin = plugin
        self.address = address
        self.why = why
        self.key = key
        hint = f" ({key})" if key else ""
        super().__init__(f"{plugin}: cannot listen on {address}: {why}{hint}")


class UnknownSignal(CanbridgeError, KeyError):
    """No signal of that name is in the mapping table."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown signal"


class UnknownBus(CanbridgeError, KeyError):
    """No bus of that name is configured (a KeyError too, for code written against earlier versions)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown bus"


class RefusalReason(StrEnum):
    """Why the write path refused a write; plugins map these to their protocol's error codes."""

    UNKNOWN_SIGNAL = "unknown_signal"
    NOT_WRITABLE = "not_writable"
    NOT_ALLOWED = "not_allowed"
    WRONG_TYPE = "wrong_type"
    OUT_OF_RANGE = "out_of_range"
    RATE_LIMITED = "rate_limited"
    BUS_DOWN = "bus_down"
    WAITING = "waiting_for_initial_data"
    UNKNOWN_BUS = "unknown_bus"
    INVALID_FRAME = "invalid_frame"
    UNAUTHENTICATED = "unauthenticated"  # no or wrong credentials (the plugin decided, the write path audited)
    UNSUPPORTED = "unsupported_request"  # a protocol write form the bridge does not take (e.g. half a value)
    AUDIT_UNAVAILABLE = "audit_unavailable"  # the audit log cannot be written: nothing is sent while that lasts
    DEVICE_REFUSED = "device_refused"  # the device itself refused (a CANopen SDO abort: WriteRefused.abort_code)
    DEVICE_TIMEOUT = "device_timeout"  # the device did not answer in time (CANopen SDO abort 0x05040000)


class WriteRefused(CanbridgeError):
    """The write path refused a write (or a raw frame) and sent nothing.

    ``index`` is the position of the refused item in a :meth:`Bridge.write_many` call (None otherwise).
    ``abort_code`` is the CANopen SDO abort code when the device refused (or the bridge aborted) an SDO
    write, e.g. 0x06090030 value range exceeded; the reason then says what it means to a client.
    """

    def __init__(self, reason: RefusalReason, detail: str, target: str | None = None,
                 index: int | None = None, abort_code: int | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.target = target
        self.index = index
        self.abort_code = abort_code
        super().__init__(f"{target}: {detail}" if target else detail)
