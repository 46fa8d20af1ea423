"""The end-to-end benchmark's smallest scenario runs and measures what it says: the bridge in its own
process gets frames from the generator, every client has values and every write reaches the bus.
No time is asserted (timings belong to the benchmark's report)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_idle_scenario_measures_every_protocol(tmp_path: Path) -> None:
    out = tmp_path / "e2e.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_e2e.py"), "--scenarios", "idle", "--seconds", "3",
         "--warmup", "1", "--probes", "10", "--write-hz", "10", "--get-hz", "20", "--json", str(out),
         "--keep", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "frame -> client" in run.stdout and "write -> frame" in run.stdout
    (result,) = json.loads(out.read_text())["results"]
    assert result["scenario"] == "idle" and result["signals"] == 1000
    frames = result["frames"]
    assert frames["sent"] > 0 and frames["received"] == frames["sent"]  # a light load: nothing lost
    for proto in ("opcua", "modbus", "sse"):
        values = result["frame_to_client"][proto]
        assert values["n"] > 0, proto
        assert 0 < values["p50"] <= values["p99"] <= values["max"], proto  # from a send to after it
    for label in ("opcua write", "modbus FC6", "modbus FC16", "rest PUT"):
        writes = result["write_to_frame"][label]
        assert writes["n"] > 0 and writes["missing"] == 0, (label, writes)
        assert writes["p50"] > 0, label  # the frame came after the request
    assert result["rest_get"]["n"] > 0
    assert set(result["cpu_pct"]) == {"bridge", "generator", "opcua", "modbus", "sse", "rest", "schedprobe"}
    assert not result["errors"], result["errors"]
    # stale probes (a late generator on a busy machine) are counted, with the pause that explains them
    assert isinstance(result["modbus_not_good_reads"], int) and result["longest_probe_send_gap_s"] > 0
