"""The interface going away under the driver: down/up, delete/re-add, missing at open, diagnostics."""

from __future__ import annotations

import asyncio
from subprocess import DEVNULL

import pytest

from canbridge import BusError, BusUnavailable, Frame
from canbridge.config import NetlinkSettings
from canbridge.core.can.netlink import configure_interface
from canbridge.core.can.socketcan import SocketcanDriver
from tests.socketcan.conftest import Collector, OpenDriver, bus_config, cansend, ip


async def reopened(drv: SocketcanDriver, frame: str) -> Collector:
    """Open the closed driver again and read: a collector that has received ``frame`` (cansend syntax)."""
    await drv.open()
    col = Collector()
    drv.start_reading(col.on_frames, col.on_error)
    cansend(drv.channel, frame)
    await col.count(1)
    return col


async def test_link_down_during_traffic_reports_once_then_reopen_recovers(
    open_driver: OpenDriver, scratch_vcan: str
) -> None:
    dev = scratch_vcan
    drv, col = await open_driver(dev)
    gen = await asyncio.create_subprocess_exec("cangen", dev, "-g", "1", "-n", "20000", stdout=DEVNULL, stderr=DEVNULL)
    try:
        await col.count(20)
        ip("link", "set", "down", dev)
        await col.until(lambda: col.errors, what="on_error")
    finally:
        if gen.returncode is None:
            gen.kill()
        await asyncio.wait_for(gen.wait(), 10)
    # once, then silence: the reader is off the loop, so no callback (frames, errors) can follow: no error
    # storm, no hang
    assert drv._sock is not None and not asyncio.get_running_loop().remove_reader(drv._sock.fileno())
    assert len(col.errors) == 1, col.errors
    assert isinstance(col.errors[0], BusUnavailable)
    assert "ip link set" in str(col.errors[0])
    with pytest.raises(BusUnavailable, match="Network is down"):
        drv.send(Frame(0x100, b"\x01"))

    # what the core does: close, then open again with backoff; open refuses while down
    await drv.close()
    with pytest.raises(BusUnavailable, match="is down") as exc:
        await drv.open()
    assert exc.value.hint == f"sudo ip link set {dev} up"
    ip("link", "set", "up", dev)
    col2 = await reopened(drv, "123#01")
    assert col2.ids() == [0x123]
    drv.send(Frame(0x124, b"\x02"))  # sending works again too


async def test_stale_enetdown_after_up_is_retried(open_driver: OpenDriver, scratch_vcan: str) -> None:
    # A socket that never consumed its pending ENETDOWN reports it on the first send after up.
    dev = scratch_vcan
    drv, _ = await open_driver(dev, read=False)
    ip("link", "set", "down", dev)
    ip("link", "set", "up", dev)
    _watch, col = await open_driver(dev, filters=[(0x222, False)])
    drv.send(Frame(0x222, b"\x01"))  # raises without the retry
    await col.count(1)


async def test_bcm_cycle_survives_down_up(open_driver: OpenDriver, scratch_vcan: str) -> None:
    dev = scratch_vcan
    drv, _ = await open_driver(dev, read=False)
    drv.send_periodic(Frame(0x333, b"\x01"), 0.05)
    ip("link", "set", "down", dev)
    ip("link", "set", "up", dev)
    _watch, col = await open_driver(dev)
    await col.count(3)
    assert set(col.ids()) == {0x333}


async def test_link_delete_and_readd_reopen_works(open_driver: OpenDriver, scratch_vcan: str) -> None:
    dev = scratch_vcan
    drv, col = await open_driver(dev)
    ip("link", "del", "dev", dev)
    await col.until(lambda: col.errors, what="on_error after delete")
    assert len(col.errors) == 1
    assert isinstance(col.errors[0], BusUnavailable)
    with pytest.raises(BusError):
        drv.send(Frame(0x100))
    await drv.close()
    with pytest.raises(BusUnavailable, match="does not exist") as exc:
        await drv.open()
    assert exc.value.hint == f"sudo ip link add dev {dev} type vcan && sudo ip link set up {dev}"
    ip("link", "add", "dev", dev, "type", "vcan")
    ip("link", "set", "up", dev)
    col2 = await reopened(drv, "321#AB")
    assert col2.frames[0][2] == b"\xab"


async def test_open_missing_interface_says_how_to_create_it() -> None:
    drv = SocketcanDriver(bus_config("vcan99"))
    with pytest.raises(BusUnavailable) as exc:
        await drv.open()
    assert "vcan99 does not exist" in str(exc.value)
    assert exc.value.hint == "sudo ip link add dev vcan99 type vcan && sudo ip link set up vcan99"
    drv = SocketcanDriver(bus_config("can7"))
    with pytest.raises(BusUnavailable) as exc:
        await drv.open()
    assert exc.value.hint == "sudo ip link set can7 up type can bitrate 500000 restart-ms 100"
    assert not drv.is_open


async def test_kernel_status_on_vcan(open_driver: OpenDriver) -> None:
    drv, col = await open_driver("vcan0")
    cansend("vcan0", "100#01")
    await col.count(1)
    status = drv.kernel_status()
    assert status["channel"] == "vcan0"
    assert status["up"] is True
    assert status["kind"] == "vcan"
    assert status["mtu"] == 72
    assert status["rx_packets"] >= 1  # from /sys/class/net/vcan0/statistics
    assert status["overflow_drops"] == 0
    assert status["receive_buffer"] >= 4 * 1024 * 1024
    assert "can_state" not in status  # vcan has no controller: no CAN attributes to report


def test_netlink_bitrate_on_vcan_is_refused_clearly() -> None:
    with pytest.raises(BusError, match="vcan has no bitrate") as exc:
        configure_interface("vcan1", NetlinkSettings(bitrate=500000, restart_ms=100))
    assert "Operation not supported" in str(exc.value)
    # and the interface was left as it was
    assert "UP" in ip("link", "show", "vcan1").stdout


async def test_open_with_netlink_settings_on_vcan_fails_with_that_error() -> None:
    drv = SocketcanDriver(bus_config("vcan1", netlink=NetlinkSettings(bitrate=250000)))
    with pytest.raises(BusError, match="vcan has no bitrate"):
        await drv.open()
    assert not drv.is_open
