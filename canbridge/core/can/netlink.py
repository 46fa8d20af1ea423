"""What the kernel knows about a CAN interface, and setting its bit timing, over rtnetlink.

Reading needs no privilege; configuring needs CAP_NET_ADMIN. pyroute2 is imported lazily: it is only
needed for real ``can`` devices (vcan has no controller, so no CAN attributes) and it is slow to import.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from canbridge import BusError, BusUnavailable
from canbridge.config import NetlinkSettings

log = logging.getLogger(__name__)

SYS_NET = Path("/sys/class/net")
NETLINK_TIMEOUT_S = 10.0

T = TypeVar("T")
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _off_loop(fn: Callable[[], T]) -> T:
    """Run a pyroute2 call. pyroute2's synchronous API runs an asyncio loop of its own, which fails
    inside a running event loop ("This event loop is already running"): there, use a worker thread."""
    global _executor
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(1, thread_name_prefix="canbridge-netlink")
    return _executor.submit(fn).result(timeout=NETLINK_TIMEOUT_S)


# The struct can_device_stats the kernel puts into IFLA_INFO_XSTATS for kind "can".
_XSTATS_FIELDS = ("bus_error", "error_warning", "error_passive", "bus_off", "arbitration_lost", "restarts")

# IFLA_CAN_STATE values (enum can_state) as canbridge names.
CAN_STATES = {
    "ERROR_ACTIVE": "error-active",
    "ERROR_WARNING": "error-warning",
    "ERROR_PASSIVE": "error-passive",
    "BUS_OFF": "bus-off",
    "STOPPED": "stopped",
    "SLEEPING": "sleeping",
}
_CAN_STATE_NUMBERS = dict(enumerate(CAN_STATES.values()))

_SYSFS_STATS = (
    "rx_packets",
    "tx_packets",
    "rx_bytes",
    "tx_bytes",
    "rx_errors",
    "tx_errors",
    "rx_dropped",
    "tx_dropped",
    "rx_over_errors",
    "rx_fifo_errors",
    "tx_fifo_errors",
)


def missing_hint(channel: str) -> str:
    """The command that creates (vcan) or brings up (real CAN) an interface."""
    if channel.startswith("vcan"):
        return f"sudo ip link add dev {channel} type vcan && sudo ip link set up {channel}"
    return f"sudo ip link set {channel} up type can bitrate 500000 restart-ms 100"


def sysfs_link(channel: str) -> dict[str, Any]:
    """Link state and the generic interface counters from /sys/class/net/<channel> (no netlink)."""
    base = SYS_NET / channel
    out: dict[str, Any] = {"exists": base.is_dir()}
    if not out["exists"]:
        return out

    def read(name: str) -> str | None:
        try:
            return (base / name).read_text().strip()
        except OSError:
            return None

    flags = read("flags")
    out["up"] = bool(int(flags, 16) & 1) if flags else None  # IFF_UP
    out["operstate"] = read("operstate")
    out["mtu"] = int(read("mtu") or 0) or None
    stats: dict[str, int] = {}
    for name in _SYSFS_STATS:
        value = read(f"statistics/{name}")
        if value is not None and value.isdigit():
            stats[name] = int(value)
    out["statistics"] = stats
    return out


def _xstats(raw: Any) -> dict[str, int]:
    """Decode IFLA_INFO_XSTATS (pyroute2 gives it as 'aa:bb:..' hex or bytes)."""
    if isinstance(raw, str):
        try:
            data = bytes.fromhex(raw.replace(":", ""))
        except ValueError:
            return {}
    elif isinstance(raw, (bytes, bytearray)):
        data = bytes(raw)
    else:
        return {}
    n = len(_XSTATS_FIELDS)
    if len(data) < 4 * n:
        return {}
    values = [int.from_bytes(data[i * 4 : i * 4 + 4], "little") for i in range(n)]
    return dict(zip(_XSTATS_FIELDS, values, strict=True))


def _state_name(value: Any) -> str | None:
    if isinstance(value, int):
        return _CAN_STATE_NUMBERS.get(value)
    if isinstance(value, str):
        return CAN_STATES.get(value, value.lower())
    return None


def can_link(channel: str) -> dict[str, Any]:
    """CAN attributes of a link from rtnetlink: kind, controller state, error counters, bit timing,
    restart-ms and the controller's counters. Empty when netlink cannot be read; vcan gives only kind."""
    try:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError
    except ImportError:  # pragma: no cover - pyroute2 is a dependency
        return {}
    out: dict[str, Any] = {}

    def get() -> Any:
        with IPRoute() as ipr:
            return ipr.link("get", ifname=channel)

    try:
        msgs = _off_loop(get)
    except NetlinkError as e:
        log.debug("netlink get %s: %s", channel, e)
        return {}
    except OSError as e:  # no netlink at all (sandboxes)
        log.debug("netlink unavailable: %s", e)
        return {}
    if not msgs:
        return {}
    msg = msgs[0]
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    if linkinfo is None:
        return out
    out["kind"] = linkinfo.get_attr("IFLA_INFO_KIND")
    data = linkinfo.get_attr("IFLA_INFO_DATA")
    if data is not None and out["kind"] == "can":
        state = _state_name(data.get_attr("IFLA_CAN_STATE"))
        if state is not None:
            out["can_state"] = state
        berr = data.get_attr("IFLA_CAN_BERR_COUNTER")
        if berr is not None:
            out["tx_error_counter"] = berr.get("txerr")
            out["rx_error_counter"] = berr.get("rxerr")
        restart_ms = data.get_attr("IFLA_CAN_RESTART_MS")
        if restart_ms is not None:
            out["restart_ms"] = restart_ms
        bt = data.get_attr("IFLA_CAN_BITTIMING")
        if bt is not None:
            out["bitrate"] = bt.get("bitrate")
            sp = bt.get("sample_point")
            out["sample_point"] = sp / 1000 if sp else None
        dbt = data.get_attr("IFLA_CAN_DATA_BITTIMING")
        if dbt is not None and dbt.get("bitrate"):
            out["data_bitrate"] = dbt.get("bitrate")
            sp = dbt.get("sample_point")
            out["data_sample_point"] = sp / 1000 if sp else None
        mode = data.get_attr("IFLA_CAN_CTRLMODE")
        if mode is not None:
            out["fd"] = mode.get("fd") == "on"
    xstats = _xstats(linkinfo.get_attr("IFLA_INFO_XSTATS"))
    if xstats:
        out["controller_stats"] = xstats
    return out


def _translate(channel: str, kind: str | None, e: BaseException) -> BusError:
    code = getattr(e, "code", None) or getattr(e, "errno", None)
    if code == errno.EPERM or code == errno.EACCES:
        return BusError(
            f"{channel}: configuring the interface needs CAP_NET_ADMIN (run as root, or grant the "
            "service AmbientCapabilities=CAP_NET_ADMIN); or drop 'netlink:' and configure the "
            "interface with ip or systemd-networkd"
        )
    if code == errno.EOPNOTSUPP:
        if kind == "vcan" or channel.startswith("vcan"):
            return BusError(
                f"{channel}: vcan has no bitrate or bit timing (Operation not supported); "
                f"remove the 'netlink:' settings for virtual CAN interfaces"
            )
        return BusError(
            f"{channel}: the {kind or 'interface'} driver does not support these settings (Operation not supported)"
        )
    if code == errno.EINVAL:
        return BusError(
            f"{channel}: the CAN controller rejected the settings (Invalid argument): the bitrate or "
            f"sample point cannot be reached with its clock, or it does not support CAN FD"
        )
    if code == errno.ENODEV:
        return BusUnavailable(f"{channel}: no such interface", missing_hint(channel))
    return BusError(f"{channel}: netlink configuration failed: {e}")


def _wanted(settings: NetlinkSettings) -> dict[str, Any]:
    args: dict[str, Any] = {}
    if settings.bitrate is not None:
        bt: dict[str, int] = {"bitrate": settings.bitrate}
        if settings.sample_point is not None:
            bt["sample_point"] = round(settings.sample_point * 1000)  # kernel unit: tenths of a percent
        args["can_bittiming"] = bt
    if settings.data_bitrate is not None:
        dbt: dict[str, int] = {"bitrate": settings.data_bitrate}
        if settings.data_sample_point is not None:
            dbt["sample_point"] = round(settings.data_sample_point * 1000)
        args["can_data_bittiming"] = dbt
    if settings.restart_ms is not None:
        args["can_restart_ms"] = settings.restart_ms
    if settings.fd is not None:
        args["can_ctrlmode"] = {"fd": "on" if settings.fd else "off"}
    return args


def _already(current: dict[str, Any], settings: NetlinkSettings) -> bool:
    """Whether the interface already has these settings (then it is left alone, up and running)."""
    checks: list[bool] = []
    if settings.bitrate is not None:
        checks.append(current.get("bitrate") == settings.bitrate)
    if settings.sample_point is not None:
        checks.append(current.get("sample_point") == round(settings.sample_point * 1000) / 1000)
    if settings.data_bitrate is not None:
        checks.append(current.get("data_bitrate") == settings.data_bitrate)
    if settings.data_sample_point is not None:
        checks.append(current.get("data_sample_point") == round(settings.data_sample_point * 1000) / 1000)
    if settings.restart_ms is not None:
        checks.append(current.get("restart_ms") == settings.restart_ms)
    if settings.fd is not None:
        checks.append(current.get("fd") == settings.fd)
    return all(checks)


def configure_interface(channel: str, settings: NetlinkSettings) -> bool:
    """Apply bit timing, restart-ms and FD mode to a CAN interface and bring it up.

    Returns False when the interface already had these settings (nothing touched), True when it was
    reconfigured. A ``can`` device must be down to change its bit timing: it is set down, configured
    and set up again. Raises :class:`BusError` with the reason (vcan, missing privilege, rejected timing).
    """
    args = _wanted(settings)
    if not args:
        return False
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    if not (SYS_NET / channel).is_dir():
        raise BusUnavailable(f"{channel}: no such interface", missing_hint(channel))
    current = can_link(channel)
    kind = current.get("kind")
    if kind == "can" and _already(current, settings) and sysfs_link(channel).get("up"):
        return False

    def apply() -> None:
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=channel)
            if not index:
                raise BusUnavailable(f"{channel}: no such interface", missing_hint(channel))
            idx = index[0]
            if kind == "can":
                ipr.link("set", index=idx, state="down")
                try:
                    ipr.link("set", index=idx, kind="can", **args)
                finally:
                    ipr.link("set", index=idx, state="up")
            else:
                # Not a CAN controller (vcan, vxcan, ...): ask anyway without setting it down, so
                # the kernel's own answer is reported and the interface stays as it was.
                ipr.link("set", index=idx, kind="can", **args)

    try:
        _off_loop(apply)
    except BusError:
        raise
    except (NetlinkError, OSError) as e:
        raise _translate(channel, kind, e) from e
    log.info("%s: configured %s", channel, ", ".join(f"{k}={v}" for k, v in args.items()))
    return True
