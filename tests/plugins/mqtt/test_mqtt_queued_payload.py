"""The replay path that sends queued metric bytes without decoding them (``EdgeNode.ddata_queued``) gives
the same payload, decoded, as building the historical DDATA from the changes (``EdgeNode.ddata``)."""

from __future__ import annotations

from pathlib import Path

from canbridge_mqtt.buffer import Buffer
from canbridge_mqtt.rbe import Change
from canbridge_mqtt.session import EdgeNode
from canbridge_mqtt.sparkplug_b_pb2 import Payload

from canbridge import Quality
from canbridge.testing import signal_info

SIGNALS = [
    signal_info("b.M.Flag", index=0, value_type=bool),
    signal_info("b.M.Speed", index=1, bit_length=16),
    signal_info("b.M.Temp", index=2, bit_length=12, minimum=-2048, signed=True),
    signal_info("b.M.Volt", index=3, value_type=float, scale=0.1),
    signal_info("b.M.F32", index=4, value_type=float, is_float=True),
    signal_info("b.M.Big", index=5, bit_length=64),
    signal_info("b.M.Mode", index=6, bit_length=8, choices={0: "off", 1: "on"}),
]
CHANGES: list[Change] = [
    ("b.M.Flag", True, Quality.GOOD, 1000),
    ("b.M.Speed", 65535, Quality.GOOD, 1001),
    ("b.M.Temp", -2048, Quality.STALE, 1002),
    ("b.M.Volt", 12.3, Quality.BAD, None),
    ("b.M.F32", 1.5, Quality.GOOD, 1004),
    ("b.M.Big", (1 << 64) - 1, Quality.GOOD, 1005),
    ("b.M.Mode", 1, Quality.GOOD, 1006),
    ("b.M.Speed", None, Quality.WAITING, 1007),
    ("b.M.Temp", float("nan"), Quality.BAD, 1008),
]


def decoded(payload: bytes) -> list[Payload.Metric]:
    p = Payload()
    p.ParseFromString(payload)
    return list(p.metrics)


def nodes(choices_as_text: bool) -> tuple[EdgeNode, EdgeNode]:
    return (EdgeNode("g", "n", SIGNALS, [], choices_as_text), EdgeNode("g", "n", SIGNALS, [], choices_as_text))


def test_queued_bytes_decode_like_the_payload_built_from_the_changes() -> None:
    for choices_as_text in (False, True):
        old, new = nodes(choices_as_text)
        expected = old.ddata("b", CHANGES, True, None)
        got, skipped = new.ddata_queued("b", [(c[0], new.queued_metric(c)) for c in CHANGES])
        assert got is not None and skipped == 0
        assert decoded(got) == decoded(expected)  # every field of every metric, in order
        p = Payload()
        p.ParseFromString(got)
        assert p.seq == 0 and p.timestamp > 0


async def test_through_the_queue_file_and_for_rows_queued_without_bytes(tmp_path: Path) -> None:
    old, new = nodes(False)
    buf = Buffer(tmp_path / "q.sqlite", 10, 72)
    buf.append("sparkplug", CHANGES[:4], [new.queued_metric(c) for c in CHANGES[:4]])
    buf.append("sparkplug", CHANGES[4:])  # as an earlier version queued them: encoded when read back
    rows = await buf.peek_encoded("sparkplug", 100, new.queued_metric)
    assert [r[1] for r in rows] == [c[0] for c in CHANGES]
    got, _ = new.ddata_queued("b", [(name, blob) for _, name, blob in rows])
    assert got is not None
    # the JSON column keeps NaN and the choices as the old path read them back
    assert decoded(got) == decoded(old.ddata("b", [c for _, c in await buf.peek("sparkplug", 100)], True, None))
    await buf.close()


def test_a_mapping_changed_since_queueing_skips_and_counts_instead_of_sending_a_wrong_type() -> None:
    queued_by = EdgeNode("g", "n", SIGNALS, [])
    blobs = [(c[0], queued_by.queued_metric(c)) for c in CHANGES[:3]]
    # after a restart: Speed is now a float signal, Flag no longer published, aliases moved
    now = EdgeNode("g", "n", [signal_info("b.M.Speed", index=0, value_type=float, scale=0.5),
                              signal_info("b.M.Temp", index=1, bit_length=12, minimum=-2048, signed=True)], [])
    got, skipped = now.ddata_queued("b", blobs)
    assert skipped == 2 and got is not None
    (m,) = decoded(got)
    assert m.alias == now.by_signal["b.M.Temp"].alias and m.is_historical and m.timestamp == 1002
