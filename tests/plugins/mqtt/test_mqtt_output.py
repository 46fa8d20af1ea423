"""The output data path without a broker: live or queued, the backlog first and in order, a link that
breaks half-way keeps the rest; the configuration's checks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from canbridge_mqtt.buffer import Buffer
from canbridge_mqtt.config import BufferConfig, MqttConfig
from canbridge_mqtt.output import Output
from canbridge_mqtt.rbe import Change, ReportFilter
from pydantic import ValidationError

from canbridge import Quality


class Recorder(Output):
    sink = "test"

    def __init__(self, buffer: Buffer | None, fail_after: int | None = None) -> None:
        super().__init__(ReportFilter({}, None), buffer, BufferConfig(drain_rate=1_000_000, batch=3))
        self.got: list[tuple[object, bool]] = []
        self.fail_after = fail_after

    def send(self, changes: Sequence[Change], historical: bool) -> int:
        n = len(changes)
        if self.fail_after is not None:
            n = min(n, max(0, self.fail_after - len(self.got)))
            if n < len(changes):
                self.online = False
        self.got += [(c[1], historical) for c in changes[:n]]
        return n

    async def send_live(self, changes: Sequence[Change]) -> Sequence[Change]:
        sent = self.send(changes, False)
        self.published += sent
        return changes[sent:]

    async def replay(self, buf: Buffer, limit: int) -> tuple[int, int]:
        rows = await buf.peek(self.sink, limit)
        sent = self.send([c for _, c in rows], True)
        if sent:
            await buf.delete(self.sink, rows[sent - 1][0])
        return len(rows), sent


def ch(*values: int) -> list[Change]:
    return [("b.M.S", v, Quality.GOOD, v) for v in values]


async def test_offline_changes_queue_and_drain_before_live_in_order(tmp_path: Path) -> None:
    out = Recorder(Buffer(tmp_path / "q", 1, 1))
    await out.offer(ch(1, 2))  # offline: queued
    out.online = True
    await out.offer(ch(3))  # online, but a backlog waits: queued behind it
    assert out.got == [] and out.backlog() == 3
    await out.drain()
    await out.offer(ch(4))  # backlog empty: live
    assert out.got == [(1, True), (2, True), (3, True), (4, False)]
    assert (out.replayed, out.published) == (3, 1)


async def test_a_link_that_breaks_half_way_keeps_the_rest_queued(tmp_path: Path) -> None:
    out = Recorder(Buffer(tmp_path / "q", 1, 1), fail_after=2)
    out.online = True
    await out.offer(ch(1, 2, 3, 4))
    assert [v for v, _ in out.got] == [1, 2] and out.backlog() == 2 and not out.online
    out.fail_after = None
    out.online = True
    await out.drain()
    assert [v for v, _ in out.got] == [1, 2, 3, 4]  # nothing lost, nothing twice


async def test_a_full_disk_costs_history_never_the_live_path(tmp_path: Path) -> None:
    """SQLITE_FULL on every write (the disk has no room): offline changes are counted, the output goes on,
    and once online the live changes flow as if nothing happened."""
    buf = Buffer(tmp_path / "q", 1, 1)
    await buf.ready()
    assert buf.db is not None
    buf.db.execute(f"PRAGMA max_page_count={buf.db.execute('PRAGMA page_count').fetchone()[0]}")
    out = Recorder(buf)
    big = [("b.M.S", "x" * 5000, Quality.GOOD, i) for i in range(10)]  # rows that need new pages
    await out.offer(big)  # offline: to the queue, which has no room
    await buf.flush()
    assert buf.dropped == 10 and out.backlog() == 0 and out.lost == 0
    out.online = True
    await out.drain()
    await out.offer(ch(1, 2))
    assert out.got == [(1, False), (2, False)]
    await buf.close()


async def test_without_a_buffer_offline_changes_are_counted_lost() -> None:
    out = Recorder(None)
    await out.offer(ch(1, 2))
    assert out.lost == 2 and out.got == []


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ({"broker": {"urls": ["tcp://x"]}, "json": {}}, "expected mqtt://"),
        ({"broker": {"urls": ["mqtt://u:p@x"]}, "json": {}}, "no path, query or credentials"),
        ({"broker": {"urls": ["mqtt://x:99999"]}, "json": {}}, "out of range"),
        ({"broker": {"password": "p"}, "json": {}}, "a password needs a username"),
        ({"broker": {"cert_file": "c.pem"}, "json": {}}, "cert_file and key_file go together"),
        ({"sparkplug": {"group_id": "a/b", "edge_node_id": "n"}}, "none of '/', '\\+', '#'"),
        ({"json": {"prefix": "a/+/b"}}, "none of"),
        ({"json": {}, "report": {"deadband": {"*": "lots"}}}, "expected a number or 'N%'"),
        ({"json": {}, "report": {"deadband": {"*": -1}}}, "must not be negative"),
        ({}, "enable sparkplug, json or both"),
        ({"json": {}, "colour": "blue"}, "Extra inputs"),
    ],
)
def test_bad_configuration_is_named(section: dict[str, object], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        MqttConfig.model_validate(section)


def test_a_good_configuration() -> None:
    cfg = MqttConfig.model_validate({
        "broker": {"urls": ["mqtts://broker.example:8883", "mqtt://127.0.0.1"], "username": "u", "password": "hunter2"},
        "sparkplug": {"group_id": "plant1", "edge_node_id": "gw7", "primary_host_id": "scada"},
        "json": {"prefix": "site/canbridge"},
        "report": {"deadband": {"*.Temp*": 0.5, "*.Volt*": "2%"}, "max_age_s": 60},
    })
    assert cfg.json_topics is not None and cfg.json_topics.prefix == "site/canbridge"
    assert "hunter2" not in repr(cfg.broker)  # the password is a secret
