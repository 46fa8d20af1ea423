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
    f = parse_frame_object({"canid": 0x200, "data": "16 2d", "ext": False})
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


# --- issue #9, finding 12: exactly the frames the field writes, nothing else ----------------------


@pytest.mark.parametrize(
    ("text", "data"),
    [
        ("200#16 2D AA FF", bytes.fromhex("162DAAFF")),  # spaces between bytes (the docs' form)
        ("200#16.2D.AA.FF", bytes.fromhex("162DAAFF")),
        ("200#162D AAFF", bytes.fromhex("162DAAFF")),  # separators at any byte boundary, as cansend
        ("200#16  2D", bytes.fromhex("162D")),
        ("200#.16.", bytes.fromhex("16")),
        ("200##1 11 22 33 44", bytes.fromhex("11223344")),
    ],
)
def test_separators_between_whole_bytes_are_accepted(text: str, data: bytes) -> None:
    assert parse_cansend(text).data == data


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("123#R\u0663", "not ASCII"),  # Arabic-Indic three: was sent as 123#R3
        ("123#R\u00b2", "not ASCII"),  # superscript two: was a 500
        ("\u0661\u0662\u0663#00", "not ASCII"),
        ("123#\uff11\uff12", "not ASCII"),  # fullwidth digits in the data
        ("123##\u0661", "not ASCII"),  # in the CAN FD flags
        ("12\n#00", "control character"),  # was sent as 012#00
        ("123#00\n", "control character"),  # trailing newline
        ("123\t#00", "control character"),
        ("123#\r00", "control character"),
        ("\x00123#00", "control character"),
        ("123#00\x7f", "control character"),
        ("12 #00", "3 hex digits"),  # whitespace inside the id
        (" 12#00", "3 hex digits"),
        ("1 23#00", "3 hex digits"),
        ("1_23#00", "3 hex digits"),  # int() accepts underscores; the parser does not
        ("+12#00", "3 hex digits"),
        ("123#1 6", "odd number of hex digits"),  # a separator inside a byte
        ("123#1.6", "odd number of hex digits"),
        ("123#R10", "RTR length"),
        ("123#R-1", "RTR length"),
        ("123#R 4", "RTR length"),
        ("123##2", "ESI"),
        ("123##8", "only 1 (BRS) and 4 (FDF)"),
        ("20000123#00", "error frame"),  # cansend's error-frame id bit
        ("123#1,2,3", "',' is not a hex digit"),
    ],
)
def test_non_ascii_control_and_misplaced_characters_are_refused(text: str, needle: str) -> None:
    with pytest.raises(FrameFormatError) as info:
        parse_cansend(text)
    assert needle in str(info.value)


def test_fd_flags_nibble_fdf_is_accepted() -> None:
    assert parse_cansend("123##5AA") == Frame(0x123, b"\xaa", fd=True, brs=True)
    assert parse_cansend("123##4AA") == Frame(0x123, b"\xaa", fd=True)


@pytest.mark.parametrize(
    ("obj", "needle"),
    [
        ({"canid": 1, "err": True}, "error frames"),
        ({"canid": 1, "err": 1}, "'err' must be true or false"),
        ({"id": 1, "data": [1]}, "calls it 'canid'"),
        ({"canid": 1, "fd": True}, "calls it 'canfd'"),
        ({"canid": 1, "payload": {}}, "not the Node-RED message"),
        ({"canid": 1, "data": [1, 2], "rawData": [1, 3]}, "different bytes"),
        ({"canid": 1, "data": [1], "rawData": {"type": "Buffer", "data": [2]}}, "different bytes"),
        ({"canid": 1, "rawData": [1]}, "different bytes"),
        ({"canid": 1, "data": {"type": "Array", "data": [1]}}, "Node.js Buffer"),
        ({"canid": 1, "data": {"type": "Buffer", "data": [300]}}, "'data'.data[0]"),
        ({"canid": 1, "data": "1,2,3"}, "list of numbers"),
        ({"canid": 1, "data": "1\u0662"}, "not ASCII"),
        ({"canid": 1, "data": "12\n"}, "control character"),
        ({"canid": 1, "timestamp": "yesterday"}, "'timestamp' must be a number"),
        ({"canid": 1, "bus": 5}, "'bus' must be a bus name"),
        ({"canid": 1.0}, "'canid' must be an integer"),
        ({"canid": 1, "dlc": True}, "'dlc' must be an integer"),
        ({"canid": 1, "brs": True}, "needs canfd: true"),
    ],
)
def test_unknown_and_contradictory_object_keys_are_refused(obj: dict[str, object], needle: str) -> None:
    with pytest.raises(FrameFormatError) as info:
        parse_frame_object(obj)
    assert needle in str(info.value)


def test_received_frame_objects_carry_rawdata_like_node_red_and_can_be_sent_back() -> None:
    f = Frame(0x200, bytes([22, 45, 170, 255]), timestamp_ns=1_700_000_000_123_000_000, bus="demo")
    obj = f.to_nodered()
    # node-red-contrib-socketcan's received payload: timestamp, ext, canid, dlc, rtr, data, err, rawData
    for key in ("timestamp", "ext", "canid", "dlc", "rtr", "data", "err", "rawData"):
        assert key in obj
    assert obj["rawData"] == {"type": "Buffer", "data": [22, 45, 170, 255]}  # JSON of a Node.js Buffer
    assert obj["timestamp"] == 1_700_000_000_123
    back = parse_frame_object(obj)
    assert (back.can_id, back.data, back.bus) == (0x200, f.data, "demo")
    assert parse_frame_object({"canid": 1, "data": {"type": "Buffer", "data": [1, 2]}}).data == b"\x01\x02"
    assert parse_frame_object({"canid": 1, "err": False, "timestamp": 1.5}).data == b""


# --- properties ----------------------------------------------------------------------------------

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_FD = st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64])


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    """Every valid frame, in the canonical form the parser returns."""
    extended = draw(st.booleans())
    can_id = draw(st.integers(0, 0x1FFFFFFF if extended else 0x7FF))
    kind = draw(st.sampled_from(["classic", "rtr", "fd"]))
    if kind == "rtr":
        return Frame(can_id, b"", extended=extended, rtr=True, dlc=draw(st.integers(0, 8)))
    if kind == "fd":
        data = draw(_FD.flatmap(lambda n: st.binary(min_size=n, max_size=n)))
        return Frame(can_id, data, extended=extended, fd=True, brs=draw(st.booleans()))
    return Frame(can_id, draw(st.binary(max_size=8)), extended=extended)


@given(frames())
def test_every_valid_frame_round_trips_as_cansend_and_as_object(frame: Frame) -> None:
    assert parse_cansend(format_cansend(frame)) == frame
    assert parse_cansend(format_cansend(frame).lower()) == frame
    assert parse_frame_object(frame.to_nodered()) == frame


def _bad_char() -> st.SearchStrategy[str]:
    control = st.sampled_from([chr(c) for c in [*range(0x20), 0x7F]])
    non_ascii = st.characters(min_codepoint=0x80, exclude_categories=["Cs"])
    return st.one_of(control, non_ascii)


@given(frames(), _bad_char(), st.integers(0, 200))
def test_a_non_ascii_or_control_character_anywhere_is_refused(frame: Frame, bad: str, at: int) -> None:
    text = format_cansend(frame)
    at %= len(text) + 1
    with pytest.raises(FrameFormatError):
        parse_cansend(text[:at] + bad + text[at:])


@given(st.text(max_size=40))
def test_any_string_gives_a_frame_or_frame_format_error(text: str) -> None:
    try:
        frame = parse_cansend(text)
    except FrameFormatError:
        return
    assert text.strip(" ").isascii() and text.isprintable()
    assert parse_cansend(format_cansend(frame)) == frame


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
_KEYS = st.sampled_from(["canid", "data", "ext", "rtr", "canfd", "brs", "dlc", "timestamp", "err", "rawData", "bus"])


@given(st.dictionaries(_KEYS, _JSON, max_size=6))
def test_any_json_object_gives_a_frame_or_frame_format_error(obj: dict[str, object]) -> None:
    try:
        parse_frame(obj)
    except FrameFormatError:
        pass


@given(frames(), _bad_char(), st.integers(0, 200))
def test_a_non_ascii_or_control_character_in_object_hex_data_is_refused(frame: Frame, bad: str, at: int) -> None:
    obj = frame.to_nodered()
    del obj["rawData"]
    text = frame.data.hex(" ")
    at %= len(text) + 1
    obj["data"] = text[:at] + bad + text[at:]
    with pytest.raises(FrameFormatError):
        parse_frame_object(obj)
