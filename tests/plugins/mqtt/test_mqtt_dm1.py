"""J1939 DM1 on plain MQTT topics against Mosquitto, observed with mosquitto_sub: one retained topic per
source, ``<prefix>/<bus>/dm1/0x<SA>``; two sources, five codes by BAM, a code that clears, a late
subscriber getting the retained state, and a source that stops sending published stale.

Tier ``mqtt-interop``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from canbridge.testing import BridgeHarness, until
from tests.plugins.dm1frames import FIVE, dm1_bam, dm1_frame, j1939_config
from tests.plugins.mqtt.broker import Mosquitto, running_broker
from tests.plugins.mqtt.test_mqtt_json import sub

pytestmark = pytest.mark.tier("mqtt-interop")
broker = running_broker


def config(url: str, **json_cfg: Any) -> dict[str, Any]:
    return j1939_config({"mqtt": {"broker": {"urls": [url], "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
                                  "json": {"prefix": "cb", "dm1_interval_s": 0.05, **json_cfg}}})


def codes(v: dict[str, Any]) -> list[tuple[int, int, int]]:
    return [(d["spn"], d["fmi"], d["occurrences"]) for d in v["dtcs"]]


async def test_dm1_per_source_retained_with_a_clear_and_staleness(broker: Mosquitto, tmp_path: Path) -> None:
    async with sub(broker.port) as s, BridgeHarness(config(broker.url, dm1_stale_after_s=1.0),
                                                    state_dir=tmp_path) as h:
        await until(lambda: ("cb/status", "online") in s.seen, 10, what="online")
        h.inject(dm1_frame(0x00, 0b00000100, [(190, 2, 5)]))
        for f in dm1_bam(0x03, 0b01000000, FIVE):
            h.inject(f)
        await until(lambda: s.values("cb/truck/dm1/0x03"), 10, what="the DM1 of 0x03")
        gearbox = s.values("cb/truck/dm1/0x03")[-1]
        assert codes(gearbox) == FIVE and gearbox["lamps"]["mil"] == "on" and gearbox["quality"] == "good"
        assert gearbox["source"] == 3 and gearbox["messages"] == 1
        await until(lambda: s.values("cb/truck/dm1/0x00"), 10, what="the DM1 of 0x00")
        assert codes(s.values("cb/truck/dm1/0x00")[-1]) == [(190, 2, 5)]
        h.inject(dm1_frame(0x00, 0, []))  # the code clears
        await until(lambda: codes(s.values("cb/truck/dm1/0x00")[-1]) == [], 10, what="the clear")
        assert s.values("cb/truck/dm1/0x00")[-1]["lamps"]["amber_warning"] == "off"
        async with sub(broker.port, "cb/truck/dm1/+") as late:  # retained: a late subscriber has both
            await until(lambda: {t for t, _ in late.seen} == {"cb/truck/dm1/0x00", "cb/truck/dm1/0x03"}, 10,
                        what="the retained DM1 topics")
            assert codes(late.values("cb/truck/dm1/0x03")[-1]) == FIVE
        # nothing more from either source: both are published stale, with their last codes
        await until(lambda: s.values("cb/truck/dm1/0x03")[-1]["quality"] == "stale", 10, what="stale")
        assert codes(s.values("cb/truck/dm1/0x03")[-1]) == FIVE
