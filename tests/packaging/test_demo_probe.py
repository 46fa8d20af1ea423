"""Regression: ``make image``'s smoke test waited for a start-up banner the demo no longer printed, so
the image build failed its own test. The probe (tools/image/demo_probe.py, run inside the image) now
waits for readiness (REST ``/readyz`` 200); here it runs against this checkout's demo on the host."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = ROOT / "tools" / "image" / "demo_probe.py"


def test_the_image_probe_passes_against_the_demo(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state")}
    r = subprocess.run([sys.executable, str(PROBE)], capture_output=True, text=True, timeout=150, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "stopped cleanly on SIGINT" in r.stdout
    if "without plugins" not in r.stdout:  # the demo's fixed ports were free: every endpoint was probed
        assert "ready (GET /readyz 200)" in r.stdout and "REST ok" in r.stdout, r.stdout
        assert "J1939 ok" in r.stdout, r.stdout  # the second bus: both ECUs' DM1s by BAM


def test_the_probe_does_not_wait_for_words_meant_for_people() -> None:
    text = PROBE.read_text()
    assert "/readyz" in text
    assert "Connect to" not in text
