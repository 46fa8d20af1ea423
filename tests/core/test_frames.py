"""cansend strings and node-red frame objects (canbridge/_frames.py): every form round-trips and
every malformed form raises FrameFormatError naming what is wrong."""

from __future__ import annotations

import pytest

from canbridge import Frame, FrameFormatError, format_cansend, parse_cansend, parse_frame, parse_frame_object


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("123#DEADBEEF", Frame(0x123, bytes.fromhex("DEADBEEF"))),
        ("1ABCDEF0#00", Frame(0x1ABCDEF0, b"\x00", extended=True)),
        ("123#R", Frame(0x123, b"", rtr=True, dlc=0)),
        ("123#R4", Frame(0x123, b"", rtr=True, dlc=4)),
        ("123##1DEADBEEF", Frame(0x123, bytes.fromhex("DEADBEEF"), fd=True, brs=True)),
        ("123##0" + "11" * 12, Frame(0x123, b"\x11" * 12, fd=True)),
        ("7FF#", Frame(0x7FF, b"")),
        ("000#0011223344556677", Frame(0, bytes(range(0, 0x78, 0x11)))),
    ],
)
def test_cansend_forms_parse_and_round_trip(text: str, expected: Frame) -> None:
    frame = parse_cansend(text)
    assert frame == expected
    assert format_cansend(frame) == text.upper()
    assert parse_cansend(format_cansend(frame)) == frame
    assert frame.to_cansend() == format_cansend(frame)


def test_cansend_dots_between_bytes_and_lowercase() -> None:
    assert parse_cansend("123#de.ad.be.ef").data == bytes.fromhex("DEADBEEF")
    assert parse_cansend(" 123#R ").rtr


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("123DEADBEEF", "missing '#'"),
        ("12#00", "3 hex digits"),
        ("1234#00", "3 hex digits"),
        ("12G#00", "3 hex digits"),
        ("800#00", "above 7FF"),
        ("2FFFFFFF#00", "above 1FFFFFFF"),
        ("123#DEADBEE", "odd number of hex digits"),
        ("123#DEADBEEG", "'G' is not a hex digit"),
        ("123#001122334455667788", "at most 8"),
        ("123#R9", "RTR length"),
        ("123#Rx", "RTR length"),
        ("123##", "flags nibble"),
        ("123##X00", "flags 'X'"),
        ("123##1" + "00" * 9, "valid lengths"),
        ("123##1" + "00" * 65, "at most 64"),
    ],
)
def test_malformed_cansend_names_the_problem(text: str, needle: str) -> None:
    with pytest.raises(FrameFormatError) as info:
        parse_cansend(text)
    assert needle in str(info.value)
    assert isinstance(info.value, ValueError)  # callers catching ValueError still work


def test_cansend_needs_a_string() -> None:
    with pytest.raises(FrameFormatError, match="cansend string is needed"):
        parse_cansend(0x123)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "frame",
    [
        Frame(0x200, bytes([22, 45, 170, 255])),
        Frame(0x18FEF100, b"\x01\x02", extended=True),
        Frame(0x123, b"", rtr=True, dlc=3),
        Frame(0x123, bytes(range(16)), fd=True, brs=True),  # CAN FD: dlc is the byte count (16)
        Frame(0x123, bytes(range(8)), fd=True),
        Frame(0x000, b""),
    ],
)
def test_nodered_objects_round_trip(frame: Frame) -> None:
    obj = frame.to_nodered()
    assert obj["canid"] == frame.can_id
    assert obj["dlc"] == frame.length
    assert parse_frame_object(obj) == frame
    assert parse_frame(obj) == frame
    assert parse_frame(frame) is frame


def test_nodered_object_with_hex_string_data_and_timestamp() -> None:
    f = parse_frame_object({"canid": 0x200, "data": "16 2d".replace(" ", ""), "ext": False})
    assert f.data == b"\x16\x2d"
    ts_frame = Frame(1, b"", timestamp_ns=1_500_000_000)
    assert ts_frame.to_nodered()["timestamp"] == 1500


@pytest.mark.parametrize(
    ("obj", "needle"),
    [
        ({"data": [1]}, "no 'canid'"),
        ({"canid": "0x100"}, "'canid' must be an integer"),
        ({"canid": True}, "'canid' must be an integer"),
        ({"canid": 0x800}, "set ext: true"),
        ({"canid": 0x20000000, "ext": True}, "outside 0..536870911"),
        ({"canid": 1, "ext": "yes"}, "'ext' must be true or false"),
        ({"canid": 1, "data": [256]}, "'data'[0] must be an integer 0..255"),
        ({"canid": 1, "data": [1, "a"]}, "'data'[1]"),
        ({"canid": 1, "data": 5}, "'data' must be a list"),
        ({"canid": 1, "data": list(range(9))}, "set canfd: true"),
        ({"canid": 1, "data": list(range(9)), "canfd": True}, "CAN FD lengths"),
        ({"canid": 1, "rtr": True, "canfd": True}, "cannot be remote"),
        ({"canid": 1, "rtr": True, "data": [1]}, "carries no data"),
        ({"canid": 1, "dlc": 9}, "'dlc' must be an integer 0..8"),
        ({"canid": 1, "data": [1, 2], "dlc": 3}, "does not match 2 data bytes"),
        ({"canid": 1, "color": "red"}, "unknown key(s) color"),
        ({"canid": 1, "data": "ABC"}, "odd number of hex digits"),
    ],
)
def test_malformed_frame_objects_name_the_problem(obj: dict[str, object], needle: str) -> None:
    with pytest.raises(FrameFormatError) as info:
        parse_frame_object(obj)
    assert needle in str(info.value)


@pytest.mark.parametrize("bad", [42, None, [1, 2], b"123#00"])
def test_parse_frame_rejects_other_types(bad: object) -> None:
    with pytest.raises(FrameFormatError, match="cansend string or a frame object"):
        parse_frame(bad)
