"""Regression: the demo kept its state (OPC UA certificate and private key, Modbus map, audit log) in a
fixed ``/tmp/canbridge-demo``, shared by every user of the machine (another user could create it first
and own the demo's private key), called "a temporary directory" by ``--help`` and never printed. It now
uses a per-user directory created 0700, prints it at start, and the quick start names what is in it."""

from __future__ import annotations

import asyncio
import os
import selectors
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from canbridge.cli import build_parser
from canbridge.core.app import demo_config, demo_state_dir, runtime_from_data

ROOT = Path(__file__).resolve().parents[2]


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_xdg_state_home_first(tmp_path: Path) -> None:
    got = demo_state_dir({"XDG_STATE_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path)})
    assert got == tmp_path / "xdg" / "canbridge" / "demo"
    assert got.is_dir() and mode(got) == 0o700


def test_home_local_state_by_default(tmp_path: Path) -> None:
    got = demo_state_dir({"HOME": str(tmp_path)})
    assert got == tmp_path / ".local" / "state" / "canbridge" / "demo" and mode(got) == 0o700
    # a relative XDG_STATE_HOME is ignored, as the XDG spec says
    assert demo_state_dir({"XDG_STATE_HOME": "rel", "HOME": str(tmp_path)}) == got


def test_runtime_dir_without_a_home(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    got = demo_state_dir({"HOME": str(tmp_path / "absent"), "XDG_RUNTIME_DIR": str(run)})
    assert got == run / "canbridge-demo" and mode(got) == 0o700


def test_never_a_fixed_shared_path_without_any(tmp_path: Path) -> None:
    a, b = demo_state_dir({}), demo_state_dir({})
    try:
        assert a != b, "a fallback must be a fresh directory, not a fixed name someone else can own first"
        for p in (a, b):
            assert p.parent == Path(tempfile.gettempdir()) and p.name.startswith("canbridge-demo-")
            assert mode(p) == 0o700 and p.stat().st_uid == os.getuid()
        assert Path(tempfile.gettempdir()) / "canbridge-demo" not in (a, b)
    finally:
        a.rmdir()
        b.rmdir()


def test_an_existing_directory_is_made_private(tmp_path: Path) -> None:
    d = tmp_path / ".local" / "state" / "canbridge" / "demo"
    d.mkdir(parents=True, mode=0o755)
    d.chmod(0o755)
    assert demo_state_dir({"HOME": str(tmp_path)}) == d and mode(d) == 0o700


def test_a_symlink_or_someone_elses_directory_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    state = tmp_path / "xdg"
    (state / "canbridge").mkdir(parents=True)
    (state / "canbridge" / "demo").symlink_to(target)
    home = tmp_path / "home"
    home.mkdir()
    got = demo_state_dir({"XDG_STATE_HOME": str(state), "HOME": str(home)})
    assert got == home / ".local" / "state" / "canbridge" / "demo"  # the next candidate, not the link
    monkeypatch.setattr(os, "getuid", lambda: os.stat(tmp_path).st_uid + 4242)  # as if another user owned it
    other = demo_state_dir({"HOME": str(home)})
    try:
        assert other != got and other.parent == Path(tempfile.gettempdir())
    finally:
        other.rmdir()


def test_help_says_where(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "temp" not in text and "~/.local/state/canbridge/demo" in text


def test_the_demo_prints_its_state_directory(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state"),
           "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "canbridge", "demo", "--no-plugins"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        seen = b""
        deadline = time.monotonic() + 60
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while b"Connect to" not in seen and (left := deadline - time.monotonic()) > 0:
                if not sel.select(min(left, 0.5)):
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break  # the demo exited
                seen += chunk
        expected = tmp_path / "state" / "canbridge" / "demo"
        assert f"state (certificates, register map, audit log): {expected}\n".encode() in seen, seen
        assert mode(expected) == 0o700
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_the_state_holds_what_the_quick_start_names(tmp_path: Path) -> None:
    quick = (ROOT / "docs" / "quickstart.md").read_text()
    for name in ("opcua/pki/", "modbus-map.yaml", "audit.jsonl", "~/.local/state/canbridge/demo"):
        assert name in quick
    state = demo_state_dir({"HOME": str(tmp_path)})
    plugins = {"rest": {"port": 0}, "modbus": {"port": 0},
               "opcua": {"listen": "opc.tcp://127.0.0.1:0", "allow_anonymous": True}}
    runtime = runtime_from_data(demo_config(channel=f"state-{os.getpid()}", plugins=plugins, state_dir=state))

    async def serve() -> None:
        async def until_started() -> None:
            return None

        await asyncio.wait_for(runtime.run(until_started), 120)

    asyncio.run(serve())
    assert (state / "audit.jsonl").is_file()
    assert (state / "modbus-map.yaml").is_file()
    assert (state / "opcua" / "pki" / "own").is_dir()
