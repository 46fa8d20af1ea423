"""The load generator: its own process, one socketpair end per bus, real ``struct can_frame`` bytes.

    python bench/e2e/generator.py SPEC_JSON OUT_JSON

SPEC: ``{"buses": [{"name", "fd", "messages"}], "rate": frames/s per bus, "probes": P, "probe_hz": h}``.
Prints ``ready``, then obeys stdin lines: ``idle`` (only the P probe messages, ``probe_hz`` each: a
message's cycle, 100 ms in the DBC), ``load`` (the probes as when idle, and the other messages in turn
filling the bus up to ``rate``), ``quiet`` (nothing), ``stop`` (write OUT, exit). Probe frames keep their
cycle under load, so a probe value is never overwritten by a newer frame before a client can have it:
the latency measured is the bridge's and the protocol's, not the age of the newest of many frames.
Sends are paced per millisecond and never wait: a full socket queue loses the frame and counts it, as
the kernel drops frames on a CAN socket. Frames the bridge sends come back on the same sockets and are
recorded with their SO_TIMESTAMPNS kernel timestamp (the command messages only: id, Seq, ns).
Send times are CLOCK_REALTIME taken just before each send of a probe message, kept per sequence number.
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.e2e import wire

SO_SNDBUFFORCE = 32
BUF = 4 * 1024 * 1024


class Bus:
    def __init__(self, name: str, fd: int, messages: int, probes: int) -> None:
        self.name = name
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(False)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, BUF)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUF)
        self.sock.setsockopt(socket.SOL_SOCKET, wire.SO_TIMESTAMPNS, 1)
        self.ids = [wire.message_id(i) for i in range(messages)]
        self.seq = [0] * messages
        self.probes = probes
        self.sent_ns: list[list[int]] = [[] for _ in range(probes)]  # per probe message, per frame
        self.next_probe = 0  # next message of each round
        self.next_other = probes
        self.sent = 0
        self.lost = 0
        self.rx: list[tuple[int, int, int]] = []  # (can id, seq, kernel ns) of frames the bridge sent

    def send_some(self, count: int, probes: bool) -> None:
        """``count`` frames of the probe messages (``probes``) or of the others, each round in turn."""
        send = self.sock.send
        ids, seqs = self.ids, self.seq
        lo, hi = (0, self.probes) if probes else (self.probes, len(ids))
        if hi <= lo:
            return
        for _ in range(count):
            i = self.next_probe if probes else self.next_other
            if probes:
                self.next_probe = i + 1 if i + 1 < hi else lo
            else:
                self.next_other = i + 1 if i + 1 < hi else lo
            seq = seqs[i]
            data = wire.can_frame(ids[i], wire.payload(seq))
            probe = i < self.probes
            t = time.time_ns() if probe else 0
            try:
                send(data)
            except BlockingIOError:
                self.lost += 1
                continue
            seqs[i] = seq + 1
            self.sent += 1
            if probe:
                self.sent_ns[i].append(t)

    def receive(self) -> None:
        while (got := wire.recv_stamped(self.sock)) is not None:
            data, ts = got
            can_id, _, _, payload = wire.FRAME.unpack(data)
            self.rx.append((can_id & wire.CAN_EFF_MASK, wire.command_seq(payload), ts))


def run(spec: dict[str, Any], out: Path) -> None:
    probes = int(spec["probes"])
    buses = [Bus(b["name"], int(b["fd"]), int(b["messages"]), probes) for b in spec["buses"]]
    probe_rate = probes * float(spec["probe_hz"])
    other_rate = max(0.0, float(spec["rate"]) - probe_rate)
    mode = "quiet"
    phases: list[dict[str, Any]] = []
    stdin = sys.stdin.fileno()
    os.set_blocking(stdin, False)
    pending = b""
    socks = [b.sock for b in buses]
    print("ready", flush=True)
    t0 = time.perf_counter()
    done_probe = done_other = 0  # frames due so far in this phase, per bus
    cpu0 = time.process_time()
    while True:
        now = time.perf_counter()
        if mode in ("idle", "load"):
            due = int((now - t0) * probe_rate)
            if due > done_probe:
                for b in buses:
                    b.send_some(due - done_probe, True)
                done_probe = due
        if mode == "load":
            due = int((now - t0) * other_rate)
            if due > done_other:
                for b in buses:
                    b.send_some(due - done_other, False)
                done_other = due
        readable, _, _ = select.select([stdin, *socks], [], [], 0.001)
        for b in buses:
            if b.sock in readable:
                b.receive()
        if stdin in readable:
            chunk = os.read(stdin, 4096)
            if not chunk:
                break
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                cmd = line.decode().strip()
                if cmd == "stop":
                    write_out(out, buses, phases, time.process_time() - cpu0)
                    return
                phases.append({"mode": cmd, "at_ns": time.time_ns(), "sent": sum(b.sent for b in buses),
                               "lost": sum(b.lost for b in buses)})
                mode = cmd
                t0 = time.perf_counter()
                done_probe = done_other = 0
                print(f"ok {cmd}", flush=True)
    write_out(out, buses, phases, time.process_time() - cpu0)


def write_out(out: Path, buses: list[Bus], phases: list[dict[str, Any]], cpu_s: float) -> None:
    result = {
        "cpu_s": cpu_s,
        "phases": [*phases, {"mode": "end", "at_ns": time.time_ns(), "sent": sum(b.sent for b in buses),
                             "lost": sum(b.lost for b in buses)}],
        "buses": {b.name: {"sent": b.sent, "lost": b.lost, "sent_ns": b.sent_ns, "rx": b.rx} for b in buses},
    }
    out.write_text(json.dumps(result))


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    run(spec, Path(sys.argv[2]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
