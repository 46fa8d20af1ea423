"""REST reads of CANopen objects served by SDO ask the node (plugins/canbridge_rest/handlers.py): `GET
/api/v1/signals/{name}` always (the cache answers while younger than ``max_age_ms``), the list with
``refresh=true`` (at most MAX_REFRESH on-demand signals). The peer is a LocalNode on python-can's virtual bus."""

from __future__ import annotations

import pytest

from canbridge.core.app import unique_channel
from tests.core.can.test_sdo import Peer, node_config
from tests.core.test_sdoreads import uploads
from tests.plugins.rest.conftest import running

URL = "/api/v1/signals/line.servo.Supported_drive_modes"



async def test_get_of_an_sdo_object_answers_with_the_nodes_value() -> None:
    channel = unique_channel("sdo-rest")
    async with running(config=node_config(channel)) as api:
        peer = Peer(channel)
        try:
            status, body, _ = await api.get(URL)
            assert (status, body["value"], body["quality"]) == (200, 0x65, "good"), body
            peer.set(0x6502, 0x1234)
            _, body, _ = await api.get(URL)
            assert body["value"] == 0x1234
            assert uploads(peer) == 2
            # the list answers from the cache unless asked to refresh
            peer.set(0x6502, 0x4321)
            _, listed, _ = await api.get("/api/v1/signals?name=line.servo.Supported_*")
            assert [s["value"] for s in listed["signals"]] == [0x1234]
            _, listed, _ = await api.get("/api/v1/signals?name=line.servo.Supported_*&refresh=true")
            assert [s["value"] for s in listed["signals"]] == [0x4321]
            assert uploads(peer) == 1
        finally:
            peer.close()


async def test_a_fresh_value_is_answered_from_the_cache_and_a_silent_node_is_bad() -> None:
    channel = unique_channel("sdo-rest")
    async with running(config=node_config(channel, max_age_ms=60_000, sdo_timeout_ms=50)) as api:
        status, body, _ = await api.get(URL)  # no node on the bus yet
        assert (status, body["quality"]) == (200, "bad"), body
        assert "did not answer within 50 ms" in body["reason"]
        peer = Peer(channel)
        try:
            _, body, _ = await api.get(URL)
            assert (body["value"], body["quality"]) == (0x65, "good")
            peer.set(0x6502, 0x1234)
            _, body, _ = await api.get(URL)
            assert body["value"] == 0x65
            assert uploads(peer) == 1
            _, bus, _ = await api.get("/api/v1/buses/line")
            counters = {k: bus["canopen"]["servo"][k] for k in ("sdo_transfers", "sdo_aborts", "sdo_timeouts")}
            assert counters == {"sdo_transfers": 2, "sdo_aborts": 0, "sdo_timeouts": 1}
        finally:
            peer.close()


async def test_an_abort_of_the_node_is_bad_with_its_code_and_counted_in_the_node_status() -> None:
    from canopen.sdo.exceptions import SdoAbortedError

    channel = unique_channel("sdo-rest")
    async with running(config=node_config(channel)) as api:
        peer = Peer(channel)
        try:
            def refuse(index: int, subindex: int, od: object) -> None:
                raise SdoAbortedError(0x08000024)

            peer.node.add_read_callback(refuse)  # type: ignore[no-untyped-call]
            _, body, _ = await api.get(URL)
            assert body["quality"] == "bad"
            assert "SDO abort 0x08000024 (no data available) from the node" in body["reason"], body
            _, bus, _ = await api.get("/api/v1/buses/line")
            assert (bus["canopen"]["servo"]["sdo_aborts"], bus["canopen"]["servo"]["sdo_transfers"]) == (1, 1)
        finally:
            peer.close()


async def test_a_list_refresh_of_too_many_on_demand_signals_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import canbridge_rest.handlers

    monkeypatch.setattr(canbridge_rest.handlers, "MAX_REFRESH", 2)
    channel = unique_channel("sdo-rest")
    async with running(config=node_config(channel, sdo_timeout_ms=50)) as api:
        status, body, _ = await api.get("/api/v1/signals?bus=line&refresh=true")
        assert (status, body["error"]) == (400, "bad_request"), body
        assert "at most 2" in body["detail"]
        status, body, _ = await api.get("/api/v1/signals?refresh=maybe")
        assert status == 400
