"""Raw frames in the formats people already use: can-utils ``cansend`` strings and
node-red-contrib-socketcan frame objects.

Every character is checked against explicit ASCII sets: ``str.isdigit``, ``int()`` and ``re``'s ``$``
accept Unicode digits, surrounding whitespace and a trailing newline, which once turned ``123#R٣`` into
``123#R3`` and ``12\\n#00`` into ``012#00``. A string is refused unless it is printable ASCII.
"""

from __future__ import annotations

from collections.abc import Mapping

from canbridge._errors import FrameFormatError
from canbridge._model import Frame

CAN_SFF_MASK = 0x7FF
CAN_EFF_MASK = 0x1FFFFFFF
CAN_ERR_FLAG = 0x20000000  # cansend: an 8-digit id with this bit is an error frame
CLASSIC_MAX = 8
FD_LENGTHS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64)

_HEX_DIGITS = "0123456789abcdefABCDEF"
_DEC_DIGITS = "0123456789"
_BYTE_SEPARATORS = ". "  # cansend allows '.' between bytes; node-red users and our docs write spaces
# cansend's CAN FD flags nibble: BRS (bit rate switch) and FDF (the FD format bit, implied by '##')
_FD_BRS = 0x1
_FD_ESI = 0x2
_FD_FDF = 0x4


def _printable_ascii(text: str, what: str) -> None:
    for i, c in enumerate(text):
        if not " " <= c <= "~":
            kind = "a control character" if c.isascii() else "not ASCII"
            raise FrameFormatError(
                f"{what}: character {i} ({c!r}, U+{ord(c):04X}) is {kind}; only printable ASCII is allowed"
            )


def _is_hex(text: str) -> bool:
    return all(c in _HEX_DIGITS for c in text)


def _hex_bytes(text: str, where: str) -> bytes:
    """Hex byte pairs, with '.' or ' ' allowed between whole bytes (never inside one)."""
    if "," in text:  # node-red's comma list is decimal: "12" would be ambiguous, so it is refused
        raise FrameFormatError(
            f"{where}: ',' is not a hex digit; give the data as hex ('16 2D AA FF') or as a list of "
            "numbers ([22, 45, 170, 255])"
        )
    out = bytearray()
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in _BYTE_SEPARATORS:
            i += 1
            continue
        if c not in _HEX_DIGITS:
            raise FrameFormatError(f"{where}: {c!r} is not a hex digit")
        low = text[i + 1] if i + 1 < n else ""
        if low == "" or low in _BYTE_SEPARATORS:
            raise FrameFormatError(
                f"{where}: odd number of hex digits: byte {len(out)} has only {c!r}; each byte needs two"
            )
        if low not in _HEX_DIGITS:
            raise FrameFormatError(f"{where}: {low!r} is not a hex digit")
        out.append(int(c + low, 16))  # both checked ASCII hex digits
        i += 2
    return bytes(out)


def parse_cansend(text: str) -> Frame:
    """Parse a can-utils ``cansend`` string: ``123#DEADBEEF``, ``1ABCDEF0#00``, ``123#R``,
    ``123#R4``, ``123##1DEADBEEF`` (CAN FD, flags nibble after ``##``). Bytes may be separated by
    ``.`` or a space (``200#16 2D AA FF``); spaces around the whole string are ignored."""
    if not isinstance(text, str):
        raise FrameFormatError(f"a cansend string is needed, got {type(text).__name__}")
    _printable_ascii(text, repr(text))
    s = text.strip(" ")
    if "#" not in s:
        raise FrameFormatError(f"{text!r}: missing '#' between the id and the data (e.g. 123#DEADBEEF)")
    ident, rest = s.split("#", 1)
    if len(ident) not in (3, 8) or not _is_hex(ident):
        raise FrameFormatError(
            f"{text!r}: the id must be 3 hex digits (standard) or 8 (extended), got {ident!r}"
        )
    can_id = int(ident, 16)  # ASCII hex digits only (checked above)
    extended = len(ident) == 8
    if extended and can_id > CAN_EFF_MASK:
        why = (
            " (in cansend the bit 20000000 marks an error frame; error frames cannot be sent)"
            if can_id & CAN_ERR_FLAG
            else ""
        )
        raise FrameFormatError(f"{text!r}: extended id {ident} is above 1FFFFFFF{why}")
    if not extended and can_id > CAN_SFF_MASK:
        raise FrameFormatError(f"{text!r}: standard id {ident} is above 7FF; use 8 digits for extended")
    if rest.startswith("#"):  # CAN FD
        body = rest[1:]
        if not body:
            raise FrameFormatError(f"{text!r}: CAN FD frame needs a flags nibble after '##'")
        flags_c = body[0]
        if flags_c not in _HEX_DIGITS:
            raise FrameFormatError(f"{text!r}: CAN FD flags {flags_c!r} is not a hex digit")
        flags = int(flags_c, 16)
        if flags & _FD_ESI:
            raise FrameFormatError(
                f"{text!r}: CAN FD flags {flags_c}: ESI (2) is set by a controller in error-passive state; "
                "it cannot be sent"
            )
        if flags & ~(_FD_BRS | _FD_ESI | _FD_FDF):
            raise FrameFormatError(f"{text!r}: CAN FD flags {flags_c}: only 1 (BRS) and 4 (FDF) are defined")
        data = _hex_bytes(body[1:], repr(text))
        if len(data) > 64:
            raise FrameFormatError(f"{text!r}: CAN FD data is {len(data)} bytes; at most 64")
        if len(data) not in FD_LENGTHS:
            raise FrameFormatError(
                f"{text!r}: CAN FD data is {len(data)} bytes; valid lengths are {FD_LENGTHS}"
            )
        return Frame(can_id, data, extended=extended, fd=True, brs=bool(flags & _FD_BRS))
    if rest[:1] in ("R", "r"):
        tail = rest[1:]
        if len(tail) > 1 or (tail and (tail not in _DEC_DIGITS or int(tail) > CLASSIC_MAX)):
            raise FrameFormatError(f"{text!r}: RTR length must be a digit 0 to 8, got {tail!r}")
        return Frame(can_id, b"", extended=extended, rtr=True, dlc=int(tail) if tail else 0)
    data = _hex_bytes(rest, repr(text))
    if len(data) > CLASSIC_MAX:
        raise FrameFormatError(
            f"{text!r}: {len(data)} data bytes; a classic frame carries at most 8 (use ## for CAN FD)"
        )
    return Frame(can_id, data, extended=extended)


_NODERED_KEYS = {"canid", "data", "ext", "rtr", "canfd", "brs", "dlc", "timestamp", "err", "rawData", "bus"}
_KEY_HINTS = {
    "id": "node-red-contrib-socketcan calls it 'canid'",
    "fd": "node-red-contrib-socketcan calls it 'canfd'",
    "extended": "node-red-contrib-socketcan calls it 'ext'",
    "payload": "send the payload object itself, not the Node-RED message around it",
}


def _byte_list(raw: object, what: str) -> bytes:
    if not isinstance(raw, list):
        raise FrameFormatError(f"{what} must be a list of bytes, got {type(raw).__name__}")
    for i, b in enumerate(raw):
        if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b <= 255:
            raise FrameFormatError(f"{what}[{i}] must be an integer 0..255, got {b!r}")
    return bytes(raw)


def _buffer(raw: Mapping[str, object], what: str) -> bytes:
    """A Node.js Buffer as JSON.stringify writes it: ``{"type": "Buffer", "data": [...]}``."""
    if set(raw) != {"type", "data"} or raw.get("type") != "Buffer":
        raise FrameFormatError(f'{what} as an object must be a Node.js Buffer {{"type": "Buffer", "data": [...]}}')
    return _byte_list(raw["data"], f"{what}.data")


def _data(raw: object, what: str) -> bytes:
    if raw is None:
        return b""
    if isinstance(raw, str):
        _printable_ascii(raw, what)
        return _hex_bytes(raw, what)
    if isinstance(raw, Mapping):
        return _buffer(raw, what)
    if isinstance(raw, list):
        return _byte_list(raw, what)
    raise FrameFormatError(
        f"{what} must be a list of bytes, a hex string or a Buffer object, got {type(raw).__name__}"
    )


def parse_frame_object(obj: Mapping[str, object]) -> Frame:
    """Parse a node-red-contrib-socketcan style frame object:
    ``{"canid": 512, "data": [22, 45, 170, 255], "ext": false}`` (``canfd``, ``brs``, ``rtr``, ``dlc``
    optional). ``timestamp``, ``rawData``, ``err`` (false) and ``bus``, as received frames carry them,
    are accepted, so a received frame can be sent back; ``rawData`` must hold the same bytes as ``data``."""
    if not isinstance(obj, Mapping):
        raise FrameFormatError(f"a frame object is needed, got {type(obj).__name__}")
    unknown = sorted(str(k) for k in set(obj) - _NODERED_KEYS)
    if unknown:
        hints = "; ".join(f"{k!r}: {_KEY_HINTS[k]}" for k in unknown if k in _KEY_HINTS)
        raise FrameFormatError(
            f"unknown key(s) {', '.join(unknown)} in frame object" + (f" ({hints})" if hints else "")
            + f"; known keys: {', '.join(sorted(_NODERED_KEYS))}"
        )
    if "canid" not in obj:
        raise FrameFormatError("frame object has no 'canid'")
    can_id = obj["canid"]
    if isinstance(can_id, bool) or not isinstance(can_id, int):
        raise FrameFormatError(f"'canid' must be an integer, got {can_id!r}")
    flags = {}
    for key in ("ext", "rtr", "canfd", "brs", "err"):
        v = obj.get(key, False)
        if v is None:
            v = False
        if not isinstance(v, bool):
            raise FrameFormatError(f"'{key}' must be true or false, got {v!r}")
        flags[key] = v
    if flags["err"]:
        raise FrameFormatError(
            "'err': true marks an error frame; error frames are reported by controllers and cannot be sent"
        )
    ts = obj.get("timestamp")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, (int, float))):
        raise FrameFormatError(f"'timestamp' must be a number (ms since the epoch) or null, got {ts!r}")
    bus = obj.get("bus")
    if bus is not None and not isinstance(bus, str):
        raise FrameFormatError(f"'bus' must be a bus name or null, got {bus!r}")
    limit = CAN_EFF_MASK if flags["ext"] else CAN_SFF_MASK
    if not 0 <= can_id <= limit:
        kind = "extended" if flags["ext"] else "standard (set ext: true for 29-bit ids)"
        raise FrameFormatError(f"'canid' {can_id} is outside 0..{limit} for a {kind} frame")
    data = _data(obj.get("data"), "'data'")
    if obj.get("rawData") is not None and _data(obj["rawData"], "'rawData'") != data:
        raise FrameFormatError("'rawData' and 'data' hold different bytes; give one of them")
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
        return Frame(can_id, b"", extended=flags["ext"], rtr=True, dlc=dlc or 0, bus=bus)
    if dlc is not None and dlc != len(data):
        raise FrameFormatError(f"'dlc' {dlc} does not match {len(data)} data bytes")
    return Frame(can_id, data, extended=flags["ext"], fd=flags["canfd"], brs=flags["brs"], bus=bus)


def parse_frame(obj: object) -> Frame:
    """Parse a raw frame given as a :class:`Frame`, a cansend string, ``{"cansend": "..."}`` or a frame
    object."""
    if isinstance(obj, Frame):
        return obj
    if isinstance(obj, str):
        return parse_cansend(obj)
    if isinstance(obj, Mapping):
        if "cansend" in obj:  # {"cansend": "123#DEADBEEF"}: the string form inside a JSON object
            if len(obj) != 1:
                raise FrameFormatError("give either {'cansend': '...'} or a frame object, not both")
            if not isinstance(obj["cansend"], str):
                raise FrameFormatError("'cansend' must be a string such as 123#DEADBEEF")
            return parse_cansend(obj["cansend"])
        return parse_frame_object(obj)
    raise FrameFormatError(
        f"a frame must be a cansend string or a frame object, got {type(obj).__name__}"
    )


def format_cansend(frame: Frame) -> str:
    """Format a frame as a cansend string (the same as ``frame.to_cansend()``)."""
    return frame.to_cansend()


def to_nodered(frame: Frame) -> dict[str, object]:
    """The frame in node-red-contrib-socketcan's format (the same as ``frame.to_nodered()``)."""
    return frame.to_nodered()
