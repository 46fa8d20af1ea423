"""What travels on the bench's buses: largemap frames stamped with a sequence number, and the command
messages the clients write.

Every frame of largemap message ``i`` carries the message's own frame count ``seq`` (16 bits) in its
``Speed`` signal (raw value, factor 0.01: ``Speed = seq / 100``) and values derived from it in the seven
other signals, so all eight signals change in every frame. A client that has ``Speed`` knows which frame
its value came from; the generator knows when it sent that frame.
"""

from __future__ import annotations

import socket
import struct

from bench.largemap import message_id

__all__ = ["message_id"]  # the raw can_id word of largemap message i (EFF flag on 29-bit ids)

SPEED_FACTOR = 0.01
FRAME = struct.Struct("=IBBxx8s")  # struct can_frame
CAN_EFF_FLAG = 0x80000000
CAN_EFF_MASK = 0x1FFFFFFF

# Writable messages on the first bus, one per way of writing: (name, id, signals). Each has a 16-bit Seq
# the client writes; MbCmd16 has two registers so FC16 writes a block.
COMMANDS: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    ("OpcCmd", 0x7F0, ("Seq",)),
    ("MbCmd", 0x7F1, ("Seq",)),
    ("MbCmd16", 0x7F2, ("Seq", "Aux")),
    ("RestCmd", 0x7F3, ("Seq",)),
)
COMMAND_IDS = {can_id: name for name, can_id, _ in COMMANDS}


def payload(seq: int) -> bytes:
    """The 8 data bytes of a largemap frame carrying ``seq``: every signal changes with it."""
    s = seq & 0xFFFF
    b = s & 0xFF
    # Temp, Speed (16 bits little-endian), Torque, Mode (0..3), Counter, Level (6 bits) + Enable + Fault
    return bytes((b, s & 0xFF, s >> 8, (b * 3) & 0xFF, s & 3, (b + 1) & 0xFF, b & 0xFF, 0))


def can_frame(can_id: int, data: bytes) -> bytes:
    return FRAME.pack(can_id, len(data), 0, data)


def seq_of_speed(value: float) -> int:
    """The sequence number a ``Speed`` value carries."""
    return round(value / SPEED_FACTOR) & 0xFFFF


def command_dbc() -> str:
    """A DBC of the writable command messages (sent by the gateway GW to an ECU)."""
    lines = ['VERSION ""', "", "NS_ :", "", "BS_:", "", "BU_: ECU GW", ""]
    for name, can_id, signals in COMMANDS:
        lines.append(f"BO_ {can_id} {name}: 8 GW")
        for k, sig in enumerate(signals):
            lines.append(f' SG_ {sig} : {16 * k}|16@1+ (1,0) [0|65535] "" ECU')
        lines.append("")
    return "\n".join(lines) + "\n"


def command_seq(data: bytes) -> int:
    """The Seq a command frame carries (little-endian, bits 0..15)."""
    return int.from_bytes(data[0:2], "little")


def probe_glob(bus_glob: str, probes: int) -> str:
    """An fnmatch pattern of the probe messages' ``Speed`` signals: messages 0..probes-1 (probes a
    multiple of 10, at most 100)."""
    tens = probes // 10
    if probes % 10 or not 1 <= tens <= 10:
        raise ValueError(f"probes must be 10, 20, ... 100, not {probes}")
    digit = "[0-9]" if tens == 10 else ("0" if tens == 1 else f"[0-{tens - 1}]")
    return f"{bus_glob}.Msg00{digit}?.Speed"


def probe_names(buses: list[str], probes: int) -> list[str]:
    return [f"{bus}.Msg{i:04d}.Speed" for bus in buses for i in range(probes)]


SO_TIMESTAMPNS = 35  # asm-generic/socket.h (Python's socket module does not export it)
TIMESPEC = struct.Struct("=qq")


def recv_stamped(sock: socket.socket) -> tuple[bytes, int] | None:
    """One datagram and its SO_TIMESTAMPNS kernel receive time (ns; 0 without one), None when none is
    waiting (a non-blocking socket)."""
    try:
        data, anc, _, _ = sock.recvmsg(16, socket.CMSG_SPACE(16))
    except BlockingIOError:
        return None
    ts = 0
    for level, kind, value in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            sec, ns = TIMESPEC.unpack(value[: TIMESPEC.size])
            ts = sec * 1_000_000_000 + ns
    return data, ts
