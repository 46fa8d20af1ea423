#!/usr/bin/env python3
"""MQTT plugin against Mosquitto: changes published per second with a host decoding them, against a naive
baseline in the same run, and the store-and-forward drain rate.

    .venv/bin/python bench/bench_mqtt.py [--signals 1000 10000] [--rate 50000] [--seconds 5]
                                         [--backlog 60000] [--batch 1000] [--drain-only]

A FakeBridge changes ``--rate`` signal values per second (round robin over ``--signals``); the plugin's
Sparkplug output (report by exception every 100 ms, QoS 0) publishes DDATA to a Mosquitto on a loopback
port, and a host in its own process decodes every DDATA and counts metrics. CPU is this process's CPU time
minus a run of the same driver without any publisher. The naive baseline is one aiomqtt publish per change
with a JSON payload, as a paho-style bridge does. The drain run queues ``--backlog`` changes (60 s at
1,000 changes/s by default; ``--backlog 3000000`` is a 60 s outage at a full bus's 50,000 changes/s),
connects, and times the queue to empty, three times: as the first version queued changes (a row each,
decoded and re-encoded when read back), as the second did (a row each with its metric's bytes), as the
plugin does now (a row per chunk: a message's worth of framed metrics, sent as they are); it prints the
rate as a multiple of ``--rate`` (the live rate) and the bridge's own CPU per drained change. Needs mosquitto
(tier mqtt-interop); skipped with a message when it is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiomqtt  # noqa: E402

from canbridge import Quality  # noqa: E402
from canbridge.testing import FakeBridge, signal_info, until  # noqa: E402

HOST = r"""
import asyncio, sys
import aiomqtt
from canbridge_mqtt.sparkplug_b_pb2 import Payload
async def main(port):
    n = 0
    async with aiomqtt.Client("127.0.0.1", port, max_queued_incoming_messages=0) as c:
        await c.subscribe("#")
        print("ready", flush=True)
        async def report():
            while True:
                await asyncio.sleep(0.2)
                print(n, flush=True)
        t = asyncio.create_task(report())
        async for m in c.messages:
            t_ = str(m.topic)
            if "/DDATA/" in t_:
                p = Payload(); p.ParseFromString(m.payload); n += len(p.metrics)
            elif t_.startswith("naive/"):
                n += 1
asyncio.run(main(int(sys.argv[1])))
"""


def table(n: int) -> FakeBridge:
    sigs = [signal_info(f"b.M{i // 8}.S{i % 8}", index=i, frame_id=0x100 + i // 8) for i in range(n)]
    return FakeBridge(sigs, state_dir=Path(tempfile.mkdtemp()))


class Host:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.count = 0

    async def read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            text = line.decode().strip()
            if text.isdigit():
                self.count = int(text)


async def start_host(port: int) -> Host:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", HOST, str(port), stdout=asyncio.subprocess.PIPE,
                                                cwd=str(ROOT / "plugins"))
    assert proc.stdout is not None
    assert (await proc.stdout.readline()).strip() == b"ready"
    host = Host(proc)
    asyncio.get_running_loop().create_task(host.read())
    return host


async def drive(fake: FakeBridge, rate: int, seconds: float) -> int:
    """Change ``rate`` values a second for ``seconds``, in 10 ms steps; returns the changes made."""
    names = list(fake.signals)
    made, i, step = 0, 0, 0.01
    t0 = time.monotonic()
    while (now := time.monotonic()) - t0 < seconds:
        due = int((now - t0) * rate) - made
        for _ in range(due):
            fake.set(names[i % len(names)], made % 60000, Quality.GOOD)
            i += 1
            made += 1
        await asyncio.sleep(step)
    return made


async def run_plugin(port: int, n: int, rate: int, seconds: float, host: Host) -> tuple[int, int, float]:
    from canbridge_mqtt.config import MqttConfig
    from canbridge_mqtt.service import MqttService

    fake = table(n)
    cfg = MqttConfig.model_validate({"broker": {"urls": [f"mqtt://127.0.0.1:{port}"]},
                                     "sparkplug": {"group_id": "bench", "edge_node_id": f"n{n}"},
                                     "buffer": {"enabled": False}})
    svc = MqttService(fake, cfg)
    await svc.start()
    assert svc.sparkplug is not None
    out = svc.sparkplug
    await until(lambda: out.online, 30, what="born")
    start = host.count
    cpu0 = time.process_time()
    made = await drive(fake, rate, seconds)
    await asyncio.sleep(0.5)
    cpu = time.process_time() - cpu0
    got = host.count - start
    await svc.stop()
    return made, got, cpu


async def run_naive(port: int, n: int, rate: int, seconds: float, host: Host) -> tuple[int, int, float]:
    fake = table(n)
    start = host.count
    async with aiomqtt.Client("127.0.0.1", port) as c:
        sub = fake.subscribe(None, 0.1)
        sent = 0

        async def forward() -> None:
            nonlocal sent
            async with sub:
                async for batch in sub:
                    for v in batch:  # one publish per change, JSON
                        await c.publish("naive/" + v.name.replace(".", "/"),
                                        json.dumps({"value": v.value, "ts": v.timestamp_ns}))
                        sent += 1

        task = asyncio.create_task(forward())
        cpu0 = time.process_time()
        made = await drive(fake, rate, seconds)
        await asyncio.sleep(0.5)
        cpu = time.process_time() - cpu0
        task.cancel()
    return made, host.count - start, cpu


DRAIN_PATHS = {
    "plain": "rows without bytes (decode, re-encode)",
    "per-change": "a metric's bytes a row",
    "chunks": "chunks: a message's bytes a row",
}


async def run_drain(port: int, backlog: int, batch: int, path: str) -> tuple[float, int, float, float]:
    """Queue ``backlog`` changes, connect, time the queue to empty; returns (drain s, replayed, queueing s,
    the bridge process's CPU s during the drain: its own share, whatever the broker and host cost).
    ``path`` (DRAIN_PATHS): how the changes are queued. ``plain`` and ``per-change`` are how earlier versions
    queued them (one change a row, without bytes or with its metric's bytes), the baselines in the same run;
    ``chunks`` is what the plugin does now (``SparkplugOutput.store``)."""
    from canbridge_mqtt.buffer import Buffer
    from canbridge_mqtt.config import MqttConfig
    from canbridge_mqtt.service import MqttService
    from canbridge_mqtt.session import EdgeNode
    from canbridge_mqtt.sparkplug_output import node_metric_list

    sigs = [signal_info(f"b.M{i // 8}.S{i % 8}", index=i, frame_id=0x100 + i // 8) for i in range(1000)]
    fake = FakeBridge(sigs, state_dir=Path(tempfile.mkdtemp()))
    names = [s.name for s in sigs]
    node = EdgeNode("bench", "drain", sigs, node_metric_list(["b"]))  # the aliases the plugin will use
    buf = Buffer(fake.state_dir / "mqtt" / "buffer.sqlite", 512, 72)
    now_ms = int(time.time() * 1000)
    q0 = time.perf_counter()
    for k in range(0, backlog, 10_000):
        chunk = [(names[i % len(names)], i % 60000, Quality.GOOD, now_ms - backlog + i)
                 for i in range(k, min(backlog, k + 10_000))]
        if path == "chunks":
            buf.append_chunks("sparkplug", node.queued_chunks(chunk, batch)[0])
        else:
            buf.append("sparkplug", chunk, None if path == "plain" else [node.queued_metric(c) for c in chunk])
        await buf.flush()  # as during an outage: the writer keeps up with the changes arriving
    queueing = time.perf_counter() - q0
    await buf.close()
    cfg = MqttConfig.model_validate({"broker": {"urls": [f"mqtt://127.0.0.1:{port}"]},
                                     "sparkplug": {"group_id": "bench", "edge_node_id": "drain"},
                                     "buffer": {"drain_rate": 10_000_000, "batch": batch}})
    svc = MqttService(fake, cfg)
    try:
        await svc.start()
        assert svc.sparkplug is not None
        out = svc.sparkplug
        await until(lambda: out.online, 30, what="born")
        t0, c0 = time.monotonic(), time.process_time()
        await until(lambda: out.backlog() == 0, 300, what="drained")
        dt, cpu = time.monotonic() - t0, time.process_time() - c0
        replayed = svc.sparkplug.replayed
    finally:
        await svc.stop()
    assert svc.buffer is not None and svc.buffer.dropped == 0, "the drain dropped changes"
    return dt, replayed, queueing, cpu


def have_mosquitto() -> bool:
    return shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists()


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--signals", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--rate", type=int, default=50_000, help="signal changes per second offered")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--backlog", type=int, default=60_000)
    ap.add_argument("--batch", type=int, default=1000, help="buffer.batch: queued changes per message")
    ap.add_argument("--drain-only", action="store_true", help="only the store-and-forward drain runs")
    args = ap.parse_args()
    if not have_mosquitto():
        print("bench_mqtt SKIPPED: mosquitto missing; install: sudo bash tools/tiers/mqtt-interop.sh")
        return 0
    from tests.plugins.mqtt.broker import Mosquitto

    broker = Mosquitto(Path(tempfile.mkdtemp()))
    broker.conf.write_text(broker.conf.read_text() + "max_queued_messages 0\n")
    broker.start()
    try:
        host = await start_host(broker.port)
        baseline_cpu = 0.0
        if args.drain_only:
            args.signals = []
        fake = table(args.signals[-1] if args.signals else 1000)
        c0 = time.process_time()
        await drive(fake, args.rate, args.seconds)
        baseline_cpu = (time.process_time() - c0) / args.seconds
        print(f"driver alone: {baseline_cpu:.2f} CPU s/s (subtracted below)")
        print(f"{'signals':>8} {'what':<26} {'offered/s':>10} {'decoded/s':>10} {'CPU s/s':>8}")
        for n in args.signals:
            for label, fn in (("plugin (Sparkplug, RBE)", run_plugin), ("naive (publish per change)", run_naive)):
                made, got, cpu = await fn(broker.port, n, args.rate, args.seconds, host)
                print(f"{n:>8} {label:<26} {made / args.seconds:>10.0f} {got / args.seconds:>10.0f} "
                      f"{max(0.0, cpu / args.seconds - baseline_cpu):>8.2f}")
        start = host.count
        for path, label in DRAIN_PATHS.items():
            dt, replayed, queueing, cpu = await run_drain(broker.port, args.backlog, args.batch, path)
            print(f"drain, {label:<38}: {replayed} changes in {dt:.2f} s = {replayed / dt:>7.0f} changes/s "
                  f"= {replayed / dt / args.rate:.1f}x the live rate; bridge CPU {cpu / replayed * 1e6:.2f} us/change "
                  f"(queueing them took {queueing / replayed * 1e6:.1f} us/change)")
        await asyncio.sleep(0.5)
        print(f"host decoded {host.count - start} historical metrics of {len(DRAIN_PATHS) * args.backlog} queued")
        host.proc.kill()
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
