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
import urllib.error
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


def ready() -> bool:
    """REST /readyz answers 200 once every bus is up (503 with the reasons before)."""
    try:
        status, _ = http_get("/readyz")
    except urllib.error.HTTPError as e:  # 503: serving, not ready yet
        e.close()
        return False
    return status == 200


def truck_dm1() -> bool:
    """The demo's J1939 bus: both simulated ECUs' DM1s (multi-packet, by BAM) decoded."""
    status, body = http_get("/api/v1/buses/truck")
    return status == 200 and {"0x00", "0x03"} <= set(json.loads(body).get("dm1", {}))


CANOPEN_SIGNAL = "canopen.io1.Read_analogue_input_16_bit.Analogue_input_1"


def canopen_live() -> bool:
    """The demo's CANopen node is operational (heartbeat) and its TPDO value good."""
    values = [json.loads(http_get(f"/api/v1/signals/{n}")[1]) for n in ("canopen.io1.NMT_state", CANOPEN_SIGNAL)]
    return all(v.get("quality") == "good" for v in values) and values[0].get("value") in (5, "operational")


def probe_plugins(proc: subprocess.Popen[bytes], deadline: float) -> None:
    # Readiness, not a start-up banner: the banner's wording is for people and changes.
    wait_for("GET /readyz = 200", ready, proc, deadline)
    print("demo_probe: ready (GET /readyz 200)")
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
    wait_for("the J1939 bus truck: DM1 of the engine and the transmission", truck_dm1, proc, deadline)
    print("demo_probe: J1939 ok (bus truck: DM1 of 0x00 and 0x03 by BAM)")
    # the CANopen bus: the simulated I/O module boots, sends its heartbeat and TPDO1 (canbridge/demo/io_module.eds)
    wait_for(f"{CANOPEN_SIGNAL} good", canopen_live, proc, deadline)
    print(f"demo_probe: CANopen ok ({CANOPEN_SIGNAL} good, node operational)")
    for plugin in ("opcua", "modbus"):
        port = PORTS[plugin]
        wait_for(f"{plugin} port {port}", functools.partial(port_busy, port), proc, deadline)
        print(f"demo_probe: {plugin} listening on {HOST}:{port}")


def run_demo(cmd: list[str], log: IO[bytes], plugins: bool) -> int:
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    ok = False
    try:
        deadline = time.monotonic() + START_TIMEOUT
        if plugins:
            probe_plugins(proc, deadline)
        else:
            # Without plugins nothing answers: the demo is up when it is still alive a while after
            # printing its state directory (the last thing it does before serving).
            def state_printed() -> bool:
                log.seek(0)
                return b"state (certificates" in log.read()

            wait_for("the demo's state directory line", state_printed, proc, deadline)
            time.sleep(3.0)
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
