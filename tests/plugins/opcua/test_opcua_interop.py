"""Interoperability: node-opcua (an independent implementation) against the canbridge OPC UA server.

Tier ``opcua-interop`` (tools/tiers/opcua-interop.sh installs Node.js packages into tools/node)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from canbridge.testing import eventually
from tests.plugins.opcua.conftest import NS, OPERATOR, READER, running
from tests.plugins.opcua.uatypes import dv_value, nid
from tests.tiers import NODE_MODULES, ROOT

pytestmark = pytest.mark.tier("opcua-interop")

SCRIPT = Path(__file__).parent / "js" / "opcua_client.js"
Cfg = Callable[..., dict[str, Any]]


class NodeClient:
    """One run of js/opcua_client.js; its JSON result lines, read as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []

    async def next(self, timeout: float = 30.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if not raw:
                err = b""
                if self.proc.stderr is not None:
                    err = await self.proc.stderr.read()
                raise AssertionError(f"node-opcua client ended early: {err.decode()[-2000:]}")
            text = raw.decode().strip()
            if text.startswith("{"):
                line: dict[str, Any] = json.loads(text)
                self.lines.append(line)
                return line

    async def until(self, key: str, timeout: float = 30.0) -> dict[str, Any]:
        while True:
            line = await self.next(timeout)
            if key in line:
                return line

    async def until_change(self, value: Any, timeout: float = 30.0) -> None:
        """Read on until the client reports a data change to ``value`` (a subscribe step's "changed" line)."""
        while (await self.until("event", timeout)).get("value") != value:
            pass

    async def rest(self, timeout: float = 60.0) -> list[dict[str, Any]]:
        assert self.proc.stdout is not None
        out, _err = await asyncio.wait_for(self.proc.communicate(), timeout)
        for text in out.decode().splitlines():
            if text.startswith("{"):
                self.lines.append(json.loads(text))
        return self.lines


@contextlib.asynccontextmanager
async def node_client(spec: dict[str, Any]) -> AsyncIterator[NodeClient]:
    env = dict(os.environ, NODE_PATH=str(NODE_MODULES))
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(SCRIPT),
        json.dumps(spec),
        cwd=str(ROOT),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield NodeClient(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def run_node(spec: dict[str, Any], timeout: float = 60.0) -> list[dict[str, Any]]:
    async with node_client(spec) as c:
        return await c.rest(timeout)


def by_op(lines: list[dict[str, Any]], op: str) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("op") == op]


async def test_browse_and_read_units_ranges_enums(opcua_config: Cfg, pki_seed: Path, tmp_path: Path) -> None:
    async with running(opcua_config(), seed=pki_seed) as (h, svc, url):
        h.inject("100#E803000000000000")
        await h.until(lambda: h.bridge.read("demo.MotorStatus.MotorSpeed").value == 1000)
        # the server's address space has it (it is written once per update interval)
        speed = svc.server.get_node(nid("demo.MotorStatus.MotorSpeed", await svc.server.get_namespace_index(NS)))
        await eventually(lambda: speed.read_data_value(raise_on_bad_status=False), lambda dv: dv_value(dv) == 1000,
                         what="the value in the address space")
        lines = await run_node(
            {
                "endpoint": url,
                "pkiRoot": str(tmp_path / "js-pki"),
                "steps": [
                    {"op": "browse", "path": ["CANBridge"]},
                    {"op": "browse", "path": ["CANBridge", "demo", "MotorStatus"]},
                    {"op": "read", "nodeId": "demo.MotorStatus.MotorSpeed"},
                    {"op": "read", "nodeId": "demo.MotorStatus.MotorSpeed.EngineeringUnits"},
                    {"op": "read", "nodeId": "demo.MotorStatus.MotorSpeed.EURange"},
                    {"op": "read", "nodeId": "demo.MotorStatus.MotorState.EnumStrings"},
                    {"op": "read", "nodeId": "demo.BatteryStatus.PackVoltage"},
                ],
            }
        )
    assert lines[0].get("connected"), lines
    root, msg = by_op(lines, "browse")
    assert {c["name"] for c in root["children"]} >= {"demo", "SendFrame"}
    names = {c["name"] for c in msg["children"] if c["nodeClass"] == "Variable"}
    assert names == {"MotorSpeed", "MotorTemperature", "MotorCurrent", "MotorState", "MotorEnabled", "SetpointEcho"}
    speed, eu, rng, enum, volt = by_op(lines, "read")
    assert (speed["value"], speed["dataType"]) == (1000, "ns=0;i=4")
    # no more frames after the one injected: Good, or already Uncertain once the message timed out
    assert speed["status"] in ("Good", "UncertainLastUsableValue")
    assert speed["sourceTimestamp"] is not None
    assert eu["value"]["unitId"] == 5394509 and eu["value"]["displayName"]["text"] == "r/min"
    assert eu["value"]["namespaceUri"] == "http://www.opcfoundation.org/UA/units/un/cefact"
    assert (rng["value"]["low"], rng["value"]["high"]) == (-8000, 8000)
    assert [t["text"] for t in enum["value"]] == ["Off", "Ready", "Running", "Fault"]
    assert volt["status"] == "BadWaitingForInitialData"  # nothing received from the BMS


async def test_subscription_receives_changes(opcua_config: Cfg, pki_seed: Path, tmp_path: Path) -> None:
    async with running(opcua_config(), seed=pki_seed) as (h, _svc, url):
        spec = {
            "endpoint": url,
            "pkiRoot": str(tmp_path / "js-pki"),
            "steps": [{"op": "subscribe", "nodeId": "demo.MotorStatus.MotorSpeed", "count": 4, "timeoutMs": 20000}],
        }
        async with node_client(spec) as c:
            await c.until("event")  # subscribed: the initial (waiting) value arrived
            for rpm in (111, 222, 333):
                h.inject(f"100#{rpm.to_bytes(2, 'little').hex()}000000000000")
                await h.until(lambda rpm=rpm: h.bridge.read("demo.MotorStatus.MotorSpeed").value == rpm)  # type: ignore[misc]
                await c.until_change(rpm)  # the client saw it before the next one is sent
            lines = await c.rest()
    (result,) = by_op(lines, "subscribe")
    changes = result["changes"]
    assert changes[0]["status"] == "BadWaitingForInitialData"
    assert [ch["value"] for ch in changes[1:]] == [111, 222, 333]
    assert all(ch["status"] == "Good" for ch in changes[1:])


async def test_write_sends_frame_and_refusals(opcua_config: Cfg, pki_seed: Path, tmp_path: Path) -> None:
    async with running(opcua_config(), seed=pki_seed) as (h, _svc, url):
        h.clear_sent()
        lines = await run_node(
            {
                "endpoint": url,
                "pkiRoot": str(tmp_path / "js-pki"),
                "user": OPERATOR[0],
                "password": OPERATOR[1],
                "steps": [
                    {"op": "write", "nodeId": "demo.MotorCommand.SpeedSetpoint", "dataType": "UInt16", "value": 1234},
                    {"op": "write", "nodeId": "demo.MotorCommand.SpeedSetpoint", "dataType": "UInt16", "value": 6001},
                    {"op": "write", "nodeId": "demo.MotorCommand.SpeedSetpoint", "dataType": "String", "value": "x"},
                    {"op": "write", "nodeId": "demo.MotorStatus.MotorSpeed", "dataType": "Int16", "value": 1},
                    {
                        "op": "call",
                        "objectId": "CANBridge",
                        "methodId": "CANBridge.SendFrame",
                        "args": [["String", "demo"], ["String", "7A0#0102"]],
                    },
                    {  # refused: the reason comes back as the 'detail' output argument
                        "op": "call",
                        "objectId": "CANBridge",
                        "methodId": "CANBridge.SendFrame",
                        "args": [["String", "demo"], ["String", "7A0#01020"]],
                    },
                ],
            }
        )
        # what a peer node saw, in order (next_sent drops frames of other ids, so read them all)
        setpoints, raw = set(), None
        deadline = time.monotonic() + 5
        while (1234 not in setpoints or raw is None) and time.monotonic() < deadline:
            frame = await h.next_sent(None, timeout=3)
            if frame.can_id == 0x300:
                setpoints.add(int.from_bytes(frame.data[:2], "little"))
            elif frame.can_id == 0x7A0:
                raw = frame.data
        assert 1234 in setpoints and raw == b"\x01\x02"
        assert not setpoints & {6001, 1}  # refused writes sent nothing
        assert h.bridge.read("demo.MotorCommand.SpeedSetpoint").value == 1234
        ro = await run_node(
            {
                "endpoint": url,
                "pkiRoot": str(tmp_path / "js-pki"),
                "user": READER[0],
                "password": READER[1],
                "steps": [
                    {"op": "write", "nodeId": "demo.MotorCommand.SpeedSetpoint", "dataType": "UInt16", "value": 1}
                ],
            }
        )
    assert [w["status"] for w in by_op(lines, "write")] == [
        "Good",
        "BadOutOfRange",
        "BadTypeMismatch",
        "BadNotWritable",
    ]
    calls = by_op(lines, "call")
    assert calls[0]["status"] == "Good" and calls[0]["outputs"] == ["7A0#0102", ""]
    assert calls[1]["status"] == "BadInvalidArgument"
    assert calls[1]["outputs"][0] == "" and calls[1]["outputs"][1].startswith("invalid_frame: ")
    assert by_op(ro, "write")[0]["status"] == "BadUserAccessDenied"


async def test_secure_channel_trust_list_and_passwords(
    opcua_config: Cfg, pki_seed: Path, pki_dir: Path, tmp_path: Path
) -> None:
    js_pki = tmp_path / "js-pki"
    secure = {"securityPolicy": "Basic256Sha256", "securityMode": "SignAndEncrypt"}
    read = [{"op": "read", "nodeId": "demo.MotorCommand.TorqueLimit"}]
    async with running(opcua_config(allow_anonymous=False), seed=pki_seed) as (_h, _svc, url):
        base = {"endpoint": url, "pkiRoot": str(js_pki), **secure, "steps": read}
        # 1. an unknown client certificate is refused and kept in rejected/
        first = await run_node({**base, "user": OPERATOR[0], "password": OPERATOR[1]})
        assert "error" in first[-1], first
        rejected = list((pki_dir / "rejected").iterdir())
        assert len(rejected) == 1, first
        # 2. the administrator approves it
        rejected[0].rename(pki_dir / "trusted" / rejected[0].name)
        ok = await run_node({**base, "user": OPERATOR[0], "password": OPERATOR[1]})
        assert ok[0].get("connected"), ok
        (value,) = by_op(ok, "read")
        assert (value["value"], value["status"]) == (50, "Good")  # TorqueLimit's DBC initial value
        # the other policies with the now trusted certificate
        for policy, mode in (("Aes128_Sha256_RsaOaep", "Sign"), ("Aes256_Sha256_RsaPss", "SignAndEncrypt")):
            other = await run_node(
                {**base, "securityPolicy": policy, "securityMode": mode, "user": OPERATOR[0], "password": OPERATOR[1]}
            )
            assert by_op(other, "read")[0]["value"] == 50, (policy, other)
        # 3. a wrong password is refused on the secure channel
        bad = await run_node({**base, "user": OPERATOR[0], "password": "wrong"})
        assert bad[-1].get("error") in ("BadUserAccessDenied", "BadIdentityTokenRejected"), bad
        # 4. anonymous is not offered by this configuration
        anon = await run_node(base)
        assert "error" in anon[-1], anon
