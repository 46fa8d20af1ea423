"""docs/opcua.md's first secure connection walk-through, run as written against a live server."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.opcua.conftest import running

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "opcua.md"
DOC_URL = "opc.tcp://127.0.0.1:4840"


def walkthrough() -> str:
    text = DOC.read_text()
    m = re.search(r"<!-- walkthrough:start -->\s*```sh\n(.*?)```\s*<!-- walkthrough:end -->", text, re.S)
    assert m, "docs/opcua.md has no walk-through block"
    return m.group(1)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_first_secure_connection_walkthrough(
    opcua_config: Callable[..., dict[str, Any]], pki_seed: Path, tmp_path: Path
) -> None:
    script = walkthrough()
    assert DOC_URL in script and ".canbridge-state/opcua/pki/trusted/" in script
    pki = tmp_path / ".canbridge-state" / "opcua" / "pki"
    for sub in ("own", "private"):  # the shared server key, to skip generating one
        if (pki_seed / sub).is_dir():
            shutil.copytree(pki_seed / sub, pki / sub)
    async with running(opcua_config(pki_dir=str(pki)), simulate=True, seed=pki_seed) as (h, _svc, url):
        await h.until(lambda: h.bridge.read("demo.MotorStatus.MotorSpeed").value is not None,
                      what="the simulator's first frame")
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        proc = await asyncio.create_subprocess_exec(
            "bash", "-euo", "pipefail", "-c", script.replace(DOC_URL, url), cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "refused, as expected" in text and "BadCertificateUntrusted" in text
    assert re.fullmatch(r"-?\d+", text.strip().splitlines()[-1]), text  # step 4 printed the speed
    assert [p.name[:7] for p in (pki / "trusted").iterdir()] == ["uaread["]
    assert not list((pki / "rejected").iterdir())
