"""canbridge: CAN buses to OPC UA, Modbus and HTTP, signal by signal.

This package's top level is the public API for plugins; :mod:`canbridge.core` is internal.
"""

from canbridge._bridge import Bridge, FrameSubscription, Subscription
from canbridge._errors import (
    BusError,
    BusUnavailable,
    CanbridgeError,
    ConfigError,
    FrameFormatError,
    ListenError,
    MappingError,
    PluginError,
    Problem,
    RefusalReason,
    UnknownBus,
    UnknownSignal,
    WriteRefused,
)
from canbridge._frames import format_cansend, parse_cansend, parse_frame, parse_frame_object
from canbridge._model import (
    BridgeStats,
    BusInfo,
    BusState,
    BusStatus,
    Caller,
    Frame,
    FrameFlags,
    MessageInfo,
    MessageStatus,
    Permission,
    Quality,
    RawFrame,
    SignalInfo,
    SignalValue,
    Value,
    WriteReceipt,
)
from canbridge._plugin import (
    BusDriver,
    BusKind,
    Command,
    MappingFormat,
    NorthboundPlugin,
    PeriodicHandle,
    Service,
    hookimpl,
)
from canbridge._socketcan import socketcan_on_socket
from canbridge._table import load_table
from canbridge.config import BusConfig, Strict, load_config, problems_from_validation

__version__ = "0.1.0"

__all__ = [
    "Bridge",
    "BridgeStats",
    "BusConfig",
    "BusDriver",
    "BusError",
    "BusInfo",
    "BusKind",
    "BusState",
    "BusStatus",
    "BusUnavailable",
    "Caller",
    "CanbridgeError",
    "Command",
    "ConfigError",
    "Frame",
    "FrameFlags",
    "FrameFormatError",
    "FrameSubscription",
    "ListenError",
    "MappingError",
    "MappingFormat",
    "MessageInfo",
    "MessageStatus",
    "NorthboundPlugin",
    "PeriodicHandle",
    "Permission",
    "PluginError",
    "Problem",
    "Quality",
    "RawFrame",
    "RefusalReason",
    "Service",
    "SignalInfo",
    "SignalValue",
    "Strict",
    "Subscription",
    "UnknownBus",
    "UnknownSignal",
    "Value",
    "WriteReceipt",
    "WriteRefused",
    "__version__",
    "format_cansend",
    "hookimpl",
    "load_config",
    "load_table",
    "parse_cansend",
    "parse_frame",
    "parse_frame_object",
    "problems_from_validation",
    "socketcan_on_socket",
]
