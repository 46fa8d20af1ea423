"""One bus at run time: supervises its driver (open, read, reconnect with backoff), runs the receive
path (batch → decoder → store), keeps the bus's counters and state, and owns its cyclic transmissions."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from canbridge._errors import BusError, BusUnavailable
from canbridge._model import BusState, BusStatus, Frame, FrameFlags, RawFrame
from canbridge._plugin import BusDriver, BusKind, PeriodicHandle
from canbridge.config import BusConfig
from canbridge.core.can.errorframes import classify_error_frame
from canbridge.core.can.j1939claim import PGN_ADDRESS_CLAIMED, AddressClaimer, ClaimState
from canbridge.core.can.j1939socket import J1939Message, J1939Socket, open_j1939
from canbridge.core.can.sdo import SdoClient
from canbridge.core.canopennode import NodeMonitor
from canbridge.core.j1939bus import J1939Receiver
from canbridge.core.mapping.canopen import HEARTBEAT_BASE
from canbridge.core.mapping.j1939 import PGN_REQUEST, with_source
from canbridge.core.mapping.table import MappingTable, MessageEntry
from canbridge.core.pdofromnode import PdoFromNode
from canbridge.core.store import SignalStore

log = logging.getLogger("canbridge.bus")
SYNC_CYCLIC = -1  # the CANopen SYNC producer's key in BusRunner.cyclic (message indices are >= 0)

# Bits on the wire besides the data field, interframe space included (no stuffing): 47 standard, 67 extended.
_OVERHEAD_STD = 47
_OVERHEAD_EXT = 67
_EXT = int(FrameFlags.EXTENDED)
_CLAIM_PF = ((PGN_ADDRESS_CLAIMED >> 8) & 0xFF, (PGN_REQUEST >> 8) & 0xFF)


@dataclass
class _Cyclic:
    frame: Frame
    period_s: float
    handle: PeriodicHandle | None = None
    since: float = 0.0  # monotonic time the running handle started

    def sent(self, now: float) -> int:
        """Frames the running handle has sent (the driver, often the kernel, sends them, not us)."""
        return int((now - self.since) / self.period_s) + 1 if self.handle is not None else 0


class BusRunner:
    """Runs one configured bus."""

    def __init__(self, cfg: BusConfig, kind: BusKind, table: MappingTable, store: SignalStore,
                 on_state: Callable[[BusRunner, BusState], None]) -> None:
        self.cfg = cfg
        self.kind = kind
        self.table = table
        self.store = store
        self._on_state = on_state
        entries = table.by_bus.get(cfg.name, {})
        self._lookup: dict[int, tuple[int, Any]] = {k: (e.index, e.decoder) for k, e in entries.items()}
        self._msg_signals = {e.index: e.signal_indices for e in entries.values()}
        # The bridge's own transmitted messages come back through local loopback on SocketCAN; only ids
        # it must hear (received messages, and transmitted ones seeded from the bus) pass the kernel filter.
        self._filter_ids = [(e.info.frame_id, e.info.extended) for e in entries.values()
                            if e.transmit is None or e.transmit.seed == "received"]
        self.last_payload: dict[int, bytes] = {}
        pgn_index = table.j1939.get(cfg.name)
        # PGN matching needs every priority and source address: no exact-id kernel filters on such a bus
        self.j1939 = J1939Receiver(pgn_index, self._lookup, self.last_payload, cfg.name,
                                   cfg.j1939_max_unknown_sources) if pgn_index else None
        self.canopen = NodeMonitor(cfg.name, table, store, time.monotonic()) if table.canopen.get(cfg.name) else None
        if self.canopen is not None:
            store.watchers.append(self.canopen.expire)
        self.sdo: SdoClient | None = None  # the SDO client of the bus's CANopen nodes (writes and reads by SDO)
        for node, _desc in table.canopen.get(cfg.name, []):
            if self.sdo is None:
                self.sdo = SdoClient(cfg.name, self.send)
            self.sdo.add_node(node.id, node.name, node.sdo_timeout_ms / 1000, node.sdo_queue)
        if self.sdo is not None:
            self._filter_ids += [(cob, False) for cob in self.sdo.answer_ids]
        # TPDO layouts read from the nodes (pdo: from_node): they edit the lookup and the kernel filters
        self.pdo_from_node = PdoFromNode(cfg.name, table, store, self.sdo, self._lookup, self.move_filter) if (
            self.sdo is not None and any(n.pdo == "from_node" for n, _ in table.canopen.get(cfg.name, []))) else None
        if self.pdo_from_node is not None and self.canopen is not None:
            monitor, pdo = self.canopen, self.pdo_from_node
            monitor.pending, monitor.unread = pdo.pending, pdo.unread
            monitor.on_boot_up, monitor.on_heartbeat_of = pdo.read_again, pdo.retry
            pdo.is_lost = lambda node_id: monitor.nodes[HEARTBEAT_BASE + node_id].lost
        j = cfg.j1939
        # J1939-81: with a NAME configured, nothing leaves the bridge on this bus without a claimed address
        self.claim = AddressClaimer(j.name_value, j.address, j.address_range, j.retry_s) if j else None
        self._claim_timer: asyncio.TimerHandle | None = None
        self._claim_warning = False  # the bus state is WARNING because the claim is lost
        if self.j1939 is not None and self.claim is not None:
            self.j1939.tp.local = self.claim.address
        self.driver: BusDriver | None = None
        self._j1939_sock: J1939Socket | None = None  # the kernel's J1939 stack, on SocketCAN
        self.state = BusState.STARTING
        self.since_ns = time.time_ns()
        self.last_error: str | None = None
        self.rx_frames = 0
        self.tx_frames = 0
        self.error_frames = 0
        self.decode_errors = 0
        self.unmapped_frames = 0
        self.rtr_frames = 0
        self.bus_off_count = 0
        self.reconnects = 0
        self.rx_error_counter: int | None = None
        self.tx_error_counter: int | None = None
        self.kernel: dict[str, Any] = {}
        self.bus_load = 0.0
        self._bits = 0
        self._bits_mark = (time.monotonic(), 0)
        self.cyclic: dict[int, _Cyclic] = {}
        self._cyclic_sent = 0  # frames sent by cyclic transmissions that have ended
        self._failed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._opened_once = asyncio.Event()
        self._last_logged: str | None = None

    def message_added(self, entry: MessageEntry) -> None:
        """A message the table gained at run time (a J1939 source heard): its signals revive with it."""
        self._msg_signals[entry.index] = entry.signal_indices

    # --- state ---
    def set_state(self, state: BusState, error: str | None = None) -> None:
        if state is BusState.ACTIVE and self._claim_warning:
            state = BusState.WARNING  # the controller is fine, but the J1939 claim is still lost
            error = None
        if error is not None:
            self.last_error = error
        if state is self.state:
            return
        log.info("bus %s: %s -> %s%s", self.cfg.name, self.state.value, state.value, f" ({error})" if error else "")
        self.state = state
        self.since_ns = time.time_ns()
        self._on_state(self, state)

    @property
    def usable(self) -> bool:
        return self.driver is not None and self.state.usable

    def claim_refusal(self) -> str | None:
        """Why the bridge may not transmit on this bus for want of a J1939 address, or None."""
        if self.claim is None:
            return None
        why = self.claim.refusal()
        return f"bus {self.cfg.name}: {why}" if why else None

    def j1939_id(self, can_id: int) -> int:
        """A J1939 id the bridge sends, with the claimed source address."""
        assert self.claim is not None
        return with_source(can_id, self.claim.address)

    @property
    def _may_send(self) -> bool:
        return self.driver is not None and self.state.usable and (self.claim is None or self.claim.can_transmit)

    # --- receive path: once per batch, never an await per frame ---
    def on_frames(self, batch: list[RawFrame]) -> None:
        """The receive path of this bus: the store decodes and publishes, the runner counts."""
        n_err, unmapped, decode_errors, rtr, n_ext, nbytes = self.store.receive(
            self.cfg.name, batch, self._lookup, self.last_payload, self._msg_signals, self._error_frame,
            self.j1939.resolve if self.j1939 is not None else None)
        if self.claim is not None:
            self._claim_batch(batch)
        if self.j1939 is not None:
            unmapped, decode_errors = self._j1939_batch(unmapped, decode_errors)
        if self.canopen is not None:
            self.canopen.on_batch(batch, time.monotonic())
        if self.sdo is not None:
            unmapped -= self.sdo.on_batch(batch)  # SDO answers are the client's, not unmapped frames
        n = len(batch) - n_err
        self.rx_frames += n
        self.unmapped_frames += unmapped
        self.decode_errors += decode_errors
        self.rtr_frames += rtr
        self._bits += n * _OVERHEAD_STD + n_ext * (_OVERHEAD_EXT - _OVERHEAD_STD) + nbytes * 8

    def _j1939_batch(self, unmapped: int, decode_errors: int) -> tuple[int, int]:
        """Transport-protocol frames are not unmapped; messages they completed are decoded now."""
        assert self.j1939 is not None
        unmapped -= self.j1939.tp_frames
        self.j1939.tp_frames = 0
        if self.j1939.tp.out:
            self._send_own(self.j1939.tp.take_out())
        done = self.j1939.take_completed()
        if done:
            _, u, d, _, _, _ = self.store.receive(self.cfg.name, done, self._lookup, self.last_payload,
                                                  self._msg_signals, self._error_frame, self.j1939.resolve)
            self.j1939.tp_frames = 0
            unmapped += u
            decode_errors += d
        return unmapped, decode_errors

    # --- J1939 address claim ---
    def _claim_batch(self, batch: list[RawFrame]) -> None:
        """Address Claimed and Requests for it, heard on the bus, move the claim."""
        claim = self.claim
        assert claim is not None
        out: list[tuple[int, bytes]] = []
        now = time.monotonic()
        for can_id, flags, data, _ in batch:
            if flags & _EXT and (can_id >> 16) & 0xFF in _CLAIM_PF:
                out += claim.on_frame(can_id & 0x1FFFFFFF, data, now)
        if out:
            self._send_own(out)
            self._claim_moved()

    def _claim_start(self) -> None:
        if self.claim is not None:
            self._send_own(self.claim.start(time.monotonic()))
            self._claim_moved()

    def _claim_tick(self) -> None:
        self._claim_timer = None
        if self.claim is not None and self.driver is not None:
            self._send_own(self.claim.tick(time.monotonic()))
            self._claim_moved()

    def _claim_moved(self) -> None:
        """After the claim changed: the timer for its next step, transmissions and the bus state."""
        claim = self.claim
        assert claim is not None
        if self.j1939 is not None:
            self.j1939.tp.local = claim.address if claim.state is not ClaimState.LOST else None
        if self._claim_timer is not None:
            self._claim_timer.cancel()
            self._claim_timer = None
        if claim.deadline is not None:
            delay = max(0.0, claim.deadline - time.monotonic())
            self._claim_timer = asyncio.get_running_loop().call_later(delay, self._claim_tick)
        if claim.can_transmit:
            if any(c.handle is None for c in self.cyclic.values()) and self.driver is not None:
                self._restart_cyclic()
            if self._claim_warning:
                self._claim_warning = False
                if self.state is BusState.WARNING:
                    self.set_state(BusState.ACTIVE, f"J1939 address 0x{claim.address:02X} claimed")
            return
        self._drop_cyclic_handles()  # the address is not ours (now): every transmission stops
        if claim.state is ClaimState.LOST and not self._claim_warning and self.state.usable:
            self._claim_warning = True
            log.warning("bus %s: J1939 %s; the bridge transmits nothing on it", self.cfg.name, claim.refusal())
            self.set_state(BusState.WARNING, f"J1939 {claim.refusal()}")

    def _send_own(self, frames: list[tuple[int, bytes]]) -> None:
        """Frames of the J1939 protocol itself (claims, CTS): sent whatever the claim's state."""
        driver = self.driver
        if driver is None or not self.state.usable:
            return
        for can_id, data in frames:
            try:
                driver.send(Frame(can_id, data, extended=True, bus=self.cfg.name))
            except BusError as e:
                log.warning("bus %s: J1939 frame 0x%08X not sent: %s", self.cfg.name, can_id, e)
                continue
            self.tx_frames += 1
            self._bits += _OVERHEAD_EXT + len(data) * 8

    def _open_j1939(self, driver: BusDriver) -> None:
        """On SocketCAN, multi-packet J1939 comes from the kernel's J1939 socket where it can be opened
        (core/can/j1939socket.py); else the user-space reassembler follows the raw socket's TP frames."""
        channel = getattr(driver, "j1939_channel", None)
        if self.j1939 is None or not isinstance(channel, str):
            return
        sock, why = open_j1939(channel, self.j1939.socket_pgns(), self._on_j1939,
                               self.j1939.kernel_transfer_broken)
        if sock is None:
            if self.j1939.kernel or not self.reconnects:
                log.warning("bus %s: %s; J1939 multi-packet messages are reassembled in user space",
                            self.cfg.name, why)
            self.j1939.kernel = False
            return
        sock.start(asyncio.get_running_loop())
        if not self.j1939.kernel:
            log.info("bus %s: J1939 multi-packet messages are reassembled by the kernel (CAN_J1939)",
                     self.cfg.name)
        self.j1939.kernel = True
        self._j1939_sock = sock

    def _close_j1939(self) -> None:
        sock, self._j1939_sock = self._j1939_sock, None
        if sock is not None:
            sock.close()

    def _on_j1939(self, messages: list[J1939Message]) -> None:
        assert self.j1939 is not None
        self.j1939.kernel_messages(messages)
        unmapped, decode_errors = self._j1939_batch(0, 0)
        self.unmapped_frames += unmapped
        self.decode_errors += decode_errors

    def _error_frame(self, can_id: int, data: bytes) -> None:
        self.error_frames += 1
        info = classify_error_frame(can_id, data)
        if info.tx_error_counter is not None:
            self.tx_error_counter = info.tx_error_counter
        if info.rx_error_counter is not None:
            self.rx_error_counter = info.rx_error_counter
        if info.bus_off:
            self.bus_off_count += 1
        if info.state is not None:
            self.set_state(info.state, info.description)
        elif info.restarted:
            self.set_state(BusState.ACTIVE, info.description)

    def on_error(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._failed.set()

    # --- transmit ---
    def send(self, frame: Frame) -> None:
        """Send now; raises BusError when the bus is not usable."""
        driver = self.driver
        if driver is None or not self.state.usable:
            raise BusError(f"bus {self.cfg.name} is {self.state.value}" +
                           (f": {self.last_error}" if self.last_error else ""))
        why = self.claim_refusal()
        if why is not None:
            raise BusError(why)
        driver.send(frame)
        self.tx_frames += 1
        self._bits += _OVERHEAD_STD + (20 if frame.extended else 0) + len(frame.data) * 8

    def move_filter(self, old: tuple[int, bool], new: tuple[int, bool]) -> None:
        """A received id moved (a TPDO's COB-ID as the node says it): the kernel filter follows."""
        if old in self._filter_ids:
            self._filter_ids.remove(old)
        if new not in self._filter_ids:
            self._filter_ids.append(new)
        driver = self.driver
        if driver is not None and self.cfg.kernel_filters and self.j1939 is None and self.claim is None:
            driver.set_filters(self._filter_ids)

    def set_cyclic(self, msg_index: int, frame: Frame, period_s: float) -> None:
        """Start or update the cyclic transmission of a message (atomic data update)."""
        cyc = self.cyclic.get(msg_index)
        # The frame is remembered only once the driver took it: a refused write (the driver raised)
        # must not be what a reconnect starts sending.
        if cyc is None:
            if self._may_send:
                assert self.driver is not None
                handle = self.driver.send_periodic(frame, period_s)
                self.cyclic[msg_index] = _Cyclic(frame, period_s, handle, time.monotonic())
            else:
                self.cyclic[msg_index] = _Cyclic(frame, period_s)
            return
        if cyc.handle is not None:
            cyc.handle.modify(frame)
        elif self._may_send:
            assert self.driver is not None
            cyc.handle = self.driver.send_periodic(frame, period_s)
            cyc.since = time.monotonic()
        cyc.frame = frame

    def stop_cyclic(self, msg_index: int) -> None:
        cyc = self.cyclic.pop(msg_index, None)
        if cyc is not None and cyc.handle is not None:
            self._cyclic_sent += cyc.sent(time.monotonic())
            cyc.handle.stop()

    def _restart_cyclic(self) -> None:
        assert self.driver is not None
        if self.claim is not None and not self.claim.can_transmit:
            return  # started once the address is claimed
        for cyc in self.cyclic.values():
            if cyc.handle is not None:
                continue
            try:
                cyc.handle = self.driver.send_periodic(cyc.frame, cyc.period_s)
                cyc.since = time.monotonic()
            except BusError as e:
                log.warning("bus %s: cannot start cyclic transmission: %s", self.cfg.name, e)

    def _drop_cyclic_handles(self) -> None:
        now = time.monotonic()
        for cyc in self.cyclic.values():
            if cyc.handle is not None:
                self._cyclic_sent += cyc.sent(now)
                cyc.handle.stop()
                cyc.handle = None

    # --- supervision ---
    async def run(self) -> None:
        """Open, read, and reopen with backoff until stopped; whatever ends it leaves the bus closed."""
        try:
            await self._run()
        finally:
            driver, self.driver = self.driver, None
            self._claim_stop()
            self._close_j1939()
            if driver is not None:  # only when _run ended on an exception: it closes its own driver
                self._drop_cyclic_handles()
                await _close_quietly(driver)
            if self.state is not BusState.STOPPED:
                self.set_state(BusState.STOPPED)

    async def _run(self) -> None:
        delay = self.cfg.reconnect_min_s
        first = True
        while not self._stopping.is_set():
            try:  # a kind whose open() itself raises is retried like an interface that is missing
                driver = self.kind.open(self.cfg)
                await driver.open()
            except Exception as e:
                msg = str(e) if isinstance(e, BusUnavailable) else f"{type(e).__name__}: {e}"
                if msg != self._last_logged:
                    log.error("bus %s: %s; retrying every %.1f s at most", self.cfg.name, msg,
                              self.cfg.reconnect_max_s)
                    self._last_logged = msg
                self.set_state(BusState.DOWN, msg)
                self._opened_once.set()  # start-up does not wait for a missing interface
                await self._sleep(delay)
                delay = min(delay * 2, self.cfg.reconnect_max_s)
                continue
            self._last_logged = None
            try:
                # PGN matching, and an address claim (claims, requests, transfers to us from any
                # sender), need every frame: no exact-id kernel filters on such a bus
                exact = self.cfg.kernel_filters and self.j1939 is None and self.claim is None
                driver.set_filters(self._filter_ids if exact else None)
                self._failed.clear()
                self.driver = driver
                driver.start_reading(self.on_frames, self.on_error)
            except Exception as e:
                self.driver = None
                await _close_quietly(driver)
                self.set_state(BusState.DOWN, f"{type(e).__name__}: {e}")
                await self._sleep(delay)
                delay = min(delay * 2, self.cfg.reconnect_max_s)
                continue
            if not first:
                self.reconnects += 1
            first = False
            self._open_j1939(driver)
            self.set_state(BusState.ACTIVE)
            self._claim_start()
            self._restart_cyclic()
            self._opened_once.set()
            delay = self.cfg.reconnect_min_s
            stop_w = asyncio.ensure_future(self._stopping.wait())
            fail_w = asyncio.ensure_future(self._failed.wait())
            try:
                await asyncio.wait({stop_w, fail_w}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop_w.cancel()
                fail_w.cancel()
            self.driver = None
            self._claim_stop()
            self._close_j1939()
            self._drop_cyclic_handles()
            await _close_quietly(driver)
            if not self._stopping.is_set():
                log.error("bus %s: %s; reconnecting", self.cfg.name, self.last_error)
                self.set_state(BusState.DOWN, self.last_error)
                await self._sleep(delay)
        self.set_state(BusState.STOPPED)

    def _claim_stop(self) -> None:
        if self.claim is not None:
            self.claim.stop()
            if self._claim_timer is not None:
                self._claim_timer.cancel()
                self._claim_timer = None

    async def wait_opened(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._opened_once.wait(), timeout)
        except TimeoutError:
            pass

    async def _sleep(self, delay: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), delay)
        except TimeoutError:
            pass

    def stop(self) -> None:
        for idx in list(self.cyclic):
            self.stop_cyclic(idx)
        self._stopping.set()

    def poll(self) -> None:
        """Once a second: kernel diagnostics and the bus load estimate."""
        now = time.monotonic()
        if self.j1939 is not None:
            self.j1939.expire(now)
        t_prev, bits_prev = self._bits_mark
        self._bits_mark = (now, self._bits)
        bitrate = self.kernel.get("bitrate") or self.cfg.bitrate
        if bitrate and now > t_prev:
            self.bus_load = min(100.0, (self._bits - bits_prev) / (now - t_prev) / bitrate * 100)
        driver = self.driver
        if driver is None:
            return
        try:
            self.kernel = driver.kernel_status() or {}
        except Exception as e:
            log.debug("bus %s: kernel status: %s", self.cfg.name, e)
            return
        k = self.kernel
        if isinstance(k.get("rx_error_counter"), int):
            self.rx_error_counter = k["rx_error_counter"]
        if isinstance(k.get("tx_error_counter"), int):
            self.tx_error_counter = k["tx_error_counter"]
        state = k.get("bus_state")
        if isinstance(state, BusState) and state is not self.state and self.state is not BusState.DOWN:
            self.set_state(state, "reported by the kernel")

    def tx_frames_total(self) -> int:
        """Frames sent once plus those sent by cyclic transmissions (counted from their periods)."""
        now = time.monotonic()
        return self.tx_frames + self._cyclic_sent + sum(c.sent(now) for c in self.cyclic.values())

    def status(self) -> BusStatus:
        k = self.kernel
        return BusStatus(
            name=self.cfg.name, state=self.state, rx_frames=self.rx_frames, tx_frames=self.tx_frames_total(),
            error_frames=self.error_frames, decode_errors=self.decode_errors,
            unmapped_frames=self.unmapped_frames, dropped_frames=int(k.get("dropped_frames", 0) or 0),
            rx_error_counter=self.rx_error_counter, tx_error_counter=self.tx_error_counter,
            bus_off_count=max(self.bus_off_count, int(k.get("bus_off_count", 0) or 0)),
            restarts=int(k.get("restarts", 0) or 0), reconnects=self.reconnects,
            bus_load=round(self.bus_load, 2), last_error=self.last_error, since_ns=self.since_ns,
            unconfigured_sources=self.j1939.unconfigured_summary() if self.j1939 is not None else {},
            transport=self.j1939.transport_counters() if self.j1939 is not None else {},
            dm1=dict(self.j1939.dm1) if self.j1939 is not None else {},
            dm2=dict(self.j1939.dm2) if self.j1939 is not None else {},
            canopen=self.canopen.summary(self.sdo.counters if self.sdo is not None else None)
            if self.canopen is not None else {},
            address_claim=self._claim_summary(),
        )

    def _claim_summary(self) -> dict[str, Any]:
        c = self.claim
        if c is None:
            return {}
        out: dict[str, Any] = {"state": c.state.value, "address": c.address, "name": f"0x{c.name:016X}",
                               "claims_sent": c.claims, "contests": c.contests}
        if c.reason is not None:
            out["reason"] = c.reason
        return out


async def _close_quietly(driver: BusDriver) -> None:
    try:
        await asyncio.wait_for(driver.close(), 5.0)
    except Exception as e:
        log.debug("closing driver: %s", e)
