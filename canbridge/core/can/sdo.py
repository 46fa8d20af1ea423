"""CANopen SDO client (CiA 301): expedited and segmented upload (read) and download (write) of one object
of a node, over the bus's own driver (requests 0x600 + node id, answers 0x580 + node id).

One transfer is in flight per node: each node has a FIFO queue (an asyncio lock, bounded by
``queue_limit`` waiting transfers); transfers to different nodes run side by side. Every answer must
come within the node's timeout, else the client sends the abort 0x05040000 (SDO protocol timed out) and
the transfer fails with that code. An answer that breaks the protocol (wrong command, another object,
a toggle bit not alternated, a size that does not match) is aborted with its CiA 301 code too. Block
transfer is not implemented: expedited and segmented transfers are what every SDO server supports.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from canbridge._canopen import sdo_abort_text
from canbridge._model import Frame, FrameFlags, RawFrame

log = logging.getLogger("canbridge.canopen")

SDO_TX = 0x580  # server -> client (the node answers)
SDO_RX = 0x600  # client -> server (the bridge asks)
MAX_UPLOAD = 1024  # bytes; the objects canbridge serves are at most 8 bytes, this only bounds a broken node
TIMEOUT = 0x05040000
TOGGLE = 0x05030000
BAD_COMMAND = 0x05040001
OUT_OF_MEMORY = 0x05040005
LENGTH_MISMATCH = 0x06070010
_T = TypeVar("_T")
_NOT_DATA = int(FrameFlags.EXTENDED | FrameFlags.ERROR | FrameFlags.RTR)


class SdoError(Exception):
    """An SDO transfer that did not complete: ``code`` is the CiA 301 abort code, ``by`` who aborted it
    ("node": the node's abort frame; "bridge": the client, on a timeout or a broken answer)."""

    def __init__(self, code: int, by: str, detail: str = "") -> None:
        self.code = code
        self.by = by
        self.detail = detail
        text = sdo_abort_text(code)
        super().__init__(f"{text} from the node" if by == "node" else f"{text}: {detail}" if detail else text)


class SdoBusy(Exception):
    """The node's queue already holds ``queue_limit`` waiting transfers."""


@dataclass
class _Node:
    node_id: int
    name: str
    timeout_s: float
    queue_limit: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: int = 0  # transfers queued behind the one in flight
    pending: asyncio.Future[bytes] | None = None
    transfers: int = 0
    aborts: int = 0  # aborted by the node
    timeouts: int = 0
    stray: int = 0  # answers with no request in flight


@dataclass(frozen=True)
class SdoCounters:
    transfers: int
    aborts: int
    timeouts: int
    stray: int
    queued: int


class SdoClient:
    """The SDO client of one bus, for the CANopen nodes configured on it."""

    def __init__(self, bus: str, send: Callable[[Frame], None]) -> None:
        self.bus = bus
        self._send = send
        self._nodes: dict[int, _Node] = {}  # node id -> node
        self._answers: dict[int, _Node] = {}  # 0x580 + id -> node

    def add_node(self, node_id: int, name: str, timeout_s: float, queue_limit: int = 32) -> None:
        node = _Node(node_id, name, timeout_s, queue_limit)
        self._nodes[node_id] = node
        self._answers[SDO_TX + node_id] = node

    @property
    def answer_ids(self) -> list[int]:
        """The COB-IDs the bus must receive (kernel filters)."""
        return list(self._answers)

    def counters(self, node_id: int) -> SdoCounters:
        n = self._nodes[node_id]
        return SdoCounters(n.transfers, n.aborts, n.timeouts, n.stray, n.waiting + (n.pending is not None))

    def on_batch(self, batch: list[RawFrame]) -> int:
        """Hand the answers in a received batch to their transfers; how many SDO answers it held."""
        answers = self._answers
        seen = 0
        for can_id, flags, data, _ts in batch:
            node = answers.get(can_id)
            if node is None or flags & _NOT_DATA:
                continue
            seen += 1
            fut = node.pending
            if fut is None or fut.done():
                node.stray += 1
                continue
            fut.set_result(bytes(data))
        return seen

    # --- transfers ---
    async def upload(self, node_id: int, index: int, sub: int) -> bytes:
        """Read one object (expedited or segmented); SdoError, SdoBusy, or BusError from the driver."""
        return await self._queued(node_id, lambda n: self._upload(n, index, sub))

    async def download(self, node_id: int, index: int, sub: int, data: bytes) -> None:
        """Write one object (expedited up to 4 bytes, else segmented); SdoError, SdoBusy or BusError."""
        await self._queued(node_id, lambda n: self._download(n, index, sub, data))

    async def _queued(self, node_id: int, run: Callable[[_Node], Awaitable[_T]]) -> _T:
        node = self._nodes[node_id]
        why = self.busy(node_id)
        if why is not None:
            raise SdoBusy(why)
        node.waiting += 1
        try:
            await node.lock.acquire()
        finally:
            node.waiting -= 1
        try:
            node.transfers += 1
            return await run(node)
        except SdoError as e:
            if e.by == "node":
                node.aborts += 1
            elif e.code == TIMEOUT:
                node.timeouts += 1
            raise
        finally:
            node.lock.release()

    async def _upload(self, node: _Node, index: int, sub: int) -> bytes:
        mux = bytes((index & 0xFF, index >> 8, sub))
        resp = await self._ask(node, index, sub, bytes((0x40,)) + mux + bytes(4), 2)
        self._check_mux(node, index, sub, resp, mux)
        cmd = resp[0]
        if cmd & 0x02:  # expedited: the data is in this answer
            unused = (cmd >> 2) & 3 if cmd & 0x01 else 0
            return resp[4:8 - unused]
        size = int.from_bytes(resp[4:8], "little") if cmd & 0x01 else None
        if size is not None and size > MAX_UPLOAD:
            raise self._abort(node, index, sub, OUT_OF_MEMORY, f"the node announces {size} bytes")
        data = bytearray()
        toggle = 0
        while True:
            resp = await self._ask(node, index, sub, bytes((0x60 | toggle << 4,)) + bytes(7), 0)
            if (resp[0] >> 4) & 1 != toggle:
                raise self._abort(node, index, sub, TOGGLE, "segment toggle bit not alternated")
            data += resp[1:8 - ((resp[0] >> 1) & 7)]
            if len(data) > MAX_UPLOAD:
                raise self._abort(node, index, sub, OUT_OF_MEMORY, f"more than {MAX_UPLOAD} bytes")
            if resp[0] & 0x01:
                break
            toggle ^= 1
        if size is not None and len(data) != size:
            raise self._abort(node, index, sub, LENGTH_MISMATCH, f"{len(data)} bytes received, {size} announced")
        return bytes(data)

    def busy(self, node_id: int) -> str | None:
        """Why a transfer to the node would be refused now (its queue is full), or None."""
        node = self._nodes[node_id]
        if node.lock.locked() and node.waiting >= node.queue_limit:
            return f"CANopen node {node.name} has {node.waiting} SDO transfers waiting (at most {node.queue_limit})"
        return None

    def download_request(self, node_id: int, index: int, sub: int, data: bytes) -> Frame:
        """The first frame of a download (what the audit log records before the transfer)."""
        return Frame(SDO_RX + node_id, _initiate_download(index, sub, data), bus=self.bus)

    async def _download(self, node: _Node, index: int, sub: int, data: bytes) -> None:
        mux = bytes((index & 0xFF, index >> 8, sub))
        resp = await self._ask(node, index, sub, _initiate_download(index, sub, data), 3)
        self._check_mux(node, index, sub, resp, mux)
        if len(data) <= 4:
            return
        toggle = 0
        for pos in range(0, len(data), 7):
            chunk = data[pos:pos + 7]
            last = pos + 7 >= len(data)
            cmd = toggle << 4 | (7 - len(chunk)) << 1 | int(last)
            resp = await self._ask(node, index, sub, bytes((cmd,)) + chunk.ljust(7, b"\0"), 1)
            if (resp[0] >> 4) & 1 != toggle:
                raise self._abort(node, index, sub, TOGGLE, "segment toggle bit not alternated")
            toggle ^= 1

    async def _ask(self, node: _Node, index: int, sub: int, request: bytes, expect: int) -> bytes:
        """Send one request and wait for its answer; the node's abort, a timeout or a wrong answer raise."""
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        node.pending = fut
        try:
            self._send(Frame(SDO_RX + node.node_id, request, bus=self.bus))
            try:
                resp = await asyncio.wait_for(fut, node.timeout_s)
            except TimeoutError:
                raise self._abort(node, index, sub, TIMEOUT,
                                  f"node {node.name} did not answer within {round(node.timeout_s * 1000)} ms") from None
        finally:
            node.pending = None
        if len(resp) < 8:
            raise self._abort(node, index, sub, BAD_COMMAND, f"an SDO answer of {len(resp)} bytes")
        if resp[0] == 0x80:
            raise SdoError(int.from_bytes(resp[4:8], "little"), "node")
        if resp[0] >> 5 != expect:
            raise self._abort(node, index, sub, BAD_COMMAND, f"unexpected answer 0x{resp[0]:02X}")
        return resp

    def _check_mux(self, node: _Node, index: int, sub: int, resp: bytes, mux: bytes) -> None:
        if resp[1:4] != mux:
            raise self._abort(node, index, sub, BAD_COMMAND, "the answer names another object")

    def _abort(self, node: _Node, index: int, sub: int, code: int, detail: str) -> SdoError:
        """Tell the node the transfer is over (best effort: the bus may be why); the error to raise."""
        try:
            self._send(Frame(SDO_RX + node.node_id, bytes((0x80, index & 0xFF, index >> 8, sub))
                             + code.to_bytes(4, "little"), bus=self.bus))
        except Exception as e:  # the abort frame is a courtesy (the bus may be why); the transfer fails anyway
            log.debug("bus %s: SDO abort to node %s not sent: %s", self.bus, node.name, e)
        return SdoError(code, "bridge", detail)


def _initiate_download(index: int, sub: int, data: bytes) -> bytes:
    """Expedited (up to 4 bytes, the size given) or the start of a segmented download (the size in bytes 4-7)."""
    mux = bytes((index & 0xFF, index >> 8, sub))
    if len(data) <= 4:
        return bytes((0x23 | (4 - len(data)) << 2,)) + mux + data.ljust(4, b"\0")
    return bytes((0x21,)) + mux + len(data).to_bytes(4, "little")
