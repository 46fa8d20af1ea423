#!/usr/bin/env python3
"""End to end: the bridge in its own process (``canbridge run``, every northbound plugin on), a load
generator in another feeding the real SocketCAN receive code, and a client per protocol in processes of
their own. Measures frame → client and write → frame latencies, frames lost and CPU per process.

    .venv/bin/python bench/bench_e2e.py [--seconds S] [--scenarios idle,full-1k,naive-full-1k,full-10k,...]
                                        [--probes P] [--write-hz W] [--update-ms MS] [--profile DIR]
                                        [--json FILE] [--keep DIR]

Set-up (issue #14): each bus is a ``socketpair(AF_UNIX, SOCK_DGRAM)`` carrying real 16-byte ``struct
can_frame`` datagrams; the bridge inherits one end as a descriptor and opens it as a bus of kind ``fd``
(bench/e2e/plugin/, a third-party plugin registered through ``register_bus_kinds``) which runs the
SocketCAN driver's own batched ``recvmmsg`` receive code on it (``canbridge.socketcan_on_socket``).
The generator (bench/e2e/generator.py) holds the other ends: it paces frames per millisecond, never
waits (a full queue loses the frame, counted), stamps every frame with its message's sequence number
(bench/e2e/wire.py) and records the bridge's own frames with their kernel timestamps.
The mapping is bench/largemap.py's DBC (8 signals per message, all changing in every frame) plus four
writable command messages. Clients (bench/e2e/client_*.py), each its own process:

* OPC UA (asyncua): one subscription on the probe signals (publishing interval ``--publish-ms``, queue
  size 1), writes of ``OpcCmd.Seq``;
* Modbus TCP (plain sockets): polls the probe registers every ``--poll-ms``, writes with FC6 and FC16;
* SSE (aiohttp): ``GET /api/v1/stream`` of the probe signals (``interval`` ``--sse-ms``);
* REST (aiohttp): paced ``GET /api/v1/signals/{name}`` (``--get-hz``) and ``PUT`` writes.

Scenarios: ``idle`` (probe frames only), ``full-1k`` / ``full-10k`` (one full bus, 1,000 / 10,000 signals
changing), ``4x-full-1k`` / ``4x-full-10k`` (four), ``naive-full-1k`` (bench/e2e/naive_bridge.py, the
obvious asyncio bridge, instead of canbridge), ``get-burst-quiet`` / ``get-burst-full`` (only the REST
client, 20 connections as fast as they go: issue #14 item 5). A process that sleeps 10 ms in a loop
(bench/e2e/schedprobe.py) measures the machine's own stalls in every window, and the run-queue wait of
every process says how long the scheduler kept it from running.

Latency frame → client: from CLOCK_REALTIME just before the generator's send of the frame (the kernel
timestamp the bridge reads follows within microseconds: the report gives that offset from the source
timestamps OPC UA and SSE carry) to CLOCK_REALTIME when the client has the value; nothing subtracted.
Latency write → frame: from just before the client's request to the kernel timestamp of the frame on
the generator's socket. Only the measuring window counts (after ``--warmup`` seconds of each scenario).
Timings vary on shared machines: compare within a run, and read the load average printed with them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.e2e import stats, wire  # noqa: E402
from bench.e2e.bridgeproc import BridgeProcess, Settings  # noqa: E402
from bench.e2e.processes import Child  # noqa: E402
from bench.e2e.profile_summary import summarise  # noqa: E402
from bench.e2e.report import print_scenario  # noqa: E402

FULL_BUS = 9000  # frames/s of a 1 Mbit/s bus of 8-byte standard frames (docs/performance.md)
SCENARIOS: dict[str, dict[str, Any]] = {
    "idle": {"buses": 1, "messages": 125, "mode": "idle", "what": "1,000 signals, probe frames only"},
    # issue #14 item 5: the old bench_rest.py's GETs (20 connections, as fast as they go), bus quiet / full
    "get-burst-quiet": {"buses": 1, "messages": 125, "mode": "quiet", "clients": ["rest"], "burst": True,
                        "what": "REST GETs at full speed, no frames"},
    "get-burst-full": {"buses": 1, "messages": 125, "mode": "load", "clients": ["rest"], "burst": True,
                       "what": "REST GETs at full speed, 1 full bus, 1,000 signals"},
    "full-1k": {"buses": 1, "messages": 125, "mode": "load", "what": "1 full bus, 1,000 signals changing"},
    "full-10k": {"buses": 1, "messages": 1250, "mode": "load", "what": "1 full bus, 10,000 signals changing"},
    "4x-full-1k": {"buses": 4, "messages": 125, "mode": "load", "what": "4 full buses, 4 x 1,000 signals"},
    "naive-full-1k": {"buses": 1, "messages": 125, "mode": "load", "clients": ["opcua", "sse"], "naive": True,
                      "what": "the naive baseline (write_value per signal, JSON per frame), 1 full bus, 1,000 signals"},
    "4x-full-10k": {"buses": 4, "messages": 1250, "mode": "load", "what": "4 full buses, 4 x 10,000 signals"},
}
DEFAULT_SCENARIOS = "idle,full-1k,naive-full-1k,full-10k,4x-full-1k,get-burst-quiet,get-burst-full"
LAG_METRIC = "canbridge_event_loop_lag_seconds"


def client_specs(args: argparse.Namespace, bridge: BridgeProcess) -> dict[str, tuple[str, dict[str, Any]]]:
    """Client name → (script, spec). An MQTT subscriber is one more entry here."""
    probes = wire.probe_names(bridge.buses, args.probes)
    mb_map = {} if bridge.naive else bridge.modbus_map()
    first = bridge.buses[0]
    rest = f"http://127.0.0.1:{bridge.ports['rest']}"

    def mb(name: str) -> dict[str, Any]:
        return {**mb_map.get(name, {}), "name": name}

    return {
        "opcua": ("client_opcua.py", {"url": f"opc.tcp://127.0.0.1:{bridge.ports['opcua']}", "probes": probes,
                                      "publish_ms": args.publish_ms, "write_hz": 0 if bridge.naive else args.write_hz,
                                      "write_signal": f"{first}.OpcCmd.Seq"}),
        "modbus": ("client_modbus.py", {"host": "127.0.0.1", "port": bridge.ports["modbus"],
                                        "probes": {n: mb_map[n] for n in probes if n in mb_map},
                                        "poll_s": args.poll_ms / 1000,
                                        "write_hz": args.write_hz, "fc6_signal": mb(f"{first}.MbCmd.Seq"),
                                        "fc16_signal": mb(f"{first}.MbCmd16.Seq")}),
        "sse": ("client_sse.py", {"url": rest, "glob": wire.probe_glob("b?" if len(bridge.buses) > 1 else first,
                                                                          args.probes),
                                  "interval_s": args.sse_ms / 1000}),
        "schedprobe": ("schedprobe.py", {"period_s": 0.01}),  # not a client: the machine's own stalls
        "rest": ("client_rest.py", {"url": rest, "get_signal": f"{first}.Msg0000.Speed", "get_hz": args.get_hz,
                                    "get_concurrency": 1, "write_hz": args.write_hz,
                                    "write_signal": f"{first}.RestCmd.Seq"}),
    }


def loop_lag(metrics: str) -> dict[str, Any] | None:
    """The bridge's loop-lag histogram from /metrics, if it has one."""
    lines = [ln for ln in metrics.splitlines() if ln.startswith(LAG_METRIC)]
    if not lines:
        return None
    out: dict[str, Any] = {"buckets": {}}
    for ln in lines:
        m = re.match(rf'{LAG_METRIC}_bucket\{{.*le="([^"]+)".*\}} (\S+)', ln)
        if m:
            out["buckets"][m.group(1)] = float(m.group(2))
        elif ln.startswith(f"{LAG_METRIC}_count"):
            out["count"] = float(ln.split()[-1])
        elif ln.startswith(f"{LAG_METRIC}_sum"):
            out["sum"] = float(ln.split()[-1])
    return out


def profile(args: argparse.Namespace, pid: int, name: str) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the bridge through the window (collapsed stacks, with idle frames), if asked."""
    if args.profile is None:
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    args.profile.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(int(args.seconds)), "--rate", "250",
                             "--format", "raw", "--idle", "--nonblocking", "-o", str(args.profile / f"{name}.txt")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_scenario(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    sc = SCENARIOS[name]
    buses = [f"b{i}" for i in range(sc["buses"])]
    update_s = None if args.update_ms is None else args.update_ms / 1000
    settings = Settings(opcua_update_s=update_s, modbus_update_s=update_s,
                        sse_interval_s=args.sse_ms / 1000)
    bridge = BridgeProcess(workdir, buses, sc["messages"], settings, naive=bool(sc.get("naive")))
    bridge.prepare()
    children: dict[str, Child] = {}
    result: dict[str, Any] = {"scenario": name, "what": sc["what"], "signals": 8 * sc["messages"] * len(buses),
                              "buses": len(buses), "rate_per_bus": FULL_BUS if sc["mode"] == "load" else
                              args.probes * args.probe_hz}
    try:
        try:
            result["startup_s"] = bridge.start()
        except RuntimeError as e:  # e.g. a plugin's start-up over the core's 30 s bound on a loaded machine
            print(f"{name}: the bridge did not start, retrying once: {e}", flush=True)
            result["start_failures"] = [str(e)[-500:]]
            bridge.stop()
            bridge = BridgeProcess(workdir.with_name(workdir.name + "-retry"), buses, sc["messages"], settings,
                                   naive=bool(sc.get("naive")))
            bridge.prepare()
            result["startup_s"] = bridge.start()
        assert bridge.proc is not None
        gen_spec = {"buses": [{"name": b, "fd": bridge.peer_fds[b], "messages": sc["messages"]} for b in buses],
                    "rate": FULL_BUS, "probes": args.probes, "probe_hz": args.probe_hz}
        gen = children["generator"] = Child("generator", "generator.py", gen_spec, workdir,
                                            pass_fds=tuple(bridge.peer_fds.values()))
        gen.expect("ready", 30)
        gen.say("idle")  # the clients need values to say they are ready
        gen.expect("ok", 10)
        for cname, (script, spec) in client_specs(args, bridge).items():
            if cname not in [*sc.get("clients", [cname]), "schedprobe"]:
                continue
            if sc.get("burst"):  # as fast as the connections go, nothing else
                spec |= {"get_hz": 0, "get_concurrency": args.get_concurrency, "write_hz": 0}
            children[cname] = Child(cname, script, spec, workdir)
        for cname in list(children)[1:]:
            children[cname].expect("ready", 120)
        gen.say(sc["mode"])
        gen.expect("ok", 10)
        time.sleep(args.warmup)
        pids = {"bridge": bridge.proc.pid, **{c: ch.pid for c, ch in children.items()}}
        cpu0 = {c: stats.cpu_seconds(p) for c, p in pids.items()}
        wait0 = {c: stats.runqueue_wait_s(p) for c, p in pids.items()}
        t0_ns, t0 = time.time_ns(), time.monotonic()
        load0 = os.getloadavg()[0]
        spy = profile(args, bridge.proc.pid, name)
        time.sleep(args.seconds)
        t1_ns, wall = time.time_ns(), time.monotonic() - t0
        if spy is not None:
            spy.wait(30)
            result["profile"] = summarise((args.profile / f"{name}.txt").read_text())
        cpu1 = {c: stats.cpu_seconds(p) for c, p in pids.items()}
        wait1 = {c: stats.runqueue_wait_s(p) for c, p in pids.items()}
        result["cpu_pct"] = {c: 100 * (cpu1[c] - cpu0[c]) / wall for c in pids}
        result["runqueue_wait_pct"] = {c: 100 * (wait1[c] - wait0[c]) / wall for c in pids}
        result["rss_mb"] = {c: stats.rss_mb(p) for c, p in pids.items()}
        result["loadavg"] = [load0, os.getloadavg()[0]]
        result["window_s"] = wall
        with contextlib.suppress(OSError, urllib.error.URLError):
            result["loop_lag"] = loop_lag(bridge.get_text("/metrics"))
        try:
            result["bridge_stats"] = bridge.get_json("/api/v1/stats")
        except (OSError, urllib.error.URLError, ValueError):
            result["bridge_stats"] = None  # not in this version of the bridge
        outs = {c: ch.finish() for c, ch in children.items()}
        time.sleep(0.5)  # let the bridge count the last frames
        bus_status = {b["name"]: b for b in bridge.get_json("/api/v1/buses")["buses"]}
        result.update(analyse(outs, bus_status, (t0_ns, t1_ns), args, bridge))
    finally:
        for ch in children.values():
            ch.kill()
        bridge.stop()
    return result


def analyse(outs: dict[str, dict[str, Any]], bus_status: dict[str, Any], window: tuple[int, int],
            args: argparse.Namespace, bridge: BridgeProcess) -> dict[str, Any]:
    gen = outs["generator"]
    sent_ns = {b: v["sent_ns"] for b, v in gen["buses"].items()}
    rx = [r for v in gen["buses"].values() for r in v["rx"]]
    revised = outs.get("opcua", {}).get("samples", {}).get("revised_publish_ms", [args.publish_ms])[0]
    intervals = {"opcua": revised / 1000, "modbus": args.poll_ms / 1000, "sse": args.sse_ms / 1000}
    frame_to_client: dict[str, Any] = {}
    for proto, interval in intervals.items():
        if proto not in outs:
            continue
        lat, unmatched = stats.frame_latencies(outs[proto]["values"], sent_ns, window)
        frame_to_client[proto] = {**stats.percentiles(lat), "interval_s": interval, "unmatched": unmatched}
    offsets = stats.source_offsets([v for c in ("sse", "opcua") if c in outs for v in outs[c]["values"]], sent_ns)
    first = bridge.buses[0]
    ids = {name: can_id for name, can_id, _ in wire.COMMANDS}
    write_to_frame: dict[str, Any] = {}
    for label, client, signal in (("opcua write", "opcua", "OpcCmd"), ("modbus FC6", "modbus", "MbCmd"),
                                  ("modbus FC16", "modbus", "MbCmd16"), ("rest PUT", "rest", "RestCmd")):
        if client not in outs or not outs[client]["writes"]:
            continue
        writes = [w for w in outs[client]["writes"] if w[0].split(".")[1] == signal and w[0].startswith(first)]
        lat, missing = stats.write_latencies(writes, rx, ids[signal], window)
        write_to_frame[label] = {**stats.percentiles(lat), "missing": missing}
    lags = [s for t_ns, s in outs["schedprobe"]["samples"]["lag"] if window[0] <= t_ns < window[1]]
    rest_gets = outs["rest"]["samples"].get("get", []) if "rest" in outs else []
    gets = [s for t_ns, s in rest_gets if window[0] <= t_ns < window[1]]
    get_rate = len(gets) / ((window[1] - window[0]) / 1e9)
    sent = sum(v["sent"] for v in gen["buses"].values())
    queue_full = sum(v["lost"] for v in gen["buses"].values())
    received = sum(int(b["rx_frames"]) for b in bus_status.values())
    not_good = [t for t in outs.get("modbus", {}).get("samples", {}).get("not_good", []) if window[0] <= t < window[1]]
    return {
        "frame_to_client": frame_to_client,
        "modbus_not_good_reads": len(not_good),
        "longest_probe_send_gap_s": stats.longest_send_gap(sent_ns, window),
        "send_to_kernel_ts": stats.percentiles(offsets),
        "write_to_frame": write_to_frame,
        "rest_get": {**stats.percentiles(gets), "per_s": get_rate},
        "machine_lag": stats.percentiles(lags),
        "frames": {"sent": sent, "lost_queue_full": queue_full, "received": received,
                   "lost_in_bridge": sent - received,
                   "dropped_reported": sum(int(b["dropped_frames"]) for b in bus_status.values())},
        "errors": {c: o["errors"] for c, o in outs.items() if o.get("errors")},
        "client_cpu_s": {c: o["cpu_s"] for c, o in outs.items()},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--scenarios", default=DEFAULT_SCENARIOS, help=f"comma list of {', '.join(SCENARIOS)}")
    p.add_argument("--seconds", type=float, default=12.0, help="measuring window per scenario")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before the window")
    p.add_argument("--probes", type=int, default=50, help="probe messages per bus (10..100, step 10)")
    p.add_argument("--probe-hz", type=float, default=10.0, help="frames/s of each probe message (its cycle)")
    p.add_argument("--get-concurrency", type=int, default=20, help="connections of the get-burst scenarios")
    p.add_argument("--profile", type=Path, help="py-spy record the bridge in each window into this directory")
    p.add_argument("--write-hz", type=float, default=20.0, help="writes/s per protocol (and per Modbus FC)")
    p.add_argument("--get-hz", type=float, default=100.0, help="REST GETs/s (one client, paced)")
    p.add_argument("--publish-ms", type=float, default=50.0, help="OPC UA publishing interval")
    p.add_argument("--poll-ms", type=float, default=50.0, help="Modbus poll period")
    p.add_argument("--sse-ms", type=float, default=50.0, help="SSE stream interval")
    p.add_argument("--update-ms", type=float, default=None,
                   help="OPC UA and Modbus plugins' update_interval (default: the plugins' own, 5 ms)")
    p.add_argument("--json", type=Path, help="write every figure here")
    p.add_argument("--keep", type=Path, help="keep configs and logs in this directory")
    args = p.parse_args()
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for n in names:
        if n not in SCENARIOS:
            p.error(f"unknown scenario {n!r}; known: {', '.join(SCENARIOS)}")
    wire.probe_glob("b0", args.probes)  # validates --probes
    if args.profile is not None and not (shutil.which("py-spy") or Path(sys.executable).with_name("py-spy").exists()):
        p.error("--profile needs py-spy (.venv/bin/pip install py-spy)")
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench_e2e_"))
    results = []
    print(f"load average before: {os.getloadavg()}, {os.cpu_count()} CPUs", flush=True)
    try:
        for n in names:
            r = run_scenario(n, args, base / n)
            print_scenario(r)
            results.append(r)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    print(f"load average after: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json), "keep": str(args.keep)},
                                         "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
