"""The bridge as CANopen SYNC producer (``buses[].canopen.sync``, canbridge/core/writepath.py): SYNC frames
at the period through the runner's cyclic transmission, audited when started and stopped; the SYNC COB-ID
within 11 bits."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

import can
import pytest

from canbridge import ConfigError
from canbridge.config import parse_config
from canbridge.core.app import unique_channel
from canbridge.testing import BridgeHarness


def config(channel: str, **sync: Any) -> dict[str, Any]:
    return {"buses": [{"name": "line", "interface": "virtual", "channel": channel,
                       "canopen": {"sync": {"period_ms": 20, **sync}}}], "mappings": []}


@pytest.mark.parametrize("cob_id", [0x80, 0x81])
async def test_sync_frames_arrive_at_the_period_and_start_and_stop_are_audited(tmp_path: Path, cob_id: int) -> None:
    channel = unique_channel("sync")
    seen = can.Bus(interface="virtual", channel=channel, receive_own_messages=False)
    try:
        async with BridgeHarness(config(channel, cob_id=cob_id), state_dir=tmp_path):
            times: list[float] = []
            while len(times) < 16:
                msg = await asyncio.get_running_loop().run_in_executor(None, seen.recv, 1.0)
                assert msg is not None, "no SYNC within 1 s"
                if msg.arbitration_id == cob_id:
                    assert (msg.dlc, msg.is_extended_id, msg.is_remote_frame) == (0, False, False)
                    times.append(msg.timestamp)
            gaps = [b - a for a, b in itertools.pairwise(times)]
            mean = (times[-1] - times[0]) / (len(times) - 1)
            assert 0.015 <= mean <= 0.03, gaps  # 20 ms, a shared 2-core machine's jitter allowed
    finally:
        seen.shutdown()
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    started = [r for r in records if r.get("event") == "sync_started"]
    stopped = [r for r in records if r.get("event") == "sync_stopped"]
    assert len(started) == 1 and len(stopped) == 1, records
    assert (started[0]["target"], started[0]["frame"], started[0]["value"], started[0]["result"]) == (
        "line.SYNC", f"{cob_id:03X}#", 20, "accepted")
    assert stopped[0]["frames"] >= 15  # counted from the period since the start: about the 16 seen


@pytest.mark.parametrize(("sync", "where"), [
    ({"period_ms": 0}, "period_ms"),
    ({"period_ms": 10, "cob_id": 0x800}, "cob_id"),
    ({"period_ms": 10, "counter": True}, "counter"),
])
def test_a_sync_setting_out_of_its_range_is_refused_naming_the_key(sync: dict[str, Any], where: str) -> None:
    cfg = {"buses": [{"name": "line", "interface": "virtual", "channel": "x", "canopen": {"sync": sync}}],
           "mappings": []}
    with pytest.raises(ConfigError, match=rf"buses\[0\]\.canopen\.sync\.{where}"):
        parse_config(cfg)


async def test_no_sync_without_the_setting(tmp_path: Path) -> None:
    channel = unique_channel("sync")
    cfg = config(channel)
    del cfg["buses"][0]["canopen"]
    async with BridgeHarness(cfg, state_dir=tmp_path) as h:
        assert h.bridge.runners["line"].cyclic == {}
