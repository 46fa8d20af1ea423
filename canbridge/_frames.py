"""Raw frames in the formats people already use: can-utils ``cansend`` strings and
node-red-contrib-socketcan frame objects."""

from __future__ import annotations

import re
from collections.abc import Mapping

from canbridge._errors import FrameFormatError
from canbridge._model import Frame

CAN_SFF_MASK = 0x7FF
CAN_EFF_MASK = 0x1FFFFFFF
CLASSIC_MAX = 8
FD_LENGTHS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64)

_HEX = re.compile(r"^[0-9A-Fa-f]*$")


def _hex_bytes(text: str, where: str) -> bytes:
    text = text.replace(".", "")  # cansend allows '.' between bytes
    if not _HEX.match(text):
        bad = next(c for c in text if c not in "0123456789abcdefABCDEF")
        raise FrameFormatError(f"{where}: {bad!r} is not a hex digit")
    if len(text) % 2:
        raise FrameFormatError(f"{where}: odd number of hex digits ({len(text)}); each byte needs two")
    return bytes.fromhex(text)


def parse_cansend(text: str) -> Frame:
    """Parse a can-utils ``cansend`` string: ``123#DEADBEEF``, ``1ABCDEF0#00``, ``123#R``,
    ``123#R4``, ``123##1DEADBEEF`` (CAN FD, flags nibble after ``##``)."""
    if not isinstance(text, str):
        raise FrameFormatError(f"a cansend string is needed, got {type(text).__name__}")
    s = text.strip()
    if "#" not in s:
        raise FrameFormatError(f"{text!r}: missing '#' between the id and the data (e.g. 123#DEADBEEF)")
    ident, rest = s.split("#", 1)
    if len(ident) not in (3, 8) or not _HEX.match(ident) or not ident:
        raise FrameFormatError(
            f"{text!r}: the id must be 3 hex digits (standard) or 8 (extended), got {ident!r}"
        )
    can_id = int(ident, 16)
    extended = len(ident) == 8
    if extended and can_id > CAN_EFF_MASK:
        raise FrameFormatError(f"{text!r}: extended id {ident} is above 1FFFFFFF")
    if not extended and can_id > CAN_SFF_MASK:
        raise FrameFormatError(f"{text!r}: standard id {ident} is above 7FF; use 8 digits for extended")
    if rest.startswith("#"):  # CAN FD
        body = rest[1:]
        if not body:
            raise FrameFormatError(f"{text!r}: CAN FD frame needs a flags nibble after '##'")
        flags_c = body[0]
        if flags_c not in "0123456789abcdefABCDEF":
            raise FrameFormatError(f"{text!r}: CAN FD flags {flags_c!r} is not a hex digit")
        flags = int(flags_c, 16)
        data = _hex_bytes(body[1:], repr(text))
        if len(data) > 64:
            raise FrameFormatError(f"{text!r}: CAN FD data is {len(data)} bytes; at most 64")
        if len(data) not in FD_LENGTHS:
            raise FrameFormatError(
                f"{text!r}: CAN FD data is {len(data)} bytes; valid lengths are {FD_LENGTHS}"
            )
        return Frame(can_id, data, extended=extended, fd=True, brs=bool(flags & 1))
    if rest[:1] in ("R", "r"):
        tail = rest[1:]
        dlc = 0
        if tail:
            if not tail.isdigit() or int(tail) > CLASSIC_MAX:
                raise FrameFormatError(f"{text!r}: RTR length must be a digit 0 to 8, got {tail!r}")
            dlc = int(tail)
        return Frame(can_id, b"", extended=extended, rtr=True, dlc=dlc)
    data = _hex_bytes(rest, repr(text))
    if len(data) > CLASSIC_MAX:
        raise FrameFormatError(
            f"{text!r}: {len(data)} data bytes; a classic frame carries at most 8 (use ## for CAN FD)"
        )
    return Frame(can_id, data, extended=extended)


_NODERED_KEYS = {"canid", "data", "ext", "rtr", "canfd", "brs", "dlc", "timestamp", "err", "rawData", "bus"}


def parse_frame_object(obj: Mapping[str, object]) -> Frame:
    """Parse a node-red-contrib-socketcan style frame object:
    ``{"canid": 512, "data": [22, 45, 170, 255], "ext": false}`` (``canfd``, ``rtr``, ``dlc`` optional)."""
    if not isinstance(obj, Mapping):
        raise FrameFormatError(f"a frame object is needed, got {type(obj).__name__}")
    unknown = sorted(set(obj) - _NODERED_KEYS)
    if unknown:
        raise FrameFormatError(f"unknown key(s) {', '.join(unknown)} in frame object")
    if "canid" not in obj:
        raise FrameFormatError("frame object has no 'canid'")
    can_id = obj["canid"]
    if isinstance(can_id, bool) or not isinstance(can_id, int):
        raise FrameFormatError(f"'canid' must be an integer, got {can_id!r}")
    flags = {}
    for key in ("ext", "rtr", "canfd", "brs"):
        v = obj.get(key, False)
        if v is None:
            v = False
        if not isinstance(v, bool):
            raise FrameFormatError(f"'{key}' must be true or false, got {v!r}")
        flags[key] = v
    limit = CAN_EFF_MASK if flags["ext"] else CAN_SFF_MASK
    if not 0 <= can_id <= limit:
        kind = "extended" if flags["ext"] else "standard (set ext: true for 29-bit ids)"
        raise FrameFormatError(f"'canid' {can_id} is outside 0..{limit} for a {kind} frame")
    raw = obj.get("data", [])
    if raw is None:
        raw = []
    if isinstance(raw, str):
        data = _hex_bytes(raw, "'data'")
    elif isinstance(raw, list):
        for i, b in enumerate(raw):
            if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b <= 255:
                raise FrameFormatError(f"'data'[{i}] must be an integer 0..255, got {b!r}")
        data = bytes(raw)
    else:
        raise FrameFormatError(f"'data' must be a list of bytes or a hex string, got {type(raw).__name__}")
    limit_len = 64 if flags["canfd"] else CLASSIC_MAX
    if len(data) > limit_len:
        raise FrameFormatError(
            f"'data' has {len(data)} bytes; at most {limit_len}"
            + ("" if flags["canfd"] else " (set canfd: true for CAN FD)")
        )
    if flags["canfd"] and len(data) not in FD_LENGTHS:
        raise FrameFormatError(f"'data' has {len(data)} bytes; CAN FD lengths are {FD_LENGTHS}")
    if flags["brs"] and not flags["canfd"]:
        raise FrameFormatError("'brs' (bit rate switch) needs canfd: true")
    if flags["rtr"] and flags["canfd"]:
        raise FrameFormatError("CAN FD frames cannot be remote (rtr) frames")
    dlc = obj.get("dlc")
    max_dlc = 64 if flags["canfd"] else CLASSIC_MAX  # node-red's dlc is the byte count, also for CAN FD
    if dlc is not None and (isinstance(dlc, bool) or not isinstance(dlc, int) or not 0 <= dlc <= max_dlc):
        raise FrameFormatError(f"'dlc' must be an integer 0..{max_dlc}, got {dlc!r}")
    if flags["rtr"]:
        if data:
            raise FrameFormatError("a remote (rtr) frame carries no data")
        return Frame(can_id, b"", extended=flags["ext"], rtr=True, dlc=dlc or 0)
    if dlc is not None and dlc != len(data):
        raise FrameFormatError(f"'dlc' {dlc} does not match {len(data)} data bytes")
    return Frame(can_id, data, extended=flags["ext"], fd=flags["canfd"], brs=flags["brs"])


def parse_frame(obj: object) -> Frame:
    """Parse a raw frame given as a :class:`Frame`, a cansend string or a frame object."""
    if isinstance(obj, Frame):
        return obj
    if isinstance(obj, str):
        return parse_cansend(obj)
    if isinstance(obj, Mapping):
        return parse_frame_object(obj)
    raise FrameFormatError(
        f"a frame must be a cansend string or a frame object, got {type(obj).__name__}"
    )


def format_cansend(frame: Frame) -> str:
    """Format a frame as a cansend string."""
    ident = f"{frame.can_id:08X}" if frame.extended else f"{frame.can_id:03X}"
    if frame.rtr:
        return f"{ident}#R" + (str(frame.dlc) if frame.dlc else "")
    if frame.fd:
        return f"{ident}##{1 if frame.brs else 0}{frame.data.hex().upper()}"
    return f"{ident}#{frame.data.hex().upper()}"


def to_nodered(frame: Frame) -> dict[str, object]:
    """The frame in node-red-contrib-socketcan's format (``timestamp`` in ms since the epoch)."""
    return {
        "timestamp": None if frame.timestamp_ns is None else frame.timestamp_ns // 1_000_000,
        "ext": frame.extended,
        "canid": frame.can_id,
        "dlc": frame.length,
        "rtr": frame.rtr,
        "canfd": frame.fd,
        "brs": frame.brs,
        "data": list(frame.data),
        "err": frame.error,
        "bus": frame.bus,
    }
