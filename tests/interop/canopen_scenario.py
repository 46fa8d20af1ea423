"""The bridge against an independent CANopen device in another process (tests/interop/canopen_peer.py):
live PDO values on REST and OPC UA, an SDO read, an SDO write the device reports, a refused write that
sends no SDO request, a stopped heartbeat turning the values bad and a boot-up making them good again.

One scenario, two carriers: a socketpair where the kernel has no CAN (tests/interop/) and vcan in the
real-kernel tier (tests/socketcan/test_canopen_peer.py)."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import aiohttp
from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.uaerrors import UaStatusCodeError

from canbridge.testing import BridgeHarness

ROOT = Path(__file__).resolve().parents[2]
PEER = Path(__file__).resolve().parent / "canopen_peer.py"
EDS = ROOT / "mappings" / "demo" / "io_module.eds"
NODE_ID = 3
BUS = "line"
IO = f"{BUS}.io"
AI1 = f"{IO}.Read_analogue_input_16_bit.Analogue_input_1"
DI = f"{IO}.Read_input_8_bit.Digital_inputs_1_8"
AO = f"{IO}.Write_analogue_output_16_bit.Analogue_output_1"
SUPPLY = f"{IO}.Supply_voltage"
SUPPLY_MV = 23456  # what the peer process put in its dictionary (the file says 24000)


def node() -> dict[str, Any]:
    return {"id": NODE_ID, "name": "io", "eds": str(EDS), "sdo": ["Supply_voltage", "Write_analogue_*.Analogue_*"],
            "writable": ["Write_analogue_output_16_bit.Analogue_output_1"], "write_rate": None,
            "sdo_timeout_ms": 2000}


def plugins(pki_dir: Path) -> dict[str, Any]:
    return {"rest": {"port": 0, "anonymous_read": True, "anonymous_write": True},
            "opcua": {"listen": "opc.tcp://127.0.0.1:0", "security_policies": ["None"], "allow_anonymous": True,
                      "anonymous_role": "read", "pki_dir": str(pki_dir), "update_interval": 0.02}}


class Peer:
    """The device process: commands on stdin, JSON events on stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.writes: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, carrier: Sequence[str], pass_fds: Sequence[int] = ()) -> Peer:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(PEER), *carrier, "--node-id", str(NODE_ID), "--eds", str(EDS),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, pass_fds=tuple(pass_fds))
        peer = cls(proc)
        await peer.event("ready", timeout=60)
        return peer

    async def event(self, kind: str, timeout: float = 20) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = await self.proc.stdout.readline()
                assert line, f"the peer ended (rc {self.proc.returncode}) before {kind!r}"
                event = cast(dict[str, Any], json.loads(line))
                if event["event"] == "write":
                    self.writes.append(event)
                if event["event"] == kind:
                    return event

    async def command(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{text}\n".encode())
        await self.proc.stdin.drain()
        await self.event("done")

    async def sdo_requests(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"count\n")
        await self.proc.stdin.drain()
        return int((await self.event("count"))["sdo_requests"])

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with_stdin = self.proc.stdin
            if with_stdin is not None and not with_stdin.is_closing():
                with_stdin.write(b"quit\n")
                with_stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def run(bus: Mapping[str, Any], carrier: Sequence[str], pki_dir: Path, *, pass_fds: Sequence[int] = (),
              extra_plugins: Sequence[object] = (), timeout: float = 10) -> None:
    """The whole scenario; ``bus`` is the bridge's bus (without nodes), ``carrier`` the peer's bus arguments."""
    config = {"buses": [{**bus, "name": BUS, "nodes": [node()]}], "mappings": []}
    async with BridgeHarness(config, plugins=plugins(pki_dir), extra_plugins=extra_plugins) as h:
        peer = await Peer.start(carrier, pass_fds)
        try:
            await _scenario(h, peer, timeout)
        finally:
            await peer.stop()


async def _scenario(h: BridgeHarness, peer: Peer, timeout: float) -> None:
    rest = h.service("rest").endpoints()[0].rstrip("/")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http, \
            Client(h.service("opcua").endpoints()[0], timeout=timeout) as ua_client:
        ns = await ua_client.get_namespace_index("urn:canbridge")

        async def on_rest(name: str) -> dict[str, Any]:
            async with http.get(f"{rest}/api/v1/signals/{name}") as r:
                assert r.status == 200, await r.text()
                return cast(dict[str, Any], await r.json())

        async def on_opcua(name: str) -> ua.DataValue:
            return await ua_client.get_node(ua.NodeId(cast(Any, name), cast(Any, ns))).read_data_value(
                raise_on_bad_status=False)

        async def until(what: str, check: Any) -> None:
            loop = asyncio.get_running_loop()
            end = loop.time() + timeout
            for _ in itertools.count():  # bounded by the time, each try a REST and OPC UA round trip
                if await check():
                    return
                if loop.time() > end:
                    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
                await asyncio.sleep(0.02)

        # live TPDO values, the same on both protocols
        await h.until(lambda: h.bridge.read(f"{IO}.NMT_state").value == 5, timeout=timeout)
        for value in (1234, 4321):
            await peer.command(f"set {value}")

            async def both(value: int = value) -> bool:
                body, dv = await on_rest(AI1), await on_opcua(AI1)
                return bool(body["value"] == value and body["quality"] == "good" and _good(dv)
                            and dv.Value is not None and dv.Value.Value == value)

            await until(f"{AI1} = {value} on REST and OPC UA", both)
        first = (await on_rest(DI))["value"]
        await until("the digital inputs counting", lambda: _changed(on_rest, DI, first))

        # an SDO upload: the peer's own value (SUPPLY_MV), which the file's default is not: only an upload
        # from the peer can give it. (Not counted by requests: a refresh shares an upload in flight or
        # answers from a fresh cache, both by design.)
        got = await h.bridge.refresh(SUPPLY)
        assert got.value == SUPPLY_MV, got
        assert (await on_rest(SUPPLY))["value"] == SUPPLY_MV

        # an SDO download the device sees
        async with http.put(f"{rest}/api/v1/signals/{AO}", json={"value": 4200}) as r:
            assert r.status == 200, await r.text()
        await until("the peer reports the download", lambda: _wrote(peer, 0x6411, 1, 4200))
        assert (await on_rest(AO))["value"] == 4200

        # refused writes send nothing: above HighLimit on REST, a read-only session on OPC UA
        async with http.put(f"{rest}/api/v1/signals/{AO}", json={"value": 20000}) as r:
            body = await r.json()
            assert (r.status, body["error"]) == (422, "out_of_range"), body
        refused = ""
        try:
            await ua_client.get_node(ua.NodeId(cast(Any, AO), cast(Any, ns))).write_value(
                ua.DataValue(ua.Variant(100, ua.VariantType.Int16)))
        except UaStatusCodeError as e:
            refused = ua.StatusCode(e.code).name
        assert refused == "BadUserAccessDenied", refused or "an anonymous (read) session wrote"
        await asyncio.sleep(0.2)  # a request would have reached the peer by now
        await peer.sdo_requests()  # reads the peer's events: its downloads among them
        assert [w["value"] for w in peer.writes if w["index"] == 0x6411] == [4200]  # no download since

        # the device goes silent: the heartbeat consumer makes its values bad; a boot-up brings them back
        await peer.command("silence")

        async def bad() -> bool:
            body, dv = await on_rest(AI1), await on_opcua(AI1)
            return bool(body["quality"] == "bad" and "no heartbeat" in (body["reason"] or "")
                        and not _good(dv))

        await until("the values turn bad", bad)
        boots = h.bridge.bus_status(BUS).canopen["io"].boot_ups
        await peer.command("set 777")
        await peer.command("boot")

        async def good() -> bool:
            body, dv = await on_rest(AI1), await on_opcua(AI1)
            return bool(body["quality"] == "good" and body["value"] == 777 and _good(dv))

        await until("the values are good again", good)
        assert h.bridge.bus_status(BUS).canopen["io"].boot_ups == boots + 1


async def _changed(on_rest: Any, name: str, first: object) -> bool:
    return bool((await on_rest(name))["value"] != first)


async def _wrote(peer: Peer, index: int, subindex: int, value: int) -> bool:
    await peer.sdo_requests()  # reads the peer's events, writes among them
    return any((w["index"], w["subindex"], w["value"]) == (index, subindex, value) for w in peer.writes)


def _good(dv: ua.DataValue) -> bool:
    return dv.StatusCode is None or bool(dv.StatusCode.is_good())
