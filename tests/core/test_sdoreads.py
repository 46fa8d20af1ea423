"""On-demand SDO reads (canbridge/core/sdoreads.py) as plugins drive them through ``Bridge.refresh``: a value
younger than ``max_age_ms`` answers without a request, an older one (or any, without ``max_age_ms``) is
uploaded, and readers asking while an upload is in flight share it. The peer is a LocalNode on python-can's
virtual bus (tests/core/can/test_sdo.py)."""

from __future__ import annotations

import asyncio

from canbridge import Quality
from tests.core.can.test_sdo import Peer, bridge_and_peer

NAME = "line.servo.Supported_drive_modes"


def uploads(peer: Peer) -> int:
    """Upload requests (command specifier 2) of 0x6502 among the SDO requests seen since the last call."""
    return sum(1 for m in peer.requests() if m.data[0] == 0x40 and m.data[1:4] == bytes((0x02, 0x65, 0x00)))


async def test_a_value_younger_than_max_age_answers_from_the_cache_an_older_one_is_uploaded() -> None:
    async with bridge_and_peer(max_age_ms=150) as (h, peer):
        assert (await h.bridge.refresh(NAME)).value == 0x65
        peer.set(0x6502, 0x7F)
        assert (await h.bridge.refresh(NAME)).value == 0x65  # fresh: the cache, no request
        assert uploads(peer) == 1
        assert h.bridge.signals[NAME].on_demand
        await asyncio.sleep(0.2)
        sv = await h.bridge.refresh(NAME)
        assert (sv.value, sv.quality) == (0x7F, Quality.GOOD)
        assert uploads(peer) == 1


async def test_without_max_age_every_read_uploads() -> None:
    async with bridge_and_peer() as (h, peer):
        for v in (0x10, 0x11, 0x12):
            peer.set(0x6502, v)
            assert (await h.bridge.refresh(NAME)).value == v
        assert uploads(peer) == 3


async def test_readers_asking_while_an_upload_is_in_flight_share_it() -> None:
    async with bridge_and_peer() as (h, peer):
        values = await asyncio.gather(*(h.bridge.refresh(NAME) for _ in range(8)))
        assert {sv.value for sv in values} == {0x65}
        assert uploads(peer) == 1


async def test_a_reader_that_gives_up_does_not_cancel_the_upload_of_the_others() -> None:
    async with bridge_and_peer() as (h, peer):
        impatient = asyncio.ensure_future(h.bridge.refresh(NAME))
        patient = asyncio.ensure_future(h.bridge.refresh(NAME))
        await asyncio.sleep(0)
        impatient.cancel()
        assert (await patient).quality is Quality.GOOD
        assert uploads(peer) == 1


async def test_a_bad_value_is_uploaded_again_even_within_max_age() -> None:
    async with bridge_and_peer(max_age_ms=60_000, sdo_timeout_ms=50) as (h, peer):
        assert (await h.bridge.refresh(NAME)).quality is Quality.GOOD
        h.bridge.store.set_message_quality(h.bridge.table.messages[f"line.servo.SDO.{NAME.split('.')[-1]}"].index,
                                           Quality.BAD, "test: made bad")
        assert (await h.bridge.refresh(NAME)).quality is Quality.GOOD
        assert uploads(peer) == 2
