"""J1939 DM1 in the OPC UA address space, read with asyncua's client: per source heard, nodes with
stable string NodeIds (``<bus>._J1939.0x<SA>.DM1.*``) made at run time, a DTC count, four lamps and the
codes as parallel arrays; two sources, five codes by BAM, a code that clears (seen by a subscription),
a source heard late, and the staleness of a source that stops sending."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from asyncua.client.client import Client
from asyncua.common.subscription import DataChangeNotif

from canbridge.testing import BridgeHarness, eventually
from tests.plugins.dm1frames import FIVE, dm1_bam, dm1_frame, j1939_config
from tests.plugins.opcua.conftest import connect, ns_index
from tests.plugins.opcua.uatypes import StatusCodes, UaStatusCodeError, dv_status, dv_value, nid

Cfg = Callable[..., dict[str, Any]]


@asynccontextmanager
async def bridge(opcua_config: Cfg, seed: Path,
                 **cfg: Any) -> AsyncIterator[tuple[BridgeHarness, Client, Callable[[str], Any]]]:
    config = opcua_config(diagnostics_interval=0.05, **cfg)
    async with BridgeHarness(j1939_config({"opcua": config})) as h:
        keep_server_key(Path(config["pki_dir"]), seed)
        url = h.service("opcua").endpoints()[0]
        async with connect(url) as c:
            idx = await ns_index(c)
            yield h, c, lambda s: c.get_node(nid(f"truck._J1939.{s}", idx))


def keep_server_key(pki: Path, seed: Path) -> None:
    """As conftest.running does: the next tests reuse the generated server key."""
    for sub in ("own", "private"):
        (seed / sub).mkdir(exist_ok=True)
        for f in (pki / sub).iterdir():
            if not (seed / sub / f.name).exists():
                (seed / sub / f.name).write_bytes(f.read_bytes())


async def value(node: Any) -> Any:
    return dv_value(await node.read_data_value(raise_on_bad_status=False))


async def test_two_sources_five_codes_by_bam_a_clear_and_a_late_source(opcua_config: Cfg, pki_seed: Path) -> None:
    async with bridge(opcua_config, pki_seed) as (h, c, node):
        h.inject(dm1_frame(0x00, 0b00000100, [(190, 2, 5)]))  # amber warning on
        for f in dm1_bam(0x03, 0b01000000, FIVE):  # MIL on, five codes
            h.inject(f)
        await eventually(lambda: value(node("0x03.DM1.DtcCount")), lambda v: v == 5)
        gearbox = {n: await value(node(f"0x03.DM1.{n}")) for n in
                   ("Mil", "RedStop", "AmberWarning", "Protect", "Spn", "Fmi", "Occurrences", "ConversionMethod")}
        assert gearbox == {"Mil": 1, "RedStop": 0, "AmberWarning": 0, "Protect": 0,
                           "Spn": [c[0] for c in FIVE], "Fmi": [c[1] for c in FIVE],
                           "Occurrences": [c[2] for c in FIVE], "ConversionMethod": [0] * 5}
        await eventually(lambda: value(node("0x00.DM1.Spn")), lambda v: v == [190])
        assert await value(node("0x00.DM1.AmberWarning")) == 1
        dv = await node("0x00.DM1.DtcCount").read_data_value()
        assert dv_status(dv).is_good() and dv.SourceTimestamp is not None
        assert await value(node("Sources")) == 2 and await value(node("SourceAddresses")) == [0, 3]
        names = {(await ch.read_browse_name()).Name for ch in await node("0x03.DM1").get_children()}
        assert names == {"DtcCount", "Mil", "RedStop", "AmberWarning", "Protect", "Spn", "Fmi", "Occurrences",
                         "ConversionMethod", "Messages"}

        got: list[Any] = []

        class Handler:
            def datachange_notification(self, _node: Any, val: Any, _data: DataChangeNotif) -> None:
                got.append(val)

        sub = await c.create_subscription(50, Handler())
        await sub.subscribe_data_change(node("0x00.DM1.DtcCount"))
        await h.until(lambda: got == [1])
        h.inject(dm1_frame(0x00, 0, []))  # the engine's code clears
        await h.until(lambda: got[-1] == 0, what="the clear notified")
        assert await value(node("0x00.DM1.Spn")) == [] and await value(node("0x00.DM1.AmberWarning")) == 0
        await sub.delete()

        # a source nobody heard has no nodes; when it is heard, it gets them
        try:
            await node("0x21.DM1.DtcCount").read_value()
            raise AssertionError("0x21 has nodes before it was heard")
        except UaStatusCodeError as e:
            assert e.code == StatusCodes.BadNodeIdUnknown
        h.inject(dm1_frame(0x21, 0b00010000, [(524287, 31, 127)]))
        await eventually(lambda: value(node("0x21.DM1.Spn")), lambda v: v == [524287])
        assert await value(node("0x21.DM1.RedStop")) == 1 and await value(node("0x21.DM1.Occurrences")) == [127]
        assert await value(node("SourceAddresses")) == [0, 3, 0x21]


async def test_a_source_without_dm1_turns_uncertain_with_its_last_codes(opcua_config: Cfg, pki_seed: Path) -> None:
    async with bridge(opcua_config, pki_seed, dm1_stale_after_s=0.3) as (h, _c, node):
        h.inject(dm1_frame(0x00, 0, [(110, 0, 1)]))
        dv = await eventually(lambda: node("0x00.DM1.Spn").read_data_value(raise_on_bad_status=False),
                              lambda dv: dv_value(dv) == [110])
        assert dv_status(dv).is_good()
        dv = await eventually(lambda: node("0x00.DM1.Spn").read_data_value(raise_on_bad_status=False),
                              lambda dv: dv_status(dv).value == StatusCodes.UncertainLastUsableValue)
        assert dv_value(dv) == [110]
        h.inject(dm1_frame(0x00, 0, [(110, 0, 1)]))  # it comes again: good again
        await eventually(lambda: node("0x00.DM1.Spn").read_data_value(raise_on_bad_status=False),
                         lambda dv: dv_status(dv).is_good())


async def test_nodes_are_bounded_by_the_source_addresses(opcua_config: Cfg, pki_seed: Path) -> None:
    async with bridge(opcua_config, pki_seed) as (h, _c, node):
        for sa in range(256):  # every address sends a DM1, even the null and global ones
            h.inject(dm1_frame(sa, 0, [(100 + sa, 1, 1)]))
        await eventually(lambda: value(node("Sources")), lambda v: v == 254, timeout=10)
        svc: Any = h.service("opcua")
        assert len(svc.dm1_nodes.sources) == 254  # the core keeps DM1 of 254 sources at most
        assert await value(node("0xFD.DM1.Spn")) == [100 + 0xFD]
