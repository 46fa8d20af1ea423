"""The replay path that sends queued metric bytes without decoding them (``EdgeNode.ddata_chunks``) gives
the same payload, decoded, as building the historical DDATA from the changes (``EdgeNode.ddata``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from canbridge_mqtt.buffer import Buffer, Chunk, QueuedRow
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
        got, skipped = new.ddata_chunks("b", single_rows(new, CHANGES))
        assert got is not None and skipped == 0
        assert decoded(got) == decoded(expected)  # every field of every metric, in order
        p = Payload()
        p.ParseFromString(got)
        assert p.seq == 0 and p.timestamp > 0


async def test_through_the_queue_file_and_for_rows_queued_without_bytes(tmp_path: Path) -> None:
    old, new = nodes(False)
    buf = Buffer(tmp_path / "q.sqlite", 10, 72)
    buf.append("sparkplug", CHANGES[:4], [new.queued_metric(c) for c in CHANGES[:4]])  # one change a row
    buf.append("sparkplug", CHANGES[4:])  # as an earlier version queued them: encoded when read back
    rows = await buf.peek_rows("sparkplug", 100, new.queued_metric)
    assert [r.names for r in rows] == [c[0] for c in CHANGES] and {(r.n, r.epoch) for r in rows} == {(1, None)}
    got, _ = new.ddata_chunks("b", rows)
    assert got is not None
    # the JSON column keeps NaN and the choices as the old path read them back
    assert decoded(got) == decoded(old.ddata("b", [c for _, c in await buf.peek("sparkplug", 100)], True, None))
    await buf.close()


def test_chunks_decode_like_the_payload_built_from_the_changes() -> None:
    for choices_as_text in (False, True):
        old, new = nodes(choices_as_text)
        expected = old.ddata("b", CHANGES, True, None)
        chunks, skipped = new.queued_chunks(CHANGES, 1000)
        assert skipped == 0 and len(chunks) == 1 and list(chunks[0].names) == [c[0] for c in CHANGES]
        got, skipped = new.ddata_chunks("b", [as_row(1, chunks[0])])
        assert got is not None and skipped == 0
        assert decoded(got) == decoded(expected)


def single_rows(node: EdgeNode, changes: list[Change]) -> list[QueuedRow]:
    """Changes as an earlier version queued them: a row each with its metric's bytes, no alias, no epoch."""
    return [QueuedRow(i, 1, c[0], node.queued_metric(c), None) for i, c in enumerate(changes)]


def as_row(rid: int, chunk: Chunk) -> QueuedRow:
    return QueuedRow(rid, len(chunk.names), "\n".join(chunk.names), chunk.blob, chunk.epoch)


def test_chunks_are_runs_of_one_device_at_most_a_batch_long() -> None:
    sigs = [signal_info(f"{bus}.M.S{i}", index=k * 4 + i) for k, bus in enumerate("xy") for i in range(4)]
    node = EdgeNode("g", "n", sigs, [])
    seq: list[Change] = [(f"{bus}.M.S{i}", i, Quality.GOOD, 1) for bus, i in
                         [("x", 0), ("x", 1), ("x", 2), ("y", 0), ("x", 3), ("x", 0), ("x", 1), ("x", 2), ("x", 3)]]
    seq.append(("z.M.Unknown", 1, Quality.GOOD, 1))  # not published: left out, counted
    chunks, skipped = node.queued_chunks(seq, 3)
    assert skipped == 1
    assert [list(c.names) for c in chunks] == [
        ["x.M.S0", "x.M.S1", "x.M.S2"], ["y.M.S0"], ["x.M.S3", "x.M.S0", "x.M.S1"], ["x.M.S2", "x.M.S3"]]
    for c in chunks:  # each chunk alone is a valid list of metrics with the right aliases, in order
        payload, _ = node.ddata_chunks(c.names[0].split(".")[0], [as_row(1, c)])
        assert payload is not None
        assert [m.alias for m in decoded(payload)] == [node.by_signal[n].alias for n in c.names]


def test_the_epoch_is_the_mapping_not_the_process() -> None:
    a, b = nodes(False)
    assert a.epoch == b.epoch  # a restart with the same mapping sends the queued chunks as they are
    moved = EdgeNode("g", "n", list(reversed(SIGNALS)), [])
    assert moved.epoch != a.epoch


def test_a_chunk_from_another_mapping_is_reframed_or_skipped_never_sent_wrong() -> None:
    queued_by = EdgeNode("g", "n", SIGNALS, [])
    chunks, _ = queued_by.queued_chunks(CHANGES[:3], 1000)
    # after a restart: Speed is now a float signal, Flag no longer published, aliases moved
    now = EdgeNode("g", "n", [signal_info("b.M.Speed", index=0, value_type=float, scale=0.5),
                              signal_info("b.M.Temp", index=1, bit_length=12, minimum=-2048, signed=True)], [])
    assert now.epoch != queued_by.epoch
    got, skipped = now.ddata_chunks("b", [as_row(1, chunks[0])])
    assert skipped == 2 and got is not None
    (m,) = decoded(got)
    assert m.alias == now.by_signal["b.M.Temp"].alias and m.is_historical and m.timestamp == 1002
    assert m.alias != queued_by.by_signal["b.M.Temp"].alias


def test_chunk_bytes_that_cannot_be_read_are_skipped_and_counted() -> None:
    node = EdgeNode("g", "n", SIGNALS, [])
    chunks, _ = node.queued_chunks(CHANGES[:3], 1000)
    good = as_row(1, chunks[0])
    for blob in (b"\x00garbage", good.blob[:-1], good.blob[:5], b"\x12\xff\xff\xff"):
        bad = QueuedRow(2, good.n, good.names, blob, "another mapping")
        got, skipped = node.ddata_chunks("b", [bad, good._replace(epoch="another mapping")])
        assert skipped == 3 and got is not None and len(decoded(got)) == 3


async def test_chunks_through_the_queue_file_count_changes_and_survive_a_restart(tmp_path: Path) -> None:
    node = EdgeNode("g", "n", SIGNALS, [])
    path = tmp_path / "q.sqlite"
    buf = Buffer(path, 10, 72)
    first, _ = node.queued_chunks(CHANGES[:5], 2)  # 2 + 2 + 1
    buf.append_chunks("sparkplug", first)
    buf.append("sparkplug", CHANGES[5:6])  # a single change between chunks
    later, _ = node.queued_chunks(CHANGES[6:], 2)
    buf.append_chunks("sparkplug", later)
    assert buf.count("sparkplug") == len(CHANGES)
    await buf.close()
    buf = Buffer(path, 10, 72)
    await buf.ready()
    assert buf.count("sparkplug") == len(CHANGES)  # changes, not rows, after the restart
    page = await buf.peek_rows("sparkplug", 3, node.queued_metric)  # rows until they hold 3 changes
    assert [r.n for r in page] == [2, 2]
    rows = await buf.peek_rows("sparkplug", 100, node.queued_metric)
    assert [r.n for r in rows] == [2, 2, 1, 1, 2, 1]
    got, _ = node.ddata_chunks("b", rows)
    assert got is not None and decoded(got) == decoded(node.ddata("b", CHANGES, True, None))
    await buf.delete("sparkplug", rows[1].id)  # delivered: the first two chunks
    assert buf.count("sparkplug") == len(CHANGES) - 4
    await buf.delete_ids("sparkplug", [rows[4].id])
    assert buf.count("sparkplug") == len(CHANGES) - 6
    await buf.close()


async def test_a_full_queue_of_chunks_drops_whole_chunks_oldest_first_and_counts_changes(tmp_path: Path) -> None:
    sigs = [signal_info(f"b.M.S{i}", index=i, bit_length=32) for i in range(100)]
    node = EdgeNode("g", "n", sigs, [])
    buf = Buffer(tmp_path / "q.sqlite", 0.1, 72)  # 100 kB
    accepted = 0
    for k in range(60):
        chunks, _ = node.queued_chunks([(f"b.M.S{i}", k * 100 + i, Quality.GOOD, k) for i in range(100)], 50)
        buf.append_chunks("sparkplug", chunks)
        accepted += 100
    await buf.flush()
    assert buf.dropped > 0 and buf.dropped % 50 == 0  # whole chunks of 50 changes
    assert buf.count("sparkplug") + buf.dropped == accepted
    rows = await buf.peek_rows("sparkplug", 10**6, node.queued_metric)
    assert sum(r.n for r in rows) == buf.count("sparkplug")
    got, _ = node.ddata_chunks("b", rows[:1])
    assert got is not None
    first = decoded(got)[0]
    assert first.int_value == 100 * (buf.dropped // 100) + buf.dropped % 100  # the oldest went first
    await buf.close()


def test_a_mapping_changed_since_queueing_skips_and_counts_instead_of_sending_a_wrong_type() -> None:
    queued_by = EdgeNode("g", "n", SIGNALS, [])
    rows = single_rows(queued_by, CHANGES[:3])
    # after a restart: Speed is now a float signal, Flag no longer published, aliases moved
    now = EdgeNode("g", "n", [signal_info("b.M.Speed", index=0, value_type=float, scale=0.5),
                              signal_info("b.M.Temp", index=1, bit_length=12, minimum=-2048, signed=True)], [])
    got, skipped = now.ddata_chunks("b", rows)
    assert skipped == 2 and got is not None
    (m,) = decoded(got)
    assert m.alias == now.by_signal["b.M.Temp"].alias and m.is_historical and m.timestamp == 1002


def test_metrics_added_at_run_time_make_a_new_epoch() -> None:
    # a J1939 sender heard at run time gets metrics; chunks framed before a restart that lacks them must
    # not be taken as they are
    node = EdgeNode("g", "n", SIGNALS, [])
    before = node.epoch
    heard = dataclasses.replace(signal_info("b.x.Speed", index=7, message="sa0x21.M"), name="b.sa0x21.M.Speed")
    node.add_signals([heard])
    assert node.epoch != before
    chunks, skipped = node.queued_chunks([("b.sa0x21.M.Speed", 7, Quality.GOOD, 1)], 10)
    assert skipped == 0 and chunks[0].epoch == node.epoch
    restarted = EdgeNode("g", "n", SIGNALS, [])
    assert restarted.epoch == before
    got, skipped = restarted.ddata_chunks("b", [as_row(1, chunks[0])])
    assert got is None and skipped == 1  # not published by the restarted mapping: dropped, counted
