"""Modbus RTU on a serial line (or a pseudo-terminal), on the same engine as TCP.

Frames are delimited by their function code's length where pymodbus knows it and by the
3.5-character silence otherwise; a frame with a wrong CRC is dropped without a response, as the
standard says, and a frame for another unit id is ignored (another server on the same line answers
it). The serial port is configured with termios, so no extra package is needed.

pymodbus provides the frame lengths (its request classes), the CRC and the response framing
(``FramerRTU``). The receive loop is this module's, not ``FramerRTU.decode`` (pymodbus 3.16.1):
that finds no frame in a request with an unknown function code (it hunts for a known one in the
bytes after it), so it could never be answered with exception 01; it waits for no silence; and it
reports the whole buffer as used after a good frame, dropping a request that arrived right behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import termios
from collections.abc import Coroutine
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU

from canbridge_modbus.config import RtuConfig
from canbridge_modbus.engine import WRITE_FUNCTIONS, ModbusEngine, exception_pdu

log = logging.getLogger("canbridge.modbus")

MAX_FRAME = 256  # the largest RTU ADU: unit id, 253 bytes of PDU, CRC
# Held while a write is being decided (a master waits for the answer, so at most a frame or two
# arrive meanwhile); more than this, or more than a frame that nothing can delimit, is a
# protocol error: dropped until the next silence.
MAX_INPUT = 2 * MAX_FRAME
# Answers not yet taken by the line (a master that stopped reading a pseudo-terminal): beyond this
# new answers are dropped, as a line that is not listened to loses them.
MAX_OUTPUT = 16 * MAX_FRAME
_REQUESTS = DecodePDU(is_server=True)
_FRAMER = FramerRTU(_REQUESTS)  # its encode (unit id + PDU + CRC) builds the responses


def crc_ok(frame: bytes) -> bool:
    return bool(FramerRTU.check_CRC(frame[:-2], int.from_bytes(frame[-2:], "big")))


def expected_length(buf: bytes | bytearray) -> int | None:
    """The length of the request frame that starts the buffer, None while it cannot be known.

    pymodbus's request classes know it: fixed, or from the byte count once that has arrived.
    """
    if len(buf) < 2:
        return None
    head = bytes(buf[:11])  # the byte count of every request is within the first 11 bytes
    try:
        request_class = _REQUESTS.lookupPduClass(head)
        size = request_class.calculateRtuFrameSize(head) if request_class is not None else 0
    except (IndexError, ModbusException):  # a sub-function not here yet, or a size pymodbus does not know
        return None
    return size or None


def _configure(fd: int, cfg: RtuConfig) -> None:
    attrs = termios.tcgetattr(fd)
    speed = getattr(termios, f"B{cfg.baudrate}", None)
    if speed is None:
        raise ValueError(f"baud rate {cfg.baudrate} is not supported by termios")
    iflag, oflag, cflag, lflag = 0, 0, termios.CS8 | termios.CREAD | termios.CLOCAL, 0
    if cfg.parity != "N":
        cflag |= termios.PARENB | (termios.PARODD if cfg.parity == "O" else 0)
        iflag |= termios.INPCK
    if cfg.stopbits == 2:
        cflag |= termios.CSTOPB
    cc = attrs[6]
    cc[termios.VMIN] = 0
    cc[termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, speed, speed, cc])
    termios.tcflush(fd, termios.TCIOFLUSH)


class ModbusRtuServer:
    """Serves one serial line; reopens it when it goes away (an unplugged USB adapter)."""

    def __init__(self, engine: ModbusEngine, cfg: RtuConfig, reopen_s: float = 1.0) -> None:
        self.engine = engine
        self.cfg = cfg
        self.reopen_s = reopen_s
        self.fd: int | None = None
        self.buf = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.crc_errors = 0
        self.frames = 0
        self.overruns = 0  # input dropped: more than a frame without a silence or a known length
        self.dropped_responses = 0  # answers dropped because the line does not take them
        self._discarding = False  # after an overrun: drop everything until the next silence
        self._silence: asyncio.TimerHandle | None = None
        self._reopen: asyncio.Task[None] | None = None
        self._out = bytearray()
        self._closing = False
        # 3.5 characters of 11 bits, at least 1.75 ms (the standard's value above 19200 baud);
        # an event loop cannot time a few ms reliably, so wait a little longer before giving up on a frame
        self.silence_s = max(3.5 * 11 / cfg.baudrate, 0.00175) + 0.02

    @property
    def endpoint(self) -> str:
        c = self.cfg
        return f"modbus-rtu://{c.port}?baudrate={c.baudrate}&parity={c.parity}&stopbits={c.stopbits}"

    async def start(self) -> None:
        try:
            self._open()
        except OSError as e:
            log.error(
                "modbus: cannot open serial port %s: %s; retrying every %.0f s",
                self.cfg.port,
                e.strerror or e,
                self.reopen_s,
            )
            self._schedule_reopen()

    def _open(self) -> None:
        fd = os.open(self.cfg.port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            _configure(fd, self.cfg)
        except (termios.error, ValueError):
            os.close(fd)
            raise
        self.fd = fd
        self.buf.clear()
        asyncio.get_running_loop().add_reader(fd, self._readable)
        log.info("modbus: serving RTU on %s", self.cfg.port)

    def _close_fd(self) -> None:
        if self.fd is None:
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.fd)
        loop.remove_writer(self.fd)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None
        self._out.clear()

    def _schedule_reopen(self) -> None:
        if self._closing or (self._reopen is not None and not self._reopen.done()):
            return
        self._reopen = asyncio.create_task(self._reopen_loop(), name="modbus-rtu-reopen")

    async def _reopen_loop(self) -> None:
        while not self._closing and self.fd is None:
            await asyncio.sleep(self.reopen_s)
            try:
                self._open()
            except OSError:
                continue

    async def stop(self) -> None:
        self._closing = True
        if self._silence is not None:
            self._silence.cancel()
        if self._reopen is not None:
            self._reopen.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reopen
        if self.task is not None:
            await asyncio.wait([self.task], timeout=self.engine.write_timeout_s + 0.5)
        self._close_fd()

    def _readable(self) -> None:
        assert self.fd is not None
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError as e:
            log.warning("modbus: serial port %s failed: %s; reopening", self.cfg.port, e.strerror or e)
            self._close_fd()
            self._schedule_reopen()
            return
        if not data:
            return
        loop = asyncio.get_running_loop()
        if self._silence is not None:
            self._silence.cancel()
        self._silence = loop.call_later(self.silence_s, self._on_silence)
        if self._discarding:
            return
        self.buf += data
        self._process(at_silence=False)
        # what is left is less than one frame, unless nothing could delimit it (or a write is
        # being decided): a frame longer than the largest ADU does not exist
        if len(self.buf) > (MAX_INPUT if self.task is not None else MAX_FRAME):
            self.overruns += 1
            if self.overruns == 1 or self.overruns % 100 == 0:
                log.warning(
                    "modbus: RTU input on %s: %d bytes without a frame boundary; dropped until the next "
                    "silence (%d times)",
                    self.cfg.port,
                    len(self.buf),
                    self.overruns,
                )
            self.buf.clear()
            self._discarding = True

    def _on_silence(self) -> None:
        self._silence = None
        self._discarding = False
        self._process(at_silence=True)

    def _process(self, at_silence: bool) -> None:
        while self.task is None and self.buf:
            n = expected_length(self.buf)
            if n is None or n > MAX_FRAME:
                if not at_silence:
                    return
                n = len(self.buf)  # unknown function: the silence ends the frame
            if len(self.buf) < n:
                if at_silence:
                    self.buf.clear()  # a frame cut short: the next one starts after the silence
                return
            frame = bytes(self.buf[:n])
            if n < 4:  # not even unit, function and CRC: noise on the line
                self.buf.clear()
                return
            if not crc_ok(frame):
                self.crc_errors += 1
                self.buf.clear()  # out of sync: drop everything until the next silence
                return
            del self.buf[:n]
            self.frames += 1
            self._serve(frame[0], frame[1:-2])

    def _serve(self, unit: int, pdu: bytes) -> None:
        if not pdu:
            return
        broadcast = unit == 0
        if not broadcast and not self.engine.has_unit(unit):
            return  # another server on the line
        if broadcast:
            if pdu[0] not in WRITE_FUNCTIONS:
                return  # a broadcast read has no answer
            targets = list(self.engine.units)
        else:
            targets = [unit]
        responses: list[Coroutine[Any, Any, bytes]] = []
        for target in targets:
            response = self.engine.handle(target, pdu, f"rtu:{self.cfg.port}")
            if isinstance(response, bytes):
                if not broadcast:
                    self._send(_FRAMER.encode(response, unit, 0))
            else:
                responses.append(response)
        if responses:
            self.task = asyncio.create_task(self._finish(unit, pdu[0], responses, broadcast), name="modbus-rtu-write")

    async def _finish(
        self, unit: int, function: int, responses: list[Coroutine[Any, Any, bytes]], broadcast: bool
    ) -> None:
        try:
            for response in responses:
                pdu = await response
                if not broadcast:
                    self._send(_FRAMER.encode(pdu, unit, 0))
        except Exception:
            log.exception("modbus: RTU request failed")
            if not broadcast:
                self._send(_FRAMER.encode(exception_pdu(function, ExcCodes.DEVICE_FAILURE), unit, 0))
        finally:
            self.task = None
            self._process(at_silence=False)

    def _send(self, data: bytes) -> None:
        if self.fd is None:
            return
        if len(self._out) + len(data) > MAX_OUTPUT:
            self.dropped_responses += 1
            if self.dropped_responses == 1 or self.dropped_responses % 100 == 0:
                log.warning(
                    "modbus: RTU line %s does not take the answers (%d bytes waiting); dropped %d",
                    self.cfg.port,
                    len(self._out),
                    self.dropped_responses,
                )
            return
        self._out += data
        self._flush()

    def _flush(self) -> None:
        if self.fd is None:
            return
        loop = asyncio.get_running_loop()
        try:
            while self._out:
                n = os.write(self.fd, self._out)
                del self._out[:n]
        except BlockingIOError:
            loop.add_writer(self.fd, self._flush)
            return
        except OSError as e:
            log.warning("modbus: writing to %s failed: %s", self.cfg.port, e.strerror or e)
            self._out.clear()
            return
        loop.remove_writer(self.fd)
