"""Classify SocketCAN error frames (``CAN_ERR_FLAG`` set), following ``linux/can/error.h``.

A CAN controller's driver reports bus trouble as error frames: the error class bits are in the
``can_id`` (without the flag), details in the 8 data bytes. The core routes every frame with
:attr:`canbridge.FrameFlags.ERROR` here and never decodes one as signals.
"""

from __future__ import annotations

from dataclasses import dataclass

from canbridge import BusState

# --- error classes (can_id bits) ---------------------------------------------------------------
CAN_ERR_TX_TIMEOUT = 0x001  # TX timeout (by netdevice driver)
CAN_ERR_LOSTARB = 0x002  # lost arbitration: data[0] = bit position
CAN_ERR_CRTL = 0x004  # controller problems: data[1]
CAN_ERR_PROT = 0x008  # protocol violations: data[2] type, data[3] location
CAN_ERR_TRX = 0x010  # transceiver status: data[4]
CAN_ERR_ACK = 0x020  # received no ACK on transmission
CAN_ERR_BUSOFF = 0x040  # bus off
CAN_ERR_BUSERROR = 0x080  # bus error (may flood!)
CAN_ERR_RESTARTED = 0x100  # controller restarted
CAN_ERR_CNT = 0x200  # TX error counter in data[6], RX error counter in data[7]
CAN_ERR_MASK = 0x1FFFFFFF  # every class: what CAN_RAW_ERR_FILTER takes to receive all

# --- data[1]: controller problems --------------------------------------------------------------
CAN_ERR_CRTL_UNSPEC = 0x00
CAN_ERR_CRTL_RX_OVERFLOW = 0x01
CAN_ERR_CRTL_TX_OVERFLOW = 0x02
CAN_ERR_CRTL_RX_WARNING = 0x04  # reached warning level for RX errors
CAN_ERR_CRTL_TX_WARNING = 0x08
CAN_ERR_CRTL_RX_PASSIVE = 0x10  # reached error passive status RX
CAN_ERR_CRTL_TX_PASSIVE = 0x20
CAN_ERR_CRTL_ACTIVE = 0x40  # recovered to error active state

# --- data[2]: protocol violation type ----------------------------------------------------------
_PROT_TYPES = (
    (0x01, "single bit error"),
    (0x02, "frame format error"),
    (0x04, "bit stuffing error"),
    (0x08, "unable to send dominant bit"),
    (0x10, "unable to send recessive bit"),
    (0x20, "bus overload"),
    (0x40, "active error announcement"),
    (0x80, "error on transmission"),
)

# --- data[3]: protocol violation location ------------------------------------------------------
_PROT_LOCATIONS = {
    0x03: "start of frame",
    0x02: "ID bits 28-21",
    0x06: "ID bits 20-18",
    0x04: "substitute RTR",
    0x05: "identifier extension",
    0x07: "ID bits 17-13",
    0x0F: "ID bits 12-5",
    0x0E: "ID bits 4-0",
    0x0C: "RTR",
    0x0D: "reserved bit 1",
    0x09: "reserved bit 0",
    0x0B: "data length code",
    0x0A: "data section",
    0x08: "CRC sequence",
    0x18: "CRC delimiter",
    0x19: "ACK slot",
    0x1B: "ACK delimiter",
    0x1A: "end of frame",
    0x12: "intermission",
}

# --- data[4]: transceiver status ---------------------------------------------------------------
_TRX = {
    0x04: "CANH no wire",
    0x05: "CANH short to BAT",
    0x06: "CANH short to VCC",
    0x07: "CANH short to GND",
    0x40: "CANL no wire",
    0x50: "CANL short to BAT",
    0x60: "CANL short to VCC",
    0x70: "CANL short to GND",
    0x80: "CANL short to CANH",
}


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """What one error frame says."""

    state: BusState | None  # the controller state this frame moves the bus to, if it says one
    bus_off: bool
    restarted: bool
    tx_error_counter: int | None  # TEC, when the frame carries CAN_ERR_CNT
    rx_error_counter: int | None  # REC
    description: str
    error_class: int = 0  # the raw class bits (can_id without flags)


def _byte(data: bytes, i: int) -> int:
    return data[i] if len(data) > i else 0


def _controller(bits: int) -> tuple[BusState | None, list[str]]:
    parts: list[str] = []
    state: BusState | None = None
    if bits & CAN_ERR_CRTL_RX_OVERFLOW:
        parts.append("controller RX buffer overflow")
    if bits & CAN_ERR_CRTL_TX_OVERFLOW:
        parts.append("controller TX buffer overflow")
    # The worst level named wins: passive beats warning beats active.
    if bits & (CAN_ERR_CRTL_RX_PASSIVE | CAN_ERR_CRTL_TX_PASSIVE):
        state = BusState.PASSIVE
        which = [d for b, d in ((CAN_ERR_CRTL_TX_PASSIVE, "TX"), (CAN_ERR_CRTL_RX_PASSIVE, "RX")) if bits & b]
        parts.append(f"error-passive ({'/'.join(which)} error counter above 127)")
    elif bits & (CAN_ERR_CRTL_RX_WARNING | CAN_ERR_CRTL_TX_WARNING):
        state = BusState.WARNING
        which = [d for b, d in ((CAN_ERR_CRTL_TX_WARNING, "TX"), (CAN_ERR_CRTL_RX_WARNING, "RX")) if bits & b]
        parts.append(f"error-warning ({'/'.join(which)} error counter above 95)")
    elif bits & CAN_ERR_CRTL_ACTIVE:
        state = BusState.ACTIVE
        parts.append("back to error-active")
    if not parts:
        parts.append("controller problem (unspecified)")
    return state, parts


def _protocol(kind: int, location: int) -> str:
    kinds = [d for b, d in _PROT_TYPES if kind & b] or ["unspecified"]
    text = "protocol violation: " + ", ".join(kinds)
    where = _PROT_LOCATIONS.get(location)
    if where:
        text += f" at {where}"
    return text


def classify_error_frame(can_id: int, data: bytes) -> ErrorInfo:
    """Classify an error frame given its class bits (``can_id``, flag bits ignored) and data."""
    cls = can_id & CAN_ERR_MASK
    parts: list[str] = []
    state: BusState | None = None
    bus_off = bool(cls & CAN_ERR_BUSOFF)
    restarted = bool(cls & CAN_ERR_RESTARTED)
    tec: int | None = None
    rec: int | None = None

    if cls & CAN_ERR_TX_TIMEOUT:
        parts.append("transmit timeout")
    if cls & CAN_ERR_LOSTARB:
        bit = _byte(data, 0)
        parts.append("lost arbitration" + (f" at bit {bit}" if bit else ""))
    if cls & CAN_ERR_CRTL:
        state, crtl = _controller(_byte(data, 1))
        parts.extend(crtl)
    if cls & CAN_ERR_PROT:
        parts.append(_protocol(_byte(data, 2), _byte(data, 3)))
    if cls & CAN_ERR_TRX:
        trx = _byte(data, 4)
        parts.append("transceiver: " + _TRX.get(trx, f"status 0x{trx:02X}" if trx else "unspecified"))
    if cls & CAN_ERR_ACK:
        parts.append("no ACK on transmission (no other node on the bus, or wiring)")
    if cls & CAN_ERR_BUSERROR:
        parts.append("bus error")
    if restarted:
        parts.append("controller restarted")
        state = BusState.ACTIVE  # a restart leaves bus-off for error-active
    if bus_off:
        parts.append("bus-off")
        state = BusState.BUS_OFF  # bus-off overrides anything else in the same frame
    if cls & CAN_ERR_CNT:
        tec, rec = _byte(data, 6), _byte(data, 7)
        parts.append(f"TEC {tec}, REC {rec}")
    known = (
        CAN_ERR_TX_TIMEOUT
        | CAN_ERR_LOSTARB
        | CAN_ERR_CRTL
        | CAN_ERR_PROT
        | CAN_ERR_TRX
        | CAN_ERR_ACK
        | CAN_ERR_BUSOFF
        | CAN_ERR_BUSERROR
        | CAN_ERR_RESTARTED
        | CAN_ERR_CNT
    )
    if cls & ~known:
        parts.append(f"unknown error class bits 0x{cls & ~known:X}")
    if not parts:
        parts.append("error frame without error class")
    return ErrorInfo(
        state=state,
        bus_off=bus_off,
        restarted=restarted,
        tx_error_counter=tec,
        rx_error_counter=rec,
        description="; ".join(parts),
        error_class=cls,
    )
