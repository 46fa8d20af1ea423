"""A bus kind for any python-can interface (``virtual`` in tests and the demo, ``pcan``, ``kvaser``...).

A reader thread blocks in ``bus.recv`` and hands everything that is waiting to the event loop as one
batch, so the loop wakes once per batch, not once per frame.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import can

from canbridge._errors import BusError, BusUnavailable
from canbridge._model import Frame, FrameFlags, RawFrame
from canbridge._plugin import BusDriver, PeriodicHandle
from canbridge.config import BusConfig

log = logging.getLogger("canbridge.bus")

MAX_BATCH = 1024


def message_to_raw(msg: can.Message) -> RawFrame:
    flags = 0
    if msg.is_extended_id:
        flags |= FrameFlags.EXTENDED
    if msg.is_remote_frame:
        flags |= FrameFlags.RTR
    if msg.is_fd:
        flags |= FrameFlags.FD
    if msg.bitrate_switch:
        flags |= FrameFlags.BRS
    if msg.is_error_frame:
        flags |= FrameFlags.ERROR
    return (msg.arbitration_id, flags, bytes(msg.data), int(msg.timestamp * 1e9))


def frame_to_message(frame: Frame, channel: str | None = None) -> can.Message:
    """A python-can Message for a frame (``check=True``: python-can validates lengths and flags)."""
    return can.Message(
        arbitration_id=frame.can_id,
        data=frame.data,
        is_extended_id=frame.extended,
        is_remote_frame=frame.rtr,
        is_fd=frame.fd,
        bitrate_switch=frame.brs,
        dlc=frame.length if frame.rtr else None,
        channel=channel,
        check=True,
    )


class PythonCanPeriodic(PeriodicHandle):
    def __init__(self, task: Any) -> None:
        self._task = task

    def modify(self, frame: Frame) -> None:
        self._task.modify_data(frame_to_message(frame))

    def stop(self) -> None:
        try:
            self._task.stop()
        except Exception as e:  # a task on a dead socket may fail to stop; it dies with the socket
            log.debug("stopping periodic task: %s", e)


class PythonCanDriver(BusDriver):
    """Any python-can interface, read by one thread that delivers batches."""

    def __init__(self, config: BusConfig) -> None:
        self.config = config
        self.bus: can.BusABC | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._filters: list[dict[str, Any]] | None = None

    async def open(self) -> None:
        cfg = self.config
        try:
            self.bus = can.Bus(
                interface=cfg.interface, channel=cfg.channel, fd=cfg.fd, receive_own_messages=False,
                can_filters=self._filters, **cfg.options,
            )
        except (can.CanInterfaceNotImplementedError, ImportError) as e:
            raise BusUnavailable(f"python-can interface {cfg.interface!r} is not available: {e}") from e
        except (can.CanError, OSError, ValueError) as e:
            raise BusUnavailable(f"cannot open {cfg.interface} channel {cfg.channel!r}: {e}") from e

    def set_filters(self, ids: Sequence[tuple[int, bool]] | None) -> None:
        if ids is None:
            self._filters = None
        else:
            self._filters = [
                {"can_id": i, "can_mask": 0x1FFFFFFF if ext else 0x7FF, "extended": ext} for i, ext in ids
            ]
        if self.bus is not None:
            self.bus.set_filters(self._filters)  # type: ignore[arg-type]

    def start_reading(
        self, on_frames: Callable[[list[RawFrame]], None], on_error: Callable[[BaseException], None]
    ) -> None:
        loop = asyncio.get_running_loop()
        bus = self.bus
        assert bus is not None
        stop = self._stop
        stop.clear()

        def reader() -> None:
            try:
                while not stop.is_set():
                    msg = bus.recv(0.1)
                    if msg is None:
                        continue
                    batch = [message_to_raw(msg)]
                    while len(batch) < MAX_BATCH:
                        msg = bus.recv(0)
                        if msg is None:
                            break
                        batch.append(message_to_raw(msg))
                    loop.call_soon_threadsafe(on_frames, batch)
            except Exception as e:
                if not stop.is_set():
                    try:
                        loop.call_soon_threadsafe(on_error, e)
                    except RuntimeError:  # loop closed while we were reading
                        pass

        self._thread = threading.Thread(target=reader, name=f"canbridge-rx-{self.config.name}", daemon=True)
        self._thread.start()

    def send(self, frame: Frame) -> None:
        if self.bus is None:
            raise BusError("bus is not open")
        try:
            self.bus.send(frame_to_message(frame), timeout=0.2)
        except (can.CanError, OSError) as e:
            raise BusError(f"send failed: {e}") from e

    def send_periodic(self, frame: Frame, period_s: float) -> PeriodicHandle:
        if self.bus is None:
            raise BusError("bus is not open")
        task = self.bus.send_periodic(frame_to_message(frame), period_s, store_task=False)
        return PythonCanPeriodic(task)

    async def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2.0)
            self._thread = None
        if self.bus is not None:
            bus, self.bus = self.bus, None
            try:
                bus.shutdown()
            except Exception as e:
                log.debug("shutdown of %s: %s", self.config.name, e)
