"""An OPC UA Read of a CANopen object served by SDO asks the node (plugins/canbridge_opcua/service.py: the
session's Read awaits ``Bridge.refresh`` first): the answer is the node's value, the cached one while it is
younger than ``max_age_ms``, or Bad when the node does not answer. The peer is a LocalNode on python-can's
virtual bus."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.status_codes import StatusCodes

from canbridge.core.app import unique_channel
from canbridge.testing import BridgeHarness
from tests.core.can.test_sdo import Peer, node_config
from tests.core.test_sdoreads import uploads
from tests.plugins.opcua.conftest import connect

MODES = "line.servo.Supported_drive_modes"  # UNSIGNED32 0x6502, ro


@asynccontextmanager
async def opcua_and_peer(opcua: dict[str, Any], peer: bool = True, **node: Any
                         ) -> AsyncIterator[tuple[BridgeHarness, Client, ua.NodeId, Peer | None]]:
    channel = unique_channel("sdo-opcua")
    async with BridgeHarness(node_config(channel, **node), plugins={"opcua": opcua}) as h:
        svc = h.service("opcua")
        p = Peer(channel) if peer else None
        try:
            async with connect(svc.endpoints()[0]) as client:
                yield h, client, svc.node_id(MODES), p  # type: ignore[attr-defined]
        finally:
            if p is not None:
                p.close()



async def test_a_read_of_an_sdo_object_answers_with_the_nodes_value(opcua_config: Callable[..., dict[str, Any]]
                                                                    ) -> None:
    async with opcua_and_peer(opcua_config()) as (_h, client, nid, peer):
        assert peer is not None
        dv = await client.get_node(nid).read_data_value()
        assert dv.Value is not None and dv.StatusCode is not None
        assert (dv.Value.Value, dv.StatusCode.is_good()) == (0x65, True)
        peer.set(0x6502, 0x1234)
        assert await client.get_node(nid).read_value() == 0x1234
        assert uploads(peer) == 2
        # another attribute than Value does not ask the node
        await client.get_node(nid).read_display_name()
        assert uploads(peer) == 0


async def test_a_fresh_value_is_answered_from_the_cache(opcua_config: Callable[..., dict[str, Any]]) -> None:
    async with opcua_and_peer(opcua_config(), max_age_ms=60_000) as (_h, client, nid, peer):
        assert peer is not None
        assert await client.get_node(nid).read_value() == 0x65
        peer.set(0x6502, 0x1234)
        assert await client.get_node(nid).read_value() == 0x65
        assert uploads(peer) == 1


async def test_a_node_that_does_not_answer_is_bad(opcua_config: Callable[..., dict[str, Any]]) -> None:
    async with opcua_and_peer(opcua_config(), peer=False, sdo_timeout_ms=50) as (h, client, nid, _):
        dv = await client.get_node(nid).read_data_value(raise_on_bad_status=False)
        assert dv.StatusCode is not None and dv.StatusCode.value == StatusCodes.BadNoCommunication, dv
        assert "did not answer within 50 ms" in (h.bridge.read(MODES).reason or "")
