"""The naive baseline of issue #14: the obvious asyncio bridge, in its own process on the same buses.

    python bench/e2e/naive_bridge.py SPEC_JSON

SPEC: ``{"dbc", "buses": {name: fd}, "opcua_port", "rest_port"}``. Per readable event one ``recvmsg``
and one frame into an unbounded ``asyncio.Queue`` (python-can's Notifier with an AsyncBufferedReader
does the same); a task awaits each frame, decodes it with cantools ``decode_message`` and then, per
signal, ``await node.write_value(...)`` on an asyncua server (the OPC UA baseline) and, per frame,
``json.dumps`` of its signals to every SSE client whose pattern matches (the per-frame JSON baseline).
It serves ``/readyz``, ``/api/v1/buses`` (frames received) and ``/api/v1/stream`` as the bridge does, so
the same clients measure it. No writes and no Modbus: those baselines are not built (see
docs/performance.md).
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import socket
import struct
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import cantools
from aiohttp import web
from asyncua import ua
from asyncua.server.server import Server

from bench.e2e import wire

FRAME = struct.Struct("=IB3x8s")


async def serve(spec: dict[str, Any]) -> None:
    db: Any = cantools.database.load_file(spec["dbc"])
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{spec['opcua_port']}")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    idx = await server.register_namespace("urn:canbridge")
    nodes: dict[tuple[str, int], list[tuple[str, Any]]] = {}
    for bus in spec["buses"]:
        folder = await server.nodes.objects.add_folder(ua.NodeId(cast(Any, bus), cast(Any, idx)), bus)
        for msg in db.messages:
            items = []
            for sig in msg.signals:
                name = f"{bus}.{msg.name}.{sig.name}"
                var = await folder.add_variable(ua.NodeId(cast(Any, name), cast(Any, idx)), sig.name,
                                                ua.Variant(0.0, ua.VariantType.Double))
                items.append((sig.name, var))
            nodes[(bus, msg.frame_id)] = items
    queue: asyncio.Queue[tuple[str, int, bytes, int]] = asyncio.Queue()
    counts = dict.fromkeys(spec["buses"], 0)
    streams: list[tuple[str, asyncio.Queue[str]]] = []
    loop = asyncio.get_running_loop()

    def reader(bus: str, sock: socket.socket) -> None:
        got = wire.recv_stamped(sock)
        if got is None:
            return
        data, ts = got
        can_id, length, payload = FRAME.unpack(data)
        counts[bus] += 1
        queue.put_nowait((bus, can_id & 0x1FFFFFFF, payload[:length], ts))

    for bus, fd in spec["buses"].items():
        sock = socket.socket(fileno=int(fd))
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, wire.SO_TIMESTAMPNS, 1)
        loop.add_reader(sock.fileno(), reader, bus, sock)

    async def consume() -> None:
        while True:
            bus, can_id, data, ts = await queue.get()
            try:
                values = db.decode_message(can_id, data, decode_choices=False)
            except (KeyError, ValueError):
                continue
            stamp = datetime.fromtimestamp(ts / 1e9, UTC)
            for sig, var in nodes.get((bus, can_id), []):
                await var.write_value(ua.DataValue(ua.Variant(float(values[sig]), ua.VariantType.Double),
                                                   SourceTimestamp=cast(Any, stamp)))
            msg = db.get_message_by_frame_id(can_id)
            for pattern, q in streams:
                signals = [{"name": f"{bus}.{msg.name}.{s}", "value": float(v), "timestamp_ns": ts}
                           for s, v in values.items() if fnmatch.fnmatchcase(f"{bus}.{msg.name}.{s}", pattern)]
                if signals:
                    q.put_nowait(json.dumps({"signals": signals}))

    async def readyz(request: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    async def buses(request: web.Request) -> web.Response:
        return web.json_response({"buses": [{"name": b, "rx_frames": n, "dropped_frames": 0}
                                            for b, n in counts.items()]})

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        q: asyncio.Queue[str] = asyncio.Queue()
        entry = (request.query.get("name", "*"), q)
        streams.append(entry)
        try:
            await resp.write(b'event: signals\ndata: {"signals": []}\n\n')
            while True:
                await resp.write(f"event: signals\ndata: {await q.get()}\n\n".encode())
        finally:
            streams.remove(entry)

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/v1/buses", buses)
    app.router.add_get("/api/v1/stream", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(spec["rest_port"])).start()
    async with server:
        await consume()


def main() -> int:
    asyncio.run(serve(json.loads(Path(sys.argv[1]).read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
