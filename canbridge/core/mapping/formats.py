"""Mapping file formats: DBC, KCD, SYM and ARXML through cantools, and hand-written YAML signals.

Every loader turns a file into cantools ``Message`` objects, so everything downstream (codec,
store, northbound plugins) works on one representation. Errors name the file, the line and the
cause (:class:`canbridge.MappingError`, or :class:`canbridge.ConfigError` listing every problem
of a YAML signals file).

Lenient mode (``strict: false``) loads what cantools' strict mode rejects: signals that overlap or
do not fit their message, and (DBC only) real-world syntax problems that cantools cannot parse at
all, which are rewritten before parsing with one warning per change on the
``canbridge.mapping`` logger:

* message or signal names that start with a digit (``BO_ 1275 2017_5: 8 XXX``) get a ``_``
  prefix, in their definition and in every reference (comments, attributes, value tables);
* a frame id of more than 11 bits without the extended flag (bit 31) is loaded as an extended
  (29-bit) id;
* a value table line (``VAL_``) that lacks its closing ``;`` gets one.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cantools.database.can
from cantools.database.conversion import BaseConversion
from cantools.database.namedsignalvalue import NamedSignalValue
from pydantic import Field, ValidationError, field_validator, model_validator

from canbridge._errors import ConfigError, MappingError, Problem
from canbridge._plugin import MappingFormat
from canbridge.config import LineMap, Strict, load_yaml, problems_from_validation
from canbridge.core.mapping.codec import fits

Message = cantools.database.can.Message
Signal = cantools.database.can.Signal

log = logging.getLogger("canbridge.mapping")

SUFFIXES: dict[str, str] = {
    ".dbc": "dbc",
    ".kcd": "kcd",
    ".sym": "sym",
    ".arxml": "arxml",
    ".yaml": "yaml",
    ".yml": "yaml",
}

_LENIENT_HINT = "fix the file, or set strict: false to load it leniently"


def detect_format(path: Path | str) -> str:
    """The mapping format of a file, from its suffix (case-insensitive)."""
    suffix = Path(path).suffix.lower()
    try:
        return SUFFIXES[suffix]
    except KeyError:
        known = ", ".join(SUFFIXES)
        what = f"suffix {suffix!r}" if suffix else "no suffix"
        raise MappingError(
            f"cannot tell the mapping format from {what}: expected one of {known}, "
            "or give the format with 'format:'",
            file=str(path),
        ) from None


def _read(path: Path, encoding: str) -> str:
    if not path.exists():
        raise MappingError("file not found", file=str(path))
    if path.is_dir():
        raise MappingError("is a directory, not a mapping file", file=str(path))
    try:
        # Like cantools: undecodable bytes (often in comments) must not stop the load.
        return path.read_text(encoding=encoding, errors="replace")
    except OSError as e:
        raise MappingError(f"cannot read: {e.strerror or e}", file=str(path)) from e


# --- DBC lenient fix-ups ------------------------------------------------------------------------------

_NAME = r"[A-Za-z0-9_]+"
_BO = re.compile(rf"^(\s*BO_\s+)(\d+)(\s+)({_NAME})(\s*:)")
_SG = re.compile(rf"^(\s*SG_\s+)({_NAME})(\s)")
# Lines that refer to a message by id, and possibly to one of its signals by name right after.
_REFS = [
    re.compile(rf"^(\s*CM_\s+SG_\s+)(\d+)(\s+)({_NAME})\b"),
    re.compile(rf"^(\s*BA_\s+\"[^\"]*\"\s+SG_\s+)(\d+)(\s+)({_NAME})\b"),
    re.compile(rf"^(\s*VAL_\s+)(\d+)(\s+)({_NAME})\b"),
    re.compile(rf"^(\s*SIG_VALTYPE_\s+)(\d+)(\s+)({_NAME})\b"),
    re.compile(rf"^(\s*SG_MUL_VAL_\s+)(\d+)(\s+)({_NAME})\b"),
    re.compile(rf"^(\s*BA_REL_\s+\"[^\"]*\"\s+BU_SG_REL_\s+{_NAME}\s+SG_\s+)(\d+)(\s+)({_NAME})\b"),
]
_ID_REFS = [
    re.compile(r"^(\s*CM_\s+BO_\s+)(\d+)()()\b"),
    re.compile(r"^(\s*BA_\s+\"[^\"]*\"\s+BO_\s+)(\d+)()()\b"),
    re.compile(r"^(\s*BO_TX_BU_\s+)(\d+)()()\b"),
    re.compile(r"^(\s*SIG_GROUP_\s+)(\d+)()()\b"),
    re.compile(r"^(\s*BA_REL_\s+\"[^\"]*\"\s+BU_BO_REL_\s+\S+\s+)(\d+)()()\b"),
]
_EXTENDED = 0x80000000
# A whole VAL_ line (id, signal, value/text pairs) that ends without ';'.
_VAL_UNTERMINATED = re.compile(rf'^\s*VAL_\s+\d+\s+{_NAME}(\s+-?\d+\s+"[^"]*")+\s*$')


@dataclass(frozen=True)
class FixUp:
    """One change lenient mode made to a file before parsing it."""

    line: int
    change: str


def _fresh(name: str, taken: set[str]) -> str:
    new = "_" + name
    while new in taken:
        new = "_" + new
    taken.add(new)
    return new


def lenient_dbc_fixups(text: str) -> tuple[str, list[FixUp]]:
    """Rewrite what cantools cannot parse in real-world DBC files; return the text and the changes."""
    lines = text.split("\n")
    fixes: list[FixUp] = []
    ids: dict[int, int] = {}  # old id -> new id
    signal_names: dict[tuple[int, str], str] = {}  # (old id, old name) -> new name
    message_names = {m.group(4) for line in lines if (m := _BO.match(line))}
    current: int | None = None
    taken_signals: set[str] = set()
    for n, line in enumerate(lines):
        if _VAL_UNTERMINATED.match(line):
            lines[n] = line.rstrip() + " ;"
            fixes.append(FixUp(n + 1, "value table (VAL_) without its closing ';': added"))
            continue
        m = _BO.match(line)
        if m:
            current = int(m.group(2))
            taken_signals = set()
            frame_id, name = current, m.group(4)
            if name[0].isdigit():
                new = _fresh(name, message_names)
                fixes.append(FixUp(n + 1, f"message name {name!r} starts with a digit: renamed to {new!r}"))
                name = new
            if not frame_id & _EXTENDED and 0x7FF < frame_id < (1 << 29):
                ids[frame_id] = frame_id | _EXTENDED
                fixes.append(
                    FixUp(
                        n + 1,
                        f"frame id {frame_id:#x} of message {name} has more than 11 bits but no "
                        "extended flag: loaded as an extended (29-bit) id",
                    )
                )
                frame_id |= _EXTENDED
            lines[n] = f"{m.group(1)}{frame_id}{m.group(3)}{name}{m.group(5)}{line[m.end() :]}"
            continue
        m = _SG.match(line)
        if m and current is not None:
            name = m.group(2)
            taken_signals.add(name)
            if name[0].isdigit():
                new = _fresh(name, taken_signals)
                signal_names[(current, name)] = new
                fixes.append(FixUp(n + 1, f"signal name {name!r} starts with a digit: renamed to {new!r}"))
                lines[n] = f"{m.group(1)}{new}{m.group(3)}{line[m.end() :]}"
            continue
        if line.strip():
            current = None  # a message's SG_ lines follow its BO_ line
    if not fixes:
        return text, []
    for n, line in enumerate(lines):
        for pattern in _REFS + _ID_REFS:
            m = pattern.match(line)
            if not m:
                continue
            old_id = int(m.group(2))
            new_id = ids.get(old_id, old_id)
            name = m.group(4)
            if name:
                name = signal_names.get((old_id, name), name)
            if new_id != old_id or name != m.group(4):
                lines[n] = f"{m.group(1)}{new_id}{m.group(3)}{name}{line[m.end() :]}"
            break
    return "\n".join(lines), fixes


# --- cantools formats -----------------------------------------------------------------------------

_SIGNAL_ERRORS = [
    # (pattern, group with a signal name or None, group with the message name)
    (re.compile(r"The signal (\S+) does not fit in message (\S+)\."), 1, 2),
    (re.compile(r"The signals (\S+) and (\S+) are overlapping in message (\S+)\."), 1, 3),
    (re.compile(r"The signal (\S+) length (-?\d+) is not greater than 0 in message (\S+)\."), 1, 3),
    (
        re.compile(r"(?:Standard|Extended) frame id 0x[0-9a-fA-F]+ is more than \d+ bits in message (\S+)\."),
        None,
        1,
    ),
]


def _dbc_line(text: str, message: str, signal: str | None) -> int | None:
    """Line of a message's BO_ definition, or of one of its signals' SG_ line."""
    lines = text.split("\n")
    for n, line in enumerate(lines):
        m = _BO.match(line)
        if not m or m.group(4) != message:
            continue
        if signal is None:
            return n + 1
        for k in range(n + 1, len(lines)):
            s = _SG.match(lines[k])
            if s and s.group(2) == signal:
                return k + 1
            if _BO.match(lines[k]):
                break
        return n + 1
    return None


def _text_line(text: str, *names: str) -> int | None:
    """First line naming all of ``names`` (KCD, SYM, ARXML: the definition is close to it)."""
    for n, line in enumerate(text.split("\n")):
        if all(re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", line) for name in names):
            return n + 1
    return None


def _semantic_error(e: Exception, path: Path, text: str, fmt: str, strict: bool) -> MappingError:
    message = str(e).strip().strip('"')
    for pattern, signal_group, message_group in _SIGNAL_ERRORS:
        m = pattern.search(message)
        if not m:
            continue
        msg_name = m.group(message_group)
        sig_name = m.group(signal_group) if signal_group else None
        if fmt == "dbc":
            line = _dbc_line(text, msg_name, sig_name)
        else:
            line = (_text_line(text, sig_name) if sig_name else None) or _text_line(text, msg_name)
        hint = f"; {_LENIENT_HINT}" if strict else ""
        if "frame id" in message and not strict:
            hint = "; lenient mode cannot fix a frame id of more than 29 bits"
        return MappingError(f"{message.rstrip('.')}{hint}", file=str(path), line=line)
    return MappingError(f"{fmt.upper()}: {message}", file=str(path))


def _parse_error(e: Exception, path: Path, text: str, strict: bool) -> MappingError:
    line: int | None = getattr(e, "line", None)
    column = getattr(e, "column", None)
    message = str(e)
    m = re.match(r"Invalid syntax at line \d+, column \d+: (.*)", message, re.S)
    detail = m.group(1) if m else message
    where = f" at column {column}" if column is not None else ""
    hint = ""
    if strict and line is not None:
        fixes = [f for f in lenient_dbc_fixups(text)[1] if f.line == line]
        if fixes:
            hint = f"; {_LENIENT_HINT}, which would fix this: {fixes[0].change}"
    return MappingError(f"invalid syntax{where}: {detail}{hint}", file=str(path), line=line)


def _load_cantools(path: Path, strict: bool, fmt: str) -> list[Message]:
    text = _read(path, "cp1252" if fmt == "dbc" else "utf-8")
    original = text
    if fmt == "dbc" and not strict:
        text, fixes = lenient_dbc_fixups(text)
        for fix in fixes:
            log.warning("%s:%d: lenient mode: %s", path, fix.line, fix.change)
    db = cantools.database.can.Database(strict=strict)
    add: Callable[[str], None] = getattr(db, f"add_{fmt}_string")
    try:
        add(text)
    except Exception as e:  # cantools raises many types; each becomes a MappingError with the file
        position = getattr(e, "position", None)  # xml.etree's ParseError: (line, column)
        if isinstance(position, tuple):
            raise MappingError(f"invalid XML: {e}", file=str(path), line=position[0]) from e
        if type(e).__name__ == "ParseError":  # textparser (DBC, SYM)
            raise _parse_error(e, path, original, strict) from e
        if isinstance(e, cantools.database.errors.Error):
            raise _semantic_error(e, path, text, fmt, strict) from e
        raise MappingError(f"cannot load {fmt.upper()}: {type(e).__name__}: {e}", file=str(path)) from e
    if not strict:
        for message in db.messages:
            _warn_lenient(message, path, text, fmt)
    return list(db.messages)


def _warn_lenient(message: Message, path: Path, text: str, fmt: str) -> None:
    """Say what strict mode would have rejected in a leniently loaded message, with its line."""
    inside = []
    for signal in message.signals:
        if fits(signal, message.length):
            inside.append(signal)
            continue
        line = _dbc_line(text, message.name, signal.name) if fmt == "dbc" else _text_line(text, signal.name)
        log.warning(
            "%s:%s: lenient mode: signal %s does not fit in message %s (%d bytes): it is not decoded",
            path,
            line,
            signal.name,
            message.name,
            message.length,
        )
    try:
        Message(
            message.frame_id,
            message.name,
            message.length,
            inside,
            is_extended_frame=message.is_extended_frame,
            strict=True,
        )
    except cantools.database.errors.Error as e:
        error = _semantic_error(e, path, text, fmt, strict=False)
        log.warning(
            "%s:%s: lenient mode: %s: each is decoded from its own bits", path, error.line, error.detail
        )


def load_dbc(path: Path, strict: bool = True) -> list[Message]:
    """Load a DBC file (cp1252, as cantools does); lenient mode applies :func:`lenient_dbc_fixups`."""
    return _load_cantools(path, strict, "dbc")


def load_kcd(path: Path, strict: bool = True) -> list[Message]:
    """Load a KCD (Kayak) file."""
    return _load_cantools(path, strict, "kcd")


def load_sym(path: Path, strict: bool = True) -> list[Message]:
    """Load a SYM (PCAN Symbol Editor) file."""
    return _load_cantools(path, strict, "sym")


def load_arxml(path: Path, strict: bool = True) -> list[Message]:
    """Load an AUTOSAR ARXML file."""
    return _load_cantools(path, strict, "arxml")


# --- YAML signals -------------------------------------------------------------------------------

FD_LENGTHS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64)


class SignalSpec(Strict):
    """One hand-written signal (bit numbering as in DBC files)."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    start: int = Field(ge=0, le=511, description="start bit, DBC convention (big-endian: the MSB)")
    length: int = Field(ge=1, le=64)
    byte_order: Literal["little_endian", "big_endian"] = "little_endian"
    type: Literal["unsigned", "signed", "float"] = "unsigned"
    scale: float = 1
    offset: float = 0
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    initial: float | None = Field(None, description="physical initial value (DBC: GenSigStartValue)")
    choices: dict[int, str] | None = Field(None, description="raw value -> text")
    comment: str | None = None
    multiplexer: bool = Field(False, description="this signal selects the multiplexed signals")
    multiplexer_ids: list[int] | None = Field(
        None, min_length=1, description="present only when the multiplexer has one of these values"
    )
    multiplexer_signal: str | None = Field(
        None, description="the multiplexer of multiplexer_ids; default: the message's only multiplexer"
    )

    @field_validator("scale")
    @classmethod
    def _nonzero(cls, v: float) -> float:
        if v == 0:
            raise ValueError("scale must not be 0")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> SignalSpec:
        if self.type == "float" and self.length not in (16, 32, 64):
            raise ValueError("a float signal is 16, 32 or 64 bits long")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        if self.multiplexer_signal is not None and self.multiplexer_ids is None:
            raise ValueError("multiplexer_signal needs multiplexer_ids")
        return self


class MessageSpec(Strict):
    """One hand-written message."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    id: int = Field(ge=0, description="frame id; 0x... is fine")
    extended: bool = Field(False, description="29-bit id")
    length: int = Field(8, ge=0, le=64, description="data bytes")
    fd: bool = False
    cycle_time_ms: int | None = Field(None, ge=1, description="expected period (DBC: GenMsgCycleTime)")
    comment: str | None = None
    senders: list[str] = Field(default_factory=list)
    signals: list[SignalSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _frame(self) -> MessageSpec:
        limit = 29 if self.extended else 11
        if self.id >= 1 << limit:
            kind = "an extended" if self.extended else "a standard"
            raise ValueError(f"id {self.id:#x} does not fit {kind} frame ({limit} bits)")
        if not self.fd and self.length > 8:
            raise ValueError(f"length {self.length}: a classic CAN frame has at most 8 bytes (set fd: true)")
        if self.fd and self.length not in FD_LENGTHS:
            raise ValueError(f"length {self.length} is not a CAN FD length {FD_LENGTHS}")
        return self


class SignalsFile(Strict):
    """A YAML signals file: ``messages:`` and nothing else."""

    messages: list[MessageSpec] = Field(min_length=1)


def _build_signal(spec: SignalSpec, mux_name: str | None) -> Signal:
    choices: OrderedDict[int, str | NamedSignalValue] | None = None
    if spec.choices:
        choices = OrderedDict((raw, NamedSignalValue(raw, text)) for raw, text in spec.choices.items())
    conversion = BaseConversion.factory(
        scale=_num(spec.scale), offset=_num(spec.offset), choices=choices, is_float=spec.type == "float"
    )
    raw_initial = None if spec.initial is None else conversion.numeric_scaled_to_raw(spec.initial)
    return Signal(
        name=spec.name,
        start=spec.start,
        length=spec.length,
        byte_order=spec.byte_order,
        is_signed=spec.type == "signed",
        raw_initial=raw_initial,
        conversion=conversion,
        minimum=spec.min,
        maximum=spec.max,
        unit=spec.unit,
        comment=spec.comment,
        is_multiplexer=spec.multiplexer,
        multiplexer_ids=spec.multiplexer_ids,
        multiplexer_signal=mux_name if spec.multiplexer_ids is not None else None,
    )


def _num(value: float) -> float:
    """Whole numbers as int, as the DBC parser gives them (cantools picks integer arithmetic then)."""
    return int(value) if float(value).is_integer() else value


def _line(lines: LineMap, *path: str | int) -> int | None:
    key = tuple(path)
    while key:
        if key in lines:
            return lines[key]
        key = key[:-1]
    return None


def _path(*parts: str | int) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + part
    return out


def _check_and_build(
    spec: SignalsFile, file: str, lines: LineMap, strict: bool
) -> tuple[list[Message], list[Problem]]:
    problems: list[Problem] = []
    messages: list[Message] = []

    def problem(message: str, *where: str | int) -> None:
        problems.append(Problem(message, file, _line(lines, *where), _path(*where)))

    seen_names: dict[str, int] = {}
    seen_ids: dict[tuple[int, bool], str] = {}
    for i, msg in enumerate(spec.messages):
        at = ("messages", i)
        if msg.name in seen_names:
            problem(
                f"message name {msg.name!r} is used twice (also messages[{seen_names[msg.name]}])",
                *at,
                "name",
            )
        seen_names.setdefault(msg.name, i)
        key = (msg.id, msg.extended)
        if key in seen_ids:
            problem(f"id {msg.id:#x} is used twice (also message {seen_ids[key]})", *at, "id")
        seen_ids.setdefault(key, msg.name)

        names: dict[str, int] = {}
        muxes = [s.name for s in msg.signals if s.multiplexer]
        # multiplexer_ids without multiplexer_signal refer to the only top-level multiplexer
        top = [s.name for s in msg.signals if s.multiplexer and s.multiplexer_ids is None]
        default_mux = top[0] if len(top) == 1 else None
        message_ok = True
        for j, sig in enumerate(msg.signals):
            sat = (*at, "signals", j)
            if sig.name in names:
                problem(f"signal name {sig.name!r} is used twice in message {msg.name}", *sat, "name")
                message_ok = False
            names.setdefault(sig.name, j)
            if sig.multiplexer_ids is not None:
                target = sig.multiplexer_signal
                if target is None and default_mux is None:
                    why = "has no multiplexer" if not top else f"has several ({', '.join(top)})"
                    problem(
                        f"multiplexer_ids given but message {msg.name} {why}; name it with "
                        "multiplexer_signal",
                        *sat,
                        "multiplexer_ids",
                    )
                    message_ok = False
                elif target is not None and target not in muxes:
                    problem(
                        f"{target!r} is not a multiplexer of message {msg.name}", *sat, "multiplexer_signal"
                    )
                    message_ok = False
                elif (target or default_mux) == sig.name:
                    problem("a multiplexer cannot select itself", *sat, "multiplexer_ids")
                    message_ok = False
        if not message_ok:
            continue
        built: list[Signal] = []
        for j, sig in enumerate(msg.signals):
            try:
                signal = _build_signal(sig, sig.multiplexer_signal or default_mux)
            except (ValueError, TypeError, OverflowError) as e:
                problem(f"cannot build signal {sig.name}: {e}", *at, "signals", j)
                continue
            low, high = (
                (-(1 << (sig.length - 1)), (1 << (sig.length - 1)) - 1)
                if sig.type == "signed"
                else (0, (1 << sig.length) - 1)
            )
            if (
                sig.type != "float"
                and signal.raw_initial is not None
                and not low <= signal.raw_initial <= high
            ):
                problem(
                    f"initial {sig.initial} is raw {signal.raw_initial}, outside {low}..{high}",
                    *at,
                    "signals",
                    j,
                    "initial",
                )
            built.append(signal)
        if len(built) != len(msg.signals):
            continue
        kwargs: dict[str, Any] = dict(
            frame_id=msg.id,
            name=msg.name,
            length=msg.length,
            signals=built,
            comment=msg.comment,
            senders=msg.senders,
            cycle_time=msg.cycle_time_ms,
            is_extended_frame=msg.extended,
            is_fd=msg.fd,
        )
        try:
            messages.append(Message(**kwargs, strict=True))
            continue
        except cantools.database.errors.Error as e:
            error = str(e)
        where: tuple[str | int, ...] = at
        for pattern, signal_group, _ in _SIGNAL_ERRORS:
            m = pattern.search(error)
            if m and signal_group and m.group(signal_group) in names:
                where = (*at, "signals", names[m.group(signal_group)])
        if strict:
            problem(f"{error.rstrip('.')}; {_LENIENT_HINT}", *where)
            continue
        log.warning("%s:%s: lenient mode: %s", file, _line(lines, *where), error)
        try:
            messages.append(Message(**kwargs, strict=False))
        except cantools.database.errors.Error as e:
            problem(str(e), *where)
    return messages, problems


def load_signals_yaml(path: Path, strict: bool = True) -> list[Message]:
    """Load hand-written YAML signals; raise ConfigError listing every problem with its line."""
    if not path.exists():
        raise MappingError("file not found", file=str(path))
    data, lines = load_yaml(path)
    file = str(path)
    if not isinstance(data, dict):
        raise ConfigError([Problem("a signals file is a mapping with 'messages:'", file, 1)])
    try:
        spec = SignalsFile.model_validate(data)
    except ValidationError as e:
        raise ConfigError(problems_from_validation(e, file, lines)) from None
    messages, problems = _check_and_build(spec, file, lines, strict)
    if problems:
        raise ConfigError(problems)
    return messages


# --- registry ------------------------------------------------------------------------------------

FORMATS: list[MappingFormat] = [
    MappingFormat("dbc", (".dbc",), load_dbc, "Vector DBC (cantools)"),
    MappingFormat("kcd", (".kcd",), load_kcd, "Kayak KCD (cantools)"),
    MappingFormat("sym", (".sym",), load_sym, "PCAN Symbol Editor SYM (cantools)"),
    MappingFormat("arxml", (".arxml",), load_arxml, "AUTOSAR ARXML (cantools)"),
    MappingFormat("yaml", (".yaml", ".yml"), load_signals_yaml, "hand-written signals (YAML)"),
]
