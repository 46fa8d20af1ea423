"""Start ``canbridge demo`` inside the image, probe its endpoints, stop it, and exit non-zero on any failure.

tools/build-image.sh runs this with ``python3 -c`` inside the image (so nothing has to be copied in). The
container shares the host's network, so the demo's fixed ports (4840 OPC UA, 5020 Modbus, 8080 HTTP) may be
taken by something else: then the demo runs without plugins and only its start-up is checked.
"""

from __future__ import annotations

import functools
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from typing import IO

HOST = "127.0.0.1"
PORTS = {"opcua": 4840, "modbus": 5020, "rest": 8080}
START_TIMEOUT = 45.0  # the first start compiles nothing (pyc are in the image) but makes OPC UA certificates
STOP_TIMEOUT = 15.0


def port_busy(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((HOST, port)) == 0


def http_get(path: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://{HOST}:{PORTS['rest']}{path}", timeout=5.0) as r:
        return int(r.status), bytes(r.read())


def wait_for(what: str, check: Callable[[], bool], proc: subprocess.Popen[bytes], deadline: float) -> None:
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo exited with {proc.returncode} before {what}")
        try:
            if check():
                return
        except OSError as e:  # not listening yet
            last = e
        time.sleep(0.3)
    raise SystemExit(f"timed out waiting for {what} ({last})")


def probe_plugins(proc: subprocess.Popen[bytes], deadline: float) -> None:
    wait_for("GET /healthz", lambda: http_get("/healthz")[0] == 200, proc, deadline)
    status, body = http_get("/")
    if status != 200 or b"<html" not in body.lower():
        raise SystemExit(f"dashboard: HTTP {status}, {body[:80]!r}")
    status, body = http_get("/static/app.js")
    if status != 200 or not body:
        raise SystemExit(f"/static/app.js: HTTP {status}, {len(body)} bytes")
    name = "demo.MotorStatus.MotorSpeed"
    status, body = http_get(f"/api/v1/signals/{name}")
    doc = json.loads(body)
    if status != 200 or name not in json.dumps(doc):
        raise SystemExit(f"GET signal: HTTP {status}, {body[:200]!r}")
    print(f"demo_probe: REST ok (dashboard, static, {name})")
    for plugin in ("opcua", "modbus"):
        port = PORTS[plugin]
        wait_for(f"{plugin} port {port}", functools.partial(port_busy, port), proc, deadline)
        print(f"demo_probe: {plugin} listening on {HOST}:{port}")


def run_demo(cmd: list[str], log: IO[bytes], plugins: bool) -> int:
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    ok = False
    try:
        deadline = time.monotonic() + START_TIMEOUT

        def started() -> bool:
            log.seek(0)
            return b"Connect to:" in log.read()

        wait_for("the start-up banner", started, proc, deadline)
        if plugins:
            probe_plugins(proc, deadline)
        else:
            time.sleep(3.0)  # still alive a moment later: the bus, simulator and runtime came up
            if proc.poll() is not None:
                raise SystemExit(f"demo exited with {proc.returncode}")
        ok = True
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                print(f"demo_probe: demo ignored SIGINT for {STOP_TIMEOUT:.0f} s and was killed", file=sys.stderr)
                ok = False
        if not ok or proc.returncode != 0:
            log.seek(0)
            out = log.read().decode(errors="replace")
            print("---- demo output ----\n" + out + "---------------------", file=sys.stderr)
    if proc.returncode != 0:
        print(f"demo_probe: demo exited with {proc.returncode} after SIGINT", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    busy = [f"{name}:{port}" for name, port in PORTS.items() if port_busy(port)]
    cmd = ["canbridge", "demo", "--state-dir", tempfile.mkdtemp(prefix="canbridge-demo-")]
    if busy:
        print(f"demo_probe: WARNING ports in use by something else ({', '.join(busy)}): "
              "running the demo without plugins, endpoints not probed")
        cmd.append("--no-plugins")
    with tempfile.TemporaryFile() as log:
        rc = run_demo(cmd, log, plugins=not busy)
    if rc == 0:
        print(f"demo_probe: demo started{' (no plugins)' if busy else ''} and stopped cleanly on SIGINT")
    return rc


if __name__ == "__main__":
    sys.exit(main())
