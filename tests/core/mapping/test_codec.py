"""Generated decoders and encoders (canbridge.core.mapping.codec) against cantools, on the demo DBC and on
hand-built messages; random bit layouts with hypothesis."""

from __future__ import annotations

import math
import random
import struct
from pathlib import Path
from typing import Any

import cantools
import pytest
from cantools.database.can import Message, Signal
from cantools.database.conversion import BaseConversion
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canbridge.core.mapping.codec import (
    compile_decoder,
    compile_encoder,
    compile_message_encoder,
    initial_payload,
)
from tests.core.mapping.cantools_helpers import decoded, encode_message, same

DEMO = Path(__file__).resolve().parents[3] / "mappings" / "demo" / "demo.dbc"


@pytest.fixture(scope="module")
def demo() -> cantools.database.can.Database:
    db = cantools.database.load_file(DEMO)
    assert isinstance(db, cantools.database.can.Database)
    return db


def decode_all(message: Message, data: bytes, bools: tuple[str, ...] = ()) -> dict[str, Any]:
    """Decode into fresh values and return what the decoder reported as changed."""
    indices = {s.name: i for i, s in enumerate(message.signals)}
    values: list[Any] = [None] * len(indices)
    changed: list[int] = []
    compile_decoder(message, indices, bools)(data, values, changed)
    names = {i: n for n, i in indices.items()}
    assert len(changed) == len(set(changed))
    return {names[i]: values[i] for i in changed}


def assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert set(got) == set(want)
    bad = {k: (got[k], want[k]) for k in want if not same(got[k], want[k])}
    assert not bad, bad


def msg(signals: list[Signal], length: int = 8, name: str = "M", strict: bool = True) -> Message:
    return Message(0x123, name, length, signals, strict=strict)


def test_demo_messages_decode_like_cantools(demo: cantools.database.can.Database) -> None:
    rng = random.Random(7)
    for message in demo.messages:
        for _ in range(300):
            data = bytes(rng.getrandbits(8) for _ in range(message.length))
            if message.is_multiplexed():
                data = bytes([rng.randrange(3)]) + data[1:]
            assert_same(decode_all(message, data), decoded(message, data, decode_choices=False))


def test_types_follow_cantools(demo: cantools.database.can.Database) -> None:
    got = decode_all(demo.get_message_by_name("MotorStatus"), bytes(8))
    assert type(got["MotorSpeed"]) is int  # identity conversion
    assert type(got["MotorTemperature"]) is int and got["MotorTemperature"] == -40  # (1, -40): integer
    assert type(got["MotorCurrent"]) is float  # scale 0.1
    power = decode_all(demo.get_message_by_name("PowerStatus"), struct.pack("<f", 12.5) + bytes(4))
    assert power["MotorPower"] == 12.5 and type(power["MotorPower"]) is float


def test_only_changed_values_are_reported(demo: cantools.database.can.Database) -> None:
    message = demo.get_message_by_name("MotorStatus")
    indices = {s.name: i for i, s in enumerate(message.signals)}
    decoder = compile_decoder(message, indices)
    values: list[Any] = [None] * len(indices)
    changed: list[int] = []
    decoder(bytes(8), values, changed)
    assert sorted(changed) == sorted(indices.values())
    changed.clear()
    decoder(bytes(8), values, changed)
    assert changed == []
    decoder(bytes([0, 0, 50, 0, 0, 0, 0, 0]), values, changed)
    assert changed == [indices["MotorTemperature"]]
    assert values[indices["MotorTemperature"]] == 10


def test_nan_is_not_a_change_every_frame(demo: cantools.database.can.Database) -> None:
    message = demo.get_message_by_name("PowerStatus")
    decoder = compile_decoder(message, {"MotorPower": 0})
    values: list[Any] = [None]
    changed: list[int] = []
    nan = struct.pack("<f", math.nan) + bytes(4)
    decoder(nan, values, changed)
    assert changed == [0] and math.isnan(values[0])
    changed.clear()
    decoder(nan, values, changed)
    assert changed == []
    decoder(struct.pack("<f", 1.0) + bytes(4), values, changed)
    assert changed == [0] and values[0] == 1.0


def test_bools_and_subset_of_indices(demo: cantools.database.can.Database) -> None:
    message = demo.get_message_by_name("MotorStatus")
    decoder = compile_decoder(message, {"MotorEnabled": 1, "MotorState": 0}, bools={"MotorEnabled"})
    values: list[Any] = [None, None]
    changed: list[int] = []
    decoder(bytes([0, 0, 0, 0, 0, 0x12, 0, 0]), values, changed)
    assert values == [2, True] and type(values[1]) is bool
    decoder(bytes([0, 0, 0, 0, 0, 0x02, 0, 0]), values, changed)
    assert values == [2, False] and type(values[1]) is bool


def test_short_payload_raises_longer_uses_the_first_bytes(demo: cantools.database.can.Database) -> None:
    message = demo.get_message_by_name("VehicleInfo")
    decoder = compile_decoder(message, {s.name: i for i, s in enumerate(message.signals)})
    with pytest.raises(ValueError, match="VehicleInfo needs 8 data bytes, got 7"):
        decoder(bytes(7), [None] * 3, [])
    with pytest.raises(cantools.database.DecodeError):
        decoded(message, bytes(7))
    data = bytes(range(1, 9))
    assert_same(decode_all(message, data + b"\xff" * 8), decoded(message, data, decode_choices=False))


def test_unknown_multiplexer_value_decodes_the_multiplexer_only(demo: cantools.database.can.Database) -> None:
    message = demo.get_message_by_name("Diagnostics")
    with pytest.raises(cantools.database.DecodeError):
        decoded(message, bytes([9, 1, 2, 3, 4, 5, 6, 7]))
    assert decode_all(message, bytes([9, 1, 2, 3, 4, 5, 6, 7])) == {"DiagPage": 9}


NESTED = """VERSION ""
BO_ 100 Nested: 8 X
 SG_ Outer M : 0|4@1+ (1,0) [0|15] "" X
 SG_ Inner m1M : 4|4@1+ (1,0) [0|15] "" X
 SG_ A m0 : 8|8@1+ (1,0) [0|255] "" X
 SG_ B m1 : 8|16@1+ (1,0) [0|65535] "" X
 SG_ C m2 : 24|8@1- (0.5,1) [0|255] "" X
 SG_ D m3 : 24|16@0+ (1,0) [0|65535] "" X
 SG_ E m1 : 56|8@1+ (1,0) [0|255] "" X
SG_MUL_VAL_ 100 Inner Outer 1-1;
SG_MUL_VAL_ 100 A Outer 0-0;
SG_MUL_VAL_ 100 B Inner 1-1;
SG_MUL_VAL_ 100 C Inner 2-2, 5-6;
SG_MUL_VAL_ 100 D Inner 3-3;
SG_MUL_VAL_ 100 E Outer 1-1;
"""


def test_nested_multiplexers() -> None:
    db = cantools.database.can.Database()
    db.add_dbc_string(NESTED)
    message = db.get_message_by_name("Nested")
    assert any(isinstance(n, dict) for n in message.signal_tree)
    rng = random.Random(3)
    seen = set()
    for _ in range(400):
        data = bytes([rng.choice([0x00, 0x11, 0x21, 0x31, 0x51, 0x61, 0x71, 0x02])]) + rng.randbytes(7)
        try:
            want = decoded(message, data, decode_choices=False)
        except cantools.database.DecodeError:
            continue
        seen.add(tuple(sorted(want)))
        assert_same(decode_all(message, data), want)
    assert len(seen) >= 4
    # encoding follows the same branches
    for values in ({"Outer": 1, "Inner": 2, "C": 3.5, "E": 9}, {"Outer": 0, "A": 7}):
        full = {s.name: 0 for s in message.signals} | values
        assert encode_message(message, values) == message.encode(full, strict=False)


def test_many_multiplexer_ids_use_branch_functions() -> None:
    signals = [Signal("Page", 0, 8, is_multiplexer=True)]
    for page in range(20):
        signals.append(
            Signal(
                f"S{page}",
                8 + (page % 4) * 8,
                8,
                is_signed=page % 2 == 1,
                multiplexer_ids=[page],
                multiplexer_signal="Page",
            )
        )
    message = msg(signals)
    rng = random.Random(5)
    for page in range(22):
        data = bytes([page]) + rng.randbytes(7)
        got = decode_all(message, data)
        if page < 20:
            assert_same(got, decoded(message, data, decode_choices=False))
        else:
            assert got == {"Page": page}


def test_scaled_multiplexer_selects_by_int_of_scaled_value() -> None:
    # cantools looks the branch up by int() of the multiplexer's scaled value
    signals = [
        Signal("Mux", 0, 8, is_multiplexer=True, conversion=BaseConversion.factory(scale=0.5)),
        Signal("X", 8, 8, multiplexer_ids=[2], multiplexer_signal="Mux"),
        Signal("Y", 8, 8, multiplexer_ids=[3], multiplexer_signal="Mux"),
    ]
    message = msg(signals)
    for first in (4, 5, 6, 7):
        data = bytes([first, 42]) + bytes(6)
        assert_same(decode_all(message, data), decoded(message, data, decode_choices=False))


# --- encoders ------------------------------------------------------------------------------------


def test_to_raw_rounds_and_checks_range(demo: cantools.database.can.Database) -> None:
    message = demo.get_message_by_name("MotorStatus")
    current = compile_encoder(message, "MotorCurrent")
    assert current.to_raw(12.34) == 123
    assert current.to_raw(-0.1) == 0xFFFF  # two's complement bits
    with pytest.raises(ValueError, match="MotorCurrent of message MotorStatus: raw value 40000"):
        current.to_raw(4000.0)
    with pytest.raises(ValueError, match=r"MotorCurrent.*cannot encode 'x'"):
        current.to_raw("x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="MotorCurrent"):
        current.to_raw(math.nan)
    temp = compile_encoder(message, "MotorTemperature")
    assert temp.to_raw(-40) == 0 and temp.to_raw(215) == 255
    with pytest.raises(ValueError, match="MotorTemperature"):
        temp.to_raw(216)


def test_float_to_raw_packs_ieee(demo: cantools.database.can.Database) -> None:
    power = compile_encoder(demo.get_message_by_name("PowerStatus"), "MotorPower")
    assert power.to_raw(1.5) == struct.unpack(">I", struct.pack(">f", 1.5))[0]
    with pytest.raises(ValueError, match="MotorPower"):
        power.to_raw(1e40)


def test_insert_touches_only_the_signal(demo: cantools.database.can.Database) -> None:
    rng = random.Random(11)
    for message in demo.messages:
        for signal in message.signals:
            encoder = compile_encoder(message, signal)
            for _ in range(20):
                payload = rng.randbytes(message.length)
                raw = rng.getrandbits(signal.length)
                out = encoder.insert(payload, raw)
                assert len(out) == message.length
                # cantools agrees on every signal but this one
                before = (
                    decoded(message, payload, decode_choices=False, scaling=False)
                    if not (message.is_multiplexed())
                    else None
                )
                if before is not None:
                    after = decoded(message, out, decode_choices=False, scaling=False)
                    for name in before:
                        if name != signal.name:
                            assert same(after[name], before[name]), (message.name, signal.name, name)
                # and reading the bits back gives the raw value
                field_only = encoder.insert(bytes(message.length), raw)
                assert encoder.insert(field_only, 0) == bytes(message.length)


def test_insert_keeps_bytes_beyond_the_length(demo: cantools.database.can.Database) -> None:
    encoder = compile_encoder(demo.get_message_by_name("MotorCommand"), "TorqueLimit")
    assert encoder.insert(bytes(8) + b"\xaa", 0x55) == bytes([0, 0, 0, 0x55, 0, 0, 0, 0, 0xAA])
    with pytest.raises(ValueError, match="needs 8 data bytes"):
        encoder.insert(bytes(3), 1)


def test_encode_message_matches_cantools(demo: cantools.database.can.Database) -> None:
    rng = random.Random(13)
    for message in demo.messages:
        for _ in range(200):
            data = rng.randbytes(message.length)
            if message.is_multiplexed():
                data = bytes([rng.randrange(3)]) + data[1:]
            values = decoded(message, data, decode_choices=False)
            assert encode_message(message, values) == message.encode(values, strict=False)


def test_encode_message_defaults_and_errors(demo: cantools.database.can.Database) -> None:
    command = demo.get_message_by_name("MotorCommand")
    assert encode_message(command, {"SpeedSetpoint": 1000}) == bytes([0xE8, 0x03, 0, 50, 0, 0, 0, 0])
    diag = demo.get_message_by_name("Diagnostics")
    assert encode_message(diag, {"DiagPage": 1, "UptimeSeconds": 5}) == bytes([1, 5, 0, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="multiplexer DiagPage of message Diagnostics: 7 is not one of"):
        encode_message(diag, {"DiagPage": 7})
    with pytest.raises(ValueError, match="SpeedSetpoint"):
        encode_message(command, {"SpeedSetpoint": -1})
    assert compile_message_encoder(command)({}) == initial_payload(command)


def test_initial_payload(demo: cantools.database.can.Database) -> None:
    assert initial_payload(demo.get_message_by_name("MotorCommand")) == bytes([0, 0, 0, 50, 0, 0, 0, 0])
    assert initial_payload(demo.get_message_by_name("MotorStatus")) == bytes(8)
    # multiplexer: initial value when it has a branch, else its lowest id
    signals = [
        Signal("Page", 0, 8, is_multiplexer=True, raw_initial=2),
        Signal("A", 8, 8, raw_initial=7, multiplexer_ids=[1], multiplexer_signal="Page"),
        Signal("B", 8, 8, raw_initial=9, multiplexer_ids=[2], multiplexer_signal="Page"),
        Signal("C", 16, 8, is_signed=True, raw_initial=-1),
    ]
    assert initial_payload(msg(signals)) == bytes([2, 9, 0xFF, 0, 0, 0, 0, 0])
    signals[0].raw_initial = 5
    assert initial_payload(msg(signals, name="Other")) == bytes([1, 7, 0xFF, 0, 0, 0, 0, 0])


# --- random bit layouts (hypothesis) --------------------------------------------------------------


@st.composite
def layouts(draw: st.DrawFn) -> tuple[Message, bytes]:
    """A message with 1-4 non-overlapping random signals and a random payload."""
    length = draw(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 64]))
    total = 8 * length
    used = [False] * total
    signals = []
    for n in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["unsigned", "signed", "float"]))
        order = draw(st.sampled_from(["little_endian", "big_endian"]))
        size = draw(st.sampled_from([16, 32, 64])) if kind == "float" else draw(st.integers(1, 64))
        if size > total:
            continue
        if order == "little_endian":
            start = draw(st.integers(0, total - size))
            bits = range(start, start + size)  # positions in the little-endian integer
            positions = [8 * (b // 8) + b % 8 for b in bits]
        else:
            first = draw(st.integers(0, total - size))  # network order MSB
            start = 8 * (first // 8) + 7 - first % 8
            positions = [8 * (b // 8) + 7 - b % 8 for b in range(first, first + size)]
        if any(used[p] for p in positions):
            continue
        for p in positions:
            used[p] = True
        scale = draw(st.sampled_from([1, 2, 0.1, 0.25, -0.5, 1e-3]))
        offset = draw(st.sampled_from([0, -40, 0.5, 1000]))
        signals.append(
            Signal(
                f"S{n}",
                start,
                size,
                byte_order=order,  # type: ignore[arg-type]  # drawn from the two literals
                is_signed=kind == "signed",
                conversion=BaseConversion.factory(scale=scale, offset=offset, is_float=kind == "float"),
            )
        )
    if not signals:
        signals = [Signal("S", 0, 1)]
    data = draw(st.binary(min_size=length, max_size=length))
    return Message(0x10, "H", length, signals, strict=True), data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layouts())
def test_random_layouts_decode_like_cantools(case: tuple[Message, bytes]) -> None:
    message, data = case
    assert_same(decode_all(message, data), decoded(message, data, decode_choices=False))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layouts())
def test_random_layouts_encode_like_cantools(case: tuple[Message, bytes]) -> None:
    message, data = case
    values = decoded(message, data, decode_choices=False)
    if any(isinstance(v, float) and not math.isfinite(v) for v in values.values()):
        return  # NaN/inf through scale and offset cannot round-trip
    try:
        want = message.encode(values, strict=False)
    except (OverflowError, ValueError):
        want = None  # scaling rounded a value out of its bits: cantools refuses too
    if want is None:
        with pytest.raises(ValueError):
            encode_message(message, values)
        return
    assert encode_message(message, values) == want
    # every signal alone, through insert
    payload = bytes(message.length)
    for signal in message.signals:
        encoder = compile_encoder(message, signal)
        payload = encoder.insert(payload, encoder.to_raw(values[signal.name]))
    assert payload == want


def test_yaml_messages_decode_like_cantools() -> None:
    """Messages built from YAML (FD, nested multiplexers, float64) go through the same codec."""
    from canbridge.core.mapping.formats import load_signals_yaml

    root = Path(__file__).resolve().parents[3]
    files = [
        root / "mappings" / "examples" / "signals.yaml",
        *sorted((root / "tests" / "data" / "signals").glob("*.yaml")),
    ]
    rng = random.Random(17)
    for path in files:
        for message in load_signals_yaml(path):
            muxes = [s for s in message.signals if s.is_multiplexer]
            for n in range(200):
                data = rng.randbytes(message.length)
                if muxes:  # choose existing branches most of the time
                    values = {
                        s.name: rng.choice(
                            sorted(
                                {
                                    i
                                    for c in message.signals
                                    if c.multiplexer_signal == s.name
                                    for i in c.multiplexer_ids or []
                                }
                            )
                        )
                        for s in muxes
                    }
                    base = encode_message(message, values)
                    data = bytes(b | (d if n % 4 == 0 else 0) for b, d in zip(base, data, strict=True))
                try:
                    want = decoded(message, data, decode_choices=False)
                except cantools.database.DecodeError:
                    continue
                assert_same(decode_all(message, data), want)
                assert encode_message(message, want) == message.encode(want, strict=False) or any(
                    isinstance(v, float) and math.isnan(v) for v in want.values()
                )


def test_signal_outside_the_message_is_refused_not_fatal() -> None:
    # lenient files can have signals past the end of the message
    message = msg([Signal("In", 0, 8), Signal("Out", 60, 8)], length=8, strict=False)
    out = compile_encoder(message, "Out")
    with pytest.raises(ValueError, match="signal Out does not fit in message M"):
        out.to_raw(1)
    with pytest.raises(ValueError, match="does not fit"):
        out.insert(bytes(8), 1)
    assert compile_encoder(message, "In").encode(bytes(8), 5) == bytes([5, 0, 0, 0, 0, 0, 0, 0])
    assert decode_all(message, bytes([5, 1, 2, 3, 4, 5, 6, 7])) == {"In": 5}
    assert encode_message(message, {"In": 3, "Out": 1}) == bytes([3, 0, 0, 0, 0, 0, 0, 0])
