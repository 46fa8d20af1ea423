"""Start-up time and memory of ``canbridge run`` at scale, against a raw asyncua server (the floor).

    .venv/bin/python bench/bench_startup.py [--sizes 16 1000 10000] [--plugins none opcua modbus rest all]
                                            [--repeat 1] [--timeout 120] [--no-floor]

For each size (signals; ``bench/largemap.py`` writes a DBC of size/8 messages of 8 signals) and each plugin
set, ``canbridge run CONFIG`` is started as a subprocess on a ``virtual`` bus, every server on 127.0.0.1
with free ports, twice with the same state directory: the **first** start (cold: empty state directory,
no start-up cache, no Modbus map file, no certificate) and the **second** (warm). "Ready" is the moment
every enabled protocol answers from this (the benchmark's) process: REST ``GET /readyz`` is 200, an OPC UA
client connects and reads one signal node's DisplayName, a Modbus TCP client reads one holding register.
Resident memory (VmRSS, and the peak VmHWM) is read from ``/proc/<pid>/status`` once ready, and the CPU
time (user + system) the process used until then: on a machine shared with other work that figure moves
far less than the wall-clock time to ready.

The floor, in the same run: a raw asyncua server with the same number of plain Double variables, eight
to an object as canbridge's signals are eight to a message (no canbridge), started as a subprocess and
measured the same way (ready: the client reads one variable).
The probes poll every 20 ms, so a ready time is at most ~20 ms late. The machine's cores are shared with
the probing client: compare rows of one run, not across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "plugins"))

from asyncua import ua  # noqa: E402
from asyncua.ua.attribute_ids import AttributeIds  # noqa: E402
from asyncua.ua.object_ids import ObjectIds  # noqa: E402
from asyncua.ua.uaerrors import UaError  # noqa: E402
from canbridge_opcua.nodes import nodeid  # noqa: E402

from bench.largemap import message_name, write_dbc  # noqa: E402

BUS = "bench"
PLUGIN_SETS: dict[str, tuple[str, ...]] = {
    "none": (),
    "opcua": ("opcua",),
    "modbus": ("modbus",),
    "rest": ("rest",),
    "all": ("opcua", "modbus", "rest"),
}
POLL_S = 0.02


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Ports:
    opcua: int
    modbus: int
    rest: int


def write_config(directory: Path, dbc: Path, plugins: tuple[str, ...], ports: Ports) -> Path:
    """The bridge's YAML: one virtual bus, the DBC, the chosen plugins on loopback."""
    lines = [
        "buses:",
        f"  - {{name: {BUS}, interface: virtual, channel: bench-{os.getpid()}-{ports.rest}}}",
        "mappings:",
        f"  - {{bus: {BUS}, dbc: {dbc}}}",
        f"state_dir: {directory / 'state'}",
        "log_level: WARNING",
        "audit: {enabled: false}",
        "plugins:",
    ]
    if "opcua" in plugins:
        lines.append(
            f"  opcua: {{listen: 'opc.tcp://127.0.0.1:{ports.opcua}', security_policies: ['None', 'Basic256Sha256'],"
            " allow_anonymous: true}"
        )
    if "modbus" in plugins:
        lines.append(f"  modbus: {{host: 127.0.0.1, port: {ports.modbus}}}")
    if "rest" in plugins:
        lines.append(f"  rest: {{host: 127.0.0.1, port: {ports.rest}}}")
    if not plugins:
        lines[-1] = "plugins: {}"
    path = directory / "bridge.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


# --- probes ------------------------------------------------------------------------------------------


def rest_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1.0) as r:
            return int(r.status) == 200
    except (OSError, urllib.error.URLError):
        return False


def modbus_ready(port: int) -> bool:
    """One Read Holding Registers (FC 3) of register 0, unit 1; any well-formed answer counts."""
    request = struct.pack(">HHHBBHH", 7, 0, 6, 1, 3, 0, 1)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(request)
            head = s.recv(9)
    except OSError:
        return False
    return len(head) >= 8 and struct.unpack(">H", head[:2])[0] == 7


async def opcua_ready(port: int, namespace: str, identifier: str) -> bool:
    from asyncua.client.client import Client

    client = Client(f"opc.tcp://127.0.0.1:{port}", timeout=2.0)
    try:
        await client.connect()
    except (TimeoutError, OSError, UaError):
        return False
    try:
        ns = await client.get_namespace_index(namespace)
        node = client.get_node(nodeid(identifier, ns))
        await node.read_attribute(AttributeIds.DisplayName)
        return True
    except (TimeoutError, OSError, UaError, ValueError):
        return False
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) the process has used: less sensitive to a loaded machine than wall time."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def proc_memory(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(rest.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


@dataclass
class Result:
    ready_s: float
    rss_mb: float
    hwm_mb: float
    cpu_s: float = 0.0


def wait_ready(
    proc: subprocess.Popen[bytes], plugins: tuple[str, ...], ports: Ports, node: tuple[str, str], timeout: float
) -> float:
    """Seconds from now (just after the process was started) to every protocol in ``plugins`` answering."""
    t0 = time.perf_counter()
    pending = set(plugins)
    while pending:
        if proc.poll() is not None:
            raise RuntimeError(f"the bridge exited with {proc.returncode}")
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"not ready after {timeout} s: {sorted(pending)}")
        if "rest" in pending and rest_ready(ports.rest):
            pending.discard("rest")
        if "modbus" in pending and modbus_ready(ports.modbus):
            pending.discard("modbus")
        if "opcua" in pending and asyncio.run(opcua_ready(ports.opcua, *node)):
            pending.discard("opcua")
        if pending:
            time.sleep(POLL_S)  # polling a server in another process: there is nothing to await
    return time.perf_counter() - t0


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_bridge(config: Path, plugins: tuple[str, ...], ports: Ports, timeout: float) -> Result:
    """One start of ``canbridge run`` until ready, then its memory; the process is stopped after."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    args = [sys.executable, "-m", "canbridge", "run", str(config)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if plugins:
            ready = wait_ready(proc, plugins, ports, ("urn:canbridge", f"{BUS}.{message_name(0)}.Temp"), timeout)
        else:
            ready = wait_quiet(proc, timeout)
        rss, hwm = proc_memory(proc.pid)
        return Result(ready, rss, hwm, proc_cpu(proc.pid))
    finally:
        stop(proc)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.returncode not in (0, -15) and err:
            print(err[-2000:], file=sys.stderr)


def wait_quiet(proc: subprocess.Popen[bytes], timeout: float) -> float:
    """No protocol to ask: ready when the process has been asleep (state S, no CPU time used) for 0.3 s,
    minus those 0.3 s. The bridge is idle once started (a virtual bus, no traffic)."""
    t0 = time.perf_counter()
    last = -1.0
    idle_since: float | None = None
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the bridge exited with {proc.returncode}")
        now = time.perf_counter()
        if now - t0 > timeout:
            raise TimeoutError(f"not idle after {timeout} s")
        state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cpu = proc_cpu(proc.pid)
        # runnable (R) or in disk wait (D) is not idle: on a loaded machine it waits for a core
        if cpu != last or state != "S":
            last, idle_since = cpu, None
        elif idle_since is None:
            idle_since = now
        elif now - idle_since >= 0.3:
            return idle_since - t0
        time.sleep(POLL_S)


# --- the floor: a raw asyncua server ------------------------------------------------------------------


async def floor_server(n: int, port: int) -> None:
    """A plain asyncua server with ``n`` Double variables in one folder (the child process)."""
    from asyncua.server.server import Server

    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}")
    ns = await server.register_namespace("urn:floor")
    folder = await server.nodes.objects.add_folder(ns, "Floor")
    items = []
    parent = folder.nodeid
    for i in range(n):
        if i % 8 == 0:  # eight variables per object, as canbridge has eight signals per message
            parent = nodeid(f"m{i // 8}", ns)
            obj = ua.AddNodesItem()
            obj.RequestedNewNodeId = parent
            obj.BrowseName = ua.QualifiedName(f"m{i // 8}", ns)
            obj.NodeClass = ua.NodeClass.Object
            obj.ParentNodeId = folder.nodeid
            obj.ReferenceTypeId = nodeid(ObjectIds.Organizes)
            obj.TypeDefinition = nodeid(ObjectIds.BaseObjectType)
            obj.NodeAttributes = ua.ObjectAttributes()
            items.append(obj)
        attrs = ua.VariableAttributes()
        attrs.DisplayName = ua.LocalizedText(f"v{i}")
        attrs.Value = ua.Variant(0.0, ua.VariantType.Double)
        attrs.DataType = nodeid(ObjectIds.Double)
        attrs.ValueRank = -1
        item = ua.AddNodesItem()
        item.RequestedNewNodeId = nodeid(f"v{i}", ns)
        item.BrowseName = ua.QualifiedName(f"v{i}", ns)
        item.NodeClass = ua.NodeClass.Variable
        item.ParentNodeId = parent
        item.ReferenceTypeId = nodeid(ObjectIds.HasComponent)
        item.TypeDefinition = nodeid(ObjectIds.BaseDataVariableType)
        item.NodeAttributes = attrs
        items.append(item)
    # in bulk, through the internal address space: the fastest way asyncua offers
    await server.iserver.isession.add_nodes(items)
    async with server:
        await asyncio.Event().wait()


def run_floor(n: int, timeout: float) -> Result:
    port = free_port()
    args = [sys.executable, __file__, "--floor-child", str(n), str(port)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        ready = wait_ready(proc, ("opcua",), Ports(port, 0, 0), ("urn:floor", "v0"), timeout)
        rss, hwm = proc_memory(proc.pid)
        return Result(ready, rss, hwm, proc_cpu(proc.pid))
    finally:
        stop(proc)


# --- main ---------------------------------------------------------------------------------------------


def bench(sizes: list[int], sets: list[str], repeat: int, timeout: float, floor: bool) -> None:
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    print(f"load average at start: {os.getloadavg()[0]:.2f}  (2-core machine shared with other sessions)")
    print(
        f"{'signals':>8} {'plugins':>7} {'cold s':>7} {'warm s':>7} {'RSS MB':>7} {'HWM MB':>7}"
        f" {'cold RSS':>8} {'cold cpu':>8} {'warm cpu':>8}"
    )
    for n in sizes:
        messages = max(1, n // 8)
        for name in sets:
            plugins = PLUGIN_SETS[name]
            colds: list[Result] = []
            warms: list[Result] = []
            for _ in range(repeat):
                directory = Path(tempfile.mkdtemp(prefix="bench-startup-"))
                try:
                    dbc = write_dbc(directory / "large.dbc", messages)
                    ports = Ports(free_port(), free_port(), free_port())
                    config = write_config(directory, dbc, plugins, ports)
                    colds.append(run_bridge(config, plugins, ports, timeout))
                    warms.append(run_bridge(config, plugins, ports, timeout))
                finally:
                    shutil.rmtree(directory, ignore_errors=True)
            c = min(colds, key=lambda r: r.ready_s)
            w = min(warms, key=lambda r: r.ready_s)
            print(
                f"{messages * 8:>8} {name:>7} {c.ready_s:>7.2f} {w.ready_s:>7.2f} {w.rss_mb:>7.1f} {w.hwm_mb:>7.1f}"
                f" {c.rss_mb:>8.1f} {c.cpu_s:>8.2f} {w.cpu_s:>8.2f}",
                flush=True,
            )
        if floor:
            f = run_floor(messages * 8, timeout)
            print(
                f"{messages * 8:>8} {'floor':>7} {f.ready_s:>7.2f} {'':>7} {f.rss_mb:>7.1f} {f.hwm_mb:>7.1f}"
                f" {'':>8} {f.cpu_s:>8.2f}   (raw asyncua server, same number of plain variables)",
                flush=True,
            )
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--floor-child":
        asyncio.run(floor_server(int(sys.argv[2]), int(sys.argv[3])))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 1000, 10000], help="signals (multiples of 8)")
    p.add_argument("--plugins", nargs="+", choices=sorted(PLUGIN_SETS), default=list(PLUGIN_SETS))
    p.add_argument("--repeat", type=int, default=1, help="pairs of starts per row; the fastest is shown")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds a start may take")
    p.add_argument("--no-floor", action="store_true", help="skip the raw asyncua server")
    a = p.parse_args()
    bench(a.sizes, a.plugins, a.repeat, a.timeout, not a.no_floor)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
