"""OPC UA client process (asyncua): one subscription on the probe signals, writes of OpcCmd.Seq.

Spec: ``url``, ``probes`` (signal names), ``publish_ms`` (requested publishing interval), ``write_hz``,
``write_signal``. Monitored items have queue size 1 (the newest value; asyncua's 0 means 10,000).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from asyncua import ua
from asyncua.client.client import Client

from bench.e2e import wire
from bench.e2e.clientbase import Recorder, main, write_loop

NS_URI = "urn:canbridge"


async def run(spec: dict[str, Any], rec: Recorder, ready: asyncio.Event, stop: asyncio.Event) -> None:
    client = Client(spec["url"], timeout=30)
    async with client:
        idx = await client.get_namespace_index(NS_URI)
        names: list[str] = spec["probes"]

        class Handler:
            def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
                t = time.time_ns()
                if val is None:
                    return
                dv = data.monitored_item.Value
                src = dv.SourceTimestamp
                src_ns = int(src.timestamp() * 1e9) if src is not None else 0
                rec.value(str(node.nodeid.Identifier), wire.seq_of_speed(float(val)), src_ns, t)
                ready.set()

            def status_change_notification(self, status: Any) -> None:
                rec.error(f"status change {status}")

        sub = await client.create_subscription(float(spec["publish_ms"]), Handler())
        rec.samples["revised_publish_ms"] = [sub.parameters.RequestedPublishingInterval]
        nodes = [client.get_node(ua.NodeId(cast(Any, n), cast(Any, idx))) for n in names]
        await sub.subscribe_data_change(nodes, queuesize=1)
        target = client.get_node(ua.NodeId(cast(Any, spec["write_signal"]), cast(Any, idx)))

        async def write(seq: int) -> bool:
            await target.write_value(ua.DataValue(ua.Variant(seq, ua.VariantType.UInt16)))
            return True

        await ready.wait()
        await write_loop(rec, stop, float(spec["write_hz"]), spec["write_signal"], write)
        await stop.wait()
        await sub.delete()


if __name__ == "__main__":
    raise SystemExit(main(run))
