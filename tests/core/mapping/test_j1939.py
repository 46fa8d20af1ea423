"""J1939 mappings: ids and PGNs (canbridge/core/mapping/j1939.py), PGN-based matching through the mapping
table and a bus's receive path (table.py, core/j1939bus.py, busrunner.py), source addresses as a
dimension, and the J1939-71 "not available" / "error" raw values as quality bad."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from canbridge import ConfigError, FrameFlags, Quality, RawFrame
from canbridge.config import parse_config
from canbridge.core.busrunner import BusRunner
from canbridge.core.host import collect, make_plugin_manager
from canbridge.core.mapping import j1939
from canbridge.core.mapping.table import MappingTable, build_table
from canbridge.core.store import SignalStore

FORMATS = collect(make_plugin_manager(load_entry_points=False)).formats
KINDS = collect(make_plugin_manager(load_entry_points=False)).bus_kinds
DATA = Path(__file__).resolve().parents[2] / "data"
DBC = DATA / "dbc" / "j1939_test.dbc"
EXT = int(FrameFlags.EXTENDED)


def config(**mapping: Any) -> Any:
    return parse_config({"buses": [{"name": "truck", "interface": "virtual", "channel": "truck"}],
                         "mappings": [{"bus": "truck", "dbc": str(DBC), **mapping}]})


def table(**mapping: Any) -> MappingTable:
    return build_table(config(**mapping), Path.cwd(), FORMATS, "bridge.yaml")


def runner(**mapping: Any) -> tuple[BusRunner, SignalStore, MappingTable]:
    cfg = config(**mapping)
    t = build_table(cfg, Path.cwd(), FORMATS, "bridge.yaml")
    store = SignalStore(t)
    r = BusRunner(cfg.buses[0], KINDS["virtual"], t, store, lambda runner, state: None)
    return r, store, t


def frame(priority: int, pgn: int, sa: int, data: bytes, da: int = 0xFF, ts: int = 1) -> RawFrame:
    return (j1939.make_id(priority, pgn, sa, da), EXT, data, ts)


def eec1(rpm: float, torque: int = 0) -> bytes:
    raw = round(rpm / 0.125)
    return bytes([0xF1, 0xFF, torque + 125]) + raw.to_bytes(2, "little") + b"\xff\xff\xff"


def value(store: SignalStore, t: MappingTable, name: str) -> Any:
    return store.value(t.signals[name].index)


# --- ids ---------------------------------------------------------------------------------------------


def test_pgn_source_and_destination_of_pdu1_and_pdu2_ids() -> None:
    assert j1939.pgn_of(0x0CF00400) == 0xF004 and j1939.source_of(0x0CF00400) == 0
    assert j1939.destination_of(0x0CF00400) == 0xFF and j1939.priority_of(0x0CF00400) == 3
    tsc1 = 0x0C000503  # PGN 0 (PDU1) to destination 0x05 from 0x03
    assert j1939.pgn_of(tsc1) == 0 and j1939.destination_of(tsc1) == 5 and j1939.source_of(tsc1) == 3
    assert j1939.pgn_of(0x18EAFF00) == j1939.PGN_REQUEST
    assert j1939.pgn_of(0x1DFECA00) == 0x1FECA  # the data page bit is part of the PGN


@given(st.integers(0, 7), st.integers(0, 0x3FFFF), st.integers(0, 255), st.integers(0, 255))
def test_make_id_round_trips(priority: int, pgn: int, sa: int, da: int) -> None:
    if j1939.is_pdu1(pgn):
        pgn &= 0x3FF00  # a PDU1 PGN has PS = 0
    can_id = j1939.make_id(priority, pgn, sa, da)
    assert can_id < 1 << 29
    assert (j1939.priority_of(can_id), j1939.pgn_of(can_id), j1939.source_of(can_id)) == (priority, pgn, sa)
    assert j1939.destination_of(can_id) == (da if j1939.is_pdu1(pgn) else 0xFF)
    assert j1939.match_key(can_id) == (pgn << 8) | sa


def test_special_ranges_scale_with_the_length() -> None:
    assert j1939.special_ranges(8) == (0xFE, 0xFF)
    assert j1939.special_ranges(16) == (0xFE00, 0xFF00)
    assert j1939.special_ranges(32) == (0xFE000000, 0xFF000000)
    assert j1939.special_ranges(2) == (2, 3)
    assert j1939.special_ranges(4) == (14, 15)
    assert j1939.special_ranges(1) is None


# --- the table ---------------------------------------------------------------------------------------


def test_a_j1939_dbc_is_matched_by_pgn_by_default() -> None:
    t = table()
    assert set(t.j1939["truck"]) == {(0xF004 << 8) | 0, (0xFEEE << 8) | 0, (0xFEF1 << 8) | 0x0B,
                                     (0x0000 << 8) | 3, (0xFEE3 << 8) | 0}
    assert "truck.EEC1.EngineSpeed" in t.signals  # one expected sender: short names


def test_protocol_plain_keeps_exact_ids() -> None:
    t = table(protocol="plain")
    assert t.j1939 == {} and "truck.EEC1.EngineSpeed" in t.signals


def test_several_sources_get_their_names_in_the_signal_names() -> None:
    t = table(sources={0x00: "engine", 0x0F: "retarder"}, messages=["EEC1"])
    assert list(t.signals)[:2] == ["truck.engine.EEC1.EngineTorqueMode", "truck.engine.EEC1.DriversDemandEngineTorque"]
    assert "truck.retarder.EEC1.EngineSpeed" in t.signals and "truck.EEC1.EngineSpeed" not in t.signals
    assert t.messages["truck.retarder.EEC1"].info.frame_id == 0x0CF0040F
    assert t.signals["truck.retarder.EEC1.EngineSpeed"].frame_id == 0x0CF0040F
    # plugins build their trees from bus, message and signal: each source is its own message
    for s in t.signal_list:
        assert f"{s.bus}.{s.message}.{s.signal}" == s.name
    assert t.messages["truck.retarder.EEC1"].info.message == "retarder.EEC1"


def test_one_configured_source_keeps_short_names_and_its_address() -> None:
    t = table(sources={0x01: "engine2"}, messages=["EEC1"])
    assert list(t.messages) == ["truck.EEC1"] and t.messages["truck.EEC1"].info.frame_id == 0x0CF00401


@pytest.mark.parametrize(("mapping", "needle"), [
    ({"sources": {254: "x"}}, "not a J1939 source address"),
    ({"sources": {1: "not a name"}}, "not an identifier"),
    ({"sources": {1: "a", 2: "a"}}, "its own name"),
    ({"sources": {1: "a"}, "protocol": "plain"}, "need protocol j1939"),
    ({"protocol": "J1939"}, "protocol"),
])
def test_bad_j1939_options_are_config_errors(mapping: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        config(**mapping)


@pytest.mark.parametrize("mapping", [{"writable": ["TSC1.*"]}, {"writable": ["EEC1.EngineSpeed"]},
                                     {"transmit": {"TSC1": {}}}])
def test_j1939_messages_are_written_only_on_a_bus_that_claims_an_address(mapping: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"need address claiming on bus truck: give the bus 'j1939"):
        table(**mapping)


def claiming(**mapping: Any) -> MappingTable:
    cfg = parse_config({"buses": [{"name": "truck", "interface": "virtual", "channel": "truck",
                                   "j1939": {"name": 1, "address": 0x80}}],
                        "mappings": [{"bus": "truck", "dbc": str(DBC), **mapping}]})
    return build_table(cfg, Path.cwd(), FORMATS, "bridge.yaml")


def test_cyclic_transmission_of_j1939_messages_is_a_problem() -> None:
    with pytest.raises(ConfigError, match=r"cyclic transmission of J1939 messages is not supported \(TSC1\)"):
        claiming(transmit={"TSC1": {"period_ms": 10}})


@pytest.mark.parametrize(("destination", "frame_id"), [(None, 0x0C0000FE), (0x03, 0x0C0003FE), (0xFF, 0x0C00FFFE)])
def test_a_j1939_message_the_bridge_sends_is_mapped_once_with_its_destination(
        destination: int | None, frame_id: int) -> None:
    extra = {} if destination is None else {"destination": destination}
    t = claiming(sources={0: "engine", 3: "transmission"}, messages=["TSC1", "EEC1"], writable=["TSC1.*"], **extra)
    assert sorted(t.messages) == ["truck.TSC1", "truck.engine.EEC1", "truck.transmission.EEC1"]
    tsc1 = t.messages["truck.TSC1"]
    assert tsc1.j1939_tx and tsc1.info.direction == "tx" and not t.messages["truck.engine.EEC1"].j1939_tx
    assert tsc1.info.frame_id == frame_id  # source address 254 until the claim puts ours there
    assert t.signals["truck.TSC1.RequestedSpeedLimit"].writable
    assert all(e.info.name != "truck.TSC1" for e in t.j1939["truck"].values())  # not matched by PGN


def test_sources_on_a_plain_file_are_a_problem() -> None:
    data = {"buses": [{"name": "b", "interface": "virtual", "channel": "b"}],
            "mappings": [{"bus": "b", "dbc": str(DATA / "dbc" / "mazda_2017.dbc"), "strict": False,
                          "sources": {1: "x"}}]}
    with pytest.raises(ConfigError, match="no message of the mapping is J1939"):
        build_table(parse_config(data), Path.cwd(), FORMATS)


def test_the_same_pgn_and_source_mapped_twice_is_a_problem() -> None:
    data = {"buses": [{"name": "truck", "interface": "virtual", "channel": "truck"}],
            "mappings": [{"bus": "truck", "dbc": str(DBC), "messages": ["EEC1"], "sources": {0: "a", 1: "b"}},
                         {"bus": "truck", "dbc": str(DBC), "messages": ["EEC1"], "sources": {1: "c"}}]}
    with pytest.raises(ConfigError, match=r"of EEC1 is already mapped by truck\.b\.EEC1"):
        build_table(parse_config(data), Path.cwd(), FORMATS)


def test_protocol_j1939_needs_extended_ids() -> None:
    with pytest.raises(ConfigError, match="29-bit"):
        build_table(parse_config({
            "buses": [{"name": "b", "interface": "virtual", "channel": "b"}],
            "mappings": [{"bus": "b", "dbc": str(DATA / "dbc" / "mazda_2017.dbc"), "strict": False,
                          "protocol": "j1939"}]}), Path.cwd(), FORMATS)


# --- the receive path --------------------------------------------------------------------------------


@pytest.mark.parametrize("priority", range(8))
def test_any_priority_of_the_expected_sender_decodes(priority: int) -> None:
    r, store, t = runner()
    r.on_frames([frame(priority, 0xF004, 0x00, eec1(1500.0))])
    v = value(store, t, "truck.EEC1.EngineSpeed")
    assert (v.value, v.quality) == (1500.0, Quality.GOOD)
    assert r.unmapped_frames == 0


def test_two_sources_of_one_pgn_never_overwrite_each_other() -> None:
    r, store, t = runner(sources={0x00: "engine", 0x0F: "retarder"})
    r.on_frames([frame(3, 0xF004, 0x00, eec1(1500.0)), frame(3, 0xF004, 0x0F, eec1(800.0)),
                 frame(6, 0xF004, 0x00, eec1(1600.0))])
    assert value(store, t, "truck.engine.EEC1.EngineSpeed").value == 1600.0
    assert value(store, t, "truck.retarder.EEC1.EngineSpeed").value == 800.0
    assert store.msg_count[t.messages["truck.engine.EEC1"].index] == 2
    assert store.msg_count[t.messages["truck.retarder.EEC1"].index] == 1


def test_unconfigured_sources_are_counted_per_pgn_and_source_and_not_decoded() -> None:
    r, store, t = runner(sources={0x00: "engine"})
    batch = [frame(3, 0xF004, 0x21, eec1(900.0))] * 3 + [frame(6, 0xFEEE, 0x21, b"\x50" * 8),
                                                          frame(6, 0xFEEE, 0x22, b"\x50" * 8),
                                                          frame(6, 0xFFAA, 0x21, b"\x00" * 8)]  # an unmapped PGN
    r.on_frames(batch)
    assert value(store, t, "truck.EEC1.EngineSpeed").quality is Quality.WAITING
    assert r.status().unconfigured_sources == {"EEC1@0x21": 3, "ET1@0x21": 1, "ET1@0x22": 1}
    assert [(h.pgn, h.source, h.frames) for h in r.j1939.heard()] == [  # type: ignore[union-attr]
        (0xF004, 0x21, 3), (0xFEEE, 0x21, 1), (0xFEEE, 0x22, 1)]
    assert r.unmapped_frames == 6


def test_pdu1_groups_match_any_destination() -> None:
    r, store, t = runner()
    speed = round(1234 / 0.125).to_bytes(2, "little")
    for da in (0x00, 0x05, 0xFF):
        r.on_frames([frame(3, 0x0000, 0x03, b"\x01" + speed + bytes([125 + da % 50]) + b"\xff" * 4, da=da)])
        assert value(store, t, "truck.TSC1.RequestedTorqueLimit").value == da % 50
    assert value(store, t, "truck.TSC1.RequestedSpeedLimit").value == 1234.0


def test_a_payload_seen_before_under_another_id_is_decoded_again() -> None:
    # the store skips a payload equal to the last one of the same frame id; the same message reached
    # through another priority must not leave the values of that other frame in place
    r, store, t = runner()
    a, b = eec1(1000.0), eec1(2000.0)
    for f, rpm in [(frame(3, 0xF004, 0, a), 1000.0), (frame(6, 0xF004, 0, b), 2000.0),
                   (frame(3, 0xF004, 0, a), 1000.0), (frame(3, 0xF004, 0, a), 1000.0),
                   (frame(6, 0xF004, 0, b), 2000.0), (frame(7, 0xF004, 0, a), 1000.0)]:
        r.on_frames([f])
        assert value(store, t, "truck.EEC1.EngineSpeed").value == rpm


@given(st.lists(st.tuples(st.integers(0, 7), st.sampled_from([0x00, 0x0F, 0x21]), st.integers(0, 64255)),
                min_size=1, max_size=40))
def test_each_source_shows_its_own_last_frame(frames: list[tuple[int, int, int]]) -> None:
    r, store, t = runner(sources={0x00: "engine", 0x0F: "retarder"}, messages=["EEC1"])
    r.on_frames([frame(p, 0xF004, sa, eec1(raw * 0.125)) for p, sa, raw in frames])
    for sa, name in ((0x00, "engine"), (0x0F, "retarder")):
        mine = [raw for _, s, raw in frames if s == sa]
        v = value(store, t, f"truck.{name}.EEC1.EngineSpeed")
        assert v.value == (mine[-1] * 0.125 if mine else None)
    assert r.unmapped_frames == sum(1 for _, s, _ in frames if s == 0x21)


def test_plain_dbc_buses_have_no_j1939_path_and_keep_kernel_filters() -> None:
    from canbridge.core.app import DEMO_DBC

    cfg = parse_config({"buses": [{"name": "demo", "interface": "virtual", "channel": "demo"}],
                        "mappings": [{"bus": "demo", "dbc": str(DEMO_DBC)}]})
    t = build_table(cfg, Path.cwd(), FORMATS)
    r = BusRunner(cfg.buses[0], KINDS["virtual"], t, SignalStore(t), lambda runner, state: None)
    assert r.j1939 is None and t.j1939 == {}


# --- not available / error ---------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "reason"), [(0xFF, "not available"), (0xFE, "error indicator")])
def test_one_byte_special_values_are_bad_with_the_reason(raw: int, reason: str) -> None:
    r, store, t = runner()
    r.on_frames([frame(6, 0xFEEE, 0, bytes([raw, 0x50]) + b"\x00\x25\xff\xff\xff\xff")])
    v = value(store, t, "truck.ET1.EngineCoolantTemperature")
    assert (v.value, v.quality, v.reason) == (None, Quality.BAD, f"J1939 {reason}")
    fuel = value(store, t, "truck.ET1.FuelTemperature")
    assert (fuel.value, fuel.quality, fuel.reason) == (0x50 - 40, Quality.GOOD, None)


@pytest.mark.parametrize(("raw", "expect"), [
    (0xFAFF, 0xFAFF * 0.125), (0xFB00, 0xFB00 * 0.125), (0xFDFF, 0xFDFF * 0.125),
    (0xFE00, "error indicator"), (0xFEFF, "error indicator"), (0xFF00, "not available"), (0xFFFF, "not available"),
])
def test_two_byte_ranges(raw: int, expect: float | str) -> None:
    r, store, t = runner()
    r.on_frames([frame(3, 0xF004, 0, b"\x00\x7d\x7d" + raw.to_bytes(2, "little") + b"\x00\xff\xff")])
    v = value(store, t, "truck.EEC1.EngineSpeed")
    if isinstance(expect, str):
        assert (v.value, v.quality, v.reason) == (None, Quality.BAD, f"J1939 {expect}")
    else:
        assert (v.value, v.quality) == (expect, Quality.GOOD)


@pytest.mark.parametrize(("raw", "expect"), [
    (0xFAFFFFFF, None), (0xFE000000, "error indicator"), (0xFF000000, "not available"), (0xFFFFFFFF, "not available"),
])
def test_four_byte_ranges(raw: int, expect: str | None) -> None:
    r, store, t = runner()
    r.on_frames([frame(6, 0xFEF1, 0x0B, b"\x00\x00\x10\x00" + raw.to_bytes(4, "little"))])
    v = value(store, t, "truck.CCVS.OdometerRaw")
    assert v.reason == (None if expect is None else f"J1939 {expect}")
    assert v.value == (raw * 0.005 if expect is None else None)


@pytest.mark.parametrize(("bits", "expect"), [(0, 0), (1, 1), (2, "error indicator"), (3, "not available")])
def test_two_bit_states(bits: int, expect: int | str) -> None:
    r, store, t = runner()
    r.on_frames([frame(6, 0xFEF1, 0x0B, bytes([bits << 2]) + b"\x00" * 7)])
    v = value(store, t, "truck.CCVS.ParkingBrakeSwitch")
    assert (v.value, v.reason) == ((expect, None) if isinstance(expect, int) else (None, f"J1939 {expect}"))


def test_a_value_recovers_when_the_parameter_is_available_again() -> None:
    r, store, t = runner()
    sub = store.subscribe({t.signals["truck.ET1.EngineCoolantTemperature"].index}, 0)
    pending = sub._pending  # type: ignore[attr-defined]
    r.on_frames([frame(6, 0xFEEE, 0, b"\x50" + b"\x00" * 7)])
    assert pending and value(store, t, "truck.ET1.EngineCoolantTemperature").value == 40
    pending.clear()
    r.on_frames([frame(6, 0xFEEE, 0, b"\xff" + b"\x00" * 7)])
    assert pending, "turning not available is a change subscribers hear of"
    assert value(store, t, "truck.ET1.EngineCoolantTemperature").quality is Quality.BAD
    pending.clear()
    r.on_frames([frame(6, 0xFEEE, 0, b"\x51" + b"\x00" * 7)])
    v = value(store, t, "truck.ET1.EngineCoolantTemperature")
    assert pending and (v.value, v.quality, v.reason) == (41, Quality.GOOD, None)


def test_plain_protocol_decodes_the_raw_numbers() -> None:
    r, store, t = runner(protocol="plain")
    r.on_frames([(0x18FEEE00, EXT, b"\xff" + b"\x00" * 7, 1)])
    v = value(store, t, "truck.ET1.EngineCoolantTemperature")
    assert (v.value, v.quality) == (0xFF - 40, Quality.GOOD)


@given(st.binary(min_size=39, max_size=39))
def test_j1939_decoders_equal_cantools_except_the_special_ranges(data: bytes) -> None:
    from canbridge.core.mapping.codec import compile_decoder
    from canbridge.core.mapping.formats import load_dbc

    for m in load_dbc(DBC):
        payload = data[:m.length]
        values: list[Any] = [None] * len(m.signals)
        compile_decoder(m, {s.name: i for i, s in enumerate(m.signals)}, j1939=True)(payload, values, [])
        expected = m.decode(payload, decode_choices=False)
        assert isinstance(expected, dict)
        as_int = int.from_bytes(payload, "little")
        for i, s in enumerate(m.signals):
            raw = (as_int >> s.start) & ((1 << s.length) - 1)
            err, na = j1939.special_ranges(s.length) or (1 << 64, 1 << 64)
            want = j1939.NOT_AVAILABLE if raw >= na else j1939.ERROR_INDICATOR if raw >= err else expected[s.name]
            assert values[i] == want, (m.name, s.name, raw)


# --- multi-packet messages through the receive path ---------------------------------------------------


def bam_frames(sa: int, payload: bytes, pgn: int = 0xFEE3, ts: int = 0) -> list[RawFrame]:
    n = -(-len(payload) // 7)
    out = [frame(7, j1939.PGN_TP_CM, sa, bytes([32]) + len(payload).to_bytes(2, "little") + bytes([n, 0xFF])
                 + pgn.to_bytes(3, "little"), ts=ts)]
    for i in range(1, n + 1):
        chunk = payload[(i - 1) * 7:i * 7]
        data = bytes([i]) + chunk + b"\xff" * (7 - len(chunk))
        out.append(frame(7, j1939.PGN_TP_DT, sa, data, ts=ts + i * 50_000_000))
    return out


def test_a_bam_is_decoded_like_a_frame_and_its_packets_are_not_unmapped() -> None:
    r, store, t = runner()
    payload = bytearray(b"\xff" * 39)
    payload[0:2] = (4800).to_bytes(2, "little")
    r.on_frames(bam_frames(0x00, bytes(payload)))
    assert value(store, t, "truck.EC1.EngineSpeedAtIdlePoint1").value == 600.0
    assert value(store, t, "truck.EC1.EngineReferenceTorque").reason == "J1939 not available"
    st = r.status()
    assert (st.unmapped_frames, st.rx_frames, st.transport) == (0, 7, {"completed": 1})


def test_a_transfer_split_over_batches_completes() -> None:
    r, store, t = runner()
    frames = bam_frames(0x00, (4800).to_bytes(2, "little") + bytes(37))
    for f in frames:
        r.on_frames([f])
    assert value(store, t, "truck.EC1.EngineSpeedAtIdlePoint1").value == 600.0


def test_a_short_reassembled_message_is_a_decode_error() -> None:
    r, store, t = runner()
    r.on_frames(bam_frames(0x00, bytes(20)))  # EC1 has 39 bytes
    assert r.status().decode_errors == 1 and store.msg_count[t.messages["truck.EC1"].index] == 0


def test_a_transfer_that_never_ends_times_out_on_the_frames_clock() -> None:
    r, store, t = runner()
    r.on_frames(bam_frames(0x00, bytes(39))[:3])
    assert r.j1939 is not None
    assert r.status().transport == {"completed": 0, "active": 1}
    mono = r.j1939._tp_mono
    r.j1939.expire(mono + 0.5)
    assert r.status().transport == {"completed": 0, "active": 1}
    r.j1939.expire(mono + 1.0)
    assert r.status().transport == {"completed": 0, "timeout_t1": 1}
    assert store.msg_count[t.messages["truck.EC1"].index] == 0


def test_a_bam_of_an_unconfigured_source_is_counted_as_heard() -> None:
    r, store, t = runner()
    r.on_frames(bam_frames(0x42, bytes(39)))
    assert r.status().unconfigured_sources == {"EC1@0x42": 1}
    assert store.msg_count[t.messages["truck.EC1"].index] == 0


# --- DM1 ---------------------------------------------------------------------------------------------------


def dtc_bytes(spn: int, fmi: int, oc: int, cm: int = 0) -> bytes:
    return bytes([spn & 0xFF, (spn >> 8) & 0xFF, ((spn >> 16) << 5) | fmi, (cm << 7) | oc])


def test_dm1_of_one_frame() -> None:
    # amber warning on, MIL off, red stop not available, protect off; amber flashes fast; SPN 190 FMI 2, 5 times
    d = j1939.decode_dm1(bytes([0b00110100, 0b11110111]) + dtc_bytes(190, 2, 5) + b"\xff\xff", 0x00, 7)
    assert d is not None
    assert (d.mil, d.red_stop, d.amber_warning, d.protect) == ("off", "not_available", "on", "off")
    assert (d.mil_flash, d.red_stop_flash, d.amber_warning_flash, d.protect_flash) == ("none", "none", "fast", "none")
    assert [(c.spn, c.fmi, c.occurrences, c.conversion_method) for c in d.dtcs] == [(190, 2, 5, 0)]
    assert (d.source, d.timestamp_ns, d.messages) == (0, 7, 1)


def test_dm1_without_trouble_codes() -> None:
    d = j1939.decode_dm1(bytes([0, 0xFF, 0, 0, 0, 0, 0xFF, 0xFF]), 3, 0)
    assert d is not None and d.dtcs == () and d.mil == "off"
    assert j1939.decode_dm1(b"\x00\x00\x00", 3, 0) is None


@given(st.lists(st.tuples(st.integers(1, 0x7FFFE), st.integers(0, 31), st.integers(0, 126), st.integers(0, 1)),
                max_size=20))
def test_dm1_dtcs_round_trip(dtcs: list[tuple[int, int, int, int]]) -> None:
    codes = b"".join(dtc_bytes(*c) for c in dtcs) or bytes(4)  # no DTC: zeros
    d = j1939.decode_dm1(bytes([0x55, 0xFF]) + codes, 1, 0)
    assert d is not None
    assert [(c.spn, c.fmi, c.occurrences, c.conversion_method) for c in d.dtcs] == dtcs


def test_dm1_per_source_through_the_receive_path_single_frame_and_bam() -> None:
    r, _, _ = runner()
    r.on_frames([frame(6, j1939.PGN_DM1, 0x00, bytes([0x04, 0xFF]) + dtc_bytes(110, 0, 1) + b"\xff\xff")])
    five = bytes([0x54, 0xFF]) + b"".join(dtc_bytes(spn, fmi, 1 + k) for k, (spn, fmi) in enumerate(
        [(84, 2), (190, 3), (100, 1), (0x7FFFE, 31), (521, 7)]))
    r.on_frames(bam_frames(0x03, five, pgn=j1939.PGN_DM1))
    dm1 = r.status().dm1
    assert set(dm1) == {0x00, 0x03}
    assert [(c.spn, c.fmi) for c in dm1[0x00].dtcs] == [(110, 0)] and dm1[0x00].amber_warning == "on"
    assert [(c.spn, c.fmi, c.occurrences) for c in dm1[0x03].dtcs] == [
        (84, 2, 1), (190, 3, 2), (100, 1, 3), (0x7FFFE, 31, 4), (521, 7, 5)]
    assert dm1[0x03].amber_warning == "on" and dm1[0x03].red_stop == "on"
    # the fault cleared: the next DM1 replaces the list
    r.on_frames([frame(6, j1939.PGN_DM1, 0x00, bytes([0, 0xFF, 0, 0, 0, 0, 0xFF, 0xFF]), ts=9)])
    r.on_frames([frame(6, j1939.PGN_DM1, 0x00, bytes([0, 0xFF, 0, 0, 0, 0, 0xFF, 0xFF]), ts=10)])
    assert r.status().dm1[0x00].dtcs == () and r.status().dm1[0x00].messages == 3
    assert r.status().unconfigured_sources == {}  # DM1 is not mapped: understood, not "unconfigured"


def test_unconfigured_pairs_are_bounded() -> None:
    from canbridge.core.j1939bus import MAX_UNCONFIGURED

    r, _, _ = runner(sources={0xFD: "only"})
    pgns = [0xF004, 0xFEEE, 0xFEF1, 0xFEE3, 0x0000]
    r.on_frames([frame(6, pgn, sa, bytes(8)) for pgn in pgns for sa in range(253)])
    summary = r.status().unconfigured_sources
    assert len(summary) == MAX_UNCONFIGURED + 1 and summary["*"] == 5 * 253 - MAX_UNCONFIGURED


@given(st.lists(st.tuples(st.integers(0, 7), st.sampled_from([0x00, 0x05, 0xFF]), st.integers(0, 3)),
                min_size=1, max_size=60))
def test_the_values_are_always_those_of_the_last_frame_whatever_its_id(frames: list[tuple[int, int, int]]) -> None:
    # one message reached through many ids (priorities, destinations) with payloads that repeat
    r, store, t = runner(messages=["TSC1"])
    for priority, da, k in frames:
        r.on_frames([frame(priority, 0x0000, 0x03, bytes([0, 0x10 * k, 0, 125 + k]) + bytes(4), da=da)])
        assert value(store, t, "truck.TSC1.RequestedTorqueLimit").value == k
