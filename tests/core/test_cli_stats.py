"""``canbridge stats``: a running bridge's statistics read over its REST endpoint (canbridge/statsview.py)."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from canbridge import cli
from canbridge.testing import BridgeHarness

TOKEN = "stats-reader-token-0123456789"


async def stats(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    # in a thread: the command blocks on HTTP while the bridge it asks runs in this loop
    code = await asyncio.to_thread(cli.main, ["stats", *argv])
    out, err = capsys.readouterr()
    return code, out, err


async def test_stats_prints_tables_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    async with BridgeHarness(plugins={"rest": {"port": 0, "anonymous_read": True}, "modbus": {"port": 0}}) as h:
        h.inject("100#E803000000000000")
        await h.until(lambda: h.bridge.bus_status("demo").rx_frames >= 1)
        url = h.service("rest").endpoints()[0]
        code, out, err = await stats(capsys, "--url", url)
        assert code == 0, err
        assert f"canbridge at {url}" in out and "event-loop lag" in out
        plugins = out.split("\nplugins\n", 1)[1].split("\n\n", 1)[0]
        assert "modbus" in plugins and "rest" in plugins
        buses = out.split("\nbuses\n", 1)[1].split("\n\n", 1)[0].splitlines()
        assert buses[2].split()[:3] == ["demo", "1", "1"]  # frames, decoded
        assert "subscriptions" in out and "coalesced updates" in out

        code, out, _ = await stats(capsys, "--url", url, "--json")
        assert code == 0
        data = json.loads(out)
        assert set(data) >= {"loop_lag", "plugins", "queues", "coalesced", "buses"}
        assert data["buses"]["demo"]["frames"] == 1


async def test_stats_says_what_is_wrong(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = [{"name": "ops", "role": "read", "token": TOKEN}]
    async with BridgeHarness(plugins={"rest": {"port": 0, "tokens": tokens}}) as h:
        url = h.service("rest").endpoints()[0]
        monkeypatch.delenv("CANBRIDGE_TOKEN", raising=False)
        code, _, err = await stats(capsys, "--url", url)
        assert code == 1 and "HTTP 401" in err and "--token" in err
        assert (await stats(capsys, "--url", url, "--token", TOKEN))[0] == 0
        monkeypatch.setenv("CANBRIDGE_TOKEN", TOKEN)
        assert (await stats(capsys, "--url", url))[0] == 0
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = await stats(capsys, "--url", f"http://127.0.0.1:{port}", "--timeout", "2")
    assert code == 1 and "cannot reach the bridge" in err and "REST plugin" in err
    code, _, err = await stats(capsys, "--url", "ftp://127.0.0.1")
    assert code == 1 and "http://" in err
